"""PD endpoints (models/pd), the racemic-dose conversion, and their CLI.

References are independent of the code under test: effect sites against the closed-form
convolution of a sum of exponentials, effect functions against values computed by hand from
the numbers in the cited abstracts (typed in here, never read from the PD files).
"""

from __future__ import annotations

import math
import tomllib
import warnings

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import pkpd
from pkpd.cli import main
from pkpd.errors import ModelError, PkpdWarning, SamplingSiteWarning
from pkpd.inputs.pd import augment_model, available_pd, load_pd, pd_dir, pd_from_dict
from pkpd.inputs.stereo import RACEMIC_CAVEATS, racemic_to_s_ketamine

MW_K, MW_NK = 237.73, 223.70
LN2 = math.log(2)
SRC = {"source": "test fixture", "tag": "assumed", "note": "synthetic test model"}


def one_cmt_model(site="arterial", V=20.0, k=2.0, Vm=30.0, km=0.8, fm=0.6, met="norketamine"):
    """S-ketamine 1-cmt (V L, k 1/h) forming a 1-cmt S-norketamine (fraction fm), carried in
    S-ketamine mass equivalents (molar mass 237.73, as in simons2022_s_ketamine)."""
    mm = {"molar_mass": "237.73 g/mol", **SRC}
    return pkpd.ModelSpec.from_dict(
        {
            "schema_version": 1,
            "model": {
                "name": "one_cmt_s",
                "drug": "S-ketamine",
                "citation": "synthetic",
                "population": "synthetic",
                "sampling_site": site,
            },
            "analytes": {
                "s_ketamine": {"role": "parent", **mm},
                met: {"role": "metabolite", **mm},
            },
            "parameters": {
                "V": {"value": f"{V} L", **SRC},
                "k": {"value": f"{k} 1/h", **SRC},
                "Vm": {"value": f"{Vm} L", **SRC},
                "km": {"value": f"{km} 1/h", **SRC},
            },
            "compartments": {
                "central": {"analyte": "s_ketamine", "volume": "V", "dosing": True},
                "met": {"analyte": met, "volume": "Vm"},
            },
            "flows": [
                {"from": "central", "to": "met", "rate_constant": "k", "fraction": fm},
                {"from": "met", "rate_constant": "km"},
            ],
        },
        file=f"one_cmt_{site}.toml",
    )


def effect_of_exponentials(t, terms, ke0):
    """Ce(t) for dCe/dt = ke0 (Cp - Ce), Ce(0) = 0, Cp = sum a exp(-lam t) (lam != ke0)."""
    return sum(a * ke0 / (ke0 - lam) * (np.exp(-lam * t) - np.exp(-ke0 * t)) for a, lam in terms)


T = np.concatenate([np.linspace(0, 2, 41), np.linspace(2.5, 24, 44)])


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("name", available_pd())
def test_shipped_endpoints_load_with_provenance(name):
    e = load_pd(name)
    assert e.name == name and e.citation and e.population and e.pk_model
    assert e.sampling_site in ("arterial", "venous")
    for p in e.all_numbers():
        assert p.source.strip() and p.tag
    if e.library_pk_model:
        assert e.library_pk_model in pkpd.available_models()
    raw = tomllib.loads((pd_dir() / f"{name}.toml").read_text())
    assert raw["endpoint"]["name"] == name


def test_the_library_has_the_five_issue_endpoints_and_no_invented_gamma():
    assert set(available_pd()) == {
        "olofsen2012_analgesia",
        "simons2022_antinociception",
        "simons2022_drug_high",
        "dahan2011_chronic_pain",
        "bowdle1998_psychedelic",
    }
    for n in ("simons2022_antinociception", "simons2022_drug_high", "dahan2011_chronic_pain"):
        assert set(load_pd(n).missing_parameters) == {"gamma", "emax"}, n
    assert load_pd("bowdle1998_psychedelic").missing_parameters == ["slope_vas"]


