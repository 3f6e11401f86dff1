"""What a report says: the run's warnings, every metric of the dataset, the title once, the
assumed inputs, for each kind of result (one patient, cohort, comparison, design grid); and
how a run records its warnings (attrs["warnings"])."""

from __future__ import annotations

import base64
import html
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import pkpd
from pkpd.analysis import design as designs
from pkpd.errors import CovariateRangeWarning, PkpdWarning
from pkpd.inputs.population import load_population
from pkpd.output.report import render_report
from pkpd.running.warning_log import read_warnings, record_warnings

MODEL = "fanta2015_otto2021"
POP = "spine_fusion_china"  # ages 18-80: outside the model's studied 18-40 years
REG = "lumbar_fusion_esketamine"  # its end_of_surgery distribution is tagged illustrative
GRID = dict(until="30 h", every="10 min")
METRICS = dict(
    thresholds={"cp": ["50 ng/mL"]},
    at={"eos": "end_of_surgery"},
    windows={"w": ("0 h", "4 h")},
    ranges={"cp": ["50..150 ng/mL"]},
)
TARGET = "cp >= 50 ng/mL for 50% of 0h..end_of_surgery"
TITLES = {
    "single": "One patient",
    "cohort": "Cohort",
    "compare": "Regimen comparison",
    "design": "Regimen design",
}


