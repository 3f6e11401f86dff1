"""The literature model library: each new model file says what its source says.

Independent references, typed in here from the sources (never read from the model files):

* Simons 2022 and Perez-Ruixo 2021: the ODE right-hand sides written out by hand from the
  nlmixr2lib ``model()`` blocks (Simons_2022_s_ketamine.R at commit 89c09781,
  PerezRuixo_2020_esketamine.R at commit 00785fd9), IV input only, solved with
  scipy.linalg.expm of the input-augmented matrix segment by segment;
* Clements 1981, Hijazi 2003, Herd 2007: the closed-form polyexponentials of
  tests/closed_form.py with the micro-constants of opentiva ketamine.py (commit 4c6b38cf) or
  the Herd 2007 abstract.

Derived quantities are checked against ../shared/reference/ketamine-models.md sections
2.2, 2.3 and 3.2-3.4. Flint 2017 (S-norketamine clearance CL x (1 + 0.0087 t[h])) is an
[ode] model, tested in tests/test_flint2017.py.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
from click.testing import CliRunner
from closed_form import central_bolus, central_infusion, effect_site_bolus, effect_site_infusion

import pkpd
from pkpd.cli import main
from pkpd.errors import CovariateRangeWarning
from pkpd.inputs.model import TAGS

NEW_MODELS = [
    "simons2022_s_ketamine",
    "perezruixo2021_esketamine",
    "clements1981_racemic",
    "hijazi2003_racemic",
    "herd2007_racemic_children",
]
MW_KETAMINE = 237.73


def params(model, covariates=None):
    m = pkpd.load_model(model)
    th = m.individual_parameters(covariates or {})
    return dict(zip(m.param_names, th, strict=True))


def augmented_solution(A, dose_index, segments, t, x0=None):
    """x(t) of dx/dt = A x + e_dose r(t), r piecewise constant: segments [(start, rate)].

    Uses exp([[A, e r], [0, 0]] h) for each piece (no inverse of A needed).
    """
    n = A.shape[0]
    e = np.zeros(n)
    e[dose_index] = 1.0

    def step(x, h, rate):
        Z = np.zeros((n + 1, n + 1))
        Z[:n, :n] = A
        Z[:n, n] = e * rate
        y = scipy.linalg.expm(Z * h) @ np.append(x, 1.0)
        return y[:n]

    x = np.zeros(n) if x0 is None else np.asarray(x0, float)
    starts = {}
    for (s, r), (s_next, _) in itertools.pairwise(segments):
        starts[s] = x
        x = step(x, s_next - s, r)
    starts[segments[-1][0]] = x
    out = np.empty((len(t), n))
    for i, ti in enumerate(t):
        s, r = [seg for seg in segments if seg[0] <= ti][-1]
        out[i] = step(starts[s], ti - s, r)
    return out


def amounts(ds, names):
    return sum(ds[f"amount_{c}"].values for c in names)


# ----------------------------------------------------------------------------- all models


@pytest.mark.parametrize("name", NEW_MODELS)
def test_new_model_loads_with_full_provenance(name):
    m = pkpd.load_model(name)
    assert m.name == name
    assert name in pkpd.available_models()
    for p in m.parameters.values():
        assert p.source.tag in TAGS and p.source.reference.strip(), p.name
        if p.source.tag == "assumed":
            assert p.source.note, p.name
    for v in m.variability:
        assert v.source.tag in TAGS and v.source.reference.strip()
    for c in m.covariates.values():
        if c.range is not None:
            assert c.range[0] < c.range[1]
    assert m.notes and m.population and m.citation


def test_cli_lists_and_shows_every_new_model():
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0, r.output
    for name in NEW_MODELS:
        assert name in r.output
        s = CliRunner().invoke(main, ["models", "show", name])
        assert s.exit_code == 0, s.output
        assert "parameters (typical values" in s.output
    s = CliRunner().invoke(main, ["models", "show", "perezruixo2021_esketamine"])
    assert "kmet: MISSING in the source" in s.output
    assert "151 L/h + -2.19 x max(0, age - 60)" in s.output


# ----------------------------------------------------------------------------- Simons 2022


def simons_reference_matrix(weight):
    """Rate matrix from nlmixr2lib Simons_2022_s_ketamine.R model() (IV input only).

    State order: central, peripheral1, peripheral2, transit1_snk, transit2_snk, central_snk,
    peripheral1_snk, transit1_shnk, transit2_shnk, central_shnk, peripheral1_shnk.
    Table 4 values typed in (L, L/min, min), converted to h here.
    """
    wt_cl, wt_v = (weight / 70) ** 0.75, weight / 70
    vc, vp, vp2 = 11.6 * wt_v, 39.0 * wt_v, 174 * wt_v
    cl, q, q2 = 1.48 * 60 * wt_cl, 2.43 * 60 * wt_cl, 1.21 * 60 * wt_cl
    mtt_snk, fm_snk = 20.1 / 60, 0.8
    vc_snk, vp_snk = vc, 221 * wt_v
    cl_snk, q_snk = 1.00 * 60 * wt_cl, 2.63 * 60 * wt_cl
    mtt_shnk, fm_shnk = 1.12 / 60, 0.7
    vc_shnk, vp_shnk = 4.4 * wt_v, 87.5 * wt_v
    cl_shnk, q_shnk = 0.933 * 60 * wt_cl, 1.70 * 60 * wt_cl
    ktr_snk, ktr_shnk = 2 / mtt_snk, 2 / mtt_shnk
    kel, k12, k21, k13, k31 = cl / vc, q / vc, q / vp, q2 / vc, q2 / vp2
    kel_snk, k12_snk, k21_snk = cl_snk / vc_snk, q_snk / vc_snk, q_snk / vp_snk
    kel_shnk, k12_shnk, k21_shnk = cl_shnk / vc_shnk, q_shnk / vc_shnk, q_shnk / vp_shnk
    A = np.zeros((11, 11))
    A[0, [0, 1, 2]] = [-(kel + k12 + k13), k21, k31]
    A[1, [0, 1]] = [k12, -k21]
    A[2, [0, 2]] = [k13, -k31]
    A[3, [0, 3]] = [kel, -ktr_snk]
    A[4, [3, 4]] = [ktr_snk, -ktr_snk]
    A[5, [4, 5, 6]] = [fm_snk * ktr_snk, -(kel_snk + k12_snk), k21_snk]
    A[6, [5, 6]] = [k12_snk, -k21_snk]
    A[7, [5, 7]] = [kel_snk, -ktr_shnk]
    A[8, [7, 8]] = [ktr_shnk, -ktr_shnk]
    A[9, [8, 9, 10]] = [fm_shnk * ktr_shnk, -(kel_shnk + k12_shnk), k21_shnk]
    A[10, [9, 10]] = [k12_shnk, -k21_shnk]
    return A, (vc, vc_snk, vc_shnk)


SIMONS_ORDER = [
    "central",
    "peripheral1",
    "peripheral2",
    "k_to_nk_1",
    "k_to_nk_2",
    "nk_central",
    "nk_peripheral",
    "nk_to_hnk_1",
    "nk_to_hnk_2",
    "hnk_central",
    "hnk_peripheral",
]


@pytest.mark.parametrize("weight", [55.0, 70.0, 90.0])
def test_simons_chains_expand_to_the_encoded_equations(weight):
    """[[chains]] (n = 2, k = n/MTT per step, fraction at the exit) == nlmixr2lib model()."""
    m = pkpd.load_model("simons2022_s_ketamine")
    M, _, _ = m.system(m.individual_parameters({"weight": weight}))
    idx = [m.comp_names.index(c) for c in SIMONS_ORDER]
    A_file = M[np.ix_(idx, idx)]
    A_ref, _ = simons_reference_matrix(weight)
    np.testing.assert_allclose(A_file, A_ref, rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("weight", [60.0, 80.0])
def test_simons_reproduces_independent_solution_in_nmol_per_ml(weight):
    """20 mg over 20 min (the study's IV dose) and a 2-h infusion: cp, cp_norketamine and
    cp_hydroxynorketamine against the hand-written ODE system; nmol/mL as nlmixr2lib reports
    them (1000 * amount / V / 237.73 for all three analytes)."""
    reg = "20 mg over 20 min from 0 h; 10 mg/h from 1 h to 3 h"
    t = np.concatenate([np.linspace(0, 3, 61), np.linspace(3.25, 24, 84)])
    ds = pkpd.simulate("simons2022_s_ketamine", reg, covariates={"weight": weight}, times=t)
    A, (vc, vc_snk, vc_shnk) = simons_reference_matrix(weight)
    segs = [(0.0, 60.0), (1 / 3, 0.0), (1.0, 10.0), (3.0, 0.0)]
    X = augmented_solution(A, 0, segs, t)
    nmol = {
        "cp": 1000 * X[:, 0] / vc / MW_KETAMINE,
        "cp_norketamine": 1000 * X[:, 5] / vc_snk / MW_KETAMINE,
        "cp_hydroxynorketamine": 1000 * X[:, 9] / vc_shnk / MW_KETAMINE,
    }
    m = pkpd.load_model("simons2022_s_ketamine")
    for out, ref in nmol.items():
        analyte = next(o.analyte for o in m.outputs if o.name == out)
        # ng/mL -> nmol/mL with the analyte's declared molar mass (S-ketamine equivalents)
        got = ds[out].values / m.molar_mass(analyte)
        np.testing.assert_allclose(got[1:], ref[1:], rtol=1e-9, atol=1e-15, err_msg=out)


def test_simons_derived_quantities_match_reference_document():
    """ketamine-models.md 2.2: Vss 224.6 L; CLK1 88.8, CLK2 145.8, CLK3 72.6, CLN1 60.0,
    CLN2 157.8 L/h at 70 kg; VN1 = VK1."""
    th = params("simons2022_s_ketamine", {"weight": 70})
    assert th["VK1"] + th["VK2"] + th["VK3"] == pytest.approx(224.6, rel=1e-12)
    for p, v in {"CLK1": 88.8, "CLK2": 145.8, "CLK3": 72.6, "CLN1": 60.0, "CLN2": 157.8}.items():
        assert th[p] == pytest.approx(v, rel=1e-12), p
    assert th["MTT_KNK"] == pytest.approx(20.1 / 60, rel=1e-12)
    assert th["MTT_NKHNK"] == pytest.approx(1.12 / 60, rel=1e-12)
    assert (th["FM_NK"], th["FM_HNK"]) == (0.8, 0.7)
    m = pkpd.load_model("simons2022_s_ketamine")
    assert m.compartments["nk_central"].volume == "VK1"
    # every analyte carries the S-ketamine molar mass (amounts in S-ketamine equivalents)
    assert {m.molar_mass(a) for a in m.analytes} == {MW_KETAMINE}
    # additive residual 0.058 nmol/mL in S-ketamine equivalents = 13.79 ng/mL (mg/L inside)
    assert m.residual["cp_norketamine"].additive_sd == pytest.approx(0.058 * MW_KETAMINE / 1000)
    assert m.residual["cp_hydroxynorketamine"].additive_sd == pytest.approx(0.020 * 0.23773)


def test_simons_weight_scaling_uses_the_encoders_exponents():
    """Simons prints no exponents; nlmixr2lib fixes 0.75 on all clearances, 1 on volumes;
    mean transit times and fractions are not scaled."""
    a = params("simons2022_s_ketamine", {"weight": 70})
    b = params("simons2022_s_ketamine", {"weight": 88})
    r = 88 / 70
    expo = dict.fromkeys(["VK1", "VK2", "VK3", "VN2", "VH1", "VH2"], 1.0)
    expo |= dict.fromkeys(["CLK1", "CLK2", "CLK3", "CLN1", "CLN2", "CLH1", "CLH2"], 0.75)
    expo |= dict.fromkeys(["MTT_KNK", "MTT_NKHNK", "FM_NK", "FM_HNK"], 0.0)
    assert set(expo) == set(a)
    for p, e in expo.items():
        assert b[p] == pytest.approx(a[p] * r**e, rel=1e-14), p


def test_simons_steady_state():
    """Css: S-K R/CLK1; S-NK 0.8 R/CLN1; S-HNK 0.7 x 0.8 R/CLH1 (S-ketamine equivalents)."""
    w = 75.0
    th = params("simons2022_s_ketamine", {"weight": w})
    ds = pkpd.simulate(
        "simons2022_s_ketamine",
        "10 mg/h from 0 h to 5000 h",
        covariates={"weight": w},
        times=[0.0, 4000.0],
    )
    assert ds.cp.values[-1] == pytest.approx(10 / th["CLK1"] * 1000, rel=1e-10)
    assert ds.cp_norketamine.values[-1] == pytest.approx(0.8 * 10 / th["CLN1"] * 1000, rel=1e-10)
    assert ds.cp_hydroxynorketamine.values[-1] == pytest.approx(
        0.7 * 0.8 * 10 / th["CLH1"] * 1000, rel=1e-10
    )


def test_simons_mass_balance():
    """dose = all amounts + 20% of what left S-K + 30% of what left S-NK + S-HNK eliminated;
    the chain contents count as the upstream analyte."""
    ds = pkpd.simulate(
        "simons2022_s_ketamine",
        "20 mg over 20 min from 0 h; 15 mg/h from 2 h to 6 h",
        covariates={"weight": 70},
        times=np.linspace(0, 30, 121),
    )
    sk = ["central", "peripheral1", "peripheral2", "k_to_nk_1", "k_to_nk_2"]
    nk = ["nk_central", "nk_peripheral", "nk_to_hnk_1", "nk_to_hnk_2"]
    hnk = ["hnk_central", "hnk_peripheral"]
    e_sk, e_nk = ds.eliminated_s_ketamine.values, ds.eliminated_norketamine.values
    e_hnk = ds.eliminated_hydroxynorketamine.values
    dose = ds.dose_given.values
    assert dose[-1] == pytest.approx(80.0, rel=1e-12)
    np.testing.assert_allclose(amounts(ds, sk) + e_sk, dose, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(amounts(ds, nk) + e_nk, 0.8 * e_sk, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(amounts(ds, hnk) + e_hnk, 0.7 * e_nk, rtol=1e-10, atol=1e-10)
    total = amounts(ds, sk + nk + hnk) + 0.2 * e_sk + 0.3 * e_nk + e_hnk
    np.testing.assert_allclose(total, dose, rtol=1e-10, atol=1e-10)


def test_simons_covariate_range_warning():
    with pytest.warns(CovariateRangeWarning, match="weight"):
        pkpd.simulate("simons2022_s_ketamine", "20 mg bolus at 0 h", {"weight": 45}, until="1 h")
    with pytest.warns(CovariateRangeWarning, match="age"):
        pkpd.load_model("simons2022_s_ketamine").individual_parameters({"weight": 70, "age": 60})
    with warnings.catch_warnings():
        warnings.simplefilter("error", CovariateRangeWarning)
        pkpd.load_model("simons2022_s_ketamine").individual_parameters({"weight": 80, "age": 25})


# ----------------------------------------------------------------------------- Perez-Ruixo


def perez_ruixo_reference_matrix(asian=False):
    """Rate matrix from nlmixr2lib PerezRuixo_2020_esketamine.R model(), IV input only.

    State order: central, peripheral1, peripheral2, liver, central_snk, peripheral1_snk.
    """
    Vc, Q1, Vp, Q2, Vp2 = 192.0, 84.3, 143.0, 37.6, 417.0
    Qh, Vh = 151.0, 101.0
    kel, kmet = 1.11 * (0.36 if asian else 1.0), 2.77
    Vcn, CLn, Vpn, Q3 = 70.0, 38.0 * (0.81 if asian else 1.0), 115.0, 26.1
    A = np.zeros((6, 6))
    A[0, [0, 1, 2, 3]] = [-(Q1 / Vc + Q2 / Vc + Qh / Vc), Q1 / Vp, Q2 / Vp2, Qh / Vh]
    A[1, [0, 1]] = [Q1 / Vc, -Q1 / Vp]
    A[2, [0, 2]] = [Q2 / Vc, -Q2 / Vp2]
    A[3, [0, 3]] = [Qh / Vc, -(Qh / Vh + kel + kmet)]
    A[4, [3, 4, 5]] = [kmet, -(CLn / Vcn + Q3 / Vcn), Q3 / Vpn]
    A[5, [4, 5]] = [Q3 / Vcn, -Q3 / Vpn]
    return A, (Vc, Vcn)


PR_ORDER = ["central", "peripheral1", "peripheral2", "liver", "nor_central", "nor_peripheral"]


def well_stirred(th):
    clint = th["Vh"] * (th["kel"] + th["kmet"])
    return th["Qh"] * clint / (th["Qh"] + clint)


@pytest.mark.parametrize("race", ["non_asian", "asian"])
def test_perez_ruixo_reproduces_the_encoded_equations(race):
    m = pkpd.load_model("perezruixo2021_esketamine")
    M, _, _ = m.system(m.individual_parameters({"race": race, "age": 45}))
    idx = [m.comp_names.index(c) for c in PR_ORDER]
    A_ref, (Vc, Vcn) = perez_ruixo_reference_matrix(race == "asian")
    np.testing.assert_allclose(M[np.ix_(idx, idx)], A_ref, rtol=1e-13, atol=1e-13)
    # end to end: 28 mg over 40 min (IV study dose; duration chosen here) and a 2-h infusion
    reg = "28 mg over 40 min from 0 h; 10 mg/h from 2 h to 4 h"
    t = np.linspace(0, 48, 193)
    ds = pkpd.simulate(m, reg, covariates={"race": race, "age": 45}, times=t)
    X = augmented_solution(A_ref, 0, [(0.0, 42.0), (2 / 3, 0.0), (2.0, 10.0), (4.0, 0.0)], t)
    np.testing.assert_allclose(ds.cp.values[1:], X[1:, 0] / Vc * 1000, rtol=1e-9)
    np.testing.assert_allclose(ds.cp_noresketamine.values[1:], X[1:, 4] / Vcn * 1000, rtol=1e-9)


def test_perez_ruixo_systemic_clearance_is_the_well_stirred_value():
    """ketamine-models.md 2.3: CL = Qh CLint / (Qh + CLint), CLint = Vh (kel + kmet):
    109 L/h non-Asian (abstract: 114 L/h), 102.6 L/h Asian; fraction to noresketamine 0.71
    and 0.87; Vc + Vp1 + Vp2 = 752 L (abstract Vss); Vcn/F + Vpn/F = 185 L."""
    non = params("perezruixo2021_esketamine", {"race": "non_asian", "age": 45})
    asi = params("perezruixo2021_esketamine", {"race": "asian", "age": 45})
    assert well_stirred(non) == pytest.approx(109.0, abs=0.05)
    assert well_stirred(asi) == pytest.approx(102.6, abs=0.05)
    assert non["kmet"] / (non["kel"] + non["kmet"]) == pytest.approx(0.714, abs=0.001)
    assert asi["kmet"] / (asi["kel"] + asi["kmet"]) == pytest.approx(0.874, abs=0.001)
    assert non["Vc"] + non["Vp1"] + non["Vp2"] == pytest.approx(752.0, rel=1e-12)
    assert non["Vcn"] + non["Vpn"] == pytest.approx(185.0, rel=1e-12)
    # the race covariate changes kel (x 0.36) and CLn/F (x 0.81) only
    for p in non:
        f = {"kel": 0.36, "CLn": 0.81}.get(p, 1.0)
        assert asi[p] == pytest.approx(non[p] * f, rel=1e-14), p


@pytest.mark.parametrize("race", ["non_asian", "asian"])
def test_perez_ruixo_steady_state_is_rate_over_well_stirred_clearance(race):
    th = params("perezruixo2021_esketamine", {"race": race, "age": 45})
    cl = well_stirred(th)
    fm = th["kmet"] / (th["kel"] + th["kmet"])
    ds = pkpd.simulate(
        "perezruixo2021_esketamine",
        "10 mg/h from 0 h to 5000 h",
        covariates={"race": race, "age": 45},
        times=[0.0, 4000.0],
    )
    assert ds.cp.values[-1] == pytest.approx(10 / cl * 1000, rel=1e-10)
    assert ds.cp_noresketamine.values[-1] == pytest.approx(10 * fm / th["CLn"] * 1000, rel=1e-10)


def test_perez_ruixo_mass_balance():
    ds = pkpd.simulate(
        "perezruixo2021_esketamine",
        "28 mg over 40 min from 0 h; 0.2 mg/kg/h from 1 h to 5 h",
        covariates={"weight": 80, "race": "non_asian", "age": 45},
        times=np.linspace(0, 72, 145),
    )
    esk = ["central", "peripheral1", "peripheral2", "liver"]
    nor = ["nor_central", "nor_peripheral"]
    th = params("perezruixo2021_esketamine", {"race": "non_asian", "age": 45})
    fm = th["kmet"] / (th["kel"] + th["kmet"])
    dose = ds.dose_given.values
    assert dose[-1] == pytest.approx(28 + 0.2 * 80 * 4, rel=1e-12)
    e_esk, e_nor = ds.eliminated_esketamine.values, ds.eliminated_noresketamine.values
    np.testing.assert_allclose(amounts(ds, esk) + e_esk, dose, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(amounts(ds, nor) + e_nor, fm * e_esk, rtol=1e-10, atol=1e-10)


def test_perez_ruixo_no_weight_effect_and_age_only_above_60():
    """Weight was not retained; age acts on Qh only above 60 y (the age-effect arithmetic is
    checked in tests/test_model_corrections.py)."""
    m = pkpd.load_model("perezruixo2021_esketamine")
    a = m.individual_parameters({"weight": 50, "age": 30, "race": "non_asian"})
    b = m.individual_parameters({"weight": 120, "age": 60, "race": "non_asian"})
    np.testing.assert_array_equal(a, b)
    c = m.individual_parameters({"weight": 50, "age": 61, "race": "non_asian"})
    changed = [p for p, x, y in zip(m.param_names, a, c, strict=True) if x != y]
    assert changed == ["Qh"]
    with pytest.warns(CovariateRangeWarning, match="age"):
        m.individual_parameters({"age": 87, "race": "non_asian"})
    with pytest.warns(CovariateRangeWarning, match="weight"):
        m.individual_parameters({"weight": 200, "age": 45, "race": "non_asian"})
    kmet = [v for v in m.variability if v.parameters == ("kmet",)]
    assert len(kmet) == 1 and kmet[0].omega is None


def test_perez_ruixo_iiv_uses_lognormal_cv():
    m = pkpd.load_model("perezruixo2021_esketamine")
    om = {v.parameters[0]: float(v.omega[0, 0]) for v in m.variability if v.omega is not None}
    # nlmixr2lib: etalkel 0.892, etalvc 0.0730, etalcln 0.0625 (log(1 + CV^2) to 3 digits)
    for p, v in {"kel": 0.892, "Vc": 0.0730, "Vp1": 0.218, "CLn": 0.0625}.items():
        assert om[p] == pytest.approx(v, rel=2e-3), p
    assert m.residual["cp"].type == "exponential"
    assert m.residual["cp"].proportional_sd == 0.276


# ----------------------------------------------------------------------------- racemic


REGIMEN = "1 mg/kg bolus at 0 h; 1 mg/kg/h from 0 h to 2 h"


def two_cmt_reference(t, weight, V1, k10, k12, k21, ke0=None):
    """cp (and ce) in ng/mL for REGIMEN from micro-constants in 1/h, V1 in L."""
    k = {"k10": k10, "k12": k12, "k21": k21}
    cp = central_bolus(t, weight, V1, **k) + central_infusion(t, weight, 2.0, V1, **k)
    if ke0 is None:
        return cp * 1000, None
    ce = effect_site_bolus(t, weight, V1, ke0, **k) + effect_site_infusion(
        t, weight, 2.0, V1, ke0, **k
    )
    return cp * 1000, ce * 1000


T = np.concatenate([np.linspace(0, 3, 91), np.linspace(3.5, 30, 54)])


@pytest.mark.parametrize("weight", [50.0, 70.0, 95.0])
def test_clements_reproduces_opentiva_micro_constants(weight):
    ds = pkpd.simulate("clements1981_racemic", REGIMEN, covariates={"weight": weight}, times=T)
    cp, ce = two_cmt_reference(
        T, weight, 1.7522 * weight, 0.0109 * 60, 0.0186 * 60, 0.0137 * 60, ke0=5.2 * 60
    )
    np.testing.assert_allclose(ds.cp.values, cp, rtol=1e-9)
    np.testing.assert_allclose(ds.ce.values[1:], ce[1:], rtol=1e-9)


def test_clements_derived_quantities_match_reference_document():
    """ketamine-models.md 3.2 at 70 kg: V1 122.7 L, V2 166.5 L, CL 80.2 L/h, Q 2.28 L/min;
    all linear in weight; ke0 assumed."""
    th = params("clements1981_racemic", {"weight": 70})
    assert th["V1"] == pytest.approx(122.654, rel=1e-12)
    assert th["V1"] * th["k12"] / th["k21"] == pytest.approx(166.5, abs=0.05)
    assert th["V1"] * th["k10"] == pytest.approx(80.2, abs=0.05)
    assert th["V1"] * th["k12"] / 60 == pytest.approx(2.28, abs=0.005)
    th2 = params("clements1981_racemic", {"weight": 35})
    assert th2["V1"] == pytest.approx(th["V1"] / 2, rel=1e-14)
    assert th2["k10"] == th["k10"]
    assert pkpd.load_model("clements1981_racemic").assumed_parameters == ["ke0"]


@pytest.mark.parametrize("weight", [55.0, 80.0])
def test_hijazi_reproduces_opentiva_micro_constants(weight):
    ds = pkpd.simulate("hijazi2003_racemic", REGIMEN, covariates={"weight": weight}, times=T)
    cp, ce = two_cmt_reference(
        T, weight, 1.08 * weight, 0.0333 * 60, 0.0088 * 60, 0.0030 * 60, ke0=4.773 * 60
    )
    np.testing.assert_allclose(ds.cp.values, cp, rtol=1e-9)
    np.testing.assert_allclose(ds.ce.values[1:], ce[1:], rtol=1e-9)


def test_hijazi_clearance_matches_the_paper():
    """Hijazi 2003 abstract: CL 36.0 (SD 13.3) mL/min/kg, V-beta 16.0 (8.6) L/kg, t1/2
    4.9 (1.6) h. The micro-constants give CL = V1 k10 = 35.96 mL/min/kg and t1/2 = 4.94 h;
    CL/lambda_z = 15.4 L/kg is a value at the mean parameters (the abstract's 16.0 is a mean
    of individual values), recorded, not asserted against 16.0."""
    for w in (60.0, 70.0, 85.0):
        th = params("hijazi2003_racemic", {"weight": w})
        cl_ml_min_kg = th["V1"] * th["k10"] * 1000 / 60 / w
        assert cl_ml_min_kg == pytest.approx(36.0, abs=0.05)
    k10, k12, k21 = th["k10"], th["k12"], th["k21"]
    s = k10 + k12 + k21
    lam_z = (s - math.sqrt(s * s - 4 * k10 * k21)) / 2
    assert math.log(2) / lam_z == pytest.approx(4.9, abs=0.05)
    assert th["V1"] * k10 / lam_z / 85.0 == pytest.approx(15.4, abs=0.05)


def test_hijazi_is_an_adult_model():
    """opentiva's age_upper = 18 is not copied: an adult passes, a child warns."""
    m = pkpd.load_model("hijazi2003_racemic")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CovariateRangeWarning)
        m.individual_parameters({"weight": 75, "age": 45})
    with pytest.warns(CovariateRangeWarning, match="age"):
        m.individual_parameters({"weight": 30, "age": 10})
    assert m.assumed_parameters == ["ke0"]