def test_numbers_are_those_of_the_abstracts():
    """Olofsen 2012: -3.8 cm at Ce 100 ng/mL, +1.5 cm at 50 ng/mL, t1/2ke0 11.8 min;
    Simons 2022: C50 1.2-1.7 nmol/mL (antinociception), 0.3 nmol/mL (drug high);
    Dahan 2011: C50 10.5 ng/mL, t1/2 10.9 d; Bowdle 1998: linear 50-200 ng/mL."""
    o = load_pd("olofsen2012_analgesia")
    assert o.parameters["slope_sk"].value * 100 == pytest.approx(-3.8, rel=1e-12)
    assert o.parameters["slope_snk"].value * 50 == pytest.approx(1.5, rel=1e-12)
    assert o.effect_site.value == pytest.approx(11.8 / 60, rel=1e-12)
    assert LN2 / (o.effect_site.value * 60) == pytest.approx(0.0587, abs=5e-5)  # ke0 1/min
    a = load_pd("simons2022_antinociception").parameters["c50"]
    assert (a.low * 1000, a.high * 1000) == pytest.approx((1.2 * MW_K, 1.7 * MW_K), rel=1e-12)
    assert (a.low * 1000, a.high * 1000) == pytest.approx((285, 404), abs=0.5)
    h = load_pd("simons2022_drug_high").parameters["c50"]
    assert h.value * 1000 == pytest.approx(71.3, abs=0.05)
    d = load_pd("dahan2011_chronic_pain")
    assert d.parameters["c50"].value * 1000 == pytest.approx(10.5, rel=1e-12)
    assert d.effect_site.value == pytest.approx(10.9 * 24, rel=1e-12)
    b = load_pd("bowdle1998_psychedelic")
    assert tuple(v * 1000 for v in b.valid_range) == pytest.approx((50, 200), rel=1e-12)
    assert b.effect_site is None


# ----------------------------------------------------------------------------- evaluation


def test_effect_sites_and_linear_effect_against_closed_form():
    """Olofsen 2012 on a 1-cmt parent + 1-cmt metabolite after a bolus: every effect site
    against the convolution formula, the effect against -0.038 Ce_K + 0.030 Ce_NK (NK in
    true S-norketamine ng/mL: x 223.70/237.73)."""
    V, k, Vm, km, fm, D = 20.0, 2.0, 30.0, 0.8, 0.6, 50.0
    spec = one_cmt_model(V=V, k=k, Vm=Vm, km=km, fm=fm)
    ds = pkpd.simulate(spec, f"{D} mg bolus at 0 h", times=T, pd=["olofsen2012_analgesia"])
    ke0 = LN2 / (11.8 / 60)
    cp = [(D / V * 1000, k)]  # ng/mL
    b = fm * k * D / Vm / (km - k) * 1000
    cm = [(b, k), (-b, km)]  # Bateman
    ce_k = effect_of_exponentials(T, cp, ke0)
    ce_nk = effect_of_exponentials(T, cm, ke0) * MW_NK / MW_K
    np.testing.assert_allclose(ds.ce_olofsen2012_analgesia_s_ketamine, ce_k, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        ds.olofsen2012_analgesia_conc_s_norketamine, ce_nk, rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        ds.olofsen2012_analgesia, -0.038 * ce_k + 0.030 * ce_nk, rtol=1e-9, atol=1e-11
    )
    assert ds.olofsen2012_analgesia.attrs["units"] == "cm"
    assert "VAS" in ds.olofsen2012_analgesia.attrs["long_name"]
    # The S-norketamine term opposes the S-ketamine one.
    assert np.all(ds.olofsen2012_analgesia_contribution_s_norketamine.values[1:] > 0)
    assert np.all(ds.olofsen2012_analgesia_contribution_s_ketamine.values[1:] < 0)