def _run(fn):
    """The result of `fn()` and the messages of the warnings the run raised."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = fn()
    return ds, [str(w.message) for w in rec if issubclass(w.category, PkpdWarning)]


@pytest.fixture(scope="module")
def results():
    runs = {
        "single": lambda: pkpd.simulate(
            MODEL, REG, covariates={"weight": 70, "age": 60}, **GRID, **METRICS
        ),
        "cohort": lambda: pkpd.simulate_cohort(MODEL, REG, POP, 40, 5, **GRID, **METRICS),
        "compare": lambda: designs.compare(
            MODEL,
            [REG, "lumbar_fusion_esketamine_high"],
            POP,
            40,
            5,
            target=TARGET,
            risks=["psychotomimetic"],
            n_draws=200,
            **GRID,
            **METRICS,
        ),
        "design": lambda: designs.design(
            MODEL,
            POP,
            40,
            5,
            bolus=[0, 0.3],
            rate=[0.1],
            duration=["end_of_surgery"],
            anchors=REG,
            target=TARGET,
            risk="psychotomimetic",
            n_draws=200,
            **GRID,
        ),
    }
    out = {}
    for kind, fn in runs.items():
        ds, warned = _run(fn)
        out[kind] = (ds, warned, render_report(ds))
    return out


def _body(page: str) -> str:
    return page.split("<body>", 1)[1]


def _cells(page: str) -> str:
    """The text of every table cell and code span, one per line (figures left out)."""
    found = re.findall(r"<(?:td|th|code)[^>]*>(.*?)</(?:td|th|code)>", page, flags=re.S)
    return "\n".join(html.unescape(c) for c in found)


@pytest.mark.parametrize("kind", list(TITLES))
def test_each_kind_renders_self_contained_with_its_title_once(results, kind):
    _ds, _, page = results[kind]
    assert not re.search(r"https?://", page) and "<script" not in page.lower()
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert srcs
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    heading = f"{TITLES[kind]}: {MODEL}"
    body = _body(page)
    assert body.count("<h1>") == 1 and body.count(heading) == 1
    assert f"<h1>{heading}</h1>" in body
    # Provenance once: each attribute is one row of one table.
    for key in ("model_citation", "model_doi", "package"):
        assert body.count(f"<td>{key}</td>") == 1


@pytest.mark.parametrize("kind", list(TITLES))
def test_every_data_variable_is_named(results, kind):
    ds, _, page = results[kind]
    cells = _cells(page)
    for v in ds.data_vars:
        assert re.search(rf"(?<![\w]){re.escape(str(v))}(?![\w])", cells), v


@pytest.mark.parametrize("kind", list(TITLES))
def test_warnings_of_the_run_are_in_the_report(results, kind):
    ds, warned, page = results[kind]
    assert warned, "the run was chosen to raise covariate-range warnings"
    recorded = read_warnings(ds.attrs)
    section = page.split("<h2>Warnings raised during the run</h2>", 1)[1].split("<h2>", 1)[0]
    for msg in warned:
        base = msg.split(" (raised ")[0]
        assert html.escape(base) in section
        assert any(w["message"] == base for w in recorded)
    if kind in ("compare", "design"):
        # Every regimen / grid point is a cohort of the same patients: each of its range
        # warnings is raised once per run, so counted once per regimen / grid point.
        runs = ds.sizes["regimen"] if kind == "compare" else ds.regimen.size
        ages = [w for w in recorded if " have age " in w["message"]]
        assert len(ages) == 1 and ages[0]["count"] == runs
        assert f"(raised {runs} times)" in section


@pytest.mark.parametrize("kind", list(TITLES))
def test_assumed_surgery_duration_is_reported(results, kind):
    _ds, _, page = results[kind]
    assert "No assumed or illustrative values" not in page
    section = page.split("<h2>Assumed and illustrative values</h2>", 1)[1].split("<h2>", 1)[0]
    assert "event end_of_surgery" in section and "[illustrative]" in section


def test_cohort_metric_values_are_the_dataset_medians(results):
    ds, _, page = results["cohort"]
    ok = ds.status.values == 0
    for name, sel in (
        ("time_above", {"threshold": 0}),
        ("time_within", {"range": 0}),
        ("c_at", {"output": 0, "at": 0}),
        ("auc", {"output": 0, "window": 0}),
    ):
        v = ds[name].isel(sel).values[ok]
        lo, med, hi = np.percentile(v, [5, 50, 95])
        row = next(r for r in page.split("<tr>") if r.startswith(f"<td>{name} ["))
        assert f"{med:.4g} ({lo:.4g}-{hi:.4g})" in row


def test_single_patient_values_are_the_dataset_values(results):
    ds, _, page = results["single"]
    row = next(r for r in page.split("<tr>") if r.startswith("<td>time_above ["))
    assert f">{float(ds.time_above.values[0]):.4g}<" in row
    row = next(r for r in page.split("<tr>") if r.startswith("<td>dose_given<"))
    # 0.2 mg/kg bolus + 0.125 mg/kg/h x 4 h + 0.02 mg/kg/h x 26 h, at 70 kg, by 30 h.
    assert f"{70 * (0.2 + 0.125 * 4 + 0.02 * 26):.4g} at 30 h" in row


def test_no_assumed_sentence_only_when_nothing_is_assumed():
    ds = pkpd.simulate(MODEL, "0.3 mg/kg bolus at 0 h", covariates={"weight": 70}, until="4 h")
    assert ds.attrs["assumptions"] == "none"
    assert "No assumed or illustrative values are recorded" in render_report(ds)
    # The event at a time the caller gave is not the regimen file's illustrative one.
    fixed = pkpd.simulate(
        MODEL, REG, covariates={"weight": 70}, until="8 h", anchors={"end_of_surgery": "3 h"}
    )
    assert fixed.attrs["assumptions"] == "none"


def test_population_assumed_values():
    assert load_population(POP).assumed_values() == []
    lines = load_population("fibromyalgia_outpatients").assumed_values()
    assert len(lines) == 1
    assert lines[0].startswith("population fibromyalgia_outpatients age.high = 86: ")
    assert lines[0].endswith("[assumed]")


# ------------------------------------------------------------------ record_warnings


def _warn(text, n=1):
    for _ in range(n):
        warnings.warn(text, CovariateRangeWarning, stacklevel=2)


def test_record_warnings_counts_and_raises_each_once():
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with record_warnings() as log:
            _warn("a", 3)
            _warn("b")
        assert [(e["message"], e["count"]) for e in log.entries()] == [("a", 3), ("b", 1)]
    assert [str(w.message) for w in shown] == ["a (raised 3 times)", "b"]
    assert json.loads(log.attr())[0] == {
        "category": "CovariateRangeWarning",
        "message": "a",
        "count": 3,
    }


def test_record_warnings_nested_blocks_add_counts():
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with record_warnings() as outer:
            for _ in range(2):
                with record_warnings():
                    _warn("a", 2)
    assert outer.entries() == [{"category": "CovariateRangeWarning", "message": "a", "count": 4}]


def test_record_warnings_keeps_ignored_warnings_and_honours_error_filters():
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("ignore")
        with record_warnings() as log:
            _warn("quiet")
    assert not shown and log.entries()[0]["message"] == "quiet"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CovariateRangeWarning, match="loud"), record_warnings():
            _warn("loud")
        # An error inside the block is not replaced by a warning turned into an error.
        with pytest.raises(KeyError), record_warnings():
            _warn("first")
            raise KeyError("the run's own error")


# ------------------------------------------------------------------ the command line

BIN = Path(sys.executable).parent / "pkpd"


def test_cli_single_patient_report_carries_quiet_warnings(tmp_path):
    def run(*args):
        return subprocess.run(
            [str(BIN), *args], capture_output=True, text=True, cwd=tmp_path, timeout=300
        )

    sim = ["simulate", MODEL, "0.3 mg/kg bolus at 0 h", "--weight", "70", "--age", "60",
           "--until", "6h", "--threshold", "cp=50ng/mL", "--out"]  # fmt: skip
    loud = run(*sim, "one.nc")
    assert loud.returncode == 0, loud.stderr
    shown = [x.split("pkpd: warning: ", 1)[1] for x in loud.stderr.splitlines() if "warning" in x]
    assert any("age" in x for x in shown)
    quiet = run("--quiet", *sim, "quiet.nc")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr
    for nc in ("one.nc", "quiet.nc"):
        r = run("report", nc, "--out", "r.html")
        assert r.returncode == 0, r.stderr
        page = (tmp_path / "r.html").read_text()
        assert "<h1>One patient: fanta2015_otto2021</h1>" in page
        for msg in shown:
            assert html.escape(msg) in page
        assert "time_above" in _cells(page) and "10.1007/s00228-021-03104-1" in page


def test_design_events_are_credited_to_the_anchors_regimen(results):
    # The grid's end_of_surgery is the --anchors-from regimen's (illustrative) distribution,
    # not a property of the first grid point's one-line regimen.
    ds = results["design"][0]
    text = ds.attrs["assumptions"]
    assert f"event end_of_surgery of {REG}: " in text, text
    assert "mg/kg bolus at 0 h" not in text, text