@pytest.mark.parametrize("weight", [15.0, 32.5, 60.0])
def test_herd_reproduces_the_published_allometric_model(weight):
    V1 = 38.7 * weight / 70
    V2 = 102 * weight / 70
    CL = 90 * (weight / 70) ** 0.75
    Q = 215 * (weight / 70) ** 0.75
    ds = pkpd.simulate("herd2007_racemic_children", REGIMEN, covariates={"weight": weight}, times=T)
    ke0 = math.log(2) / (11 / 3600)
    cp, ce = two_cmt_reference(T, weight, V1, CL / V1, Q / V1, Q / V2, ke0=ke0)
    np.testing.assert_allclose(ds.cp.values, cp, rtol=1e-9)
    np.testing.assert_allclose(ds.ce.values[1:], ce[1:], rtol=1e-9)


def test_herd_values_at_70_kg_and_bsv_convention():
    """Herd 2007 abstract (70 kg standard): V1 38.7 L, V2 102 L, CL 90 L/h, Q 215 L/h;
    BSV 64 / 51.7 / 38.1 / 19 % read as sqrt(omega^2)."""
    th = params("herd2007_racemic_children", {"weight": 70})
    assert (th["V1"], th["V2"], th["CL"], th["Q"]) == (38.7, 102.0, 90.0, 215.0)
    assert th["t_half_ke0"] == pytest.approx(11 / 3600, rel=1e-12)
    m = pkpd.load_model("herd2007_racemic_children")
    om = {v.parameters[0]: float(v.omega[0, 0]) for v in m.variability}
    for p, cv in {"V1": 0.64, "V2": 0.517, "CL": 0.381, "Q": 0.19}.items():
        assert om[p] == pytest.approx(cv**2, rel=1e-12), p
    assert "PAEDIATRIC" in m.population


