"""Self-tests of the closed-form PK oracle (tests/closed_form.py).

These do not import the ``pkpd`` package: the oracle is checked against matrix exponentials
from scipy (themselves checked against scipy's Radau integrator), eigenvalues of the rate
matrix, and analytic identities.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
from closed_form import (
    auc_inf_bolus,
    central_bolus,
    central_infusion,
    css,
    effect_site_bolus,
    effect_site_infusion,
    macro_constants,
    parent_metabolite_bolus,
    parent_metabolite_infusion,
    product_form_coefficients,
    vieta_cubic_roots,
)
from scipy.integrate import quad, solve_ivp
from scipy.linalg import expm

RTOL = 1e-8

# Domino racemic ketamine (per minute in the source), converted to per hour; 70 kg.
WT = 70.0
KET = dict(
    V1=0.063 * WT,
    k10=0.438 * 60,
    k12=0.592 * 60,
    k13=0.590 * 60,
    k21=0.247 * 60,
    k31=0.0146 * 60,
)
KET_KE0 = 0.652 * 60
KET_DOSE = 2.0 * WT  # mg

PARAM_SETS = {
    "1cpt": dict(V1=20.0, k10=0.25),
    # midazolam-like 2-cpt set, per hour
    "2cpt": dict(V1=30.0, k10=0.55, k12=1.4, k21=0.6),
    "2cpt_via_k13": dict(V1=10.0, k10=0.3, k13=0.8, k31=0.2),
    "3cpt_ketamine": KET,
    # a propofol-like (Marsh) set, per hour
    "3cpt_marsh": dict(
        V1=0.228 * WT,
        k10=0.119 * 60,
        k12=0.112 * 60,
        k13=0.0419 * 60,
        k21=0.055 * 60,
        k31=0.0033 * 60,
    ),
}

T_GRID = np.concatenate([np.linspace(0.01, 2.0, 120), np.linspace(2.0, 24.0, 89)[1:]])


def _rates(p):
    return {k: p.get(k, 0.0) for k in ("k10", "k12", "k21", "k13", "k31")}


def _rate_matrix(k10, k12=0.0, k21=0.0, k13=0.0, k31=0.0):
    return np.array(
        [
            [-(k10 + k12 + k13), k21, k31],
            [k12, -k21, 0.0],
            [k13, 0.0, -k31],
        ]
    )


def _system(V1, k10, k12=0.0, k21=0.0, k13=0.0, k31=0.0, ke0=None):
    """Amounts (A1, A2, A3) and Ce: the rate matrix J of ``dy/dt = J y + e1 r``."""
    K = _rate_matrix(k10, k12, k21, k13, k31)
    ke = 0.0 if ke0 is None else ke0
    J = np.zeros((4, 4))
    J[:3, :3] = K
    J[3, 0], J[3, 3] = ke / V1, -ke
    return J


def _pieces(t_eval, rate, duration):
    return (
        [(0.0, duration, rate), (duration, t_eval[-1], 0.0)]
        if duration > 0
        else [(0.0, t_eval[-1], 0.0)]
    )


def _piecewise_expm(J, y0, t_eval, pieces):
    """``dy/dt = J y + e1 r`` through constant-rate pieces, by scipy.linalg.expm of the
    augmented matrix [[J h, e1 r h], [0, 0]] at every output time (independent of pkpd)."""
    n = J.shape[0]
    out = np.empty((n, t_eval.size))
    y0 = np.asarray(y0, float)
    for t0, t1, r in pieces:
        mask = (t_eval >= t0) & (t_eval <= t1) if t0 == 0.0 else (t_eval > t0) & (t_eval <= t1)
        for i in np.nonzero(mask)[0]:
            out[:, i] = _expm_step(J, y0, r, t_eval[i] - t0)
        y0 = _expm_step(J, y0, r, t1 - t0)
    return out


def _expm_step(J, y0, r, h):
    n = J.shape[0]
    A = np.zeros((n + 1, n + 1))
    A[:n, :n] = J * h
    A[0, n] = r * h
    return (expm(A) @ np.append(y0, 1.0))[:n]


def _piecewise_radau(J, y0, t_eval, pieces):
    """The same with scipy's Radau (exact Jacobian, rtol 1e-12)."""

    def rhs(t, y, r):
        dy = J @ y
        dy[0] += r
        return dy

    # Radau with the exact Jacobian: DOP853 was seen to drift (~1e-7) on the stiff Ce state.
    kw = dict(method="Radau", rtol=1e-12, atol=1e-14, jac=J)
    out = np.empty((J.shape[0], t_eval.size))
    y0 = np.asarray(y0, float)
    for t0, t1, r in pieces:
        mask = (t_eval >= t0) & (t_eval <= t1) if t0 == 0.0 else (t_eval > t0) & (t_eval <= t1)
        sol = solve_ivp(rhs, (t0, t1), y0, args=(r,), t_eval=np.union1d(t_eval[mask], t1), **kw)
        assert sol.success
        out[:, mask] = sol.y[:, : np.count_nonzero(mask)]
        y0 = sol.y[:, -1]
    return out


