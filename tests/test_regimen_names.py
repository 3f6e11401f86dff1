"""Named one-line regimens (NAME=REGIMEN), distinct cut labels, and fixed event times
(`anchor_times`, CLI --anchor) in comparisons and designs (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest

from pkpd.analysis.design import compare, design
from pkpd.errors import PkpdError, RegimenError
from pkpd.inputs.regimen import load_regimen
from pkpd.output.plot import short_labels

pytestmark = pytest.mark.filterwarnings("ignore::pkpd.errors.CovariateRangeWarning")

MODEL = "fanta2015_otto2021"
POP = "spine_fusion_china"
GRID = {"until": "30 h", "every": "10 min", "bands": False}
ANCHORED = "0.3 mg/kg bolus at 0 h; 0.1 mg/kg/h from 0 h to end_of_surgery"
FIXED = "0.3 mg/kg bolus at 0 h; 0.1 mg/kg/h from 0 h to 3 h"


def test_name_prefix():
    r = load_regimen("low=0.1 mg/kg bolus at 0 h")
    assert r.name == "low"
    assert r.text == "0.1 mg/kg bolus at 0 h"
    assert r.doses == load_regimen("0.1 mg/kg bolus at 0 h").doses
    shipped = load_regimen("base.v-2=lumbar_fusion_esketamine")
    assert shipped.name == "base.v-2"
    assert shipped.doses == load_regimen("lumbar_fusion_esketamine").doses
    for bad in ("low dose=1 mg bolus at 0 h", "1x=1 mg bolus at 0 h", "=1 mg bolus at 0 h"):
        with pytest.raises(RegimenError, match="regimen name"):
            load_regimen(bad)
    with pytest.raises(RegimenError, match="one name per regimen"):
        load_regimen("a=b=1 mg bolus at 0 h")


def test_short_labels_stay_distinct():
    a = "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h"
    b = "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 8 h"
    out = short_labels([a, b, "low"], 28)
    assert len(set(out)) == 3 and out[2] == "low"
    assert all(len(x) <= 28 for x in out)
    assert out[0].endswith("4 h") and out[1].endswith("8 h")  # cut in the middle
    # Differences only in the middle: numbered.
    c, d = "x" * 20 + "A" + "y" * 20, "x" * 20 + "B" + "y" * 20
    out = short_labels([c, d], 28)
    assert len(set(out)) == 2 and all(len(x) <= 28 for x in out)
    # No collision: the plain prefix cut as before.
    assert short_labels([a, "short"], 28) == [a[:25] + "...", "short"]


def test_compare_names_and_clash():
    out = compare(
        MODEL, ["low=0.1 mg/kg bolus at 0 h", "high=0.3 mg/kg bolus at 0 h"], POP, 10, 1, **GRID
    )
    assert list(out.regimen.values) == ["low", "high"]
    assert list(out.regimen_text.values) == ["0.1 mg/kg bolus at 0 h", "0.3 mg/kg bolus at 0 h"]
    # Linear model: Cmax of every patient scales with the dose.
    np.testing.assert_allclose(
        out.cmax_patient.sel(regimen="high"), 3 * out.cmax_patient.sel(regimen="low"), rtol=1e-9
    )
    by_dict = compare(
        MODEL, {"low": "0.1 mg/kg bolus at 0 h", "high": "0.3 mg/kg bolus at 0 h"}, POP, 10, 1,
        **GRID,
    )  # fmt: skip
    np.testing.assert_array_equal(by_dict.cmax.values, out.cmax.values)
    assert list(by_dict.regimen.values) == ["low", "high"]
    with pytest.raises(PkpdError, match="both named 'a'"):
        compare(MODEL, ["a=0.1 mg/kg bolus at 0 h", "a=0.3 mg/kg bolus at 0 h"], POP, 10, 1)


def test_compare_anchor_equals_written_time():
    fixed = compare(MODEL, ["a=" + FIXED], POP, 25, 3, **GRID)
    anch = compare(MODEL, ["a=" + ANCHORED], POP, 25, 3, anchor_times={"end_of_surgery": "3h"},
                   **GRID)  # fmt: skip
    np.testing.assert_array_equal(anch.event_end_of_surgery.values, 3.0)
    for v in ("cmax_patient", "dose_patient", "dose_per_kg_patient", "cmax", "dose"):
        np.testing.assert_array_equal(anch[v].values, fixed[v].values)
    np.testing.assert_array_equal(
        anch.auc_patient.sel(window="0-24 h").values, fixed.auc_patient.sel(window="0-24 h").values
    )
    # The same patients as the ones a declared end_of_surgery would give (covariates).
    np.testing.assert_array_equal(anch.weight.values, fixed.weight.values)


def test_anchor_rules():
    with pytest.raises(PkpdError, match="given both a fixed time"):
        compare(MODEL, [ANCHORED], POP, 5, 0, anchors="lumbar_fusion_esketamine",
                anchor_times={"end_of_surgery": "3 h"}, **GRID)  # fmt: skip
    with pytest.raises(PkpdError, match="no regimen refers to the event `start`"):
        compare(MODEL, [ANCHORED], POP, 5, 0, anchor_times={"start": "3 h", "end_of_surgery": 3})
    with pytest.raises(PkpdError, match="anchor_times"):
        compare(MODEL, [ANCHORED], POP, 5, 0, anchor_times={"end_of_surgery": "3 kg"})
    # --anchor overrides a regimen file's own distribution of the event.
    out = compare(MODEL, ["lumbar_fusion_esketamine"], POP, 5, 0,
                  anchor_times={"end_of_surgery": 2.5}, **GRID)  # fmt: skip
    np.testing.assert_array_equal(out.event_end_of_surgery.values, 2.5)


def test_design_anchor_equals_written_time():
    kw = {"bolus": [0.3], "rate": [0.1], **{k: v for k, v in GRID.items() if k != "bands"}}
    a = design(MODEL, POP, 15, 2, duration=["end_of_surgery"],
               anchor_times={"end_of_surgery": "3 h"}, **kw)  # fmt: skip
    b = design(MODEL, POP, 15, 2, duration=[3], **kw)
    np.testing.assert_array_equal(a.cmax_median.values, b.cmax_median.values)
    np.testing.assert_array_equal(a.total_dose.values, b.total_dose.values)


def _cli(*args, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run(
        [sys.executable, "-m", "pkpd.cli", *args], capture_output=True, text=True, cwd=tmp_path,
        env=env, timeout=300,
    )  # fmt: skip


def test_cli_compare_names_and_anchor(tmp_path):
    common = ["--population", POP, "--patients", "20", "--until", "30h", "--every", "10min"]
    r = _cli("compare", MODEL, "low=" + ANCHORED, "high=0.6 mg/kg bolus at 0 h", *common,
             "--anchor", "end_of_surgery=3h", tmp_path=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"  low: {ANCHORED}" in r.stdout
    head = next(line for line in r.stdout.splitlines() if line.startswith("metric"))
    assert head.split() == ["metric", "low", "high"]
    r = _cli("compare", MODEL, ANCHORED, *common, "--anchor", "end_of_surgery=3h",
             "--anchors-from", "lumbar_fusion_esketamine", tmp_path=tmp_path)  # fmt: skip
    assert r.returncode != 0 and "given both a fixed time" in r.stderr
    r = _cli("simulate", MODEL, "low=0.3 mg/kg bolus at 0 h", "--weight", "70",
             tmp_path=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "regimen: low: 0.3 mg/kg bolus at 0 h" in r.stdout
