"""Solver internals that the results tested elsewhere do not reveal.

Found by mutation testing (tests/README.md), mutants that passed every test run for
their module: the exponential cache of :func:`pkpd.engine.solvers.exact._step` (a uniform grid
costs one matrix exponential, not one per step), the row pivoting of the Padé solve in
:mod:`pkpd.engine.solvers.expm` and its check of the output's shape, and the stage times
``t + c_i h`` of Dopri5 and Rodas4, which no linear model (autonomous between events) and
no problem of tests/ode_zoo.py (autonomous) ever uses.
"""

from __future__ import annotations

import math
import tomllib

import numba
import numpy as np
import pytest
import scipy.linalg

import pkpd
from pkpd.engine.solvers import exact
from pkpd.engine.solvers.dopri5 import dopri5_solve
from pkpd.engine.solvers.expm import EXPM_BAD_SHAPE, _lu_solve_inplace, expm_into, expm_work
from pkpd.engine.solvers.registry import ADAPTIVE, SOLVERS, run, tolerance
from pkpd.engine.solvers.rosenbrock import rodas_solve
from pkpd.inputs.model import ModelSpec, models_dir

M = np.array([[-1.3, 0.4, 0.0], [0.9, -0.4, 0.0], [1.0, 0.0, 0.0]])
B = np.array([1.0, 0.0, 0.0])


def _stepper():
    Maug, Eaug, cache_h, cache_phi, cache_g, xtmp, ework, epiv = exact.workspace(3)
    counter = np.zeros(1, dtype=np.int64)

    def step(x, h, rate, t_scale):
        st = exact._step(
            x, h, rate, M, B, t_scale, Maug, Eaug, cache_h, cache_phi, cache_g, xtmp, ework,
            epiv, counter,
        )  # fmt: skip
        assert st == 0

    return step, counter


def _exact(x0, t, rate):
    """x(t) of dx/dt = M x + B rate from the Van Loan exponential (scipy)."""
    aug = np.zeros((5, 5))
    aug[:3, :3] = M * t
    aug[:3, 3] = B * t * rate
    aug[:3, 4] = x0
    aug[4, 4] = 0.0
    E = scipy.linalg.expm(aug)
    return E[:3, :3] @ x0 + E[:3, 3]


def test_a_uniform_grid_costs_one_exponential():
    """Steps between the points ``i * h`` of a 48-h grid differ from each other by a few
    ulps of the time: they share one cached exponential (module docstring)."""
    step, counter = _stepper()
    t = np.arange(2881) * (1.0 / 60.0)
    steps = np.diff(t)
    assert len(set(steps.tolist())) > 1  # the rounding the cache must see through
    x0 = np.array([5.0, 0.0, 0.0])
    x = x0.copy()
    for i, h in enumerate(steps):
        step(x, h, 2.0, abs(t[i + 1]))
    assert counter[0] == 1
    np.testing.assert_allclose(x, _exact(x0, t[-1], 2.0), rtol=1e-11)


def test_alternating_step_lengths_reuse_their_cached_exponentials():
    step, counter = _stepper()
    x0 = np.array([1.0, 2.0, 0.0])
    x = x0.copy()
    t = 0.0
    for _ in range(20):
        for h in (0.1, 0.25, 0.05):
            t += h
            step(x, h, 0.5, t)
    assert counter[0] == 3
    np.testing.assert_allclose(x, _exact(x0, t, 0.5), rtol=1e-11)


def test_pade_solve_pivots_rows():
    """A zero on the diagonal needs a row interchange; the solution is that of numpy."""
    q = np.array([[0.0, 2.0, 1.0], [1.0, 1.0, 0.0], [3.0, 0.0, 1.0]])
    rhs = np.arange(9.0).reshape(3, 3)
    x = rhs.copy()
    piv = np.zeros(3, dtype=np.int64)
    assert _lu_solve_inplace(q.copy(), x, piv)
    assert piv[0] == 2  # the largest entry of the first column
    np.testing.assert_allclose(x, np.linalg.solve(q, rhs), rtol=1e-14, atol=1e-14)


def test_a_non_square_output_is_refused():
    work, piv = expm_work(3)
    out = np.zeros((3, 4))
    assert expm_into(np.eye(3), out, work, piv) == EXPM_BAD_SHAPE
    assert np.all(np.isnan(out))


# ----------------------------------------------------------------------------- explicit time


def _time_varying_model():
    """One compartment whose clearance changes with time, ``CL (1 + 0.5 exp(-t))``: the
    right-hand side depends on ``t`` itself (not only through the dose input), which the
    linear models and the autonomous test problems never do."""
    with open(models_dir() / "fanta2015_mm_s_ketamine.toml", "rb") as fh:
        data = tomllib.load(fh)
    data["ode"] = {
        "stiff": False,
        "dose_state": "central",
        "states": {"central": {"initial": 0, "unit": "mg"}},
        "intermediates": {"cp": "central / V1"},
        "derivatives": {"central": "rate - CL * (1 + 0.5 * exp(-t)) * cp"},
        "outputs": {"cp": {"expression": "cp", "concentration": True}},
    }
    data["parameters"] = {p: data["parameters"][p] for p in ("V1", "CL")}
    return ModelSpec.from_dict(data, file="time_varying.toml")