def _ode(
    t_eval, V1, k10, k12=0.0, k21=0.0, k13=0.0, k31=0.0, dose=0.0, rate=0.0, duration=0.0, ke0=None
):
    """Reference amounts (A1, A2, A3) and Ce by matrix exponentials; returns (C, Ce).

    The exponential reference is itself checked against Radau in
    `test_exponential_reference_agrees_with_radau` (solve_ivp is about 100x slower)."""
    J = _system(V1, k10, k12, k21, k13, k31, ke0)
    t_eval = np.asarray(t_eval, float)
    out = _piecewise_expm(J, [dose, 0.0, 0.0, 0.0], t_eval, _pieces(t_eval, rate, duration))
    return out[0] / V1, out[3]


@pytest.mark.parametrize("name", ["1cpt", "3cpt_ketamine"])
@pytest.mark.parametrize(("dose", "rate", "duration"), [(KET_DOSE, 0.0, 0.0), (0.0, 120.0, 0.37)])
def test_exponential_reference_agrees_with_radau(name, dose, rate, duration):
    p = PARAM_SETS[name]
    J = _system(**p, ke0=KET_KE0)
    t = np.union1d(T_GRID, [duration]) if duration else T_GRID
    y0 = [dose, 0.0, 0.0, 0.0]
    a = _piecewise_expm(J, y0, t, _pieces(t, rate, duration))
    b = _piecewise_radau(J, y0, t, _pieces(t, rate, duration))
    keep = np.abs(b) > 1e-9 * np.abs(b).max()
    assert np.max(np.abs(a - b)[keep] / np.abs(b)[keep]) < RTOL


def _max_rel(a, b):
    return float(np.max(np.abs(a - b) / np.abs(b)))


# ---------------------------------------------------------------------------------------------
# (a) agreement with solve_ivp
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PARAM_SETS)
def test_bolus_vs_ode(name):
    p = PARAM_SETS[name]
    c_ref, ce_ref = _ode(T_GRID, **p, dose=KET_DOSE, ke0=KET_KE0)
    c = central_bolus(T_GRID, KET_DOSE, p["V1"], **_rates(p))
    ce = effect_site_bolus(T_GRID, KET_DOSE, p["V1"], KET_KE0, **_rates(p))
    assert _max_rel(c, c_ref) < RTOL
    assert _max_rel(ce, ce_ref) < RTOL


@pytest.mark.parametrize("duration", [1.0, 0.37])
@pytest.mark.parametrize("name", PARAM_SETS)
def test_infusion_vs_ode(name, duration):
    p = PARAM_SETS[name]
    rate = 120.0  # mg/h
    t = np.union1d(T_GRID, [duration])
    c_ref, ce_ref = _ode(t, **p, rate=rate, duration=duration, ke0=KET_KE0)
    c = central_infusion(t, rate, duration, p["V1"], **_rates(p))
    ce = effect_site_infusion(t, rate, duration, p["V1"], KET_KE0, **_rates(p))
    assert _max_rel(c, c_ref) < RTOL
    assert _max_rel(ce, ce_ref) < RTOL


