"""The command prints each distinct warning once per run, with its count (issue 16: `design`
printed one covariate-range warning per grid point before its table)."""

from __future__ import annotations

import warnings

from click.testing import CliRunner

from pkpd.cli import main

MODEL = "fanta2015_otto2021"
# Every patient of this population is older than Fanta's studied range (18-40 years).
DESIGN = ["design", MODEL, "--population", "spine_fusion_china", "--patients", "50",
          "--seed", "2", "--bolus", "0,0.1", "--rate", "0.05,0.1", "--duration", "2",
          "--every", "15 min"]  # fmt: skip
AGE = "have age ("


def _warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("pkpd: warning:")]


def test_design_prints_each_warning_once_with_its_count():
    before = list(warnings.filters)
    r = CliRunner().invoke(main, DESIGN)
    assert r.exit_code == 0, r.output
    lines = _warning_lines(r.stderr)
    assert len(lines) == len(set(lines))  # no warning twice
    age = [line for line in lines if AGE in line]
    # one cohort per grid point, 2 x 2 points: the same warning raised 4 times, shown once
    assert len(age) == 1 and age[0].endswith(
        "predictions for them are extrapolations (raised 4 times)"
    )
    assert "grid: bolus (2) x rate (2)" in r.stdout  # the table is still printed
    # the command's filters end with it (an in-process caller keeps its own)
    assert warnings.filters == before


def test_compare_counts_a_warning_per_regimen_and_quiet_prints_none():
    args = ["compare", MODEL, "0.1 mg/kg bolus at 0 h", "0.2 mg/kg bolus at 0 h",
            "--population", "spine_fusion_china", "--patients", "50", "--until", "4h"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    age = [line for line in _warning_lines(r.stderr) if AGE in line]
    assert len(age) == 1 and age[0].endswith("(raised 2 times)")
    for cmd in (args, DESIGN):
        r = CliRunner().invoke(main, ["--quiet", *cmd])
        assert r.exit_code == 0, r.output
        assert r.stderr == ""


def test_a_warning_raised_once_has_no_count():
    r = CliRunner().invoke(
        main, ["simulate", MODEL, "20 mg bolus at 0 h", "--weight", "130", "--until", "2h"]
    )
    assert r.exit_code == 0, r.output
    lines = _warning_lines(r.stderr)
    assert len(lines) == 1 and "outside the studied range" in lines[0]
    assert "raised" not in lines[0]
