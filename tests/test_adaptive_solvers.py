"""Checks every adaptive solver of the registry gets (pkpd.engine.solvers.registry.ADAPTIVE).

Against mathematics: the convergence order of fixed steps against the matrix exponential,
agreement with the exact solver on every shipped linear model, events and boluses, and
the status codes of the one message table.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from ode_zoo import BLOWUP, KERNELS, LOG

import pkpd
from pkpd.engine.solvers import (
    STATUS_BAD_TIMES,
    STATUS_MESSAGES,
    STATUS_NONFINITE,
    STATUS_OK,
    STATUS_STEP_UNDERFLOW,
)
from pkpd.engine.solvers.exact import propagate
from pkpd.engine.solvers.registry import ADAPTIVE, run, run_linear

METHODS = list(ADAPTIVE)

# Two-compartment system with an AUC-like accumulator (singular M), per hour.
M2 = np.array([[-1.3, 0.4, 0.0], [0.9, -0.4, 0.0], [1.0, 0.0, 0.0]])
B2 = np.array([1.0, 0.0, 0.0])


def tol_units(y, ref, rtol, atol):
    return np.max(np.abs(y - ref) / (atol + rtol * np.abs(ref)))


@pytest.mark.parametrize("method", METHODS)
def test_convergence_order_on_fixed_steps(method):
    """Log-log slope of the end-point error against expm over a ladder of fixed steps."""
    info = ADAPTIVE[method]
    T = 4.0
    x0 = np.array([1.0, 0.0, 0.0])
    exact = scipy.linalg.expm(M2 * T) @ x0
    e = np.zeros(0)
    hs, errs = [], []
    for n in (16, 32, 64, 128):
        h = T / n
        X, status, stats = run_linear(
            method, M2, B2, e, e, e, np.array([T]), x0=x0, h_fixed=h, rtol=1.0, atol=1.0
        )
        assert status == STATUS_OK
        assert stats["nsteps"] == n and stats["nrejected"] == 0
        hs.append(h)
        errs.append(np.max(np.abs(X[-1] - exact)))
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert abs(slope - info.order) < 0.5, (method, slope, errs)


@pytest.mark.parametrize("method", METHODS)
def test_events_boluses_and_dense_output_match_exact(method):
    """Boluses at event times, rate changes, outputs between, at and after events."""
    ev_t = np.array([0.0, 1.0, 2.5, 2.5, 6.0])
    ev_rate = np.array([2.0, 0.0, 3.0, 3.0, 0.0])
    ev_bolus = np.array([10.0, 0.0, 5.0, 0.0, 1.0])
    t = np.concatenate([np.linspace(0.0, 10.0, 73), [2.5, 6.0, 6.0]])
    t.sort()
    ref, st = propagate(M2, B2, ev_t, ev_rate, ev_bolus, t)
    assert st == 0
    rtol, atol = 1e-8, 1e-10
    X, status, stats = run_linear(method, M2, B2, ev_t, ev_rate, ev_bolus, t, rtol=rtol, atol=atol)
    assert status == STATUS_OK
    assert tol_units(X, ref, rtol, atol) < 5
    # Right-continuous at a bolus: the output at 2.5 h includes the 5 mg.
    i = np.searchsorted(t, 2.5)
    assert X[i, 0] == pytest.approx(ref[i, 0], rel=1e-7)
    # Work budget: a regression of the step-size control fails here.
    budget = {"dopri5": 400, "rodas": 700}[method]
    assert stats["nsteps"] <= budget, stats
    assert stats["nrejected"] <= 0.2 * stats["nsteps"], stats


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", pkpd.available_models())
def test_agrees_with_exact_solver_on_every_linear_model(method, name):
    """rtol 1e-8 on the augmented system of every shipped linear model.

    Dopri5 runs with its stiffness test off here: models with a fast effect site
    (ke0 of several per minute) are stiff for it over 30 h, which it reports through
    pkpd.simulate (test below); here it must still be accurate, only slower.
    """
    spec = pkpd.load_model(name)
    if not spec.is_linear:
        pytest.skip("nonlinear [ode] model: compared with scipy in test_ode_models.py")
    weight = 30.0 if name.startswith("herd") else 70.0
    theta = spec.individual_parameters({"weight": weight}, warn=False)
    M, b, C = spec.system(theta)
    reg = pkpd.load_regimen(
        "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h; 0.05 mg/kg/h from 4 h to 24 h"
    )
    ev = reg.event_table(weight)
    t = np.linspace(0.0, 30.0, 181)
    ref, st = propagate(M, b, ev.t, ev.rate, ev.bolus, t)
    assert st == 0
    X, status, _ = run_linear(
        method, M, b, ev.t, ev.rate, ev.bolus, t, rtol=1e-8, atol=1e-12, nstiff=0
    )
    assert status == STATUS_OK, STATUS_MESSAGES[status]
    n = spec.n_comp
    conc, conc_ref = X[:, :n] @ C.T, ref[:, :n] @ C.T
    for j, o in enumerate(spec.output_names):
        y, r = conc[:, j], conc_ref[:, j]
        # Global error of a tolerance-1e-8 solve: within 1e-6 relative of the exact
        # solution wherever the concentration is above 1e-6 of its peak.
        big = np.abs(r) > 1e-6 * np.max(np.abs(r))
        assert np.max(np.abs(y - r)[big] / np.abs(r)[big]) < 1e-6, o
    # Dose given (an accumulator) is integrated exactly by both methods.
    assert X[-1, n] == pytest.approx(ref[-1, n], rel=1e-10)


def test_simulate_reports_dopri5_stiffness_on_a_fast_effect_site(monkeypatch):
    """domino_racemic's assumed ke0 (5.2/min) makes a 30 h solve stiff for Dopri5: with
    Hairer's default (test from step 1000) it still finishes, accurately, in nearly 1000
    stability-limited steps; tested at every step, it reports stiffness."""
    regimen = "1 mg/kg over 30 min from 0 h"
    d5 = pkpd.simulate(
        "domino_racemic", regimen, covariates={"weight": 70}, until="30 h", method="dopri5"
    )
    assert d5.attrs["solver_nsteps"] > 500  # stability-limited (Rodas4: < 400 below)
    monkeypatch.setattr(pkpd.engine.solvers.registry, "DEFAULT_NSTIFF", 1)
    with pytest.raises(pkpd.SimulationError, match=r"Dopri5 failed \(status 5\): stiffness"):
        pkpd.simulate(
            "domino_racemic", regimen, covariates={"weight": 70}, until="30 h", method="dopri5"
        )
    ds = pkpd.simulate(
        "domino_racemic", regimen, covariates={"weight": 70}, until="30 h", method="rodas"
    )
    ref = pkpd.simulate("domino_racemic", regimen, covariates={"weight": 70}, until="30 h")
    assert ref.attrs["solver_method"] == "exact"  # auto = exact for a linear model
    np.testing.assert_allclose(ds.cp.values, ref.cp.values, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(d5.cp.values, ref.cp.values, rtol=1e-4, atol=1e-6)
    assert ds.attrs["solver_nsteps"] < 400  # Rodas4 is not limited by the fast ke0


@pytest.mark.parametrize("method", METHODS)
def test_tolerances_are_honoured_per_state(method):
    """A tighter tolerance costs more steps and gives a smaller error."""
    t = np.linspace(0, 12, 25)
    ev = (np.array([0.0]), np.array([1.0]), np.array([10.0]))
    ref, _ = propagate(M2, B2, *ev, t)
    errs, steps = [], []
    for rtol in (1e-4, 1e-7, 1e-10):
        X, st, stats = run_linear(method, M2, B2, *ev, t, rtol=rtol, atol=np.full(3, 1e-12))
        assert st == STATUS_OK
        errs.append(np.max(np.abs(X - ref) / np.abs(ref).max(axis=0)))
        steps.append(stats["nsteps"])
    assert errs[0] > errs[1] > errs[2]
    assert steps[0] < steps[1] < steps[2]


@pytest.mark.parametrize("method", METHODS)
def test_status_bad_times(method):
    e = np.zeros(0)
    for t in (np.array([1.0, 0.5]), np.array([-1.0, 1.0]), np.array([0.0, np.nan])):
        _, status, _ = run_linear(method, M2, B2, e, e, e, t)
        assert status == STATUS_BAD_TIMES
        assert "not sorted" in STATUS_MESSAGES[status]


@pytest.mark.parametrize("method", METHODS)
def test_status_nonfinite_state(method):
    """y' = log(y) at y = -1 is NaN: reported, not integrated."""
    e = np.zeros(0)
    _, status, _ = run(
        method,
        KERNELS,
        np.array([LOG]),
        np.zeros(1),
        np.array([-1.0]),
        e,
        e,
        e,
        np.array([0.0, 1.0]),
    )
    assert status == STATUS_NONFINITE


