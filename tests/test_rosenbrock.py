"""Rodas4: coefficients, order conditions, L-stability and stiff problems within budget."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from helpers import mammillary
from ode_zoo import KERNELS, ROBERTSON, VAN_DER_POL
from scipy.integrate import solve_ivp

from pkpd.engine.solvers import STATUS_OK
from pkpd.engine.solvers import rosenbrock as ro
from pkpd.engine.solvers import segments as seg
from pkpd.engine.solvers.exact import propagate
from pkpd.engine.solvers.registry import DEFAULT_NSTIFF, run, run_linear

E0 = np.zeros(0)


def test_transformed_coefficients_are_consistent():
    alpha, Gamma, _, _ = ro.rosenbrock_coefficients()
    # alpha_i = c_i and gamma_i = sum_j gamma_ij (Hairer's D).
    np.testing.assert_allclose(alpha.sum(axis=1), ro.C, atol=1e-13)
    np.testing.assert_allclose(Gamma.sum(axis=1), ro.D, atol=1e-13)
    np.testing.assert_allclose(np.diag(Gamma), ro.GAMMA, atol=1e-14)


def _conditions(w, alpha, Gamma):
    """Residuals of the Rosenbrock order conditions up to order 4 (Hairer-Wanner II,
    Table IV.7.1), beta_ij = alpha_ij + gamma_ij below the diagonal."""
    g = ro.GAMMA
    beta = alpha + Gamma - np.diag(np.diag(Gamma))
    bp = beta.sum(axis=1)
    a = alpha.sum(axis=1)
    return [
        w.sum() - 1,
        w @ bp - (0.5 - g),
        w @ a**2 - 1 / 3,
        w @ beta @ bp - (1 / 6 - g + g**2),
        w @ a**3 - 1 / 4,
        (w * a) @ alpha @ bp - (1 / 8 - g / 3),
        w @ beta @ a**2 - (1 / 12 - g / 3),
        w @ beta @ beta @ bp - (1 / 24 - g / 2 + 1.5 * g**2 - g**3),
    ]


def test_order_conditions_four_and_three():
    alpha, Gamma, b, b_hat = ro.rosenbrock_coefficients()
    np.testing.assert_allclose(_conditions(b, alpha, Gamma), 0.0, atol=1e-12)
    res_hat = _conditions(b_hat, alpha, Gamma)
    np.testing.assert_allclose(res_hat[:4], 0.0, atol=1e-12)  # embedded: order 3
    assert max(abs(r) for r in res_hat[4:]) > 1e-3  # ... and not 4


def test_l_stable_stability_function_vanishes_at_infinity():
    """y' = lambda y, one step: |R(z)| <= 1 on the negative axis and R(-inf) = 0."""
    e = np.zeros(0)
    for z in (-1.0, -10.0, -1e3, -1e6, -1e12):
        X, st, _ = run_linear(
            "rodas",
            np.array([[z]]),
            np.zeros(1),
            e,
            e,
            e,
            np.array([1.0]),
            x0=np.array([1.0]),
            h_fixed=1.0,
            rtol=1.0,
            atol=1.0,
        )
        assert st == STATUS_OK
        assert abs(X[-1, 0]) <= 1.0
    assert abs(X[-1, 0]) < 1e-10


def test_robertson_to_1e11_within_step_budget():
    """Hairer-Wanner II, Sec. IV.10: Robertson up to t = 1e11; reference Radau 1e-12."""
    t = np.array([0.0, 0.4, 4.0, 40.0, 4e2, 4e4, 4e6, 4e8, 4e10, 1e11])
    y0 = np.array([1.0, 0.0, 0.0])
    atol = np.array([1e-8, 1e-14, 1e-8])
    X, st, stats = run(
        "rodas",
        KERNELS,
        np.array([ROBERTSON]),
        np.zeros(3),
        y0,
        E0,
        E0,
        E0,
        t,
        rtol=1e-6,
        atol=atol,
    )
    assert st == STATUS_OK

    def f(_, y):
        return [
            -0.04 * y[0] + 1e4 * y[1] * y[2],
            0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
            3e7 * y[1] ** 2,
        ]

    ref = solve_ivp(f, (0, t[-1]), y0, method="Radau", rtol=1e-12, atol=atol * 1e-6, t_eval=t).y.T
    np.testing.assert_allclose(X.sum(axis=1), 1.0, atol=1e-12)  # linear invariant
    assert np.max(np.abs(X - ref) / (atol + 1e-6 * np.abs(ref))) < 20
    # Step budget: ~600 steps to 1e11 at rtol 1e-6 (an explicit method needs millions).
    assert stats["nsteps"] < 800 and stats["nrejected"] < 40, stats


