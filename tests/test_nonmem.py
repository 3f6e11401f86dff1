"""NONMEM-style event tables (pkpd/output/nonmem.py, `--nonmem`, `--events`), issue 16."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import pkpd
from pkpd.cli import main
from pkpd.output import nonmem

MODEL = "fanta2015_otto2021"
BOLUS_INF_CHANGE = (
    "0.5 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 2 h; 0.1 mg/kg/h from 2 h to 6 h; "
    "5 mg bolus at 3 h over 2 min"
)
OBSERVE = [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 24.0]


def _table(regimen, n=4, seed=5, iiv=False, observe=OBSERVE):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pkpd.PkpdWarning)
        return nonmem.nonmem_table(
            MODEL, regimen, "healthy_volunteers", n, seed, observe, iiv=iiv, threads=1
        )


@pytest.mark.parametrize("regimen", [BOLUS_INF_CHANGE, "lumbar_fusion_esketamine"])
def test_round_trip_gives_the_same_simulation(tmp_path, regimen):
    """Written and read again, each patient's doses give the concentrations of the original
    regimen for that patient (its weight and drawn end of surgery) to 1e-12 relative."""
    frame = _table(regimen)
    path = tmp_path / "events.csv"
    nonmem.write_nonmem(frame, path)
    back = nonmem.read_events(path, MODEL)
    assert [p.id for p in back] == [1, 2, 3, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pkpd.PkpdWarning)
        cohort = pkpd.simulate_cohort(
            MODEL, regimen, "healthy_volunteers", 4, 5, iiv=False, bands=False, threads=1
        )
        got = nonmem.simulate_events(MODEL, back)
        reg = pkpd.load_regimen(regimen)
        for i, (p, ds) in enumerate(zip(back, got, strict=True)):
            np.testing.assert_array_equal(p.times, OBSERVE)
            assert p.covariates["weight"] == float(cohort.weight[i])
            assert p.covariates["age"] == float(cohort.age[i])
            anchors = {a: float(cohort[a][i]) for a in reg.anchor_names}
            expect = pkpd.simulate(
                MODEL, reg.resolve(anchors), covariates=p.covariates, times=OBSERVE
            )
            for o in ("cp", "cp_norketamine"):
                np.testing.assert_allclose(ds[o].values, expect[o].values, rtol=1e-12, atol=0)
            # The same total dose as the regimen's own event table.
            total = reg.resolve(anchors).event_table(p.covariates["weight"]).total_dose
            np.testing.assert_allclose(p.regimen.event_table().total_dose, total, rtol=1e-13)


def test_records_follow_the_nonmem_conventions():
    frame = _table(BOLUS_INF_CHANGE, n=3)
    assert list(frame.columns[:8]) == list(nonmem.NONMEM_COLUMNS)
    assert {"WT", "AGE", "SEX"} <= set(frame.columns)
    key = list(zip(frame.ID, frame.TIME, -frame.EVID, strict=True))
    assert key == sorted(key)  # by ID, TIME, doses before observations
    doses = frame[frame.EVID == 1]
    obs = frame[frame.EVID == 0]
    assert (doses.MDV == 1).all() and (obs.MDV == 0).all() and (frame.CMT == 1).all()
    first = doses[doses.ID == 1]
    w = float(first.WT.iloc[0])
    # Bolus: RATE 0; infusions: AMT = RATE x duration; the rate change is a new record;
    # the 2-min injection is a 5-mg record at 150 mg/h.
    np.testing.assert_allclose(first.TIME, [0.0, 0.0, 2.0, 3.0])
    rows = sorted(zip(first.TIME, first.AMT, first.RATE, strict=True))
    expect = sorted([(0.0, 0.5 * w, 0.0), (0.0, 0.4 * w, 0.2 * w), (2.0, 0.4 * w, 0.1 * w),
                     (3.0, 5.0, 150.0)])  # fmt: skip
    np.testing.assert_allclose(rows, expect, rtol=1e-13)
    assert len(obs) == 3 * len(OBSERVE)


def test_dv_is_the_prediction_with_the_models_residual_error_reproducibly():
    """DV = prediction x (1 + 0.23609 eps) (Otto 2021's proportional error): the scaled
    residuals have mean ~0 and SD ~1; the same seed gives the same table."""
    a = _table(BOLUS_INF_CHANGE, n=30, seed=11, observe=[0.5, 1, 2, 4, 8, 24])
    b = _table(BOLUS_INF_CHANGE, n=30, seed=11, observe=[0.5, 1, 2, 4, 8, 24])
    pd.testing.assert_frame_equal(a, b)
    obs = a[a.EVID == 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pkpd.PkpdWarning)
        pred = np.concatenate([
            pkpd.simulate(MODEL, pkpd.load_regimen(BOLUS_INF_CHANGE),
                          covariates={"weight": w, "age": g}, times=[0.5, 1, 2, 4, 8, 24]).cp
            for w, g in a[a.EVID == 0].groupby("ID")[["WT", "AGE"]].first().to_numpy()
        ])  # fmt: skip
    eps = (obs.DV.to_numpy() / pred - 1) / 0.23609
    assert abs(eps.mean()) < 0.2 and 0.85 < eps.std() < 1.15
    c = _table(BOLUS_INF_CHANGE, n=30, seed=12, observe=[0.5, 1, 2, 4, 8, 24])
    assert not np.array_equal(c.DV, a.DV)


def _write(tmp_path, text, name="ev.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("ID,TIME,AMT,EVID,WT,AGE\n1,0,10,1,70,40\n1,1,0,3,70,40\n",
         r"row 3: column `EVID`: EVID 3 is not supported"),
        ("ID,TIME,AMT,EVID,ADDL,II,WT,AGE\n1,0,10,1,2,12,70,40\n",
         r"column `ADDL` \(additional doses\) is not supported"),
        ("ID,TIME,AMT,RATE,EVID,WT,AGE\n1,0,10,-2,1,70,40\n", r"row 2: RATE -1/-2"),
        ("ID,TIME,AMT,EVID,AGE\n1,0,10,1,40\n",
         r"uses the covariate `weight`: expected a column `WT`"),
        ("ID,TIME,AMT,EVID,CMT,WT,AGE\n1,0,10,1,2,70,40\n",
         r"row 2: column `CMT`: doses go to compartment 1 \(central\)"),
        ("ID,TIME,AMT,EVID,WT,AGE\n1,0,10,1,70,40\n1,1,0,0,71,40\n",
         r"ID 1: column `WT` changes within the patient"),
        ("ID,TIME,EVID,WT\n1,0,1,70\n", r"no column `AMT`"),
    ],
)  # fmt: skip
def test_unsupported_tables_are_refused_naming_file_and_column(tmp_path, text, pattern):
    path = _write(tmp_path, text)
    with pytest.raises(nonmem.EventTableError, match=r"ev\.csv: .*" + pattern):
        nonmem.read_events(path, MODEL)


def test_covariate_columns_match_case_insensitively(tmp_path):
    path = _write(tmp_path, "id,time,amt,rate,evid,wt,Age\n1,0,10,0,1,80,30\n1,2,0,0,0,80,30\n")
    (p,) = nonmem.read_events(path, MODEL)
    assert p.covariates == {"weight": 80.0, "age": 30.0}
    np.testing.assert_array_equal(p.times, [2.0])


def test_cli_writes_and_reads_back_an_event_table(tmp_path):
    nm, pred = tmp_path / "nm.csv", tmp_path / "pred.csv"
    r = CliRunner().invoke(
        main, ["simulate", MODEL, BOLUS_INF_CHANGE, "--patients", "3", "--population",
               "healthy_volunteers", "--seed", "4", "--no-iiv", "--nonmem", str(nm),
               "--observe", "0.5h,1h,90min,4h,24h"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    table = pd.read_csv(nm)
    assert list(table.columns[:8]) == list(nonmem.NONMEM_COLUMNS)
    assert sorted(set(table.TIME[table.EVID == 0])) == [0.5, 1.0, 1.5, 4.0, 24.0]
    meta = json.loads((tmp_path / "nm.csv.meta.json").read_text(encoding="utf-8"))
    assert meta["units"]["DV"] == "ng/mL" and meta["CMT"]["1"] == "central"
    assert meta["attrs"]["seed"] == 4
    r = CliRunner().invoke(main, ["simulate", MODEL, "--events", str(nm), "--csv", str(pred)])
    assert r.exit_code == 0, r.output
    out = pd.read_csv(pred)
    assert list(out.ID.unique()) == [1, 2, 3]
    for pid, rows in out.groupby("ID"):
        first = table[table.ID == pid].iloc[0]
        expect = pkpd.simulate(MODEL, BOLUS_INF_CHANGE, times=rows["time [h]"].to_numpy(),
                               covariates={"weight": first.WT, "age": first.AGE})  # fmt: skip
        np.testing.assert_allclose(rows["cp [ng/mL]"], expect.cp, rtol=1e-12)


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--nonmem", "x.csv"], "--nonmem FILE.csv and --observe TIMES go together"),
        (["--nonmem", "x.csv", "--observe", "1h,-2h"], "non-negative"),
        (["--nonmem", "x.csv", "--observe", "1h,soon"], "--observe"),
    ],
)
def test_cli_nonmem_option_errors(tmp_path, args, pattern):
    args = [a if a != "x.csv" else str(tmp_path / a) for a in args]
    r = CliRunner().invoke(
        main, ["simulate", MODEL, "5 mg bolus at 0 h", "--patients", "2", "--population",
               "healthy_volunteers", *args],
    )  # fmt: skip
    assert r.exit_code != 0 and pattern in r.output, r.output
    assert list(tmp_path.iterdir()) == []


def test_cli_nonmem_needs_a_residual_error_and_says_so_before_simulating(tmp_path):
    r = CliRunner().invoke(
        main, ["simulate", "domino_racemic", "5 mg bolus at 0 h", "--patients", "2",
               "--population", "healthy_volunteers", "--nonmem", str(tmp_path / "x.csv"),
               "--observe", "1h"],
    )  # fmt: skip
    assert r.exit_code != 0 and "declares no residual error for `cp`" in r.output
    assert "Cmax" not in r.output  # refused before the cohort ran
    assert list(tmp_path.iterdir()) == []


def test_cli_events_excludes_a_regimen(tmp_path):
    path = _write(tmp_path, "ID,TIME,AMT,EVID,WT,AGE\n1,0,10,1,70,40\n")
    r = CliRunner().invoke(main, ["simulate", MODEL, "5 mg bolus at 0 h", "--events", str(path)])
    assert r.exit_code != 0 and "no REGIMEN" in r.output
