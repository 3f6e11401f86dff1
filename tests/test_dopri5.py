"""Dopri5: its tableau, step-size controller, stiffness test and step limit."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from ode_zoo import KERNELS, ROBERTSON, VAN_DER_POL

from pkpd.engine.solvers import STATUS_MAX_STEPS, STATUS_MESSAGES, STATUS_OK, STATUS_STIFF
from pkpd.engine.solvers import dopri5 as d5
from pkpd.engine.solvers import segments as seg
from pkpd.engine.solvers.registry import run

E0 = np.zeros(0)


def test_tableau_row_sums_weights_and_error_weights():
    np.testing.assert_allclose(d5.A.sum(axis=1), d5.C, rtol=0, atol=1e-15)
    assert d5.B.sum() == pytest.approx(1.0, abs=1e-15)
    assert d5.B_HAT.sum() == pytest.approx(1.0, abs=1e-15)
    assert d5.E.sum() == pytest.approx(0.0, abs=1e-16)
    np.testing.assert_allclose(d5.E, d5.B - d5.B_HAT, rtol=0, atol=1e-16)
    # First same as last: the 5th-order weights are the last row of A.
    np.testing.assert_array_equal(d5.A[6], d5.B[:6])


def test_order_conditions_up_to_five_in_exact_arithmetic():
    """The classical conditions sum b c^(k-1) = 1/k (k <= 5) and sum b A c = 1/6, in
    rational arithmetic from the printed fractions."""
    fr = [Fraction(x).limit_denominator(10**7) for x in d5.B]
    c = [Fraction(x).limit_denominator(10**7) for x in d5.C]
    for k in range(1, 6):
        assert sum(b * ci ** (k - 1) for b, ci in zip(fr, c, strict=True)) == Fraction(1, k)
    A = [[Fraction(x).limit_denominator(10**7) for x in row] for row in d5.A]
    Ac = [sum(A[i][j] * c[j] for j in range(6)) for i in range(7)]
    assert sum(b * x for b, x in zip(fr, Ac, strict=True)) == Fraction(1, 6)


def test_dense_output_interpolates_the_step_ends():
    """theta = 0 gives y_n, theta = 1 gives y_{n+1} (up to rounding)."""
    rng = np.random.default_rng(1)
    work = d5.workspace(3)
    work[: d5._R1] = rng.normal(size=(d5._R1, 3))
    h = 0.3
    mapped = np.zeros((seg.N_COEF, 3))
    assert d5._coeffs(work, h, np.zeros((0, 0)), mapped)  # an empty recording map: a copy
    np.testing.assert_array_equal(mapped, work[d5._R1 : d5._R1 + 5])
    out = np.zeros((2, 3))
    seg.dense(mapped, 0.0, out, 0)
    seg.dense(mapped, 1.0, out, 1)
    np.testing.assert_allclose(out[0], work[d5._Y], rtol=1e-14)
    np.testing.assert_allclose(out[1], work[d5._YNEW], rtol=1e-14)


def _extension(mapped, theta):
    """The continuous extension in exact rational arithmetic at a rational theta."""
    th = Fraction(theta)
    m = [Fraction(float(v)) for v in mapped]
    return m[0] + th * (m[1] + (1 - th) * (m[2] + th * (m[3] + (1 - th) * m[4])))


def test_dense_bound_bounds_every_evaluation_and_the_exact_maximum():
    """The bound that lets a cohort skip a step's rows holds for what `_dense` computes
    (in floating point) and for the exact polynomial, at every theta in [0, 1], for
    coefficients of every sign and of very different sizes."""
    rng = np.random.default_rng(7)
    thetas = np.concatenate([np.linspace(0.0, 1.0, 401), rng.uniform(size=200), [1.0]])
    out = np.zeros((thetas.size, 1))
    for case in range(300):
        scale = 10.0 ** rng.integers(-8, 8, size=5)
        mapped = (rng.normal(size=(5, 1)) * scale[:, None]).copy()
        if case % 3 == 0:  # a declining concentration: the common case past the peak
            mapped[0] = abs(mapped[0]) + 1.0
            mapped[1] = -abs(mapped[1])
        ub = seg.dense_bound(mapped, 0)
        for k, th in enumerate(thetas):
            seg.dense(mapped, th, out, k)
        assert np.all(out[:, 0] <= ub)
        exact_max = max(_extension(mapped[:, 0], th) for th in thetas[::8])
        assert exact_max <= Fraction(ub)


def test_dense_bound_is_tight_for_a_monotone_step():
    """For a smooth declining step the bound is the step's start value up to the small
    curvature terms, so steps past the peak are skipped."""
    y0, y1 = 5.0, 4.9
    mapped = np.array([[y0], [y1 - y0], [1e-4], [-1e-5], [1e-6]])
    assert y0 < seg.dense_bound(mapped, 0) < y0 + 1e-4


def test_pi_controller_limits():
    assert d5.pi_factor(0.0, 1.0, False) == d5.MAX_FACTOR
    assert d5.pi_factor(1e12, 1.0, False) == d5.MIN_FACTOR
    assert d5.pi_factor(2.0, 1.0, False) < 1.0  # rejection shrinks
    assert d5.pi_factor(1e-3, 1.0, True) == 1.0  # no growth right after a rejection
    # A small previous error (PI term) damps the growth.
    assert d5.pi_factor(0.01, 1e-4, False) < d5.pi_factor(0.01, 1.0, False)


def test_stiffness_is_reported_on_robertson_not_hung():
    y0 = np.array([1.0, 0.0, 0.0])
    p = np.array([ROBERTSON])
    _, status, stats = run(
        "dopri5",
        KERNELS,
        p,
        np.zeros(3),
        y0,
        E0,
        E0,
        E0,
        np.array([0.0, 1e3]),
        rtol=1e-6,
        atol=1e-10,
    )
    assert status == STATUS_STIFF
    assert "stiffness" in STATUS_MESSAGES[status]
    # Hairer's test starts at step 1000 (his default NSTIFF) and fires after 15 stiff-like
    # steps: long before the step limit; tested at every step, within 200 steps.
    assert 1000 <= stats["nsteps"] < 1100, stats
    _, status, stats = run(
        "dopri5", KERNELS, p, np.zeros(3), y0, E0, E0, E0, np.array([0.0, 1e3]),
        rtol=1e-6, atol=1e-10, nstiff=1,
    )  # fmt: skip
    assert status == STATUS_STIFF and stats["nsteps"] < 200, stats


def test_max_steps_is_reported_with_the_stiffness_test_off():
    y0 = np.array([1.0, 0.0, 0.0])
    p = np.array([ROBERTSON])
    _, status, stats = run(
        "dopri5",
        KERNELS,
        p,
        np.zeros(3),
        y0,
        E0,
        E0,
        E0,
        np.array([0.0, 1e3]),
        rtol=1e-6,
        atol=1e-10,
        nstiff=0,
        max_steps=500,
    )
    assert status == STATUS_MAX_STEPS
    assert stats["nsteps"] + stats["nrejected"] == 500


def test_van_der_pol_nonstiff_within_budget():
    """mu = 1 (non-stiff) over one period ~6.66: reference from a 1e-12 Dopri5 run."""
    y0 = np.array([2.0, 0.0])
    p = np.array([VAN_DER_POL, 1.0])
    t = np.linspace(0.0, 6.6632868593231301, 11)
    ref, st, _ = run("dopri5", KERNELS, p, np.zeros(2), y0, E0, E0, E0, t, rtol=1e-12, atol=1e-12)
    assert st == STATUS_OK
    X, st, stats = run("dopri5", KERNELS, p, np.zeros(2), y0, E0, E0, E0, t, rtol=1e-6, atol=1e-6)
    assert st == STATUS_OK
    assert np.max(np.abs(X - ref) / (1e-6 + 1e-6 * np.abs(ref))) < 20
    # Work budget (measured 51 steps, 12 rejected, 380 evaluations when written): a
    # step-control regression exceeds it.
    assert stats["nfev"] < 450 and stats["nrejected"] < 20, stats
    # The solution is periodic: back near the start after one period (limit cycle).
    assert X[-1, 0] == pytest.approx(2.0, abs=0.05)


def test_skipped_rows_leave_the_running_maxima_exact():
    """`fold` with `skip`: the running maxima, and every row written, equal those of the
    run that writes every row, bit for bit; the rows of steps that cannot raise a maximum
    are left unwritten except those asked for. One compartment with an AUC state, a
    bolus, then an infusion that makes a second, lower rise."""
    from pkpd.engine.dosing import EventTable
    from pkpd.engine.kernels_adaptive import linear_dopri5_patient
    from pkpd.engine.solvers import N_STATS

    k, V = 0.4, 20.0
    M = np.array([[-k, 0.0], [1.0 / V, 0.0]])
    b = np.array([1.0, 0.0])
    R = np.array([[1.0 / V, 0.0], [0.0, 1.0]])  # concentration, then the AUC state
    pp = np.concatenate([M.ravel(), b, R.ravel()])
    ev_t = np.array([0.0, 6.0, 9.0])
    ev_rate = np.array([0.0, 1.5, 0.0])
    ev_bolus = np.array([10.0, 0.0, 0.0])
    t_out = np.linspace(0.0, 24.0, 2401)
    need = np.array([700, 1200, 2400])
    tol = np.full(2, 1e-8)
    runs = []
    for skip in (False, True):
        out = np.full((t_out.size, 2), np.nan)
        pre = np.zeros((3, 2))
        given = np.full((2, 3), np.nan)
        cm, tm = np.zeros(1), np.zeros(1)
        source = EventTable(ev_t[None, :], ev_rate[None, :], ev_bolus[None, :])  # one row
        st = linear_dopri5_patient(
            pp, b, np.zeros(2), 0.0, source, 0, t_out, tol, tol * 1e-3, np.inf, 100000, 1000,
            out, (pre, given), (cm, tm, 0.0, 24.0, skip, need), np.zeros(N_STATS, np.int64),
        )  # fmt: skip
        assert st == STATUS_OK
        # The solver logs what each decision of the dosing source gave: the table itself.
        np.testing.assert_array_equal(given, np.stack([ev_bolus, ev_rate]))
        runs.append((out, cm, tm))
    (full, cm_full, tm_full), (lean, cm_lean, tm_lean) = runs
    assert np.all(np.isfinite(full))
    assert cm_lean[0] == cm_full[0] == np.max(full[:, 0])
    assert tm_lean[0] == tm_full[0] == t_out[np.argmax(full[:, 0])]
    written = np.isfinite(lean[:, 0])
    assert written[need].all() and written.sum() < t_out.size // 4
    np.testing.assert_array_equal(lean[written], full[written])
