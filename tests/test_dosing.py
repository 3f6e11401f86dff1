"""Dosing sources (:mod:`pkpd.engine.dosing`): a controller that reads the patient's state,
added in one place (its namedtuple and two functions, registered), runs through both
adaptive solvers unchanged; its decisions and the solution match a closed form.

The controller is a top-up pump on a one-compartment model: at each decision time of its
grid it reads the amount in the body and, if the concentration has fallen below a trigger
level, gives the bolus that brings it back to the target; a maintenance infusion runs
throughout. Between
decisions the amount is ``x(t + d) = x e^{-k d} + (r / k)(1 - e^{-k d})``, so the whole
closed loop (which decisions give a bolus, and how much) is computed independently below.
"""

from __future__ import annotations

from collections import namedtuple

import numba
import numpy as np
import pytest

from pkpd.engine import dosing
from pkpd.engine.solvers import N_STATS, STATUS_OK
from pkpd.engine.solvers import dopri5 as d5
from pkpd.engine.solvers import rosenbrock as ro
from pkpd.engine.solvers.segments import no_fold

K_EL = 0.35  # 1/h
V = 40.0  # L
RATE = 4.0  # mg/h, maintenance: Css = RATE / (K_EL V) = 0.286 mg/L, below the target
TARGET = 0.5  # mg/L
TRIGGER = 0.4  # mg/L: 1.5 h after a top-up the level is 0.413, 3 h after 0.361

#: Top-up controller: decision times (n, J) h; trigger and target levels (n,) mg/L;
#: volume (n,) L; the maintenance rate (n,) mg/h. Reads the state (amount, mg).
TopUp = namedtuple("TopUp", ["times", "trigger", "target", "volume", "rate"])


def _topup_next(source, p, cursor):
    if cursor < source.times.shape[1]:
        return source.times[p, cursor]
    return np.inf


def _topup_apply(source, p, cursor, t, x, bolus, rate):
    c = x[0] / source.volume[p]
    bolus[0] = 0.0
    if c < source.trigger[p]:
        bolus[0] = (source.target[p] - c) * source.volume[p]
    rate[0] = source.rate[p]
    return cursor + 1


dosing.register(TopUp, _topup_next, _topup_apply)


@numba.njit
def _rhs(t, y, u, p, dy):
    dy[0] = u - p[0] * y[0]


@numba.njit
def _jac(t, y, u, p, J):
    J[0, 0] = -p[0]


@numba.njit
def _solve_dopri5(source, sp, t_out, tol, out, pre, given):
    work = np.zeros((d5.N_WORK, 1))
    return d5.dopri5_solve_mapped(
        _rhs, np.array([K_EL]), np.ones(1), np.zeros(1), 0.0, source, sp, t_out, tol,
        tol * 1e-3, 0.0, np.inf, 100_000, 0, np.zeros((0, 0)), out, (pre, given), no_fold(),
        work, np.zeros(N_STATS, dtype=np.int64),
    )  # fmt: skip


@numba.njit
def _solve_rodas(source, sp, t_out, tol, out, pre, given):
    work = np.zeros((ro.N_WORK, 1))
    return ro.rodas_solve_mapped(
        _rhs, _jac, np.array([K_EL]), np.ones(1), np.zeros(1), 0.0, source, sp, t_out, tol,
        tol * 1e-3, 0.0, np.inf, 100_000, 0, 1, np.zeros((0, 0)), out, (pre, given),
        no_fold(), work, np.zeros((2, 1, 1)), np.zeros(1, dtype=np.int64),
        np.zeros(N_STATS, dtype=np.int64),
    )  # fmt: skip


