"""Model-file features: covariate models, transit chains, molar ratios, ke0 half-life."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.linalg

import pkpd
from pkpd.inputs.model import ModelSpec

S = {"source": "test fixture", "tag": "assumed"}


def base():
    return {
        "schema_version": 1,
        "model": {
            "name": "t",
            "drug": "d",
            "citation": "c",
            "population": "p",
            "sampling_site": "venous",
        },
        "analytes": {
            "drug": {"role": "parent", "molar_mass": "300 g/mol", **S},
            "met": {"role": "metabolite", "molar_mass": "250 g/mol", **S},
        },
        "covariates": {
            "weight": {"unit": "kg", "reference": 70},
            "age": {"unit": "year", "reference": 40},
            "sex": {"levels": ["female", "male"], "default": "male"},
        },
        "parameters": {
            "V": {"value": "20 L", "weight_exponent": 1.0, **S},
            "CL": {
                "value": "10 L/h",
                "weight_exponent": 0.75,
                "covariates": [
                    {
                        "covariate": "age",
                        "type": "power",
                        "reference": 40,
                        "coefficient": -0.5,
                        **S,
                    },
                    {"covariate": "sex", "type": "categorical", "factors": {"female": 1.2}, **S},
                ],
                **S,
            },
            "Vm": {"value": "0.5 L/kg", **S},
            "CLm": {
                "value": "5 L/h",
                "covariates": [
                    {
                        "covariate": "age",
                        "type": "linear",
                        "reference": 40,
                        "coefficient": -0.01,
                        **S,
                    },
                    {
                        "covariate": "age",
                        "type": "exponential",
                        "reference": 40,
                        "coefficient": 0.02,
                        **S,
                    },
                ],
                **S,
            },
            "MTT": {"value": "30 min", **S},
            "fm": {"value": 0.8, **S},
            "thalf": {"value": "6 min", **S},
        },
        "compartments": {
            "central": {"analyte": "drug", "volume": "V", "dosing": True},
            "mc": {"analyte": "met", "volume": "Vm"},
            "eff": {"type": "effect", "link": "central", "ke0": "thalf"},
        },
        "chains": [
            {
                "name": "delay",
                "analyte": "met",
                "from": "central",
                "to": "mc",
                "clearance": "CL",
                "mean_transit_time": "MTT",
                "n_transit": 2,
                "fraction": "fm",
                "molar_ratio": True,
            }
        ],
        "flows": [{"from": "mc", "clearance": "CLm"}],
    }


def test_covariate_models():
    m = ModelSpec.from_dict(base())
    th = dict(
        zip(
            m.param_names,
            m.individual_parameters({"weight": 80, "age": 60, "sex": "female"}),
            strict=True,
        )
    )
    assert th["V"] == pytest.approx(20 * 80 / 70, rel=1e-15)
    assert th["CL"] == pytest.approx(10 * (80 / 70) ** 0.75 * (60 / 40) ** -0.5 * 1.2, rel=1e-15)
    assert th["CLm"] == pytest.approx(5 * (1 - 0.01 * 20) * math.exp(0.02 * 20), rel=1e-15)
    assert th["Vm"] == pytest.approx(0.5 * 80, rel=1e-15)
    male = dict(
        zip(
            m.param_names,
            m.individual_parameters({"weight": 80, "age": 60, "sex": "male"}),
            strict=True,
        )
    )
    assert th["CL"] / male["CL"] == pytest.approx(1.2, rel=1e-15)
    assert th["MTT"] == 0.5 and th["thalf"] == 0.1


def test_vectorised_over_patients():
    m = ModelSpec.from_dict(base())
    w = np.array([50.0, 70.0, 90.0])
    th = m.individual_parameters({"weight": w, "age": 40, "sex": "male"})
    assert th.shape == (3, len(m.param_names))
    np.testing.assert_allclose(th[:, m.param_names.index("V")], 20 * w / 70, rtol=1e-15)


def test_eta_multiplies_log_normally():
    m = ModelSpec.from_dict(base())
    a = m.individual_parameters({"weight": 70, "age": 40, "sex": "male"})
    b = m.individual_parameters({"weight": 70, "age": 40, "sex": "male"}, eta={"CL": 0.3})
    i = m.param_names.index("CL")
    assert b[i] == pytest.approx(a[i] * math.exp(0.3), rel=1e-15)
    with pytest.raises(pkpd.ModelError, match="unknown parameter"):
        m.individual_parameters({"weight": 70, "age": 40, "sex": "male"}, eta={"nope": 0.1})


def reference_matrix(th):
    """The same system written out by hand: drug, 2 transit, metabolite, effect."""
    k = th["CL"] / th["V"]
    ktr = 2 / th["MTT"]
    ratio = 250 / 300
    kem = th["CLm"] / th["Vm"]
    ke0 = math.log(2) / th["thalf"]
    A = np.zeros((5, 5))
    A[0, 0] = -k
    A[1, 0], A[1, 1] = k, -ktr
    A[2, 1], A[2, 2] = ktr, -ktr
    A[3, 2], A[3, 3] = ktr * th["fm"] * ratio, -kem
    A[4, 0], A[4, 4] = ke0 / th["V"], -ke0
    return A


def test_transit_chain_molar_ratio_and_half_life_ke0_against_hand_written_system():
    m = ModelSpec.from_dict(base())
    cov = {"weight": 75, "age": 50, "sex": "male"}
    th = dict(zip(m.param_names, m.individual_parameters(cov), strict=True))
    t = np.linspace(0, 12, 49)
    ds = pkpd.simulate(m, "40 mg bolus at 0 h", covariates=cov, times=t)
    A = reference_matrix(th)
    x0 = np.array([40.0, 0, 0, 0, 0])
    ref = np.array([scipy.linalg.expm(A * ti) @ x0 for ti in t])
    np.testing.assert_allclose(ds.cp.values, ref[:, 0] / th["V"] * 1000, rtol=1e-11)
    np.testing.assert_allclose(ds.cp_met.values[1:], ref[1:, 3] / th["Vm"] * 1000, rtol=1e-10)
    np.testing.assert_allclose(ds.ce.values[1:], ref[1:, 4] * 1000, rtol=1e-10)
    assert m.comp_names[-2:] == ["delay_1", "delay_2"]


def test_metabolite_auc_is_fm_ratio_dose_over_clearance():
    m = ModelSpec.from_dict(base())
    cov = {"weight": 70, "age": 40, "sex": "male"}
    th = dict(zip(m.param_names, m.individual_parameters(cov), strict=True))
    ds = pkpd.simulate(m, "40 mg bolus at 0 h", covariates=cov, times=[0.0, 2000.0])
    assert ds.auc_cp_met.values[-1] == pytest.approx(
        0.8 * 250 / 300 * 40 / th["CLm"] * 1000, rel=1e-11
    )
    # 20% of what entered the chain left the body: the parent's loss is all 40 mg.
    assert ds.eliminated_drug.values[-1] == pytest.approx(40.0, rel=1e-12)


def test_fraction_parameter_above_one_is_refused():
    d = copy.deepcopy(base())
    d["parameters"]["fm"]["value"] = 1.5
    with pytest.raises(pkpd.ModelError, match="fraction"):
        ModelSpec.from_dict(d)


def test_categorical_covariate_arrays_of_patients():
    """Issue 12: an array of levels (a cohort) raised "The truth value of an array ... is
    ambiguous"; each patient gets the factor of its own level."""
    m = ModelSpec.from_dict(base())
    sex = np.array(["female", "male", "male", "female"])
    w = np.array([60.0, 70.0, 80.0, 90.0])
    th = m.individual_parameters({"weight": w, "age": 40, "sex": sex})
    i = m.param_names.index("CL")
    one = [
        m.individual_parameters({"weight": wi, "age": 40, "sex": s})[i]
        for wi, s in zip(w, sex, strict=True)
    ]
    np.testing.assert_allclose(th[:, i], one, rtol=1e-15)
    assert th[0, i] / th[1, i] == pytest.approx(1.2 * (60 / 70) ** 0.75, rel=1e-14)
    for bad in (np.array(["female", "x", "y"]), np.array([1.0, 0.0]), ["female", None]):
        with pytest.raises(pkpd.CovariateError, match=r"`sex` = .*expected one of"):
            m.individual_parameters({"weight": 70, "age": 40, "sex": bad})


def test_categorical_covariate_rejects_unknown_level():
    m = ModelSpec.from_dict(base())
    with pytest.raises(pkpd.ModelError, match="`sex`"):
        m.individual_parameters({"weight": 70, "age": 40, "sex": "x"})


def test_a_zero_reference_weight_is_refused_where_it_divides():
    """``(weight / reference) ** exponent``: a reference of 0 was accepted and the individual
    parameters divided by zero (found by tests/properties/test_cli_fuzz.py)."""
    data = base()
    data["covariates"]["weight"]["reference"] = 0
    with pytest.raises(pkpd.ModelError) as ei:
        ModelSpec.from_dict(data, file="m.toml")
    assert str(ei.value) == (
        "m.toml: `covariates.weight.reference`: 0 must be > 0: it is the reference weight of "
        "`parameters.V.weight_exponent`"
    )