@pytest.mark.parametrize("name", ["1cpt", "2cpt", "3cpt_ketamine"])
def test_effect_site_ke0_equal_to_a_lambda(name):
    """Confluent case ke0 == lambda_i (and within the 1e-5 near-equal band)."""
    p = PARAM_SETS[name]
    lam, _ = macro_constants(**_rates(p))
    for ke0 in (lam[-1], lam[-1] * (1 + 3e-6), lam[-1] * (1 - 2e-5), lam[0]):
        _, ce_ref = _ode(T_GRID, **p, dose=KET_DOSE, ke0=ke0)
        ce = effect_site_bolus(T_GRID, KET_DOSE, p["V1"], ke0, **_rates(p))
        assert _max_rel(ce, ce_ref) < RTOL
        _, ce_ref = _ode(T_GRID, **p, rate=50.0, duration=1.0, ke0=ke0)
        ce = effect_site_infusion(T_GRID, 50.0, 1.0, p["V1"], ke0, **_rates(p))
        assert _max_rel(ce, ce_ref) < RTOL


def _ode_metabolite(t_eval, V, k, Vm, km, fm, dose=0.0, rate=0.0, duration=0.0):
    """Parent and metabolite concentrations by matrix exponentials (as `_ode`)."""
    J = np.array([[-k, 0.0], [fm * k, -km]])
    t_eval = np.asarray(t_eval, float)
    out = _piecewise_expm(J, [dose, 0.0], t_eval, _pieces(t_eval, rate, duration))
    return out[0] / V, out[1] / Vm


@pytest.mark.parametrize("km", [0.9, 0.35, 0.35 * (1 + 2e-6)])
@pytest.mark.parametrize("fm", [1.0, 0.6])
def test_bateman_vs_ode(km, fm):
    V, k, Vm = 30.0, 0.35, 12.0
    cp_ref, cm_ref = _ode_metabolite(T_GRID, V, k, Vm, km, fm, dose=100.0)
    cp, cm = parent_metabolite_bolus(T_GRID, 100.0, V, k, Vm, km, fm)
    assert _max_rel(cp, cp_ref) < RTOL
    assert _max_rel(cm, cm_ref) < RTOL
    if km not in (k, k * (1 + 2e-6)):
        # the textbook Bateman expression
        bateman = fm * 100.0 * k / (Vm * (km - k)) * (np.exp(-k * T_GRID) - np.exp(-km * T_GRID))
        np.testing.assert_allclose(cm, bateman, rtol=1e-12)
    cp_ref, cm_ref = _ode_metabolite(T_GRID, V, k, Vm, km, fm, rate=40.0, duration=1.0)
    cp, cm = parent_metabolite_infusion(T_GRID, 40.0, 1.0, V, k, Vm, km, fm)
    assert _max_rel(cp, cp_ref) < RTOL
    assert _max_rel(cm, cm_ref) < RTOL


# ---------------------------------------------------------------------------------------------
# (b) coefficients; (d) eigenvalues
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PARAM_SETS)
def test_coefficients_sum_to_inverse_v1(name):
    p = PARAM_SETS[name]
    lam, A = macro_constants(**_rates(p), V1=p["V1"])
    assert np.sum(A) == pytest.approx(1.0 / p["V1"], rel=1e-14)
    assert np.all(A > 0) and np.all(np.diff(lam) < 0)
    assert central_bolus(0.0, 7.0, p["V1"], **_rates(p)) == pytest.approx(7.0 / p["V1"], 1e-14)
    # AUC identity: sum A_i / lambda_i = 1 / (V1 k10)
    assert np.sum(A / lam) == pytest.approx(auc_inf_bolus(1.0, p["V1"], p["k10"]), rel=1e-12)


@pytest.mark.parametrize("name", PARAM_SETS)
def test_residue_equals_product_formula(name):
    p = PARAM_SETS[name]
    r = _rates(p)
    lam, a = macro_constants(**r)
    k_exit = [kj1 for k1j, kj1 in ((r["k12"], r["k21"]), (r["k13"], r["k31"])) if k1j > 0]
    np.testing.assert_allclose(a, product_form_coefficients(lam, k_exit), rtol=1e-12)


