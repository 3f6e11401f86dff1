"""Issue 14 model corrections, each against an independent calculation.

* ``fanta2015_otto2021``: Otto 2021 estimated the S-norketamine volume and clearance on
  measured S-norketamine ng/mL, the formation flux carrying S-ketamine mass with no
  molar-mass factor (nlmixr2lib ``Otto_2021_s_ketamine.R`` and its vignette, which compares
  ``Cc_snk`` directly with the observed S-norketamine medians). So ``cp_norketamine`` is
  S-norketamine ng/mL as it is, the Olofsen 2012 endpoint takes it with factor 1, and
  nmol/mL uses the norketamine molar mass 223.70 g/mol. The reference below is the
  5-compartment system (plus the Olofsen effect sites) written out by hand from Otto 2021
  Table 3 and solved with ``scipy.linalg.expm``: no 223.7/237.7 factor anywhere.
* ``perezruixo2021_esketamine``: hepatic blood flow Qh = 151 - 2.19 max(0, AGE - 60) L/h
  (Table 3 'Age on Qh = -2.19 L/year'; nlmixr2lib ``PerezRuixo_2020_esketamine.R``
  ``Qh <- (exp(lqh) - e_age_qh * max(0, AGE - 60)) * exp(etalqh)``), the systemic clearance
  the well-stirred CL = Qh CLint / (Qh + CLint), CLint = Vh (kel + kmet), kel x 0.36 for
  Asian patients. Numbers typed in here from the sources, never read from the model files.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.linalg import expm

import pkpd
from pkpd.errors import CovariateRangeWarning, ModelError, SamplingSiteWarning
from pkpd.running.cohort import simulate_cohort

MW_SNK = 223.70  # norketamine C12H14ClNO, g/mol
MW_SK = 237.73  # ketamine C13H16ClNO, g/mol

# ----------------------------------------------------------------------------- Fanta/Otto

# Otto 2021 Table 3 at 70 kg (S-ketamine fixed to Fanta 2015; S-norketamine estimated).
V1, CL, V2, Q2, V3, Q3 = 133.0, 95.2, 187.0, 23.2, 98.8, 157.0
VN1, CLN, VN2, QN2 = 98.638, 57.72, 160.04, 42.778
KE0_OLOFSEN = math.log(2) / (11.8 / 60)  # 1/h, t1/2ke0 11.8 min (Olofsen 2012 abstract)


def fanta_otto_matrix():
    """d/dt of [central, p1, p2, nk_central, nk_peripheral] (mg) and of the two Olofsen
    effect sites [ce_SK, ce_SNK] (mg/L), at 70 kg; all S-ketamine clearance forms
    S-norketamine, mass for mass (the published $DES)."""
    A = np.zeros((7, 7))
    A[0, [0, 1, 2]] = [-(CL + Q2 + Q3) / V1, Q2 / V2, Q3 / V3]
    A[1, [0, 1]] = [Q2 / V1, -Q2 / V2]
    A[2, [0, 2]] = [Q3 / V1, -Q3 / V3]
    A[3, [0, 3, 4]] = [CL / V1, -(CLN + QN2) / VN1, QN2 / VN2]
    A[4, [3, 4]] = [QN2 / VN1, -QN2 / VN2]
    A[5, [0, 5]] = [KE0_OLOFSEN / V1, -KE0_OLOFSEN]
    A[6, [3, 6]] = [KE0_OLOFSEN / VN1, -KE0_OLOFSEN]
    return A


def test_fanta_otto_olofsen_input_is_cp_norketamine_without_a_molar_factor():
    """20 mg bolus at 70 kg: cp, cp_norketamine, both effect sites and the Olofsen VAS
    change against expm; the S-norketamine input is exactly the model's ng/mL (the old
    file multiplied it by 223.70/237.73 = 0.941)."""
    D = 20.0
    t = np.concatenate([np.linspace(0, 2, 25), np.linspace(2.5, 24, 44)])
    with pytest.warns(SamplingSiteWarning):  # Olofsen: arterial; Otto: venous
        ds = pkpd.simulate(
            "fanta2015_otto2021",
            f"{D} mg bolus at 0 h",
            covariates={"weight": 70},
            times=t,
            pd=["olofsen2012_analgesia"],
        )
    A = fanta_otto_matrix()
    x0 = np.zeros(7)
    x0[0] = D
    X = np.array([expm(A * ti) @ x0 for ti in t])
    cp, cp_nk = 1000 * X[:, 0] / V1, 1000 * X[:, 3] / VN1
    ce_k, ce_nk = 1000 * X[:, 5], 1000 * X[:, 6]
    np.testing.assert_allclose(ds.cp.values, cp, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ds.cp_norketamine.values, cp_nk, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        ds.olofsen2012_analgesia_conc_s_norketamine.values, ce_nk, rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        ds.olofsen2012_analgesia.values, -0.038 * ce_k + 0.030 * ce_nk, rtol=1e-9, atol=1e-11
    )
    # no "parent-drug mass equivalents" label on an output that is S-norketamine ng/mL
    assert "mass equivalents" not in ds.cp_norketamine.attrs.get("note", "")


def _quiet_cohort(model, population, n, **kw):
    """A 20-mg bolus over 2 h on a 10-min grid, summary mode, range warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CovariateRangeWarning)
        return simulate_cohort(
            model, "20 mg bolus at 0 h", population, n, until="2 h", every="10 min",
            bands=False, progress=False, **kw,
        )  # fmt: skip