def test_van_der_pol_stiff():
    """Hairer-Wanner II, Sec. IV.10 VDPOL: eps = 1e-6, y0 = (2, -0.66), t in [0, 2]."""
    y0 = np.array([2.0, -0.66])
    p = np.array([VAN_DER_POL, 1e6])
    t = np.linspace(0.0, 2.0, 11)
    X, st, stats = run("rodas", KERNELS, p, np.zeros(2), y0, E0, E0, E0, t, rtol=1e-6, atol=1e-6)
    assert st == STATUS_OK

    def f(_, y):
        return [y[1], 1e6 * ((1 - y[0] ** 2) * y[1] - y[0])]

    def jac(_, y):
        return [[0.0, 1.0], [1e6 * (-2 * y[0] * y[1] - 1), 1e6 * (1 - y[0] ** 2)]]

    ref = solve_ivp(f, (0, 2.0), y0, method="Radau", rtol=1e-10, atol=1e-10, jac=jac, t_eval=t).y.T
    assert np.max(np.abs(X[:, 0] - ref[:, 0]) / (1e-6 + 1e-6 * np.abs(ref[:, 0]))) < 100
    # Step budget (measured 1041 steps, 13 rejected, when written).
    assert stats["nsteps"] < 1300 and stats["nrejected"] < 60, stats


def test_pk_model_with_very_fast_effect_site():
    """ke0 = 1e5 / h (a plasma-driven effect) makes the system stiff; exact Jacobian."""
    spec = mammillary(V1=10.0, k10=0.5, k12=0.3, k21=0.1, ke0=1e5)
    M, b, _ = spec.system(spec.typical_theta())
    ev_t, ev_rate, ev_bolus = np.array([0.0, 2.0]), np.array([5.0, 0.0]), np.array([10.0, 0.0])
    t = np.linspace(0.0, 48.0, 97)
    ref, _ = propagate(M, b, ev_t, ev_rate, ev_bolus, t)
    X, st, stats = run_linear("rodas", M, b, ev_t, ev_rate, ev_bolus, t, rtol=1e-6, atol=1e-9)
    assert st == STATUS_OK
    assert np.max(np.abs(X - ref) / (1e-9 + 1e-6 * np.abs(ref))) < 20
    assert stats["nsteps"] < 200, stats  # stiffness does not limit the step
    # Dopri5 would need ~48 h * 1e5/h / 3.3 ~ 1.5 million steps: it reports stiffness once
    # Hairer's test starts (step DEFAULT_NSTIFF) and has been positive 15 times.
    _, st5, stats5 = run_linear("dopri5", M, b, ev_t, ev_rate, ev_bolus, t)
    assert st5 == 5 and stats5["nsteps"] < DEFAULT_NSTIFF + 50
    _, st5, stats5 = run_linear("dopri5", M, b, ev_t, ev_rate, ev_bolus, t, nstiff=1)
    assert st5 == 5 and stats5["nsteps"] < 100


def test_lu_factor_and_solve():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(6, 6))
    x = rng.normal(size=6)
    rhs = A @ x
    lu, piv = A.copy(), np.zeros(6, dtype=np.int64)
    assert ro.lu_factor(lu, piv)
    ro.lu_solve(lu, piv, rhs)
    np.testing.assert_allclose(rhs, x, rtol=1e-10)
    assert not ro.lu_factor(np.zeros((2, 2)), np.zeros(2, dtype=np.int64))