def _closed_loop(times, t_eval, rate=RATE):
    """The controller's decisions and the amounts in closed form: ``(pre, bolus, x)`` with
    ``pre``/``bolus`` at each decision time and ``x`` the amount at each of `t_eval`
    (right-continuous: after a decision at that time)."""

    def advance(x, u, d):
        e = np.exp(-K_EL * d)
        return x * e + u / K_EL * (1.0 - e)

    pre, bolus, after = [], [], []
    x, t, u = 0.0, 0.0, 0.0
    for td in times:
        x = advance(x, u, td - t)
        t, u = td, rate
        pre.append(x)
        bolus.append((TARGET - x / V) * V if x / V < TRIGGER else 0.0)
        x += bolus[-1]
        after.append(x)
    xs = []
    for te in t_eval:
        j = np.searchsorted(times, te, side="right") - 1  # the last decision at or before
        xs.append(0.0 if j < 0 else advance(after[j], rate, te - times[j]))
    return np.array(pre), np.array(bolus), np.array(xs)


def _two_patients():
    """Decision grids (patient 0: three decisions and no maintenance; patient 1: every
    1.5 h with it) and the source."""
    t1 = np.arange(8) * 1.5
    times = np.full((2, t1.size), np.inf)
    times[0, :3] = [0.0, 1.0, 2.0]
    times[1] = t1
    source = TopUp(
        times, np.full(2, TRIGGER), np.full(2, TARGET), np.full(2, V), np.array([0.0, RATE])
    )
    return source, (times[0, :3], 0.0), (t1, RATE)