@pytest.mark.parametrize("method", ["dopri5", "rodas"])
def test_a_right_hand_side_that_depends_on_time(method):
    """Against ``A(t) = A0 exp(-k (t + 0.5 (1 - exp(-t))))``, k = CL / V1, after a bolus:
    the stage abscissae ``t + c_i h`` (and Rodas4's ``df/dt`` term) are used."""
    spec = _time_varying_model()
    theta = dict(zip(spec.param_names, spec.individual_parameters({"weight": 70.0}), strict=True))
    k = theta["CL"] / theta["V1"]
    t = np.linspace(0.0, 6.0, 61)
    rtol, atol = 1e-8, 1e-12
    sim = pkpd.simulate(
        spec, "100 mg bolus at 0 h", {"weight": 70.0}, times=t, method=method, rtol=rtol,
        atol=atol,
    )  # fmt: skip
    want = 100.0 / theta["V1"] * np.exp(-k * (t + 0.5 * (1.0 - np.exp(-t)))) * 1000.0
    np.testing.assert_allclose(sim.cp.values, want, rtol=50 * rtol)


@numba.njit(cache=True, error_model="numpy")
def _tv_rhs(t, y, u, p, dy):
    dy[0] = u - p[0] * (1.0 + 0.5 * math.exp(-t)) * y[0]


@numba.njit(cache=True, error_model="numpy")
def _tv_jac(t, y, u, p, J):
    J[0, 0] = -p[0] * (1.0 + 0.5 * math.exp(-t))


@numba.njit(cache=True, error_model="numpy")
def _tv_dopri5_into(
    p, b, y0, t0, ev_t, ev_rate, ev_bolus, t_out, rtol, atol, h_fixed, hmax, max_steps, nstiff,
    out, work, stats,
):  # fmt: skip
    return dopri5_solve(
        _tv_rhs, p, b, y0, t0, ev_t, ev_rate, ev_bolus, t_out, rtol, atol, h_fixed, hmax,
        max_steps, nstiff, out, work, stats,
    )  # fmt: skip


@numba.njit(cache=True, error_model="numpy")
def _tv_rodas_into(
    p, b, y0, t0, ev_t, ev_rate, ev_bolus, t_out, rtol, atol, h_fixed, hmax, max_steps, out,
    work, mats, ipiv, stats,
):  # fmt: skip
    # Exact Jacobian (jac_mode 0), not autonomous: df/dt by a forward difference.
    return rodas_solve(
        _tv_rhs, _tv_jac, p, b, y0, t0, ev_t, ev_rate, ev_bolus, t_out, rtol, atol, h_fixed,
        hmax, max_steps, 0, 0, out, work, mats, ipiv, stats,
    )  # fmt: skip


@pytest.mark.parametrize("method", list(ADAPTIVE))
def test_convergence_order_with_explicit_time_dependence(method):
    """Fixed steps on ``y' = -k (1 + 0.5 exp(-t)) y``: the log-log slope of the end-point
    error against the closed form is the method's order (a wrong stage time ``t + c_i h``
    lowers it; the error control of an adaptive run would hide it behind smaller steps)."""
    k, T, y0 = 1.3, 4.0, np.array([1.0])
    exact_T = math.exp(-k * (T + 0.5 * (1.0 - math.exp(-T))))
    e = np.zeros(0)
    hs, errs = [], []
    for n in (8, 16, 32, 64):
        X, status, stats = run(
            method, (_tv_dopri5_into, _tv_rodas_into), np.array([k]), np.zeros(1), y0, e, e, e,
            np.array([T]), h_fixed=T / n, rtol=1.0, atol=1.0,
        )  # fmt: skip
        assert status == 0 and stats["nsteps"] == n
        hs.append(T / n)
        errs.append(abs(X[-1, 0] - exact_T))
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert abs(slope - SOLVERS[method].order) < 0.5, (slope, errs)


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("value", [0.0, -1e-6, [1e-6, 0.0, 1e-6], np.inf, [1e-6, 1e-6]])
def test_a_tolerance_must_be_positive_and_finite_for_every_state(value):
    with pytest.raises(ValueError, match=r"`rtol` must be a positive number or 3 positive"):
        tolerance(value, 3, "rtol")


def test_registry_says_which_solver_is_for_stiff_problems():
    """Dopri5 is explicit (its stability region is bounded: not for stiff problems), Rodas4
    is L-stable; the orders are those of the methods (5(4) and 4(3))."""
    assert not SOLVERS["dopri5"].stiff and SOLVERS["rodas"].stiff
    assert (SOLVERS["dopri5"].order, SOLVERS["dopri5"].error_order) == (5, 4)
    assert (SOLVERS["rodas"].order, SOLVERS["rodas"].error_order) == (4, 3)
