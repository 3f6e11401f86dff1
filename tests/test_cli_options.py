"""Options of the `pkpd` command that used to do nothing (issue 16): one patient's
--threshold/--window/--at, repeated --threshold in compare, a repeated --target, --quiet
and PYTHONWARNINGS."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import pkpd
from pkpd.cli import main
from pkpd.errors import PkpdWarning

MODEL = "fanta2015_otto2021"
REG = "lumbar_fusion_esketamine"
OPTS = [
    "--weight", "70", "--anchor", "end_of_surgery=3.5h", "--until", "12h", "--every", "5 min",
    "--threshold", "cp=40ng/mL", "--threshold", "cp=100ng/mL",
    "--window", "intra=0h..end_of_surgery", "--window", "post=end_of_surgery..end_of_surgery+2h",
    "--at", "eos1h=end_of_surgery+1h", "--at", "x=0.1234h",
]  # fmt: skip


def test_simulate_one_patient_metrics_printed_and_stored(tmp_path):
    out = tmp_path / "one.nc"
    r = CliRunner().invoke(main, ["simulate", MODEL, REG, *OPTS, "--out", str(out)])
    assert r.exit_code == 0, r.output
    for text in (
        "time above cp > 40 ng/mL:",
        "time above cp > 100 ng/mL:",
        "AUC intra (0-3.5 h): cp ",
        "AUC post (3.5-5.5 h): cp ",
        "at eos1h (4.5 h): cp ",
        "at x (0.1234 h): cp ",
    ):
        assert text in r.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PkpdWarning)
        api = pkpd.simulate(
            MODEL, REG, covariates={"weight": 70}, anchors={"end_of_surgery": "3.5h"},
            until="12h", every="5 min", thresholds={"cp": ["40ng/mL", "100ng/mL"]},
            windows={"intra": ("0h", "end_of_surgery"),
                     "post": ("end_of_surgery", "end_of_surgery+2h")},
            at={"eos1h": "end_of_surgery+1h", "x": "0.1234h"},
        )  # fmt: skip
    with xr.open_dataset(out) as ds:
        for name in ("auc", "c_at", "time_above"):
            np.testing.assert_array_equal(ds[name].values, api[name].values)
            assert ds[name].attrs["units"] == api[name].attrs["units"]
        assert list(ds.at_time.values) == [4.5, 0.1234]
        assert ds.time.size == 12 * 12 + 1  # the output grid is unchanged
    assert (api.time_above > 0).all()


def test_simulate_one_patient_metric_errors_name_the_option():
    r = CliRunner().invoke(
        main, ["simulate", MODEL, "20 mg bolus at 0 h", "--until", "2h", "--at", "x=end_of_surgery"]
    )
    assert r.exit_code == 2 and "--at 'end_of_surgery' refers to the event" in r.output
    assert "`at`" not in r.output  # the option, not the Python argument
    r = CliRunner().invoke(
        main, ["simulate", MODEL, "20 mg bolus at 0 h", "--until", "2h", "--window", "w=1h"]
    )
    assert r.exit_code == 2 and "--window" in r.output


def test_compare_keeps_every_threshold_of_an_output():
    r = CliRunner().invoke(
        main,
        ["compare", "domino_racemic", "5 mg bolus at 0 h", "--population", "healthy_volunteers",
         "--patients", "3", "--until", "2h", "--threshold", "cp=50ng/mL",
         "--threshold", "cp=150ng/mL"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "time cp > 50 ng/mL" in r.output and "time cp > 150 ng/mL" in r.output


@pytest.mark.parametrize("command", ["compare", "design"])
def test_a_second_target_is_refused(command):
    args = ["domino_racemic", "--population", "healthy_volunteers", "--patients", "3"]
    args = (
        [args[0], "5 mg bolus at 0 h", *args[1:]]
        if command == "compare"
        else [*args, "--bolus", "1"]
    )
    r = CliRunner().invoke(
        main,
        [command, *args, "--target", "cp >= 50 ng/mL for 50%", "--target", "cp >= 9 ng/mL for 5%"],
    )
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and "--target" in r.output and "given 2 times" in r.output


WARN = ["simulate", MODEL, "20 mg bolus at 0 h", "--weight", "130", "--until", "2h"]


def test_quiet_silences_the_package_warnings_but_not_errors():
    r = CliRunner().invoke(main, WARN)
    assert r.exit_code == 0 and "outside the studied range" in r.output
    r = CliRunner().invoke(main, ["--quiet", *WARN])
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output and "Cmax" in r.output
    r = CliRunner().invoke(main, ["-q", *WARN[:3], "--weight", "-5"])
    assert r.exit_code == 2 and "pkpd: error:" in r.output


def _run(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "pkpd.cli", *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, **env},
    )  # fmt: skip


def test_pythonwarnings_is_honoured():
    shown = _run(*WARN, env={"PYTHONWARNINGS": ""})
    assert shown.returncode == 0 and "pkpd: warning:" in shown.stderr
    r = _run(*WARN, env={"PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr and "Cmax" in r.stdout
    # Warnings made errors by the user are one-line errors.
    r = _run(*WARN, env={"PYTHONWARNINGS": "error::UserWarning"})
    assert r.returncode == 2 and r.stderr.startswith("pkpd: error: CovariateRangeWarning")
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("option", ["--at", "--window"])
def test_a_name_given_twice_is_refused(option):
    vals = ["a=1h", "a=2h"] if option == "--at" else ["a=0h..1h", "a=1h..2h"]
    r = CliRunner().invoke(
        main,
        ["simulate", MODEL, "20 mg bolus at 0 h", "--until", "2h",
         option, vals[0], option, vals[1]],
    )  # fmt: skip
    assert r.exit_code == 2 and option in r.output and "'a' is given twice" in r.output