def test_two_compartment_classic_alpha_beta():
    k10, k12, k21 = 0.5, 1.2, 0.3
    s = k10 + k12 + k21
    alpha = (s + np.sqrt(s * s - 4 * k10 * k21)) / 2
    beta = (s - np.sqrt(s * s - 4 * k10 * k21)) / 2
    lam, a = macro_constants(k10, k12, k21)
    np.testing.assert_allclose(lam, [alpha, beta], rtol=1e-14)
    np.testing.assert_allclose(
        a, [(alpha - k21) / (alpha - beta), (k21 - beta) / (alpha - beta)], rtol=1e-13
    )


@pytest.mark.parametrize("name", [n for n in PARAM_SETS if n.startswith("3cpt")])
def test_lambdas_are_rate_matrix_eigenvalues(name):
    r = _rates(PARAM_SETS[name])
    lam, _ = macro_constants(**r)
    eig = np.sort(-np.linalg.eigvals(_rate_matrix(**r)).real)[::-1]
    np.testing.assert_allclose(lam, eig, rtol=1e-11)
    # raw Viete roots (unpolished) agree as well
    a2 = sum(r.values())
    a1 = (
        r["k10"] * r["k21"]
        + r["k10"] * r["k31"]
        + r["k21"] * r["k31"]
        + r["k12"] * r["k31"]
        + r["k13"] * r["k21"]
    )
    a0 = r["k10"] * r["k21"] * r["k31"]
    np.testing.assert_allclose(vieta_cubic_roots(a2, a1, a0), eig, rtol=1e-10)
    # Vieta relations
    assert lam.sum() == pytest.approx(a2, rel=1e-14)
    assert np.prod(lam) == pytest.approx(a0, rel=1e-13)


def test_lambdas_eigenvalues_2cpt():
    r = _rates(PARAM_SETS["2cpt"])
    lam, _ = macro_constants(**r)
    K = _rate_matrix(**r)[:2, :2]
    np.testing.assert_allclose(lam, np.sort(-np.linalg.eigvals(K).real)[::-1], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# (c) infusion limits
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PARAM_SETS)
def test_infusion_limits_to_css(name):
    p = PARAM_SETS[name]
    r = _rates(p)
    target = css(100.0, p["V1"], p["k10"])
    lam, _ = macro_constants(**r)
    t_long = 60.0 / lam[-1]
    assert central_infusion(t_long, 100.0, np.inf, p["V1"], **r) == pytest.approx(target, 1e-12)
    assert central_infusion(t_long, 100.0, 2 * t_long, p["V1"], **r) == pytest.approx(target, 1e-12)
    assert effect_site_infusion(t_long, 100.0, np.inf, p["V1"], 3.0, **r) == pytest.approx(
        target, 1e-12
    )
    # monotone approach from below during a continuous infusion
    c = central_infusion(np.linspace(0, t_long, 500), 100.0, np.inf, p["V1"], **r)
    assert np.all(np.diff(c) >= -1e-15 * target) and c[-1] <= target * (1 + 1e-12)


@pytest.mark.parametrize("name", PARAM_SETS)
def test_short_infusion_tends_to_bolus_and_auc(name):
    p = PARAM_SETS[name]
    r = _rates(p)
    t = np.array([0.5, 1.0, 5.0])
    dur = 1e-7
    inf = central_infusion(t, 10.0 / dur, dur, p["V1"], **r)
    np.testing.assert_allclose(inf, central_bolus(t, 10.0, p["V1"], **r), rtol=1e-5)
    auc, _ = quad(
        lambda s: central_bolus(s, 10.0, p["V1"], **r), 0, np.inf, limit=500, epsrel=1e-12
    )
    assert auc == pytest.approx(auc_inf_bolus(10.0, p["V1"], p["k10"]), rel=1e-8)


def test_before_time_zero_and_shapes():
    p = KET
    r = _rates(p)
    t = np.array([[-1.0, 0.0], [0.5, 2.0]])
    for f in (
        lambda t: central_bolus(t, 1.0, p["V1"], **r),
        lambda t: central_infusion(t, 1.0, 1.0, p["V1"], **r),
        lambda t: effect_site_bolus(t, 1.0, p["V1"], 2.0, **r),
        lambda t: effect_site_infusion(t, 1.0, 1.0, p["V1"], 2.0, **r),
    ):
        y = f(t)
        assert y.shape == (2, 2) and y[0, 0] == 0.0
        assert np.ndim(f(0.5)) == 0
    assert effect_site_bolus(0.0, 1.0, p["V1"], 2.0, **r) == 0.0
    assert central_infusion(0.0, 1.0, 1.0, p["V1"], **r) == 0.0