def test_dahan_effect_compartment_after_an_infusion_against_closed_form():
    """t1/2 10.9 d effect site on a venous 1-cmt model, 100-h infusion: Ce/C50 exact."""
    V, k, R = 20.0, 2.0, 20.0  # mg/h
    spec = one_cmt_model(site="venous", V=V, k=k)
    t = np.array([0.0, 1.0, 24.0, 100.0, 200.0, 24 * 30.0])
    ds = pkpd.simulate(spec, f"{R} mg/h from 0 h to 100 h", times=t, pd=["dahan2011_chronic_pain"])
    ke0 = LN2 / (10.9 * 24)
    css = R / (V * k) * 1000
    on = css * (1 - (ke0 * np.exp(-k * t) - k * np.exp(-ke0 * t)) / (ke0 - k))
    tt = np.maximum(t - 100.0, 0.0)
    off = css * (1 - (ke0 * np.exp(-k * tt) - k * np.exp(-ke0 * tt)) / (ke0 - k))
    ce = np.where(t <= 100, on, on - off)
    np.testing.assert_allclose(ds.dahan2011_chronic_pain_conc_over_c50, ce / 10.5, rtol=1e-8)
    assert "dahan2011_chronic_pain_fraction_of_emax" not in ds  # gamma not published
    assert "NOT PUBLISHED (not used): gamma, emax" in ds.attrs["pd_dahan2011_chronic_pain"]


def test_simons_drug_high_emax_at_steady_state_hand_computed():
    """Simons 2022 PK at 70 kg: Css = rate / CLK1 (1.48 L/min). A rate giving Css = C50
    (0.3 nmol/mL x 237.73 = 71.319 ng/mL) gives C/C50 = 1 and half of Emax whatever gamma;
    at 2 x C50 with a user gamma of 2: 4/5 of Emax."""
    cl = 1.48 * 60  # L/h
    c50 = 0.3 * MW_K / 1000  # mg/L
    for mult, gamma, frac in ((1.0, 2.0, 0.5), (1.0, 3.7, 0.5), (2.0, 2.0, 0.8)):
        ds = pkpd.simulate(
            "simons2022_s_ketamine",
            f"{mult * c50 * cl!r} mg/h from 0 h to 5000 h",
            {"weight": 70},
            times=[0.0, 4000.0],
            pd=["simons2022_drug_high"],
            pd_parameters={
                "simons2022_drug_high.gamma": gamma,
                "simons2022_drug_high.emax": 10,
            },
        )
        assert float(ds.simons2022_drug_high_conc_over_c50[-1]) == pytest.approx(mult, rel=1e-9)
        assert float(ds.simons2022_drug_high_fraction_of_emax[-1]) == pytest.approx(frac, rel=1e-9)
        assert float(ds.simons2022_drug_high[-1]) == pytest.approx(10 * frac, rel=1e-9)
        line = ds.attrs["pd_simons2022_drug_high"]
        assert f"USER-SUPPLIED (not literature): gamma={gamma}, emax=10" in line


def test_simons_antinociception_reports_both_published_c50_bounds():
    ds = pkpd.simulate(
        "simons2022_s_ketamine",
        "20 mg over 20 min from 0 h",
        {"weight": 70},
        until="3 h",
        pd=["simons2022_antinociception"],
    )
    c = ds.cp.values  # no effect site: the plasma concentration drives
    np.testing.assert_allclose(
        ds.simons2022_antinociception_conc_over_c50_at_min_c50, c / (1.2 * MW_K), rtol=1e-12
    )
    np.testing.assert_allclose(
        ds.simons2022_antinociception_conc_over_c50_at_max_c50, c / (1.7 * MW_K), rtol=1e-12
    )
    assert not any("fraction_of_emax" in v for v in ds.data_vars)