@pytest.mark.parametrize("method", METHODS)
def test_status_step_size_underflow_at_a_blow_up(method):
    """y' = y^2, y(0) = 1 blows up at t = 1: the step size underflows before t = 2."""
    e = np.zeros(0)
    _, status, stats = run(
        method,
        KERNELS,
        np.array([BLOWUP]),
        np.zeros(1),
        np.array([1.0]),
        e,
        e,
        e,
        np.array([0.0, 2.0]),
    )
    assert status == STATUS_STEP_UNDERFLOW
    assert "underflow" in STATUS_MESSAGES[status]
    assert stats["nsteps"] < 5000


def test_every_status_code_has_a_message():
    assert sorted(STATUS_MESSAGES) == list(range(len(STATUS_MESSAGES)))
    assert all(isinstance(v, str) and v for v in STATUS_MESSAGES.values())


@pytest.mark.parametrize("method", METHODS)
def test_bad_tolerances_are_refused(method):
    e = np.zeros(0)
    with pytest.raises(ValueError, match="`rtol` must be a positive number"):
        run_linear(method, M2, B2, e, e, e, np.array([1.0]), rtol=-1.0)
    with pytest.raises(ValueError, match="`atol`"):
        run_linear(method, M2, B2, e, e, e, np.array([1.0]), atol=[1e-9, 1e-9])
