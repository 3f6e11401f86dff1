"""PTA and side-effect risk of one simulated cohort (`pkpd simulate --target/--risk`,
`pkpd.design.cohort_outcomes`): the values `compare` reports for the same regimen."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import pkpd
from pkpd.analysis.design import (
    DesignError,
    cohort_outcomes,
    compare,
    outcome_cohort_kwargs,
)
from pkpd.cli import main

MODEL = "fanta2015_otto2021"
REGIMEN = "lumbar_fusion_esketamine"
POP = "spine_fusion_china"
N, SEED = 300, 3
GRID = {"until": "60 h", "every": "5 min"}
RISK = "psychotomimetic"
#: A windowed one-sided target (read from stored trajectories) and a whole-grid two-sided one
#: (read from the kernel's time within a range).
TARGETS = ["cp >= 50 ng/mL for 50% of 0h..end_of_surgery", "cp within 50..150 ng/mL for 20%"]
#: Everything compare stores per regimen for a target and a risk model.
OUTCOMES = [
    "pta", "pta_lo", "pta_hi", "attained_patient", f"incidence_{RISK}", f"incidence_{RISK}_lo",
    f"incidence_{RISK}_hi", f"outside_{RISK}", f"above_{RISK}", f"extrapolation_{RISK}",
    f"p_{RISK}_patient",
]  # fmt: skip


def _quiet(f, *a, **kw):
    # The shipped population lies outside Fanta's studied age range: that warning belongs
    # to the cohort tests.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pkpd.CovariateRangeWarning)
        return f(*a, **kw)


@pytest.fixture(scope="module", params=TARGETS)
def both(request):
    """(target, compare's result, the one cohort with its outcomes), same patients."""
    target = request.param
    cds = _quiet(compare, MODEL, [REGIMEN], POP, N, SEED, target=target, risks=[RISK], **GRID)
    kw = outcome_cohort_kwargs(target, [RISK], {"progress": False, **GRID})
    ds = _quiet(pkpd.simulate_cohort, MODEL, REGIMEN, POP, N, SEED, **kw)
    return target, cds, cohort_outcomes(ds, target=target, risks=[RISK])


def test_cohort_outcomes_equal_compare_exactly(both):
    _target, cds, ds = both
    one = cds.isel(regimen=0)
    for v in OUTCOMES:
        assert v in ds, v
        assert "regimen" not in ds[v].dims
        np.testing.assert_array_equal(ds[v].values, one[v].values, err_msg=v)
        assert ds[v].attrs == one[v].attrs, v
    # the extrapolation flag is carried: this regimen doses after end of surgery (awake)
    assert "while awake" in str(ds[f"extrapolation_{RISK}"].values)
    for k in ("target", "risks", f"risk_{RISK}"):
        assert ds.attrs[k] == cds.attrs[k], k
    # the per-patient attainment and probabilities are those of the interval's point value
    assert float(ds.pta) == pytest.approx(ds.attained_patient.values.mean(), abs=0)
    assert float(ds[f"incidence_{RISK}"]) == pytest.approx(
        np.nanmean(ds[f"p_{RISK}_patient"].values), rel=1e-12
    )
    assert float(ds.pta_lo) <= float(ds.pta) <= float(ds.pta_hi)


def test_outcome_kwargs_add_what_the_target_and_risk_need():
    kw = outcome_cohort_kwargs(TARGETS[1], [RISK], {"thresholds": {"cp": ["10 ng/mL"]}})
    assert kw["thresholds"] == {"cp": ["10 ng/mL"]}
    assert kw["ranges"] == {"cp": ["50..150 ng/mL"]}
    assert kw["trajectories"] == ["cp"]


def test_one_patient_is_refused_with_a_clear_message():
    one = pkpd.simulate(MODEL, "0.2 mg/kg bolus at 0 h", covariates={"weight": 70}, until="4 h")
    with pytest.raises(DesignError, match="a probability needs a cohort"):
        cohort_outcomes(one, risks=[RISK])
    for opt, val in (("--risk", RISK), ("--target", TARGETS[0])):
        r = CliRunner().invoke(
            main, ["simulate", MODEL, "0.2 mg/kg bolus at 0 h", "--weight", "70", opt, val]
        )
        assert r.exit_code == 2, r.output
        assert f"pkpd: error: Invalid value for {opt}: a probability needs a cohort" in r.output
        assert "--patients N --population P" in r.output


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_simulate_command_prints_and_stores_what_compare_reports(tmp_path, suffix):
    target = TARGETS[0]
    cds = _quiet(compare, MODEL, [REGIMEN], POP, N, SEED, target=target, risks=[RISK], **GRID)
    out = tmp_path / f"cohort{suffix}"
    args = ["simulate", MODEL, REGIMEN, "--patients", str(N), "--population", POP,
            "--seed", str(SEED), "--until", GRID["until"], "--every", GRID["every"],
            "--target", target, "--risk", RISK, "--out", str(out),
            "--max-risk", "0.3", "--risk-rule", "mean"]  # fmt: skip
    r = CliRunner().invoke(main, ["--quiet", *args])
    assert r.exit_code == 0, r.output
    one = cds.isel(regimen=0)

    def pct(v):
        return f"{100 * float(one[v]):.3g}%"

    assert (
        f"PTA [95% CI]: {target}: {pct('pta')} ({pct('pta_lo')[:-1]}-{pct('pta_hi')[:-1]})"
        in r.output
    )
    inc = f"incidence_{RISK}"
    assert (
        f"{RISK} incidence [95% interval]: {pct(inc)} ({pct(inc + '_lo')[:-1]}-"
        f"{pct(inc + '_hi')[:-1]})" in r.output
    )
    assert f"{RISK}: within calibration domain: no (see below)" in r.output
    assert f"{RISK} extrapolates: {one[f'extrapolation_{RISK}'].values}" in r.output
    # the mean incidence is within 30 %, but the regimen doses awake: not certified
    assert float(one[inc]) <= 0.3
    assert "risk limit not certified (within the limit" in r.output
    with xr.open_dataset(out, engine="zarr" if suffix == ".zarr" else None) as ds:
        for v in OUTCOMES:
            np.testing.assert_array_equal(ds[v].values, one[v].values, err_msg=v)
        assert ds.attrs["target"] == target and ds.attrs["risks"] == RISK
        assert not bool(ds.feasible) and bool(ds.meets_limit_value)
        assert ds.attrs["risk_rule"] == "mean" and ds.attrs["max_risk"] == 0.3
        assert "cmax" in ds and ds.sizes["patient"] == N  # the cohort itself is kept
        assert ds.attrs["model"] == MODEL and int(ds.attrs["seed"]) == SEED
    r = CliRunner().invoke(main, [*args, "--target", TARGETS[1]])
    assert r.exit_code == 2 and "--target" in r.output and "give one" in r.output


@pytest.mark.parametrize(
    ("max_risk", "rule", "allow"), [(0.1, "upper", False), (0.3, "mean", False), (0.3, "q90", True)]
)
def test_risk_limit_is_read_as_design_reads_it(both, max_risk, rule, allow):
    from pkpd import risk as R

    _target, _cds, ds = both
    out = cohort_outcomes(
        ds, risks=[RISK], max_risk=max_risk, risk_rule=rule, allow_extrapolation=allow
    )
    v = R.limit_verdict(
        R.apply_risk(ds, RISK, seed=SEED), RISK, max_risk, rule=rule, allow_extrapolation=allow
    )
    value = float(out[f"rule_incidence_{RISK}"])
    assert value == v.value
    if rule == "mean":
        assert value == float(out[f"incidence_{RISK}"])
    if rule == "upper":
        assert value == float(out[f"incidence_{RISK}_hi"])
    extrapolates = bool(str(out[f"extrapolation_{RISK}"].values))
    assert bool(out.meets_limit_value) == (value <= max_risk)
    assert bool(out.feasible) == (value <= max_risk and (allow or not extrapolates))
    assert out.attrs["max_risk"] == max_risk and out.attrs["risk_rule"] == rule
    assert out.attrs["risk_limit_verdict"] == v.explain(max_risk, rule)


def test_limit_options_need_a_limit_and_one_risk():
    base = ["simulate", MODEL, REGIMEN, "--patients", "10", "--population", POP]
    for extra, opt, text in (
        (["--risk", RISK, "--risk-rule", "mean"], "--risk-rule", "needs --max-risk"),
        (["--risk", RISK, "--allow-extrapolation"], "--allow-extrapolation", "needs --max-risk"),
        (["--max-risk", "0.1"], "--max-risk", "needs exactly one --risk model, got 0"),
        (["--risk", RISK, "--max-risk", "1.5"], "--max-risk", "expected a fraction in [0, 1]"),
        (["--risk", RISK, "--max-risk", "0.1", "--risk-rule", "median"], "--risk-rule", "median"),
    ):
        r = CliRunner().invoke(main, [*base, *extra])
        assert r.exit_code == 2, r.output
        assert f"Invalid value for {opt}:" in r.output and text in r.output
    with pytest.raises(DesignError, match="exactly one risk model"):
        cohort_outcomes(xr.Dataset(coords={"patient": [0]}), target=TARGETS[0], max_risk=0.1)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_no_output_lacks_the_outcomes_when_they_fail(tmp_path, monkeypatch, suffix):
    """A .zarr store is written during the run and the outcomes added after: if adding them
    fails, the store is removed (a .nc is written only once they are in)."""
    import pkpd.analysis.design as designs

    def broken(*a, **kw):
        raise DesignError("outcomes failed on purpose")

    monkeypatch.setattr(designs, "cohort_outcomes", broken)
    out = tmp_path / f"cohort{suffix}"
    args = ["--quiet", "simulate", MODEL, REGIMEN, "--patients", "20", "--population", POP,
            "--until", "12 h", "--target", TARGETS[0], "--out", str(out)]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "outcomes failed on purpose" in r.output, r.output
    assert list(tmp_path.iterdir()) == []