def test_user_effect_site_delay_for_endpoints_without_one():
    spec = one_cmt_model()
    ds = pkpd.simulate(
        spec,
        "50 mg bolus at 0 h",
        times=T,
        pd=["simons2022_drug_high"],
        pd_parameters={"simons2022_drug_high.t_half_ke0": "5 min"},
    )
    ce = effect_of_exponentials(T, [(50 / 20 * 1000, 2.0)], LN2 / (5 / 60))
    np.testing.assert_allclose(ds.simons2022_drug_high_conc_s_ketamine, ce, rtol=1e-9, atol=1e-12)
    assert "t_half_ke0=5 min" in ds.attrs["pd_simons2022_drug_high"]


@pytest.mark.parametrize(
    "values,match",
    [
        ({"olofsen2012_analgesia.slope_sk": 1}, "literature value"),
        ({"olofsen2012_analgesia.t_half_ke0": "3 min"}, "gives its effect site"),
        ({"olofsen2012_analgesia.bogus": 1}, "unknown"),
        ({"simons2022_drug_high.gamma": -1}, "positive"),
        ({"simons2022_drug_high.gamma": "two"}, "expected a number"),
        ({"dahan2011_chronic_pain.gamma": 2}, "not among the selected"),
        ({"gamma": 2}, "expected 'endpoint.parameter'"),
    ],
)
def test_bad_user_values_are_rejected(values, match):
    with pytest.raises(ModelError, match=match):
        augment_model(one_cmt_model(), ["olofsen2012_analgesia", "simons2022_drug_high"], values)


def test_bowdle_racemic_only_in_range_flag_and_user_slope():
    with pytest.raises(ModelError, match="racemic and S-ketamine concentrations"):
        augment_model("fanta2015_otto2021", ["bowdle1998_psychedelic"])
    with pytest.raises(ModelError, match="racemic ketamine"):
        augment_model("domino_racemic", ["olofsen2012_analgesia"])
    with pytest.warns(SamplingSiteWarning, match="venous concentrations .* not reported"):
        ds = pkpd.simulate(
            "domino_racemic",
            "100 mg/h from 0 h to 2 h",
            {"weight": 70},
            until="4 h",
            pd=["bowdle1998_psychedelic"],
            pd_parameters={"bowdle1998_psychedelic.slope_vas": 0.25},
        )
    c = ds.cp.values
    assert np.array_equal(ds.bowdle1998_psychedelic_in_valid_range, (c >= 50) & (c <= 200))
    assert 0 < int(ds.bowdle1998_psychedelic_in_valid_range.sum()) < c.size
    np.testing.assert_allclose(ds.bowdle1998_psychedelic, 0.25 * c, rtol=1e-14)
    with pytest.warns(SamplingSiteWarning):
        ds = pkpd.simulate(
            "domino_racemic", "1 mg/kg bolus at 0 h", {"weight": 70}, until="1 h",
            pd=["bowdle1998_psychedelic"],
        )  # fmt: skip
    assert "bowdle1998_psychedelic" not in ds  # no published slope: no effect variable


def test_sampling_site_warning_points_at_the_caller_and_matching_sites_are_quiet():
    with pytest.warns(SamplingSiteWarning, match="arterial concentrations") as rec:
        pkpd.simulate(
            "fanta2015_otto2021", "20 mg bolus at 0 h", {"weight": 70}, until="1 h",
            pd=["olofsen2012_analgesia"],
        )  # fmt: skip
    assert rec[0].filename == __file__
    assert issubclass(SamplingSiteWarning, PkpdWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SamplingSiteWarning)
        pkpd.simulate(
            "simons2022_s_ketamine", "20 mg bolus at 0 h", {"weight": 70}, until="1 h",
            pd=["olofsen2012_analgesia", "simons2022_drug_high"],
        )  # fmt: skip
        pkpd.simulate(
            "fanta2015_otto2021", "20 mg bolus at 0 h", {"weight": 70}, until="1 h",
            pd=["dahan2011_chronic_pain"],
        )  # fmt: skip


