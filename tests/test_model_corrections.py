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
from pkpd.errors import CovariateRangeWarning, SamplingSiteWarning
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


def test_fanta_otto_nmol_per_ml_uses_the_norketamine_molar_mass():
    """A threshold of 0.1 nmol/mL is 0.1 x 223.70 = 22.370 ng/mL of S-norketamine and
    0.1 x 237.73 = 23.773 ng/mL of S-ketamine (1 nmol/mL = M ng/mL for M g/mol)."""
    m = pkpd.load_model("fanta2015_otto2021")
    assert m.molar_mass("norketamine") == pytest.approx(MW_SNK, abs=1e-12)
    assert m.molar_mass() == pytest.approx(MW_SK, abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CovariateRangeWarning)
        ds = simulate_cohort(
            "fanta2015_otto2021",
            "20 mg bolus at 0 h",
            "healthy_volunteers",
            4,
            seed=1,
            until="2 h",
            every="10 min",
            thresholds={"cp": ["0.1 nmol/mL"], "cp_norketamine": ["0.1 nmol/mL"]},
            bands=False,
            progress=False,
        )
    assert list(ds.threshold_output.values) == ["cp", "cp_norketamine"]
    np.testing.assert_allclose(ds.threshold_level.values, [0.1 * MW_SK, 0.1 * MW_SNK], rtol=1e-12)