def test_fanta_otto_nmol_per_ml_uses_the_norketamine_molar_mass():
    """A threshold of 0.1 nmol/mL is 0.1 x 223.70 = 22.370 ng/mL of S-norketamine and
    0.1 x 237.73 = 23.773 ng/mL of S-ketamine (1 nmol/mL = M ng/mL for M g/mol)."""
    m = pkpd.load_model("fanta2015_otto2021")
    assert m.molar_mass("norketamine") == pytest.approx(MW_SNK, abs=1e-12)
    assert m.molar_mass() == pytest.approx(MW_SK, abs=1e-12)
    ds = _quiet_cohort(
        "fanta2015_otto2021", "healthy_volunteers", 4, seed=1,
        thresholds={"cp": ["0.1 nmol/mL"], "cp_norketamine": ["0.1 nmol/mL"]},
    )  # fmt: skip
    assert list(ds.threshold_output.values) == ["cp", "cp_norketamine"]
    np.testing.assert_allclose(ds.threshold_level.values, [0.1 * MW_SK, 0.1 * MW_SNK], rtol=1e-12)


# ----------------------------------------------------------------------------- Perez-Ruixo

QH, VH, KEL, KMET = 151.0, 101.0, 1.11, 2.77  # Table 3 (L/h, L, 1/h, 1/h)
AGE_SLOPE, AGE_KNOT, ASIAN_KEL = -2.19, 60.0, 0.36  # L/h per year above 60; kel factor


def published_clearance(age, asian):
    """Well-stirred systemic clearance (L/h) of the published model, by hand."""
    qh = QH + AGE_SLOPE * max(0.0, age - AGE_KNOT)
    clint = VH * (KEL * (ASIAN_KEL if asian else 1.0) + KMET)
    return qh * clint / (qh + clint)


def well_stirred(m, theta):
    th = dict(zip(m.param_names, theta, strict=True))
    clint = th["Vh"] * (th["kel"] + th["kmet"])
    return th["Qh"] * clint / (th["Qh"] + clint), th["Qh"]


@pytest.mark.parametrize(
    "age,asian,qh,cl",
    [
        # 118.15 = 151 - 2.19 x 15; CLint = 101 x (0.3996 + 2.77) = 320.1296 L/h
        (75, True, 118.15, 118.15 * 320.1296 / (118.15 + 320.1296)),  # 86.30 L/h
        (75, False, 118.15, 118.15 * 391.88 / (118.15 + 391.88)),  # 90.78 L/h
        (45, True, 151.0, 151.0 * 320.1296 / (151.0 + 320.1296)),  # 102.60 L/h
        (60, False, 151.0, 151.0 * 391.88 / (151.0 + 391.88)),  # 109.00 L/h
        (86, True, 151 - 2.19 * 26, 94.06 * 320.1296 / (94.06 + 320.1296)),
    ],
)
def test_perez_ruixo_clearance_with_the_age_effect_on_hepatic_blood_flow(age, asian, qh, cl):
    m = pkpd.load_model("perezruixo2021_esketamine")
    race = "asian" if asian else "non_asian"
    got_cl, got_qh = well_stirred(m, m.individual_parameters({"age": age, "race": race}))
    assert got_qh == pytest.approx(qh, rel=1e-12)
    assert got_cl == pytest.approx(cl, rel=1e-12)
    assert got_cl == pytest.approx(published_clearance(age, asian), rel=1e-12)
    if age == 75 and asian:
        assert got_cl == pytest.approx(86.30, abs=0.005)  # the "about 86 L/h"