def test_model_provenance_attrs_are_those_of_the_pk_model():
    ds = pkpd.simulate(
        "simons2022_s_ketamine", "20 mg bolus at 0 h", {"weight": 70}, until="1 h",
        pd=["olofsen2012_analgesia"],
    )  # fmt: skip
    base = pkpd.load_model("simons2022_s_ketamine").provenance_attrs()
    for k, v in base.items():
        assert ds.attrs[k] == v, k
    assert ds.attrs["pd_endpoints"] == "olofsen2012_analgesia"
    line = ds.attrs["pd_olofsen2012_analgesia"]
    assert "sampling arterial" in line and "2 derived, 1 paper" in line
    for v in ds.data_vars:
        assert "units" in ds[v].attrs and "long_name" in ds[v].attrs, v


def test_analyte_missing_from_model_is_an_error():
    spec = one_cmt_model(met="hydroxynorketamine")
    with pytest.raises(ModelError, match=r"`inputs.s_norketamine.analyte`.*'norketamine'"):
        augment_model(spec, ["olofsen2012_analgesia"])
    augment_model(spec, ["simons2022_drug_high"])  # parent only: fine


# ----------------------------------------------------------------------------- bad files


def _olofsen():
    return tomllib.loads((pd_dir() / "olofsen2012_analgesia.toml").read_text())


def _simons():
    return tomllib.loads((pd_dir() / "simons2022_drug_high.toml").read_text())


def _set(base, path, value):
    def f():
        d = base()
        node = d
        *head, last = path
        for k in head:
            node = node[k]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
        return d

    return f


BAD = [
    (_set(_olofsen, ["endpoint", "colour"], "red"), "endpoint.colour", "unknown key"),
    (_set(_olofsen, ["endpoint", "sampling_site"], "capillary"), "endpoint.sampling_site",
     "'capillary'; expected one of arterial"),
    (_set(_olofsen, ["endpoint", "effect"], "quadratic"), "endpoint.effect",
     "'quadratic'; expected one of linear, sigmoid_emax"),
    (_set(_olofsen, ["endpoint", "drug"], "ketamine"), "endpoint.drug", "'ketamine'"),
    (_set(_olofsen, ["endpoint", "pk_model"], KeyError), "endpoint.pk_model", "missing"),
    (_set(_olofsen, ["endpoint", "name"], "other"), "endpoint.name", "differs from the file"),
    (_set(_olofsen, ["inputs", "s_ketamine", "slope"], "slope_x"), "inputs.s_ketamine.slope",
     "'slope_x' is not defined"),
    (_set(_olofsen, ["inputs", "s_ketamine", "analyte"], "hnk"), "inputs.s_ketamine.analyte",
     "'hnk'; expected 'parent' or one of norketamine"),
    (_set(_olofsen, ["inputs", "s_ketamine", "molar_mass"], "237 g"),
     "inputs.s_ketamine.molar_mass", "237 g"),
    (_set(_olofsen, ["parameters", "slope_sk", "tag"], "believed"), "parameters.slope_sk.tag",
     "'believed' is not a verification tag"),
    (_set(_olofsen, ["parameters", "slope_sk", "tag"], "assumed"), "parameters.slope_sk.note",
     "assumed value must say why"),
    (_set(_olofsen, ["parameters", "slope_sk", "value"], "steep"), "parameters.slope_sk.value",
     "expected a finite number, got 'steep'"),
    (_set(_olofsen, ["parameters", "extra"], {"value": 1.0, "source": "x", "tag": "paper"}),
     "parameters.extra", "not used"),
    (_set(_olofsen, ["effect_site", "t_half_ke0"], "11.8 mg"), "effect_site.t_half_ke0",
     "11.8 mg"),
    (_set(_olofsen, ["effect_site", "t_half_ke0"], "-1 min"), "effect_site.t_half_ke0",
     "must be > 0"),
    (_set(_simons, ["parameters", "c50", "value"], "0.3 mg"), "parameters.c50.value", "0.3 mg"),
    (_set(_simons, ["parameters", "gamma"], KeyError), "parameters.gamma",
     "declares c50, gamma and emax"),
    (_set(_simons, ["parameters", "gamma"], {"value": -2.0, "source": "x", "tag": "paper"}),
     "parameters.gamma", "expected a positive"),
    (_set(_simons, ["parameters", "c50", "missing"], True), "parameters.c50",
     "exactly one of `value`, `range`, `missing = true`"),
    (_set(_simons, ["schema_version"], 2), "schema_version", "2 unsupported; expected 1"),
]  # fmt: skip