def test_controller_limits():
    assert ro.rodas_factor(0.0, 1.0, 1.0, 1.0, True, False) == ro.MAX_FACTOR
    assert ro.rodas_factor(1e12, 1.0, 1.0, 1.0, True, False) == ro.MIN_FACTOR
    assert ro.rodas_factor(1e-4, 1.0, 1.0, 1.0, False, True) == pytest.approx(1.0)


def _rodas_extension(m, s):
    """Rodas4's continuous extension as rodas.f writes it, ``(1-s) y_old + s (y_new +
    (1-s) (cont3 + s cont4))``, in exact rational arithmetic at a rational `s`."""
    s = Fraction(s)
    y0, y1, c3, c4 = (Fraction(float(v)) for v in m)
    return (1 - s) * y0 + s * (y1 + (1 - s) * (c3 + s * c4))


def test_dense_output_is_rodas_extension_in_the_shared_basis():
    """The coefficient rows handed to the shared evaluation (Dopri5's basis) give rodas.f's
    extension: y_old at s = 0, y_new at s = 1, and the rational polynomial in between;
    carried through a recording map R they are R applied to those of the state."""
    rng = np.random.default_rng(3)
    work, _, _ = ro.workspace(3)
    work[:] = rng.normal(size=work.shape)
    mapped = np.zeros((seg.N_COEF, 3))
    assert ro._coeffs(work, np.zeros((0, 0)), mapped)
    cont3 = np.array(ro._H[0]) @ work[ro._K1 : ro._K1 + 5]
    cont4 = np.array(ro._H[1]) @ work[ro._K1 : ro._K1 + 5]
    ss = [0.0, 0.125, 0.5, 0.75, 1.0]
    out = np.zeros((len(ss), 3))
    for k, s in enumerate(ss):
        seg.dense(mapped, s, out, k)
    np.testing.assert_array_equal(out[0], work[ro._Y])
    np.testing.assert_allclose(out[-1], work[ro._YNEW], rtol=1e-14)
    for k, s in enumerate(ss):
        for j in range(3):
            m = (work[ro._Y, j], work[ro._YNEW, j], cont3[j], cont4[j])
            assert out[k, j] == pytest.approx(float(_rodas_extension(m, s)), rel=1e-13, abs=1e-13)
    R = rng.normal(size=(2, 3))
    mapped_R = np.zeros((seg.N_COEF, 2))
    assert ro._coeffs(work, R, mapped_R)
    np.testing.assert_allclose(mapped_R, mapped @ R.T, rtol=1e-13, atol=1e-13)


def test_dense_bound_holds_for_the_rodas_extension():
    """The summary-mode bound, applied to Rodas4's coefficient rows, holds for what the
    shared evaluation computes (floating point) and for rodas.f's polynomial (exact) at
    every s in [0, 1], for coefficients of every sign and very different sizes; and it is
    tight for a smooth declining step."""
    rng = np.random.default_rng(11)
    ss = np.concatenate([np.linspace(0.0, 1.0, 401), rng.uniform(size=200), [1.0]])
    out = np.zeros((ss.size, 1))
    for case in range(300):
        scale = 10.0 ** rng.integers(-8, 8, size=4)
        y0, y1, c3, c4 = rng.normal(size=4) * scale
        if case % 3 == 0:  # a declining concentration: the common case past the peak
            y0 = abs(y0) + 1.0
            y1 = y0 - abs(y1)
        mapped = np.array([[y0], [y1 - y0], [c3], [c4], [0.0]])
        ub = seg.dense_bound(mapped, 0)
        for k, s in enumerate(ss):
            seg.dense(mapped, s, out, k)
        assert np.all(out[:, 0] <= ub)
        exact_max = max(_rodas_extension((y0, y1, c3, c4), s) for s in ss[::8])
        assert exact_max <= Fraction(ub)  # the rounding of y1 - y0 is inside the margin
    y0, y1 = 5.0, 4.9
    mapped = np.array([[y0], [y1 - y0], [1e-4], [-1e-5], [0.0]])
    assert y0 < seg.dense_bound(mapped, 0) < y0 + 1e-4