# ---------------------------------------------------------------------------------------------
# (e) nearly equal roots and degenerate structures
# ---------------------------------------------------------------------------------------------


def test_nearly_equal_roots_3cpt():
    """k13 tiny and k31 equal to the beta of the 2-cpt subsystem: two roots of the cubic are
    nearly equal (gap ~ 1e-5 relative); Viete alone loses ~half the digits, the polished roots
    and the residue amplitudes stay accurate."""
    V1, k10, k12, k21 = 5.0, 0.9, 1.5, 0.4
    beta = macro_constants(k10, k12, k21)[0][1]
    k13, k31 = 1e-10, beta
    lam, a = macro_constants(k10, k12, k21, k13, k31)
    gap = (lam[1] - lam[2]) / lam[1]
    assert 0 < gap < 1e-3
    eig = np.sort(-np.linalg.eigvals(_rate_matrix(k10, k12, k21, k13, k31)).real)[::-1]
    np.testing.assert_allclose(lam, eig, rtol=1e-9)
    # amplitudes of the two close roots carry ~eps/gap relative error (inherent to the
    # representation; their sum, and hence C(t), is much better determined)
    assert a.sum() == pytest.approx(1.0, rel=1e-10) and np.all(a > 0)
    c_ref, ce_ref = _ode(T_GRID, V1, k10, k12, k21, k13, k31, dose=10.0, ke0=2.0)
    c = central_bolus(T_GRID, 10.0, V1, k10, k12, k21, k13, k31)
    ce = effect_site_bolus(T_GRID, 10.0, V1, 2.0, k10, k12, k21, k13, k31)
    assert _max_rel(c, c_ref) < RTOL and _max_rel(ce, ce_ref) < RTOL
    c_ref, _ = _ode(T_GRID, V1, k10, k12, k21, k13, k31, rate=3.0, duration=1.0)
    c = central_infusion(T_GRID, 3.0, 1.0, V1, k10, k12, k21, k13, k31)
    assert _max_rel(c, c_ref) < RTOL


@pytest.mark.parametrize("rel", [0.0, 1e-13, 1e-7])
def test_equal_or_close_peripheral_exit_rates(rel):
    """k21 == k31 (exactly or nearly): middle root squeezed between the two exit rates."""
    V1, k10, k12, k21, k13 = 5.0, 0.9, 1.5, 0.4, 0.7
    k31 = k21 * (1 + rel)
    lam, a = macro_constants(k10, k12, k21, k13, k31)
    assert lam.size == 3 and a[1] >= 0 and a[1] < 1e-6
    eig = np.sort(-np.linalg.eigvals(_rate_matrix(k10, k12, k21, k13, k31)).real)[::-1]
    np.testing.assert_allclose(lam, eig, rtol=1e-9)
    # equals a 2-cpt model with the peripheral compartments lumped together
    c2 = central_bolus(T_GRID, 10.0, V1, k10, k12 + k13, k21)
    c3 = central_bolus(T_GRID, 10.0, V1, k10, k12, k21, k13, k31)
    np.testing.assert_allclose(c3, c2, rtol=max(1e-12, 10 * rel))
    c_ref, _ = _ode(T_GRID, V1, k10, k12, k21, k13, k31, dose=10.0)
    assert _max_rel(c3, c_ref) < RTOL


def test_degenerate_structures_reduce():
    # peripheral never filled (k1j == 0) -> fewer exponentials
    lam, a = macro_constants(0.3, 0.0, 0.5, 0.0, 0.2)
    assert lam.tolist() == [0.3] and a.tolist() == [1.0]
    # sink peripheral (kj1 == 0): acts as extra elimination from the central compartment
    lam, _ = macro_constants(0.3, 0.2, 0.0)
    assert lam.tolist() == [pytest.approx(0.5)]
    with pytest.raises(ValueError):
        macro_constants(0.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        macro_constants(0.3, -1.0, 1.0)