@pytest.mark.parametrize("make,key,msg", BAD, ids=[b[1] for b in BAD])
def test_bad_pd_files_are_rejected_with_file_key_and_value(make, key, msg):
    name = make()["endpoint"].get("name", "x")
    file = f"/somewhere/{name if key != 'endpoint.name' else 'olofsen2012_analgesia'}.toml"
    with pytest.raises(ModelError) as exc:
        pd_from_dict(make(), file=file)
    text = str(exc.value)
    assert text.startswith(file), text
    assert f"`{key}" in text and msg in text, text


def test_valid_mutation_bases_load():
    pd_from_dict(_olofsen(), file="olofsen2012_analgesia.toml")
    pd_from_dict(_simons(), file="simons2022_drug_high.toml")


def test_unknown_endpoint_lists_the_shipped_ones():
    with pytest.raises(ModelError, match=r"unknown PD endpoint 'nausea'.*olofsen2012_analgesia"):
        load_pd("nausea")


# ----------------------------------------------------------------------------- racemic


def test_racemic_dose_drives_s_ketamine_model_with_its_half():
    racemic = "1 mg/kg bolus at 0 h; 0.5 mg/kg/h from 0 h to 2 h; 10 mg over 30 min from 2 h"
    half = "0.5 mg/kg bolus at 0 h; 0.25 mg/kg/h from 0 h to 2 h; 5 mg over 30 min from 2 h"
    a = pkpd.simulate("fanta2015_otto2021", racemic, {"weight": 80}, until="6 h", racemic=True)
    b = pkpd.simulate("fanta2015_otto2021", half, {"weight": 80}, until="6 h")
    for v in ("cp", "cp_norketamine", "dose_given"):
        np.testing.assert_allclose(a[v], b[v], rtol=1e-14, atol=1e-15)
    assert float(a.dose_given[-1]) == pytest.approx(0.5 * (80 + 0.5 * 80 * 2 + 10), rel=1e-14)
    assert a.attrs["dose_conversion_caveats"] == RACEMIC_CAVEATS
    assert "R-ketamine" in RACEMIC_CAVEATS and "NOT modelled" in RACEMIC_CAVEATS
    assert a.attrs["regimen"].startswith("S-ketamine half (x0.5) of the racemic regimen")
    assert "dose_conversion" not in b.attrs


def test_racemic_conversion_keeps_anchors_and_refuses_racemic_models():
    reg = racemic_to_s_ketamine("lumbar_fusion_esketamine")
    orig = pkpd.load_regimen("lumbar_fusion_esketamine")
    assert reg.anchor_names == orig.anchor_names
    ea = reg.event_table(70.0, {"end_of_surgery": 3.0})
    eb = orig.event_table(70.0, {"end_of_surgery": 3.0})
    np.testing.assert_array_equal(ea.t, eb.t)
    np.testing.assert_allclose(ea.rate, 0.5 * eb.rate, rtol=1e-15)
    np.testing.assert_allclose(ea.bolus, 0.5 * eb.bolus, rtol=1e-15)
    for model in ("domino_racemic", "herd2007_racemic_children"):
        with pytest.raises(ModelError, match="needs an S-ketamine model"):
            pkpd.simulate(model, "1 mg/kg bolus at 0 h", {"weight": 30}, racemic=True)


# ----------------------------------------------------------------------------- CLI


