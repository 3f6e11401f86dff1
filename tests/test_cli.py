"""The `pkpd` command end to end: in-process (click's runner) and in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner
from test_shipped_models import REGIMEN, domino_reference, fanta_otto_reference

from pkpd.cli import main

BIN = Path(sys.executable).parent / "pkpd"


def run(*args, cwd=None, env=None):
    return subprocess.run(
        [str(BIN), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_help_says_not_a_clinical_device():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    assert "not a clinical dosing device" in r.output
    r = CliRunner().invoke(main, ["simulate", "--help"])
    assert "--weight" in r.output and "REGIMEN" in r.output


def test_models_lists_and_shows_provenance():
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0
    assert "domino_racemic" in r.output and "fanta2015_otto2021" in r.output
    assert "venous" in r.output
    r = CliRunner().invoke(main, ["models", "show", "fanta2015_otto2021"])
    assert r.exit_code == 0, r.output
    assert "Table 3" in r.output and "verified in cited code" in r.output
    assert "133 L" in r.output and "(WT/70 kg)^0.75" in r.output
    r = CliRunner().invoke(main, ["models", "show", "domino_racemic"])
    assert "assumed (not a literature value)" in r.output
    r = CliRunner().invoke(main, ["models", "show", "nope"])
    assert r.exit_code == 2 and "unknown model 'nope'" in r.output


@pytest.mark.parametrize(
    "model,ref,names",
    [
        ("domino_racemic", domino_reference, ("cp [ng/mL]", "ce [ng/mL]")),
        ("fanta2015_otto2021", fanta_otto_reference, ("cp [ng/mL]", "cp_norketamine [ng/mL]")),
    ],
)
def test_simulate_reproduces_independent_solution(tmp_path, model, ref, names):
    """The acceptance check: `pkpd simulate` output equals an independent exact solution
    of the shipped model to 1e-9 relative."""
    csv = tmp_path / "out.csv"
    r = CliRunner().invoke(
        main,
        [
            "simulate",
            model,
            REGIMEN,
            "--weight",
            "72",
            "--until",
            "60h",
            "--every",
            "5min",
            "--csv",
            str(csv),
        ],
    )
    assert r.exit_code == 0, r.output
    table = pd.read_csv(csv)  # a plain table: no options needed
    t = table["time [h]"].to_numpy()
    np.testing.assert_allclose(t[-1], 60.0)
    expect = ref(t, 72.0)
    for name, e in zip(names, expect, strict=True):
        np.testing.assert_allclose(table[name].to_numpy()[1:], e[1:], rtol=1e-9, atol=0)


def test_simulate_end_to_end_writes_files(tmp_path):
    """Subprocess: summary, NetCDF with units, PNG; then nothing half-written."""
    r = run(
        "simulate",
        "fanta2015_otto2021",
        "lumbar_fusion_esketamine",
        "--weight",
        "70",
        "--out",
        "r.nc",
        "--plot",
        "r.png",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "Cmax" in r.stdout and "rate change at 4 h" in r.stdout  # 0.125 -> 0.02 mg/kg/h
    assert "not a clinical dosing device" in r.stdout
    ds = xr.open_dataset(tmp_path / "r.nc", engine="h5netcdf")
    assert ds.cp.attrs["units"] == "ng/mL" and ds.time.attrs["units"] == "h"
    assert ds.attrs["model"] == "fanta2015_otto2021"
    assert "lumbar" not in ds.attrs["regimen"] and "0.125 mg/kg/h" in ds.attrs["regimen"]
    ds.close()
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.nc", "r.png"]


BAD = [
    (["domino_racemic", "5 foo bolus at 0 h"], "unknown unit 'foo'"),
    (["domino_racemic", "-5 mg bolus at 0 h"], "negative"),
    (["domino_racemic", "5 mg/h from 3 h to 1 h"], "not after its start"),
    (["domino_racemic", "give some ketamine"], "cannot parse"),
    (["no_such_model", "5 mg bolus at 0 h"], "unknown model"),
    (["domino_racemic", "0.3 mg/kg bolus at 0 h", "--weight", "-3"], "weight"),
    (["domino_racemic", "5 mg bolus at 0 h", "--every", "0 min"], "every"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_line_and_leaves_no_file(tmp_path, args, message):
    out = tmp_path / "x.nc"
    r = CliRunner().invoke(main, ["simulate", *args, "--out", str(out)])
    assert r.exit_code == 2, r.output
    err = r.output.strip().splitlines()
    assert err[-1].startswith("pkpd: error:") and message in err[-1]
    assert "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []


def test_bad_input_in_a_subprocess_and_debug_traceback(tmp_path):
    r = run(
        "simulate",
        "domino_racemic",
        "5 mg/kg/x bolus at 0 h",
        "--weight",
        "70",
        "--out",
        "x.nc",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown unit" in r.stderr
    assert list(tmp_path.iterdir()) == []
    r = run(
        "--debug",
        "simulate",
        "domino_racemic",
        "5 mg/kg/x bolus at 0 h",
        "--weight",
        "70",
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_bad_output_path_is_refused_before_running(tmp_path):
    r = CliRunner().invoke(
        main,
        [
            "simulate",
            "domino_racemic",
            "5 mg bolus at 0 h",
            "--out",
            str(tmp_path / "missing" / "x.nc"),
        ],
    )
    assert r.exit_code == 2 and "does not exist" in r.output
    r = CliRunner().invoke(
        main, ["simulate", "domino_racemic", "5 mg bolus at 0 h", "--out", str(tmp_path / "x.txt")]
    )
    assert r.exit_code == 2 and ".nc" in r.output


def test_covariate_outside_studied_range_warns_on_stderr():
    r = CliRunner().invoke(
        main,
        [
            "simulate",
            "fanta2015_otto2021",
            "20 mg bolus at 0 h",
            "--weight",
            "130",
            "--until",
            "2h",
        ],
    )
    assert r.exit_code == 0
    assert "pkpd: warning:" in r.output and "outside the studied range" in r.output


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    """A writer that fails midway: the target never appears, the temporary file is gone."""
    import pkpd.output.io

    def broken(ds, tmp):
        Path(tmp).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pkpd.output.io, "write_netcdf", broken)
    r = CliRunner().invoke(
        main,
        [
            "simulate",
            "domino_racemic",
            "5 mg bolus at 0 h",
            "--until",
            "1h",
            "--out",
            str(tmp_path / "x.nc"),
        ],
    )
    assert r.exit_code == 2 and "disk full" in r.output
    assert list(tmp_path.iterdir()) == []


def test_second_run_loads_numba_cache_instead_of_compiling(tmp_path):
    args = ("simulate", "domino_racemic", "5 mg bolus at 0 h", "--until", "1h")
    assert run(*args).returncode == 0  # populate the cache if needed
    r = run(*args, env={"NUMBA_DEBUG_CACHE": "1"})
    assert r.returncode == 0
    log = r.stdout + r.stderr
    assert "data loaded" in log
    assert "data saved" not in log


def test_csv_output_is_header_plus_numbers_with_a_metadata_sidecar(tmp_path):
    """No `#` lines in the CSV (a plain CSV reader sees one header row and numbers); the
    provenance is in `NAME.csv.meta.json`, written with it."""
    import csv
    import json

    r = CliRunner().invoke(
        main,
        ["simulate", "domino_racemic", "5 mg bolus at 0 h", "--until", "1h", "--csv",
         str(tmp_path / "r.csv")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][0] == "time [h]" and "cp [ng/mL]" in rows[0]
    data = np.array(rows[1:], dtype=float)
    assert data.shape == (61, len(rows[0])) and np.isfinite(data).all()
    # pandas with no options: the same columns, every one float64, the same numbers.
    table = pd.read_csv(tmp_path / "r.csv")
    assert list(table.columns) == rows[0]
    assert all(str(d) == "float64" for d in table.dtypes)
    np.testing.assert_array_equal(table.to_numpy(), data)
    meta = json.loads((tmp_path / "r.csv.meta.json").read_text(encoding="utf-8"))
    assert [c["name"] for c in meta["columns"]][:1] == ["time"]
    assert {c["name"]: c["units"] for c in meta["columns"]}["cp"] == "ng/mL"
    assert meta["attrs"]["model"] == "domino_racemic"
    assert "5 mg bolus at 0 h" in meta["attrs"]["regimen"]
    assert "not a clinical dosing device" in meta["attrs"]["disclaimer"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.csv.meta.json"]


def test_models_show_escapes_terminal_control_characters(tmp_path):
    from pkpd.inputs.model import models_dir

    text = (models_dir() / "domino_racemic.toml").read_text(encoding="utf-8")
    text = text.replace(
        'title = "Domino racemic',
        'title = "\\u001b[2J\\u001b]0;owned\\u0007\\r\\u202eDomino racemic',
    )
    path = tmp_path / "m.toml"
    path.write_text(text, encoding="utf-8")
    # color=True: the terminal case (click strips only some ANSI codes, and only off a tty).
    r = CliRunner().invoke(main, ["models", "show", str(path)], color=True)
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output and "\r" not in r.output
    assert "\u202e" not in r.output
    assert "\\x1b[2J\\x1b]0;owned\\x07\\x0d\\u202eDomino racemic" in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nope"], "No such option '--nope'"),
        (["simulate"], "Missing argument 'MODEL'"),
        (["compare", "--nope"], "No such option '--nope'"),
        (["design", "domino_racemic", "--bogus", "1"], "No such option '--bogus'"),
        (["models", "show"], "Missing argument 'NAME'"),
        (["models", "show", "a", "b"], "unexpected extra argument"),
        (["no-such-command"], "No such command 'no-such-command'"),
        (["simulate", "m", "r", "--sex", "X"], "'X' is not one of"),
    ],
)
def test_click_usage_errors_are_one_line_with_status_2(args, message):
    r = CliRunner().invoke(main, args, prog_name="pkpd")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("pkpd: error: ") and message in lines[0]
    assert r.stdout == ""


def test_help_output_is_unchanged_by_the_error_handling():
    """`pkpd` alone and --help still print the full usage and help (not one line)."""
    for args in ([], ["--help"], ["simulate", "--help"], ["models", "--help"]):
        r = CliRunner().invoke(main, args, prog_name="pkpd")
        assert r.exit_code == (2 if not args else 0), args
        assert r.output.startswith("Usage: pkpd"), args
        assert "Options:" in r.output and "--help" in r.output


@pytest.mark.parametrize("command", ["simulate", "cohort", "cohort.zarr", "compare", "design",
                                     "report", "plot"])  # fmt: skip
def test_unwritable_destination_is_refused_before_any_work(tmp_path, monkeypatch, command):
    """A folder that refuses new files is found before simulating, in one line."""
    import errno
    import importlib
    import tempfile

    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == ro:
            raise PermissionError(errno.EACCES, "Permission denied", str(ro))
        return real_mkstemp(*args, dir=dir, **kwargs)

    def computed(*args, **kwargs):
        raise AssertionError("the work ran before the destination was checked")

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    for mod, name in (("running.simulate", "simulate"), ("running.cohort", "simulate_cohort"),
                      ("analysis.design", "compare"), ("analysis.design", "design"),
                      ("output.report", "write_report")):  # fmt: skip
        monkeypatch.setattr(importlib.import_module(f"pkpd.{mod}"), name, computed)
    cohort = ["--patients", "10", "--population", "healthy_volunteers"]
    one = ["simulate", "domino_racemic", "5 mg bolus at 0 h"]
    (tmp_path / "r.nc").write_bytes(b"")
    args = {
        "simulate": [*one, "--out", str(ro / "x.nc")],
        "plot": [*one, "--plot", str(ro / "x.png")],
        "cohort": [*one, *cohort, "--out", str(ro / "x.nc")],
        "cohort.zarr": [*one, *cohort, "--out", str(ro / "x.zarr")],
        "compare": ["compare", "domino_racemic", "5 mg bolus at 0 h", *cohort, "--out",
                    str(ro / "x.nc")],
        "design": ["design", "domino_racemic", *cohort, "--bolus", "0,1", "--out",
                   str(ro / "x.nc")],
        "report": ["report", str(tmp_path / "r.nc"), "--out", str(ro / "r.html")],
    }[command]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, (r.output, r.exception)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pkpd: error:"), r.output
    assert "cannot create a file in folder" in lines[0] and str(ro) in lines[0]
    assert list(ro.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_folder_is_refused_before_simulating(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = run("simulate", "domino_racemic", "5 mg bolus at 0 h", "--out", "ro/x.nc",
                cwd=tmp_path)  # fmt: skip
    finally:
        ro.chmod(0o755)
    assert r.returncode == 2 and "cannot create a file in folder" in r.stderr
    assert r.stdout == ""  # no summary: nothing was simulated
