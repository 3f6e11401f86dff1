"""Messages as the command's user reads them: CLI options, not the Python arguments behind
them; the summary header and the end-of-infusion lines in plain words; click's own errors
in the one-line format of every other error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import pkpd
from pkpd.cli import _cli_words, main
from pkpd.errors import ModelError
from pkpd.inputs.model import load_model
from pkpd.running.simulate import summarize

BIN = Path(sys.executable).parent / "pkpd"
MODEL, REG = "fanta2015_otto2021", "lumbar_fusion_esketamine"
COHORT = ["--patients", "20", "--population", "healthy_volunteers", "--until", "6h"]


def error_of(*args) -> str:
    """The one error line of a failing command (exit status 2)."""
    r = CliRunner().invoke(main, ["--quiet", *args])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("pkpd: error: ")]
    assert len(lines) == 1, r.output
    return lines[0]


def test_patients_not_n():
    msg = error_of("simulate", MODEL, REG, "--patients", "0", "--population", "healthy_volunteers")
    assert "--patients must be a positive integer, got 0" in msg and "`n`" not in msg


def test_patients_beyond_a_covariate_table(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("id,weight,age,sex\n1,70,30,M\n2,80,40,F\n")
    msg = error_of("simulate", MODEL, REG, "--patients", "5", "--population", str(table))
    assert "--patients 5 but the covariate table" in msg
    assert msg.endswith("pass --patients <= 2")
    assert "`n`" not in msg and "pass n " not in msg


def test_memory_refusal_advises_cli_options():
    # 10^8 patients keeping every output each second for 100 h: petabytes, refused before
    # anything is allocated, whatever the machine.
    msg = error_of(
        "simulate", MODEL, REG, "--patients", "100000000", "--population",
        "healthy_volunteers", "--trajectories", "all", "--every", "1s", "--until", "100h",
    )  # fmt: skip
    assert "fewer trajectories (--trajectories) or use a coarser --every" in msg
    assert "trajectory_every" not in msg and "band_every" not in msg


@pytest.mark.parametrize(
    "extra,expected,python",
    [
        (["--threshold", "nope=5ng/mL"], "--threshold: unknown output 'nope'", "`thresholds`"),
        (["--range", "cp=5..1ng/mL"], "--range cp '5..1ng/mL': the low bound", "`ranges"),
        (["--at", "x=nope"], "--at 'nope' refers to the event `nope`", "`at`"),
    ],
)
@pytest.mark.parametrize("cohort", [False, True])
def test_metric_options_named_as_options(extra, expected, python, cohort):
    msg = error_of("simulate", MODEL, REG, *extra, *(COHORT if cohort else ["--until", "6h"]))
    assert expected in msg and python not in msg


def test_missing_event_time_names_anchor_option():
    msg = error_of("simulate", MODEL, "0.1 mg/kg bolus at end_of_surgery", "--weight", "70")
    assert "pass --anchor end_of_surgery=4h" in msg and "anchors=" not in msg


def test_racemic_option_named():
    msg = error_of("simulate", "domino_racemic", "asra_acute_pain_limits", "--racemic")
    assert msg.startswith("pkpd: error: --racemic: model 'domino_racemic'")
    assert "`racemic`" not in msg


def test_pd_drug_mismatch_says_what_to_do():
    # An S-ketamine endpoint on a racemic model, asked by a user who never passed --racemic.
    msg = error_of("simulate", "domino_racemic", "asra_acute_pain_limits", *COHORT,
                   "--pd", "olofsen2012_analgesia")  # fmt: skip
    assert "use a PD endpoint of racemic ketamine (`pkpd pd list`" in msg
    assert "an S-ketamine PK model with --racemic simulates their S half" in msg
    assert "`racemic`" not in msg and "pkpd.stereo" not in msg
    # The same endpoint on an S-ketamine model runs for a cohort, racemic doses included.
    for racemic in ([], ["--racemic"]):
        r = CliRunner().invoke(main, ["-q", "simulate", MODEL, "asra_acute_pain_limits", *COHORT,
                                      "--pd", "olofsen2012_analgesia", *racemic])  # fmt: skip
        assert r.exit_code == 0, r.output
    # The API names its argument and the option.
    with pytest.raises(ModelError, match=r"with `racemic` \(CLI --racemic\)"):
        pkpd.simulate("domino_racemic", "1 mg bolus at 0 h", covariates={"weight": 70},
                      until="1 h", pd="olofsen2012_analgesia")  # fmt: skip


def test_covariate_default_warning_names_the_option():
    r = subprocess.run(
        [str(BIN), "simulate", MODEL, REG, "--until", "1h"],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": ""}, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "(pass --weight to silence this)" in r.stderr and "`weight` to" not in r.stderr


def test_grid_options_named_but_not_a_bolus_series_interval():
    msg = error_of("simulate", MODEL, REG, "--every", "1s", "--until", "10000h")
    assert "choose a larger --every or an earlier --until" in msg and "`every`" not in msg
    msg = error_of("simulate", MODEL, REG, "--method", "exact", "--rtol", "1e-3")
    assert "--rtol" in msg
    # The interval of a repeated bolus is a word of the regimen, not the --every option.
    msg = error_of("simulate", MODEL, "1 mg bolus every 0 h from 0 h for 4 h")
    assert "the interval `every` must be a positive time" in msg and "--every" not in msg
    assert _cli_words("`rtol`/`atol` apply to the adaptive methods; method='exact' is exact") == (
        "--rtol/--atol apply to the adaptive methods; --method 'exact' is exact"
    )
    text = "x.toml: `bolus[0].every`: missing: `until`, `for` and `count` repeat a bolus"
    assert _cli_words(text) == text


def test_cli_words_leaves_file_keys_alone():
    assert _cli_words("m.toml: `n`: expected an integer") == "m.toml: `n`: expected an integer"
    assert _cli_words("x.toml: `anchors.eos.default`: bad") == "x.toml: `anchors.eos.default`: bad"
    assert _cli_words("`anchor_times` (CLI --anchor) eos='x': bad") == "--anchor eos='x': bad"
    assert _cli_words("`until` must be positive") == "--until must be positive"
    assert _cli_words("(pass `height` to silence this)") == (
        "(pass --covariate height=VALUE to silence this)"
    )


def test_summary_header_in_words():
    spec = load_model(MODEL)
    tags = {p.source.tag for p in spec.parameters.values()}
    assert tags == {"code"} and spec.sampling_site == "venous"  # what the file says
    r = CliRunner().invoke(main, ["-q", "simulate", MODEL, REG, "--weight", "70", "--until", "6h"])
    assert r.output.splitlines()[0] == (
        f"model: {MODEL} (S-ketamine; venous samples; parameters: "
        f"{len(spec.parameters)} verified in cited code)"
    )
    r = CliRunner().invoke(
        main, ["-q", "simulate", "domino_racemic", "1 mg/kg over 30 min from 0 h", "--weight", "70"]
    )
    head = r.output.splitlines()[0]
    assert "sampling site not reported" in head and "not reported sampling" not in head
    assert " code" not in head.replace("uncited code", "")


def test_rate_step_is_not_an_end_of_infusion():
    # lumbar_fusion_esketamine: 0.125 mg/kg/h to the end of surgery (4 h), then
    # 0.02 mg/kg/h for 48 h: 4 h is a change of rate, 52 h the end of the infusion.
    r = CliRunner().invoke(main, ["-q", "simulate", MODEL, REG, "--weight", "70", "--until", "60h"])
    assert r.exit_code == 0, r.output
    assert "rate change at 4 h" in r.output and "end of infusion at 4 h" not in r.output
    assert "end of infusion at 52 h" in r.output
    reg = pkpd.load_regimen("2 mg/h from 0 h to 2 h; 1 mg/h from 1 h to 3 h")
    ds = pkpd.simulate(MODEL, reg, covariates={"weight": 70}, until="4 h", every="30 min")
    summ = summarize(ds, reg)
    assert [t for t, _ in summ.at_infusion_end] == [2.0, 3.0] and summ.rate_changes == (2.0,)


def test_click_errors_one_line_with_help_hint():
    for args, text in (
        (["simulate"], "pkpd: error: Missing argument 'MODEL' (see 'pkpd simulate --help')"),
        (["regimens", "show"], "Missing argument 'NAME' (see 'pkpd regimens show --help')"),
        (["regimens", "--nope"], "No such option '--nope' (see 'pkpd regimens --help')"),
    ):
        r = CliRunner().invoke(main, args, prog_name="pkpd")
        assert r.exit_code == 2 and r.output.count("\n") == 1 and text in r.output


@pytest.mark.parametrize(
    ("typed", "suggested"),
    [("--wieght", "--weight"), ("--plot-windw", "--plot-window"), ("--patiens=5", "--patients")],
)
def test_a_misspelled_option_is_named_with_a_suggestion(typed, suggested):
    # simulate lets values starting with '-' through (negative regimens reach the regimen
    # parser); a misspelled long option must still be refused by name, not as "extra
    # arguments".
    msg = error_of("simulate", MODEL, REG, typed, "70")
    assert f"No such option '{typed.split('=')[0]}'" in msg and suggested in msg, msg
    assert "extra argument" not in msg
    assert "simulate --help" in msg  # CliRunner names the program "main"


def test_a_negative_regimen_still_reaches_the_regimen_parser():
    msg = error_of("simulate", MODEL, "-5 mg bolus at 0 h", "--weight", "70")
    assert "negative" in msg and "-5 mg" in msg, msg
