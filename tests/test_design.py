"""Regimen comparison and design: common random numbers, independent re-simulation,
Pareto front and the best-under-limit rule (pkpd/analysis/design.py)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import xarray as xr

from pkpd.analysis.design import (
    compare,
    design,
    pareto_front,
    parse_target,
    select_best,
)
from pkpd.inputs.regimen import load_regimen
from pkpd.running.cohort import simulate_cohort

pytestmark = pytest.mark.filterwarnings("ignore::pkpd.errors.CovariateRangeWarning")

MODEL = "fanta2015_otto2021"
POP = "spine_fusion_china"
LOW, HIGH = "lumbar_fusion_esketamine", "lumbar_fusion_esketamine_high"
N, SEED = 150, 11
GRID = {"until": "40 h", "every": "10 min"}
WIN = {"postop24": ("end_of_surgery", "end_of_surgery + 24 h")}


@pytest.fixture(scope="module")
def cmp():
    return compare(
        MODEL, [LOW, HIGH], POP, N, SEED, windows=WIN, thresholds={"cp": ["50 ng/mL"]}, **GRID
    )


def _cohort(reg, **kw):
    return simulate_cohort(MODEL, reg, POP, N, SEED, progress=False, **GRID, **kw)


def test_common_random_numbers_in_cohorts():
    a, b = _cohort(LOW), _cohort(HIGH)
    covs = [c for c in a.coords if a[c].dims == ("patient",)]
    assert {"weight", "age", "sex", "end_of_surgery"} <= set(covs)
    for c in covs:
        np.testing.assert_array_equal(a[c].values, b[c].values)
    params = [v for v in a.data_vars if v.startswith("param_")]
    assert params
    for p in params:
        np.testing.assert_array_equal(a[p].values, b[p].values)
    # ... and the regimens do differ, so the equality is not trivial.
    assert not np.allclose(a.cmax.values, b.cmax.values)
    # A different seed gives different patients.
    c = simulate_cohort(MODEL, LOW, POP, N, SEED + 1, progress=False, **GRID)
    assert not np.array_equal(a.weight.values, c.weight.values)


def test_compare_equals_independent_cohorts(cmp):
    assert cmp.sizes["regimen"] == 2
    assert list(cmp.regimen.values) == [LOW, HIGH]
    for r in (LOW, HIGH):
        ds = _cohort(
            r, windows=WIN, thresholds={"cp": ["50 ng/mL"]}, at={"end_of_surgery": "end_of_surgery"}
        )
        ok = ds.status.values == 0
        for o in ds.output.values:
            ref = np.percentile(ds.cmax.sel(output=o).values[ok], [5, 50, 95])
            np.testing.assert_allclose(cmp.cmax.sel(regimen=r, output=o).values, ref, rtol=1e-12)
            ref = np.percentile(ds.auc.sel(output=o, window="postop24").values[ok], [5, 50, 95])
            got = cmp.auc.sel(regimen=r, output=o, window="postop24").values
            np.testing.assert_allclose(got, ref, rtol=1e-12)
            ref = np.percentile(ds.c_at.sel(output=o, at="end_of_surgery").values[ok], [5, 50, 95])
            got = cmp.c_at.sel(regimen=r, output=o, at="end_of_surgery").values
            np.testing.assert_allclose(got, ref, rtol=1e-12)
        ref = np.percentile(ds.time_above.values[ok, 0], [5, 50, 95])
        np.testing.assert_allclose(cmp.time_above.sel(regimen=r).values[0], ref, rtol=1e-12)
        np.testing.assert_array_equal(cmp.weight.values, ds.weight.values)
        np.testing.assert_array_equal(cmp["event_end_of_surgery"].sel(regimen=r), ds.end_of_surgery)
        # Total dose: per-kg bolus + rate x (per-patient) duration, by hand.
        eos = ds.end_of_surgery.values
        hand = (0.2 + 0.125 * eos + 0.02 * 48) if r == LOW else (0.5 + 0.25 * eos)
        np.testing.assert_allclose(cmp.dose_per_kg_patient.sel(regimen=r), hand, rtol=1e-12)
    assert "identical covariates" in cmp.attrs["common_random_numbers"]
    assert "same per-patient times" in cmp.attrs["common_random_numbers"]


def test_compare_one_line_regimen_needs_event_declaration():
    text = "0.3 mg/kg bolus at 0 h; 0.1 mg/kg/h from 0 h to end_of_surgery"
    with pytest.raises(ValueError, match="anchors"):
        compare(MODEL, [text], POP, 20, 0, **GRID)
    out = compare(MODEL, [text, LOW], POP, 20, 0, anchors=LOW, **GRID)
    a, b = (out.event_end_of_surgery.sel(regimen=r).values for r in out.regimen.values)
    np.testing.assert_array_equal(a, b)


def test_design_grid_points_equal_independent_cohorts():
    g = design(
        MODEL, POP, 60, 5, bolus=[0.0, 0.3], rate=[0.1, 0.4], duration=[2, "end_of_surgery"],
        anchors=LOW, **GRID,
    )  # fmt: skip
    assert g.regimen.dims == ("bolus", "rate", "duration")
    assert g.regimen.shape == (2, 2, 2)
    assert list(g.duration.values) == ["2 h", "end_of_surgery"]
    for idx in [(0, 0, 0), (1, 1, 1)]:
        pt = g.isel(bolus=idx[0], rate=idx[1], duration=idx[2])
        text = str(pt.regimen.values)
        b, r = g.bolus.values[idx[0]], g.rate.values[idx[1]]
        assert text.startswith(f"{b:g} mg/kg bolus at 0 h; {r:g} mg/kg/h from 0 h to ")
        reg = load_regimen(text)
        if reg.anchor_names:
            reg = dataclasses.replace(reg, anchors=load_regimen(LOW).anchors)
        ds = simulate_cohort(
            MODEL, reg, POP, 60, 5, progress=False, windows={"0-24 h": ("0 h", "24 h")}, **GRID
        )
        np.testing.assert_allclose(
            pt.cmax_median.values, np.median(ds.cmax.values, axis=0), rtol=1e-12
        )
        np.testing.assert_allclose(
            pt.auc_median.values[:, 0], np.median(ds.auc.values[:, :, 0], axis=0), rtol=1e-12
        )
    # Exposure grows with the dose at fixed duration (a monotonic sanity check).
    c = g.cmax_median.sel(output="cp", duration="2 h").values
    assert np.all(np.diff(c, axis=1) >= 0) and np.all(np.diff(c[0]) > 0) and np.all(c[1] > c[0])
    assert g.attrs["best_regimen"] == ""
    assert "no target" in g.attrs["best_message"]


def test_design_rejects_bad_input():
    with pytest.raises(ValueError, match="duration"):
        design(MODEL, POP, 10, 0, bolus=[0.1], rate=[0.1])
    with pytest.raises(ValueError, match="bolus"):
        design(MODEL, POP, 10, 0, bolus=[-1], rate=[0.1], duration=[2])
    with pytest.raises(ValueError, match="max_risk"):
        design(MODEL, POP, 10, 0, bolus=[0.1], rate=[0.1], duration=[2], max_risk=0.1)


def test_pareto_front_constructed():
    # rows: PTA, risk. Known front: (0.9, 0.3) (0.8, 0.1) twice (a tie) and (0.5, 0.0).
    pta = np.array([[0.9, 0.8, 0.8], [0.7, 0.5, 0.8], [np.nan, 0.4, 0.9]])
    risk = np.array([[0.3, 0.1, 0.1], [0.2, 0.0, 0.3], [0.0, 0.05, 0.35]])
    want = np.array([[True, True, True], [False, True, False], [False, False, False]])
    np.testing.assert_array_equal(pareto_front(pta, risk), want)
    # Brute-force definition on random data with many ties.
    rng = np.random.default_rng(0)
    p = rng.integers(0, 5, 300) / 4
    r = rng.integers(0, 5, 300) / 4
    brute = np.array(
        [not np.any((p >= p[i]) & (r <= r[i]) & ((p > p[i]) | (r < r[i]))) for i in range(p.size)]
    )
    np.testing.assert_array_equal(pareto_front(p, r), brute)
    assert pareto_front(p, r).any()


def _grid(pta, inc, dose, feasible=None):
    dims = ("bolus", "rate")
    ds = xr.Dataset(
        {
            "pta": (dims, np.asarray(pta, float)),
            "incidence_psy": (dims, np.asarray(inc, float)),
            "total_dose": (dims, np.asarray(dose, float)),
            "regimen": (dims, np.array([[f"b{i} r{j}" for j in range(2)] for i in range(2)])),
        },
        coords={"bolus": [0.0, 0.2], "rate": [0.1, 0.3]},
        attrs={"risk": "psy"},
    )
    if feasible is not None:
        ds["feasible"] = (dims, np.asarray(feasible, bool))
    return ds


def test_best_under_limit_rule():
    # Max PTA among feasible (risk <= 0.05): (0,1) and (1,0) tie at 0.9; lower dose wins.
    g = _grid([[0.5, 0.9], [0.9, 1.0]], [[0.01, 0.04], [0.05, 0.2]], [[1, 3], [2, 4]])
    best = select_best(g, max_risk=0.05)
    assert best["best_regimen"] == "b1 r0"
    assert (best["best_bolus"], best["best_rate"]) == (0.2, 0.1)
    assert best["best_pta"] == 0.9 and best["best_incidence"] == 0.05
    # A looser limit admits the best point overall.
    assert select_best(g, max_risk=0.2)["best_regimen"] == "b1 r1"
    # An explicit feasibility mask (e.g. from meets_limit's upper bound) takes precedence.
    g2 = _grid(g.pta, g.incidence_psy, g.total_dose, feasible=[[True, True], [False, False]])
    assert select_best(g2, max_risk=0.05)["best_regimen"] == "b0 r1"
    # Infeasible: no best schedule, and a message naming the lowest risk point.
    none = select_best(g, max_risk=0.001)
    assert none["best_regimen"] == ""
    assert "no schedule" in none["best_message"] and "b0 r0" in none["best_message"]
    # Feasible points only where nothing is attained: the best has PTA 0, and says so.
    g3 = _grid([[0.0, 0.9], [0.0, 1.0]], [[0.0, 0.2], [0.01, 0.3]], [[0, 3], [2, 4]])
    zero = select_best(g3, max_risk=0.05)
    assert zero["best_regimen"] == "b0 r0" and zero["best_pta"] == 0.0
    assert zero["best_message"].startswith("no schedule that meets the limit attains")


def test_parse_target():
    t = parse_target("ce >= 0.1 ug/mL for 25% of 0 h..end_of_surgery")
    assert t == {"output": "ce", "at_least": "0.1 ug/mL", "for_fraction": 0.25,
                 "window": ("0 h", "end_of_surgery")}  # fmt: skip
    assert parse_target("cp >= 50 ng/mL for 12 h")["for_duration"] == "12 h"
    with pytest.raises(ValueError, match="target"):
        parse_target("cp > 50")


def test_pta_over_grid_matches_risk_pta():
    from pkpd import risk

    target = "cp >= 50 ng/mL for 50% of 0 h..end_of_surgery"
    g = design(MODEL, POP, 60, 2, bolus=[0.0, 0.4], rate=[0.05, 0.2], duration=["end_of_surgery"],
               anchors=LOW, target=target, **GRID)  # fmt: skip
    reg = load_regimen(str(g.regimen.values[1, 1, 0]))
    reg = dataclasses.replace(reg, anchors=load_regimen(LOW).anchors)
    ds = simulate_cohort(MODEL, reg, POP, 60, 2, progress=False, trajectories=["cp"], **GRID)
    ref = risk.pta(ds, parse_target(target))
    assert float(g.pta.values[1, 1, 0]) == float(ref.pta)
    assert g.pta.values[0, 0, 0] < g.pta.values[1, 1, 0]
    assert (
        g.attrs["best_regimen"] == str(g.regimen.values[1, 1, 0])
        or g.pta.values.max() == g.attrs["best_pta"]
    )


@pytest.mark.parametrize(
    ("variables", "template", "message"),
    [
        ({"rate": ["1"]}, "{rate} mg/h from 0 h to 4 h", "other than bolus"),
        ({"lockout": ["5 min"]}, "{bolus} mg/kg bolus at 0 h", "the template has no {lockout}"),
        ({"x": ["1 h", "1 h"]}, "1 mg bolus at {x}", "repeated values"),
        ({"x": []}, "1 mg bolus at {x}", "at least one value"),
        ({"9x": ["1 h"]}, "1 mg bolus at {9x}", "expected a name"),
    ],
)
def test_further_design_variables_are_checked(variables, template, message):
    from pkpd.analysis.design import DesignError, _design_variables

    with pytest.raises(DesignError, match=re.escape(message)):
        _design_variables(template, None, None, None, None, variables)


def test_a_further_design_variable_fills_its_placeholder_as_written():
    from pkpd.analysis.design import _design_variables

    dims, vals, texts = _design_variables(
        "{bolus} mg/kg bolus at 0 h; 1 mg/h from 0 h to {stop}", [0.1, 0.2], None, None, None,
        {"stop": ["2 h", "4 h", "6 h"]},
    )  # fmt: skip
    assert dims == ["bolus", "stop"]
    assert texts["stop"] == vals["stop"] == ["2 h", "4 h", "6 h"]