@pytest.mark.parametrize("solve", [_solve_dopri5, _solve_rodas], ids=["dopri5", "rodas"])
def test_a_controller_reading_the_state_runs_through_the_adaptive_solvers(solve):
    """Patient 1 of a two-patient source (the row `sp`): every decision the solver logs is
    the closed-form controller's, and so is the solution after the last one."""
    source, _patient0, (t1, rate) = _two_patients()
    t_out = np.linspace(10.5, 16.0, 12)
    pre_ref, bolus_ref, out_ref = _closed_loop(t1, t_out, rate)
    # The loop is closed: some decisions top up, others find the level above the target.
    assert (bolus_ref > 0).sum() >= 2 and (bolus_ref == 0).sum() >= 2
    out = np.zeros((t_out.size, 1))
    pre = np.zeros((t1.size, 1))
    given = np.full((2, t1.size), np.nan)
    st = solve(source, 1, t_out, np.full(1, 1e-11), out, pre, given)
    assert st == STATUS_OK
    np.testing.assert_allclose(pre[:, 0], pre_ref, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(given[0], bolus_ref, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(given[0] == 0.0, bolus_ref == 0.0)
    np.testing.assert_array_equal(given[1], RATE)
    np.testing.assert_allclose(out[:, 0], out_ref, rtol=1e-8)


def test_the_dispatchers_run_the_registered_pair_as_python():
    """Outside compiled code (and under NUMBA_DISABLE_JIT) the dispatchers call the pair
    registered for the source's class."""
    table = dosing.EventTable(np.array([[0.0, 2.0]]), np.array([[1.0, 0.0]]), np.array([[5.0, 0]]))
    bolus, rate = np.zeros(1), np.zeros(1)
    assert dosing.next_decision_time(table, 0, 1) == 2.0
    assert dosing.next_decision_time(table, 0, 2) == np.inf
    assert dosing.apply(table, 0, 0, 0.0, np.zeros(3), bolus, rate) == 1
    assert (bolus[0], rate[0]) == (5.0, 1.0)
    top = TopUp(*(np.array([v]) for v in ([0.5], TRIGGER, TARGET, V, RATE)))
    assert dosing.apply(top, 0, 0, 0.5, np.array([8.0]), bolus, rate) == 1
    assert (bolus[0], rate[0]) == (pytest.approx(12.0), RATE)
    assert dosing.apply(top, 0, 0, 0.5, np.array([16.4]), bolus, rate) == 1
    assert (bolus[0], rate[0]) == (0.0, RATE)


def test_register_refuses_what_is_not_a_new_namedtuple():
    with pytest.raises(TypeError, match="namedtuple class"):
        dosing.register(tuple, _topup_next, _topup_apply)
    with pytest.raises(TypeError, match="TopUp is registered already"):
        dosing.register(TopUp, _topup_next, _topup_apply)
    Other = namedtuple("Other", ["times"])
    with pytest.raises(
        TypeError,
        match=r"_topup_next takes \(source, p, cursor\); expected "
        r"\(source, p, cursor, t, x, bolus, rate\), as apply",
    ):
        dosing.register(Other, _topup_next, _topup_next)
    assert Other not in dosing._SOURCES


@pytest.mark.skipif(
    not numba.config.DISABLE_JIT,
    reason="runs the cohort kernels as Python (make test-nojit): compiled, each kernel would "
    "compile anew for the test's source type (about a minute)",
)
@pytest.mark.parametrize("kernel", ["exact", "dopri5"])
def test_a_controller_runs_through_the_cohort_kernels(kernel):
    """The exact and the adaptive cohort kernels take any registered source: each patient's
    stored concentrations and Cmax are those of its closed loop."""
    from helpers import mammillary

    from pkpd.engine import kernels, kernels_adaptive
    from pkpd.engine.solvers import registry
    from pkpd.running.cohort import _exact_kept_states

    spec = mammillary(V1=V, k10=K_EL)
    theta = np.tile(spec.individual_parameters({"weight": 70.0}), (2, 1))
    source, *patients = _two_patients()
    grid = np.linspace(0.0, 12.0, 49)
    n, n_t = 2, grid.size
    none_f, none_i = np.zeros((n, 0)), np.zeros((n, 0), dtype=np.int64)
    cmax, tmax = np.zeros((n, 1)), np.zeros((n, 1))
    auc, c_at, t_above = np.zeros((n, 1, 0)), np.zeros((n, 1, 0)), np.zeros((n, 0))
    traj, status = np.zeros((n, 1, n_t)), np.full(n, -1, dtype=np.int64)
    thr = (np.zeros(0, dtype=np.int64), np.zeros(0))
    store = np.zeros(1, dtype=np.int64)
    if kernel == "exact":
        keep = _exact_kept_states(spec)  # the compartment and the output's AUC state
        kernels.cohort_kernel(
            theta, spec.comps_i, spec.flows_i, spec.flows_f, spec.effects_i, spec.outputs_i,
            spec.dose_index, len(spec.analyte_names), keep, source, 0.0, grid, none_f, none_i,
            none_i, *thr, store, 1, np.zeros(0, dtype=np.int64), np.ones(1), True, cmax, tmax,
            auc, t_above, c_at, traj, status,
        )  # fmt: skip
        rtol = 1e-12
    else:
        P, B, auc_index = kernels_adaptive.linear_parameters(spec, theta)
        tol = registry.tolerance(1e-11, B.size, "rtol")
        kernels_adaptive.linear_dopri5_cohort(
            P, B, np.zeros((n, B.size)), 0.0, grid, source, none_f, none_i, none_i, tol,
            tol * 1e-3, np.inf, 100_000, 1000, auc_index, *thr, store, 1, cmax, tmax, auc,
            t_above, c_at, traj, status, np.zeros((n, N_STATS), dtype=np.int64),
        )  # fmt: skip
        rtol = 1e-8
    assert list(status) == [STATUS_OK, STATUS_OK]
    for p, (times, rate) in enumerate(patients):
        _pre, bolus, x = _closed_loop(times, grid, rate)
        assert bolus[0] == TARGET * V
        np.testing.assert_allclose(traj[p, 0], x / V, rtol=rtol, atol=1e-14)
        # Every top-up brings the level back to the target: that is the maximum.
        assert cmax[p, 0] == pytest.approx(TARGET, rel=rtol)
        assert tmax[p, 0] in times[bolus > 0]