def test_cli_lists_and_shows_pd_endpoints():
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0, r.output
    for name in available_pd():
        assert name in r.output
    assert "PD endpoint" in r.output
    r = CliRunner().invoke(main, ["models", "show", "simons2022_drug_high"])
    assert r.exit_code == 0, r.output
    assert "MISSING in the source" in r.output and "0.3 nmol/mL" in r.output
    assert "sampling site: arterial" in r.output and "estimated with PK model" in r.output
    r = CliRunner().invoke(main, ["models", "show", "olofsen2012_analgesia"])
    assert "11.8 min (ke0 = 0.05874 1/min)" in r.output
    assert "[derived from verified values]" in r.output


def test_cli_simulate_with_pd_end_to_end(tmp_path):
    out = tmp_path / "pd.nc"
    r = CliRunner().invoke(
        main,
        [
            "simulate", "simons2022_s_ketamine", "20 mg over 20 min from 0 h", "--weight", "70",
            "--until", "3h", "--pd", "olofsen2012_analgesia", "--pd", "simons2022_drug_high",
            "--pd-param", "simons2022_drug_high.gamma=2", "--out", str(out),
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "PD olofsen2012_analgesia:" in r.output
    assert "USER-SUPPLIED (not literature): gamma=2" in r.output
    with xr.open_dataset(out) as ds:
        assert ds.olofsen2012_analgesia.attrs["units"] == "cm"
        assert float(ds.olofsen2012_analgesia.min()) < 0
        api = pkpd.simulate(
            "simons2022_s_ketamine", "20 mg over 20 min from 0 h", {"weight": 70},
            until="3 h", pd=["olofsen2012_analgesia", "simons2022_drug_high"],
            pd_parameters={"simons2022_drug_high.gamma": "2"},
        )  # fmt: skip
        np.testing.assert_allclose(ds.olofsen2012_analgesia, api.olofsen2012_analgesia, rtol=1e-12)
        np.testing.assert_allclose(
            ds.simons2022_drug_high_fraction_of_emax,
            api.simons2022_drug_high_fraction_of_emax,
            rtol=1e-12,
        )


def test_cli_racemic_and_errors():
    r = CliRunner().invoke(
        main,
        ["simulate", "fanta2015_otto2021", "1 mg/kg bolus at 0 h", "--weight", "70",
         "--until", "2h", "--racemic", "--pd", "olofsen2012_analgesia"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "total dose given: 35 mg" in r.output
    assert "dose conversion: racemic regimen" in r.output
    assert "warning: PD endpoint 'olofsen2012_analgesia' was estimated with arterial" in r.output
    for args, msg in (
        (["domino_racemic", "1 mg/kg bolus at 0 h", "--weight", "70", "--racemic"],
         "needs an S-ketamine model"),
        (["fanta2015_otto2021", "20 mg bolus at 0 h", "--pd", "nausea"],
         "unknown PD endpoint 'nausea'"),
        (["fanta2015_otto2021", "20 mg bolus at 0 h", "--pd-param", "x.gamma=2"], "needs --pd"),
    ):  # fmt: skip
        r = CliRunner().invoke(main, ["simulate", *args])
        assert r.exit_code == 2, r.output
        assert msg in r.output, r.output


def test_augmented_model_adds_effect_sites_only():
    base = one_cmt_model()
    bundle = augment_model(base, ["olofsen2012_analgesia", "simons2022_drug_high"])
    assert bundle.model is not bundle.base
    added = set(bundle.model.output_names) - set(base.output_names)
    assert added == {
        "ce_olofsen2012_analgesia_s_ketamine",
        "ce_olofsen2012_analgesia_s_norketamine",
    }
    assert bundle.model.n_comp == base.n_comp + 2
    M0, _, _ = base.system(base.typical_theta())
    M1, _, _ = bundle.model.system(bundle.model.typical_theta())
    n = base.n_comp
    np.testing.assert_array_equal(M1[:n, :n], M0[:n, :n])  # PK untouched