def test_herd_warns_for_adults():
    m = pkpd.load_model("herd2007_racemic_children")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CovariateRangeWarning)
        m.individual_parameters({"weight": 30, "age": 8})
    with pytest.warns(CovariateRangeWarning, match="weight"):
        pkpd.simulate("herd2007_racemic_children", "1 mg/kg bolus at 0 h", {"weight": 80})
    with pytest.warns(CovariateRangeWarning, match="age"):
        m.individual_parameters({"weight": 60, "age": 30})


@pytest.mark.parametrize(
    "model,cov,cl",
    [
        ("clements1981_racemic", {"weight": 70}, lambda th: th["V1"] * th["k10"]),
        ("hijazi2003_racemic", {"weight": 70}, lambda th: th["V1"] * th["k10"]),
        ("herd2007_racemic_children", {"weight": 30}, lambda th: th["CL"]),
    ],
)
def test_racemic_steady_state_and_mass_balance(model, cov, cl):
    th = params(model, cov)
    ds = pkpd.simulate(model, "10 mg/h from 0 h to 5000 h", covariates=cov, times=[0.0, 4000.0])
    assert ds.cp.values[-1] == pytest.approx(10 / cl(th) * 1000, rel=1e-10)
    ds = pkpd.simulate(model, REGIMEN, covariates=cov, times=np.linspace(0, 12, 49))
    m = pkpd.load_model(model)
    mass = [c.name for c in m.compartments.values() if c.type != "effect"]
    np.testing.assert_allclose(
        amounts(ds, mass) + ds.eliminated_ketamine.values,
        ds.dose_given.values,
        rtol=1e-10,
        atol=1e-10,
    )


