"""The piecewise-exact solver against closed-form solutions and PK invariants.

Reference values come from tests/closed_form.py (polyexponential formulas, no matrix
exponential, no ODE solver) or from mathematics (Css = rate/CL, AUC = dose/CL, linearity,
time-shift invariance, mass balance). No number here was copied from the program's output.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from closed_form import (
    central_bolus,
    central_infusion,
    effect_site_bolus,
    effect_site_infusion,
    macro_constants,
    parent_metabolite_bolus,
    parent_metabolite_infusion,
)
from helpers import mammillary

import pkpd
from pkpd.engine.solvers.exact import STATUS_BAD_TIMES, STATUS_NONFINITE, propagate

# Rate constants of Domino racemic ketamine (1/min in the reference, here 1/h), a realistic
# stiff-ish 3-compartment system, plus 1- and 2-compartment cut-downs.
K = {"k10": 0.438 * 60, "k12": 0.592 * 60, "k21": 0.247 * 60, "k13": 0.590 * 60, "k31": 0.0146 * 60}
STRUCTURES = {
    "1cmt": {"k10": 0.3},
    "2cmt": {"k10": 0.3, "k12": 1.2, "k21": 0.4},
    "3cmt": {"k10": 0.3, "k12": 1.2, "k21": 0.4, "k13": 0.5, "k31": 0.02},
    "domino": K,
}
V1 = 4.41
T = np.concatenate([np.linspace(0, 2, 121), np.linspace(2.5, 48, 92)])


def rel_err(a, b, floor=0.0):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), floor))


@pytest.mark.parametrize("name", STRUCTURES)
def test_bolus_matches_polyexponential(name):
    k = STRUCTURES[name]
    ds = pkpd.simulate(mammillary(V1, ke0=2.0, **k), "25 mg bolus at 0 h", times=T)
    cp_ref = central_bolus(T, 25.0, V1, **k) * 1000
    ce_ref = effect_site_bolus(T, 25.0, V1, 2.0, **k) * 1000
    assert rel_err(ds.cp.values, cp_ref) < 1e-10
    assert rel_err(ds.ce.values[1:], ce_ref[1:]) < 1e-10
    assert ds.ce.values[0] == 0.0


@pytest.mark.parametrize("name", STRUCTURES)
def test_infusion_during_and_after_matches_polyexponential(name):
    k = STRUCTURES[name]
    ds = pkpd.simulate(mammillary(V1, ke0=2.0, **k), "60 mg/h from 0 h to 3 h", times=T)
    cp_ref = central_infusion(T, 60.0, 3.0, V1, **k) * 1000
    ce_ref = effect_site_infusion(T, 60.0, 3.0, V1, 2.0, **k) * 1000
    assert rel_err(ds.cp.values[1:], cp_ref[1:]) < 1e-10
    assert rel_err(ds.ce.values[1:], ce_ref[1:]) < 1e-10


def test_peak_of_an_infusion_is_at_its_end():
    ds = pkpd.simulate(
        mammillary(V1, **STRUCTURES["3cmt"]), "60 mg/h from 0 h to 3 h", until="10 h", every="1 min"
    )
    assert float(ds.time[int(np.argmax(ds.cp.values))]) == pytest.approx(3.0, abs=1e-12)


def test_parent_metabolite_matches_bateman():
    m = mammillary(5.0, k10=0.7, metabolite=(20.0, 0.2, 0.6))
    ds = pkpd.simulate(m, "10 mg bolus at 0 h; 4 mg/h from 1 h to 5 h", times=T)
    cp1, cm1 = parent_metabolite_bolus(T, 10.0, 5.0, 0.7, 20.0, 0.2, 0.6)
    cp2, cm2 = parent_metabolite_infusion(T - 1.0, 4.0, 4.0, 5.0, 0.7, 20.0, 0.2, 0.6)
    assert rel_err(ds.cp.values, (cp1 + cp2) * 1000) < 1e-10
    assert rel_err(ds.cp_met.values[1:], (cm1 + cm2)[1:] * 1000) < 1e-10


@pytest.mark.parametrize("name", STRUCTURES)
def test_steady_state_is_rate_over_clearance(name):
    k = STRUCTURES[name]
    m = mammillary(V1, ke0=2.0, **k)
    # 40 terminal time constants (e^-40 ~ 4e-18) of the closed-form slowest exponent.
    t_ss = 40.0 / float(np.min(macro_constants(**k)[0]))
    ds = pkpd.simulate(m, f"30 mg/h from 0 h to {2 * t_ss!r} h", times=[0.0, t_ss])
    css = 30.0 / (V1 * k["k10"]) * 1000
    assert ds.cp.values[-1] == pytest.approx(css, rel=1e-12)
    assert ds.ce.values[-1] == pytest.approx(css, rel=1e-12)


@pytest.mark.parametrize("name", STRUCTURES)
def test_auc_accumulator_is_dose_over_clearance(name):
    k = STRUCTURES[name]
    t_end = 40.0 / float(np.min(macro_constants(**k)[0]))
    ds = pkpd.simulate(mammillary(V1, **k), "25 mg bolus at 0 h", times=[0.0, 1.0, t_end])
    assert ds.auc_cp.values[-1] == pytest.approx(25.0 / (V1 * k["k10"]) * 1000, rel=1e-11)


def test_auc_accumulator_equals_quadrature_of_the_closed_form():
    from scipy.integrate import quad

    k = STRUCTURES["3cmt"]
    ds = pkpd.simulate(mammillary(V1, **k), "60 mg/h from 0 h to 3 h", times=[0.0, 2.0, 7.0])
    for i, t in enumerate([0.0, 2.0, 7.0]):
        ref = (
            quad(
                lambda s: central_infusion(s, 60.0, 3.0, V1, **k),
                0,
                t,
                epsabs=0,
                epsrel=1e-13,
                points=[3.0] if t > 3 else None,
            )[0]
            if t
            else 0.0
        )
        assert ds.auc_cp.values[i] == pytest.approx(ref * 1000, rel=1e-11, abs=1e-300)


REGIMENS = {
    "bolus": "0.3 mg/kg bolus at 0 h",
    "periop": "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h; 0.05 mg/kg/h from 4 h to 48 h",
    "overlap": "1 mg/kg over 30 min from 1 h; 10 mg/h from 0 h to 6 h; 5 mg bolus at 2.5 h",
}


@pytest.mark.parametrize("model", ["domino_racemic", "fanta2015_otto2021"])
@pytest.mark.parametrize("regimen", REGIMENS)
def test_mass_balance(model, regimen):
    """Given = in the body + eliminated, for the parent; and for the metabolite, what the
    parent lost (all of it forms metabolite in these models) = metabolite in body + out."""
    spec = pkpd.load_model(model)
    ds = pkpd.simulate(
        spec, REGIMENS[regimen], covariates={"weight": 70}, until="60 h", every="7 min"
    )
    parent = [
        f"amount_{c.name}"
        for c in spec.compartments.values()
        if c.analyte == spec.parent and c.type != "effect"
    ]
    body = sum(ds[v] for v in parent)
    given = ds.dose_given.values
    resid = given - body.values - ds[f"eliminated_{spec.parent}"].values
    assert np.max(np.abs(resid)) <= 1e-10 * given.max()
    for a in spec.analyte_names:
        if a == spec.parent:
            continue
        met = sum(
            ds[f"amount_{c.name}"]
            for c in spec.compartments.values()
            if c.analyte == a and c.type != "effect"
        )
        resid = ds[f"eliminated_{spec.parent}"].values - met.values - ds[f"eliminated_{a}"]
        assert np.max(np.abs(resid.values)) <= 1e-10 * given.max()


def test_dose_given_equals_event_table_total():
    reg = pkpd.load_regimen(REGIMENS["overlap"])
    ds = pkpd.simulate("domino_racemic", reg, covariates={"weight": 82}, until="8 h")
    assert ds.dose_given.values[-1] == pytest.approx(reg.event_table(82).total_dose, rel=1e-13)
    assert reg.event_table(82).total_dose == pytest.approx(82 + 60 + 5, rel=1e-15)


def test_linearity_in_dose():
    a = pkpd.simulate("fanta2015_otto2021", REGIMENS["periop"], covariates={"weight": 70}, times=T)
    b = pkpd.simulate(
        "fanta2015_otto2021",
        "0.6 mg/kg bolus at 0 h; 0.4 mg/kg/h from 0 h to 4 h; 0.1 mg/kg/h from 4 h to 48 h",
        covariates={"weight": 70},
        times=T,
    )
    for v in ("cp", "cp_norketamine", "auc_cp"):
        np.testing.assert_allclose(b[v].values, 2 * a[v].values, rtol=1e-12, atol=1e-300)


def test_superposition_of_regimens():
    r1, r2 = "0.3 mg/kg bolus at 0 h", "0.2 mg/kg/h from 1 h to 4 h"
    kw = {"covariates": {"weight": 70}, "times": T}
    a = pkpd.simulate("domino_racemic", r1, **kw)
    b = pkpd.simulate("domino_racemic", r2, **kw)
    ab = pkpd.simulate("domino_racemic", f"{r1}; {r2}", **kw)
    for v in ("cp", "ce", "auc_ce"):
        np.testing.assert_allclose(
            ab[v].values, a[v].values + b[v].values, rtol=1e-12, atol=1e-12 * float(ab[v].max())
        )


def test_time_shift_invariance():
    kw = {"covariates": {"weight": 70}}
    t = np.linspace(0, 24, 97)
    a = pkpd.simulate(
        "fanta2015_otto2021", "20 mg bolus at 0 h; 10 mg/h from 0 h to 2 h", times=t, **kw
    )
    b = pkpd.simulate(
        "fanta2015_otto2021", "20 mg bolus at 5 h; 10 mg/h from 5 h to 7 h", times=t + 5.0, **kw
    )
    for v in ("cp", "cp_norketamine"):
        np.testing.assert_allclose(b[v].values, a[v].values, rtol=1e-12, atol=1e-300)


def test_back_to_back_infusions_equal_one_long_one():
    kw = {"covariates": {"weight": 70}, "times": T}
    one = pkpd.simulate("domino_racemic", "0.5 mg/kg/h from 0 h to 5 h", **kw)
    two = pkpd.simulate(
        "domino_racemic", "0.5 mg/kg/h from 0 h to 2 h; 0.5 mg/kg/h from 2 h to 5 h", **kw
    )
    for v in ("cp", "ce", "amount_peripheral2"):
        np.testing.assert_allclose(two[v].values, one[v].values, rtol=1e-12, atol=1e-300)


def test_bolus_over_a_duration_equals_total_dose_infusion():
    kw = {"covariates": {"weight": 70}, "times": T}
    a = pkpd.simulate("domino_racemic", "1 mg/kg bolus at 1 h over 10 min", **kw)
    b = pkpd.simulate("domino_racemic", "6 mg/kg/h from 1 h to 70 min", **kw)
    np.testing.assert_allclose(a.cp.values, b.cp.values, rtol=1e-12, atol=1e-300)


def test_output_at_a_bolus_time_includes_the_bolus():
    m = mammillary(V1, k10=0.3)
    ds = pkpd.simulate(m, "5 mg bolus at 1 h", times=[0.0, 1.0, 1.0 + 1e-9])
    assert ds.cp.values[0] == 0.0
    assert ds.cp.values[1] == pytest.approx(5.0 / V1 * 1000, rel=1e-15)


def test_any_sorted_grid_gives_the_same_values():
    reg = REGIMENS["periop"]
    kw = {"covariates": {"weight": 70}}
    uniform = pkpd.simulate("fanta2015_otto2021", reg, until="48 h", every="1 min", **kw)
    rng = np.random.default_rng(7)
    pick = np.sort(rng.choice(uniform.time.values, 200, replace=False))
    irregular = pkpd.simulate("fanta2015_otto2021", reg, times=pick, **kw)
    ref = uniform.sel(time=pick)
    for v in ("cp", "cp_norketamine"):
        np.testing.assert_allclose(irregular[v].values, ref[v].values, rtol=1e-11, atol=0)


def test_closed_system_conserves_mass():
    """No elimination at all: a singular system matrix. Everything given stays in."""
    m = mammillary(V1, k10=0.0, k12=1.0, k21=0.5)
    ds = pkpd.simulate(m, "10 mg bolus at 0 h; 3 mg/h from 1 h to 2 h", times=[0, 1, 2, 50])
    total = ds.amount_central + ds.amount_p2
    np.testing.assert_allclose(total.values, [10, 10, 13, 13], rtol=1e-13)
    assert ds.amount_central.values[-1] == pytest.approx(13 / 3, rel=1e-12)  # k21/(k12+k21)


def test_stiff_system_against_scipy_expm():
    """Rates from 1e-4 to 1e3 per hour; reference: scipy.linalg.expm per step."""
    M = np.array([[-1000.0 - 2e-4, 1e-4, 3.0], [1000.0, -1e-4 - 1.0, 0.0], [2e-4, 1.0, -3.0]])
    b = np.array([1.0, 0.0, 0.0])
    ev_t, ev_rate, ev_bolus = np.array([0.0, 6.0]), np.array([2.0, 0.0]), np.array([5.0, 0.0])
    t_out = np.array([0.0, 1e-3, 0.5, 6.0, 24.0, 48.0])
    X, status = propagate(M, b, ev_t, ev_rate, ev_bolus, t_out)
    assert status == 0
    Maug = np.zeros((4, 4))
    Maug[:3, :3], Maug[:3, 3] = M, b
    x = 5.0 * b
    ref = [x.copy()]
    t = 0.0
    for to in t_out[1:]:
        rate = 2.0 if to <= 6.0 else 0.0
        E = scipy.linalg.expm(Maug * (to - t))
        x = E[:3, :3] @ x + E[:3, 3] * rate
        ref.append(x.copy())
        t = to
    np.testing.assert_allclose(X, np.array(ref), rtol=1e-11, atol=1e-14)


def test_status_codes():
    M = -np.eye(2)
    b = np.array([1.0, 0.0])
    ev = (np.array([0.0]), np.array([0.0]), np.array([1.0]))
    _, status = propagate(M, b, *ev, np.array([1.0, 0.5]))
    assert status == STATUS_BAD_TIMES
    M[0, 1] = np.nan
    _, status = propagate(M, b, *ev, np.array([0.0, 1.0]))
    assert status == STATUS_NONFINITE
    assert set(pkpd.engine.solvers.STATUS_MESSAGES) >= {0, STATUS_NONFINITE, STATUS_BAD_TIMES}