def test_perez_ruixo_random_effect_multiplies_the_age_adjusted_flow():
    """nlmixr2lib: Qh = (151 - 2.19 max(0, AGE - 60)) x exp(eta), not 151 exp(eta) - ..."""
    m = pkpd.load_model("perezruixo2021_esketamine")
    th = m.individual_parameters({"age": 70, "race": "non_asian"}, {"Qh": 0.3})
    qh = th[m.param_names.index("Qh")]
    assert qh == pytest.approx((151 - 2.19 * 10) * math.exp(0.3), rel=1e-12)


def test_perez_ruixo_steady_state_of_a_75_year_old_follows_the_age_adjusted_clearance():
    """10 mg/h to steady state: cp = rate / CL with the hand-computed CL at 75 y (Asian),
    and the same run at 45 y gives rate / 102.60 L/h."""
    for age in (75.0, 45.0):
        ds = pkpd.simulate(
            "perezruixo2021_esketamine",
            "10 mg/h from 0 h to 5000 h",
            covariates={"race": "asian", "age": age},
            times=[0.0, 4000.0],
        )
        cl = published_clearance(age, True)
        assert ds.cp.values[-1] == pytest.approx(10 / cl * 1000, rel=1e-10)


def test_perez_ruixo_cohort_draws_age_into_hepatic_blood_flow():
    """spine_fusion_china (mean age 62.3 y): each patient's Qh (no IIV) is 151 - 2.19
    max(0, age - 60) from the patient's own drawn age; some patients are over 60."""
    ds = _quiet_cohort("perezruixo2021_esketamine", "spine_fusion_china", 40, seed=3, iiv=False)
    age = ds.age.values.astype(float)
    assert np.any(age > 60) and np.any(age <= 60)
    expected = 151.0 - 2.19 * np.maximum(0.0, age - 60.0)
    np.testing.assert_allclose(ds.param_Qh.values, expected, rtol=1e-12)


def test_perez_ruixo_age_defaults_to_the_study_median_with_a_warning():
    m = pkpd.load_model("perezruixo2021_esketamine")
    with pytest.warns(pkpd.errors.CovariateDefaultWarning, match="age"):
        th = m.individual_parameters({"race": "non_asian"})
    assert th[m.param_names.index("Qh")] == 151.0


# ----------------------------------------------------------------------------- the schema


def _hinge_model(effect, value="10 L/h"):
    src = {"source": "test fixture", "tag": "assumed", "note": "synthetic"}
    return pkpd.ModelSpec.from_dict(
        {
            "schema_version": 1,
            "model": {
                "name": "hinge",
                "drug": "S-ketamine",
                "citation": "synthetic",
                "population": "synthetic",
                "sampling_site": "venous",
            },
            "analytes": {"s_ketamine": {"role": "parent"}},
            "covariates": {"age": {"unit": "year", "default": 40}},
            "parameters": {
                "V": {"value": "10 L", **src},
                "CL": {"value": value, "covariates": [{**effect, **src}], **src},
            },
            "compartments": {"central": {"analyte": "s_ketamine", "volume": "V", "dosing": True}},
            "flows": [{"from": "central", "clearance": "CL"}],
        },
        file="hinge.toml",
    )


def test_additive_above_reads_the_slope_in_the_parameter_unit():
    """-0.5 L/min per year above 50 = -30 L/h per year: at 52 y, 600 - 60 = 540 L/h."""
    m = _hinge_model(
        {"covariate": "age", "type": "additive_above", "reference": 50, "slope": "-0.5 L/min"},
        value="10 L/min",
    )
    for age, cl in ((40.0, 600.0), (50.0, 600.0), (52.0, 540.0)):
        assert m.individual_parameters({"age": age})[m.param_names.index("CL")] == pytest.approx(
            cl, rel=1e-12
        )


@pytest.mark.parametrize(
    "effect,key,match",
    [
        ({"type": "additive_above", "reference": 60}, "slope", "missing"),
        (
            {"type": "additive_above", "reference": 60, "slope": "-2 L/h", "coefficient": -2},
            "coefficient",
            "takes `slope`",
        ),
        ({"type": "additive_above", "reference": 60, "slope": "-2 L"}, "slope", ""),
        ({"type": "linear", "reference": 60, "coefficient": 0.1, "slope": "1 L/h"}, "slope", ""),
    ],
)
def test_additive_above_bad_input_names_the_key(effect, key, match):
    with pytest.raises(ModelError, match=key) as err:
        _hinge_model({"covariate": "age", **effect})
    assert match in str(err.value)
    assert "hinge.toml" in str(err.value)
