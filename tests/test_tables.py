"""Per-patient tables of cohorts (pkpd.patient_table, `--patients-table`), issue 16."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

import pkpd
from pkpd.cli import main
from pkpd.errors import PkpdError
from pkpd.output import patient_table as tables

REG = "0.5 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 2 h"


@pytest.fixture(scope="module")
def cohort():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pkpd.PkpdWarning)
        return pkpd.simulate_cohort(
            "domino_racemic", REG, "healthy_volunteers", 6, seed=3, until="6h",
            every="30min", trajectories=True, thresholds={"cp": ["100 ng/mL"]},
            at={"t1": "1h", "t3": "3h"}, windows={"w": ("0h", "4h")}, threads=1,
        )  # fmt: skip


def test_one_row_per_patient_with_every_metric_and_its_unit(cohort):
    df = pkpd.patient_table(cohort)
    assert len(df) == cohort.sizes["patient"]
    np.testing.assert_array_equal(df["patient"], cohort.patient.values)
    np.testing.assert_array_equal(df["weight [kg]"], cohort.weight.values)
    np.testing.assert_array_equal(df["age [year]"], cohort.age.values)
    assert list(df["sex"]) == list(cohort.sex.values)
    for o in cohort.output.values:
        np.testing.assert_array_equal(df[f"cmax_{o} [ng/mL]"], cohort.cmax.sel(output=o))
        np.testing.assert_array_equal(df[f"tmax_{o} [h]"], cohort.tmax.sel(output=o))
        np.testing.assert_array_equal(
            df[f"auc_{o}_w [ng*h/mL]"], cohort.auc.sel(output=o, window="w")
        )
        # Independent of the metric code: the value at 1 h and 3 h is the stored
        # trajectory at that grid time.
        for name, t in (("t1", 1.0), ("t3", 3.0)):
            traj = cohort.trajectory.sel(traj_output=o, time=t).values
            np.testing.assert_allclose(df[f"c_at_{o}_{name} [ng/mL]"], traj, rtol=1e-6)
    label = str(cohort.threshold.values[0])
    np.testing.assert_array_equal(df[f"time_above_{label} [h]"], cohort.time_above[:, 0])
    np.testing.assert_array_equal(df["param_V1 [L]"], cohort.param_V1)
    np.testing.assert_array_equal(df["status"], cohort.status)
    # Time courses and bands are not per-patient scalars.
    assert not [c for c in df.columns if c.startswith(("trajectory", "band"))]
    assert df.attrs["model"] == "domino_racemic"


def test_a_dataset_without_patients_is_refused():
    ds = xr.Dataset({"cp": ("time", np.zeros(3))}, coords={"time": np.arange(3.0)})
    with pytest.raises(PkpdError, match=r"expected a cohort dataset .*dimensions time"):
        pkpd.patient_table(ds)


def test_missing_pyarrow_says_how_to_install(monkeypatch, cohort, tmp_path):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(PkpdError, match=r"pip install 'ketamine-pkpd\[parquet\]'"):
        tables.write_patient_table(cohort, tmp_path / "p.parquet")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["pts.csv", "pts.parquet"])
def test_cli_patients_table_matches_the_dataset(tmp_path, name):
    """The table the command writes equals the cohort it writes to NetCDF; pandas reads it
    with no options; the metadata is in the sidecar."""
    args = ["simulate", "domino_racemic", REG, "--patients", "5", "--population",
            "healthy_volunteers", "--seed", "2", "--until", "6h", "--at", "t1=1h",
            "--threshold", "cp=100ng/mL", "--out", str(tmp_path / "c.nc"),
            "--patients-table", str(tmp_path / name)]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert f"wrote {tmp_path / name}" in r.output
    path = tmp_path / name
    df = pd.read_csv(path) if name.endswith(".csv") else pd.read_parquet(path)
    with xr.open_dataset(tmp_path / "c.nc", engine="h5netcdf") as ds:
        expect = pkpd.patient_table(ds.load())
    assert list(df.columns) == list(expect.columns)
    for c in df.columns:
        if df[c].dtype.kind == "f":
            np.testing.assert_array_equal(df[c].to_numpy(), expect[c].to_numpy(), err_msg=c)
        else:
            assert list(df[c]) == list(expect[c]), c
    assert df["cmax_at_bolus_cp"].dtype == bool
    meta = json.loads((tmp_path / f"{name}.meta.json").read_text(encoding="utf-8"))
    assert meta["columns"] == list(df.columns)
    assert (
        meta["attrs"]["seed"] == 2 and "not a clinical dosing device" in meta["attrs"]["disclaimer"]
    )


def test_cli_patients_table_errors_before_any_work(tmp_path):
    bad = tmp_path / "pts.xlsx"
    r = CliRunner().invoke(
        main, ["simulate", "domino_racemic", REG, "--patients", "3", "--population",
               "healthy_volunteers", "--patients-table", str(bad)],
    )  # fmt: skip
    assert r.exit_code != 0
    assert "--patients-table" in r.output and ".csv or .parquet" in r.output
    r = CliRunner().invoke(
        main, ["simulate", "domino_racemic", REG, "--patients-table", str(tmp_path / "a.csv")]
    )
    assert r.exit_code != 0 and "is for a cohort" in r.output
    assert list(tmp_path.iterdir()) == []