# ----------------------------------------------------------------------------- Wang 2019


def test_wang_2019_chinese_adults_against_each_s_ketamine_model():
    """Documented comparison, not a tuned assertion.

    Wang 2019 (PMC6902860; Chinese patients, esketamine 0.5 mg/kg IV bolus over 10 s, NCA):
    CL 18.1 +/- 3.2 mL/min/kg. Typical clearances of the S-ketamine models, per kg at 70 kg:

    * fanta2015_otto2021 (venous, young Europeans): 95.2 L/h = 22.67 mL/min/kg (+1.43 SD);
    * simons2022_s_ketamine (arterial, Dutch volunteers): CLK1 1.48 L/min = 21.14 mL/min/kg
      (+0.95 SD);
    * perezruixo2021_esketamine (well-stirred, no weight effect, age <= 60 y): non-Asian 109.0 L/h =
      25.95 mL/min/kg (+2.45 SD); Asian 102.6 L/h = 24.43 mL/min/kg (+1.98 SD). With no weight
      scaling, lighter patients have an even larger per-kg clearance in this model.

    All three models predict a larger clearance than Wang's NCA mean; Perez-Ruixo's Asian
    typical value is still about 2 SD above it. Flint 2017 (paediatric) is not compared.
    Only the numbers fixed by the model files are asserted.
    """
    per_kg = {}
    th = params("fanta2015_otto2021", {"weight": 70})
    per_kg["fanta"] = th["CL"] * 1000 / 60 / 70
    th = params("simons2022_s_ketamine", {"weight": 70})
    per_kg["simons"] = th["CLK1"] * 1000 / 60 / 70
    for race in ("non_asian", "asian"):
        th = params("perezruixo2021_esketamine", {"race": race, "age": 45})
        per_kg[f"perez_ruixo_{race}"] = well_stirred(th) * 1000 / 60 / 70
    expected = {
        "fanta": 95.2 * 1000 / 60 / 70,
        "simons": 1.48 * 1000 / 70,
        "perez_ruixo_non_asian": 151 * 391.88 / (151 + 391.88) * 1000 / 60 / 70,
        "perez_ruixo_asian": 151 * (101 * 3.1696) / (151 + 101 * 3.1696) * 1000 / 60 / 70,
    }
    for k, v in expected.items():
        assert per_kg[k] == pytest.approx(v, rel=1e-12), k
    z = {k: (v - 18.1) / 3.2 for k, v in per_kg.items()}
    assert z["fanta"] == pytest.approx(1.43, abs=0.01)
    assert z["simons"] == pytest.approx(0.95, abs=0.01)
    assert z["perez_ruixo_non_asian"] == pytest.approx(2.45, abs=0.01)
    assert z["perez_ruixo_asian"] == pytest.approx(1.98, abs=0.01)


# ----------------------------------------------------------------------------- provenance


@pytest.mark.parametrize("name", ["domino_racemic", "fanta2015_otto2021", *NEW_MODELS])
def test_every_dataset_says_which_values_are_assumed(name):
    """Issue 4: a model with assumed values says so in every dataset it produces."""
    m = pkpd.load_model(name)
    cov = {"weight": 30.0} if name.startswith("herd") else {"weight": 70.0}
    if "race" in m.covariates:
        cov["race"] = "non_asian"
    if name == "perezruixo2021_esketamine":
        cov["age"] = 45.0
    ds = pkpd.simulate(name, "10 mg bolus at 0 h", covariates=cov, until="1 h")
    assumed = [p.name for p in m.parameters.values() if p.source.tag == "assumed"]
    assert ds.attrs["model_assumed_parameters"] == (", ".join(assumed) or "none")
    assert ds.attrs["model_verification"] == m.verification_summary()
    assert ds.attrs["model_sampling_site"] == m.sampling_site
    if assumed:
        assert "assumed" in ds.attrs["model_verification"]


def test_cli_models_shows_population_for_every_model():
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0, r.output
    assert r.output.count("    population: ") == len(pkpd.available_models())
    assert "population: PAEDIATRIC: 54 children" in r.output
