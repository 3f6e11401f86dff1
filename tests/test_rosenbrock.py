"""Rodas4: coefficients, order conditions, L-stability and stiff problems within budget."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import mammillary
from ode_zoo import KERNELS, ROBERTSON, VAN_DER_POL
from scipy.integrate import solve_ivp

from pkpd.engine.solvers import STATUS_OK
from pkpd.engine.solvers import rosenbrock as ro
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
