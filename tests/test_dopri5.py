"""Dopri5: its tableau, step-size controller, stiffness test and step limit."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from ode_zoo import KERNELS, ROBERTSON, VAN_DER_POL

from pkpd.solvers import STATUS_MAX_STEPS, STATUS_MESSAGES, STATUS_OK, STATUS_STIFF
from pkpd.solvers import dopri5 as d5
from pkpd.solvers.registry import run

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
    d5._prepare_dense(work, h)
    out = np.zeros(3)
    d5._dense(work, d5._R1, 0.0, out)
    np.testing.assert_allclose(out, work[d5._Y], rtol=1e-14)
    d5._dense(work, d5._R1, 1.0, out)
    np.testing.assert_allclose(out, work[d5._YNEW], rtol=1e-14)


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
