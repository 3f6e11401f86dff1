"""Resources and inputs that used to crash: grid size, all-failed cohorts, band step, memory.

The memory estimate (:func:`pkpd.running.cohort.estimate_memory`) is compared with the peak resident
memory of fresh subprocesses (see :func:`_measure`), not with numbers of our own making.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

BIN = Path(sys.executable).parent / "pkpd"
MODEL = "fanta2015_otto2021"
REGIMEN = "lumbar_fusion_esketamine"
POP = "healthy_volunteers"
COHORT = ["--population", POP, "--patients", "5"]


def run(*args, cwd):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def one_line_error(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err.startswith("pkpd: error: ") and "\n" not in err, err
    assert "Traceback" not in r.stderr
    for f in fragments:
        assert f in err, (f, err)


# ----------------------------------------------------------------------------- grid


@pytest.mark.parametrize(
    ("grid", "cohort"),
    [
        (["--until", "1e306 day"], False),  # OverflowError before
        (["--until", "1e306 day"], True),
        (["--every", "1e-9h"], False),  # MemoryError (after 8 GB) before
        (["--every", "1e-9h"], True),
    ],
)
def test_a_grid_too_large_is_refused_before_allocation_in_one_line(tmp_path, grid, cohort):
    who = COHORT if cohort else ["--weight", "70"]
    r = run("simulate", MODEL, REGIMEN, *who, *grid, "--out", "x.nc", cwd=tmp_path)
    # The command's words: the options the user typed, not the Python arguments.
    one_line_error(r, "points", "10,000,000", "--every", "--until")
    assert "`every`" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_grid_limit_is_checked_before_allocating():
    from pkpd.running.simulate import MAX_GRID_POINTS, GridError, time_grid

    with pytest.raises(GridError, match=r"7\.6e\+10 points"):
        time_grid(0.0, "76 h", "1e-9 h")
    with pytest.raises(GridError, match="inf points"):
        time_grid(0.0, "1e306 day", "1 min")
    assert time_grid(0.0, MAX_GRID_POINTS - 1, 1.0).size == MAX_GRID_POINTS


# ----------------------------------------------------------------------------- failures


def test_a_cohort_where_every_patient_fails_is_one_line_and_writes_nothing(tmp_path):
    # rtol/atol far below rounding: every patient reaches the step budget (status 3).
    bad = ["--method", "dopri5", "--rtol", "1e-30", "--atol", "1e-30", "--until", "2h"]
    r = run("simulate", MODEL, REGIMEN, *COHORT, *bad, "--out", "x.nc", cwd=tmp_path)
    one_line_error(r, "5 of 5 patients failed", "maximum number of steps")
    assert list(tmp_path.iterdir()) == []


def test_the_api_returns_an_all_failed_cohort_with_its_statuses():
    import warnings

    from pkpd.engine.solvers import STATUS_MAX_STEPS
    from pkpd.errors import SimulationError
    from pkpd.running.cohort import simulate_cohort

    kw = dict(n=4, until="2 h", method="dopri5", rtol=1e-30, atol=1e-30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = simulate_cohort(MODEL, REGIMEN, POP, **kw)
        assert ds.attrs["n_failed"] == 4 and np.all(ds.status.values == STATUS_MAX_STEPS)
        with pytest.raises(SimulationError, match="4 of 4 patients failed"):
            simulate_cohort(MODEL, REGIMEN, POP, raise_on_failure="all", **kw)
        # "all" does not raise when some patients succeed.
        ok = simulate_cohort(MODEL, REGIMEN, POP, n=4, until="2 h", raise_on_failure="all")
    assert ok.attrs["n_failed"] == 0


# ----------------------------------------------------------------------------- band step


@pytest.mark.parametrize(("every", "band_min"), [("7 min", 14), ("4 min", 12), ("25 min", 25)])
def test_any_grid_step_gets_streaming_bands_from_the_cli(tmp_path, every, band_min):
    r = run(
        "simulate", MODEL, REGIMEN, *COHORT, "--every", every, "--until", "6 h", "--out",
        "c.nc", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    with xr.open_dataset(tmp_path / "c.nc") as ds:
        bt = ds.band_time.values
        assert np.allclose(np.diff(bt)[:-1], band_min / 60)
        assert np.isfinite(ds.band.values).all()


# ----------------------------------------------------------------------------- memory


def _peak_script(setup: str, run: str, report: str) -> str:
    """Python source run in a fresh interpreter: `setup` (imports, and a warm-up run that
    compiles or loads the kernels and fills caches), then the peak resident set is reset
    (Linux: /proc/self/clear_refs), `run` executes and `report` prints, as JSON, what the
    test compares with the increment of the peak over the resident set before `run`."""
    return (
        "import json, sys, warnings\nwarnings.simplefilter('ignore')\n"
        + textwrap.dedent(setup)
        + _PEAK
        + textwrap.dedent(run)
        + "inc = status('VmHWM:') - base\n"
        + textwrap.dedent(report)
    )


_PEAK = """
import ctypes, gc
gc.collect()
try:  # give freed heap memory back, so the run cannot hide in what the warm-up left free
    ctypes.CDLL("libc.so.6").malloc_trim(0)
except (OSError, AttributeError):
    pass
def status(key):
    with open("/proc/self/status") as fh:
        return next(int(x.split()[1]) * 1024 for x in fh if x.startswith(key))
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
base = status("VmRSS:")
"""

# A cohort request (JSON in argv[1]), warmed up with 3 patients; reports the estimate the
# guard used.
_MEASURE = _peak_script(
    """
    import pkpd.running.cohort
    from pkpd.running.cohort import simulate_cohort
    kw = json.loads(sys.argv[1])
    seen = []
    original = pkpd.running.cohort.estimate_memory
    def spy(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]
    pkpd.running.cohort.estimate_memory = spy
    simulate_cohort(**dict(kw, n=3))
    """,
    "simulate_cohort(**kw)\n",
    'print(json.dumps({"increment": inc, "estimate": seen[-1]}))\n',
)


def _measure(**kw) -> tuple[int, dict]:
    import json

    kw = {"model": MODEL, "regimen": REGIMEN, "population": POP, "until": "24 h", **kw}
    r = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(kw)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return out["increment"], out["estimate"]


def _can_measure() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


#: The estimate lies within these factors of the measured peak increment, give or take
#: SLACK bytes (for tiny cohorts, whose increment is below a megabyte of Python objects).
LOW, HIGH, SLACK = 0.67, 1.5, 4 * 1024**2


@pytest.mark.skipif(not _can_measure(), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize(
    "kw",
    [
        dict(n=3),  # summary, streaming bands
        dict(n=20_000),  # summary, streaming bands, three chunks
        dict(n=40_000, bands=False),  # summary only
        dict(n=30_000, chunk_size=1024, thresholds={"cp": ["50 ng/mL", "100 ng/mL"]}),
        dict(n=3, trajectories=True),  # was refused as 300 MB (chunk sized for 8,192)
        # Three weeks of minutes (41,881 points): was refused as needing 24.7 GB.
        dict(n=3, trajectories=True, regimen="fibromyalgia_esketamine_high", until=None),
        dict(n=5000, trajectories=True),  # kept trajectories, exact bands
        dict(n=5000, trajectories=["cp"], bands=False),
        dict(n=3000, trajectories=True, method="dopri5"),  # the chunk holds its own points
        dict(n=2000, trajectories=True, residual=True),
        dict(n=10_000, model="fanta2015_mm_s_ketamine"),  # [ode] model, Dopri5
        dict(n=1000, until="48 h", amounts=True, trajectory_dtype="float64", bands=False),
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_memory_estimate_follows_the_measured_peak(kw):
    increment, est = _measure(**kw)
    total = est["total"]
    assert LOW * increment - SLACK <= total <= HIGH * increment + SLACK, (
        f"estimate {total / 1e6:.1f} MB, measured {increment / 1e6:.1f} MB",
        est,
    )


def test_a_small_cohort_is_not_refused_for_a_whole_chunk():
    """3 patients with three weeks of trajectories need megabytes, not 24.7 GB."""
    import warnings

    from pkpd.running.cohort import simulate_cohort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = simulate_cohort(
            MODEL, "fibromyalgia_esketamine_high", POP, n=3, trajectories=True,
            memory_limit=50 * 1024**2,
        )  # fmt: skip
    assert ds.trajectory.shape[0] == 3 and ds.trajectory.shape[2] > 40_000


def test_the_advice_is_the_largest_cohort_the_check_accepts(monkeypatch):
    import re

    import pkpd.running.cohort
    from pkpd.running.cohort import CohortError, simulate_cohort

    calls = []
    original = pkpd.running.cohort.estimate_memory

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(pkpd.cohort, "estimate_memory", spy)
    limit = 400 * 1024**2
    with pytest.raises(CohortError) as exc:  # summary mode: about 0.5 kB per patient
        simulate_cohort(MODEL, REGIMEN, POP, n=10**7, memory_limit=limit)
    fit = int(re.search(r"at most about ([\d,]+) patients", str(exc.value))[1].replace(",", ""))
    args, kwargs = calls[0]
    assert original(fit, *args[1:], **kwargs)["total"] <= limit
    assert original(fit + 1, *args[1:], **kwargs)["total"] > limit
    assert 300_000 < fit < 1_000_000


_MEASURE_ONE = _peak_script(
    """
    from pkpd import simulate
    from pkpd.inputs.model import load_model
    from pkpd.running.simulate import estimate_single_memory
    model, until, every = sys.argv[1:4]
    simulate(model, "lumbar_fusion_esketamine", covariates={"weight": 70}, until="2 h")
    """,
    """
    ds = simulate(model, "lumbar_fusion_esketamine", covariates={"weight": 70}, until=until,
                  every=every)
    """,
    'print(json.dumps([inc, estimate_single_memory(load_model(model), ds.sizes["time"])]))\n',
)


@pytest.mark.skipif(not _can_measure(), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("model", [MODEL, "domino_racemic", "fanta2015_mm_s_ketamine"])
def test_single_patient_memory_estimate_follows_the_measured_peak(model):
    import json

    r = subprocess.run(
        [sys.executable, "-c", _MEASURE_ONE, model, "50 h", "1 s"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    increment, estimate = json.loads(r.stdout.strip().splitlines()[-1])
    assert LOW * increment - SLACK <= estimate <= HIGH * increment + SLACK, (estimate, increment)


def test_single_patient_is_guarded_in_the_api_and_the_cli(monkeypatch):
    from click.testing import CliRunner

    import pkpd.running.cohort
    import pkpd.running.resources
    from pkpd import simulate
    from pkpd.cli import main
    from pkpd.running.simulate import GridError

    with pytest.raises(GridError, match="360,001 output times needs about"):
        simulate(MODEL, REGIMEN, {"weight": 70}, until="100 h", every="1 s", memory_limit=10**7)
    monkeypatch.setattr(pkpd.running.resources, "available_memory", lambda: 100 * 1024**2)
    args = ["simulate", MODEL, REGIMEN, "--weight", "70", "--until", "100h", "--every", "1s"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    err = r.output.strip()
    assert err.startswith("pkpd: error: one patient on 360,001 output times") and "\n" not in err
    assert "--every" in err and "`every`" not in err


# ----------------------------------------------------------------------------- compare

COMPARE = dict(
    model=MODEL,
    regimens=[REGIMEN, "lumbar_fusion_esketamine_high", "0.5 mg/kg bolus at 0 h"],
    population=POP,
    anchors=REGIMEN,
)

_MEASURE_COMPARE = _peak_script(
    """
    import pkpd.analysis.design
    kw = json.loads(sys.argv[1])
    seen = []
    original = pkpd.analysis.design.compare_memory
    def spy(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]
    pkpd.analysis.design.compare_memory = spy
    pkpd.analysis.design.compare(**dict(kw, n=3))
    """,
    "pkpd.analysis.design.compare(**kw)\n",
    'print(json.dumps({"increment": inc, "estimate": seen[-1]}))\n',
)


@pytest.mark.skipif(not _can_measure(), reason="needs Linux /proc/self/clear_refs")
def test_compare_memory_estimate_follows_the_measured_peak():
    import json

    r = subprocess.run(
        [sys.executable, "-c", _MEASURE_COMPARE, json.dumps(dict(COMPARE, n=20_000))],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    increment, total = out["increment"], out["estimate"]["total"]
    assert LOW * increment - SLACK <= total <= HIGH * increment + SLACK, (total, increment)


def test_compare_adds_up_what_it_holds_for_every_regimen(monkeypatch):
    """Each cohort run fits, the comparison does not: refused before any run, in one line."""
    from click.testing import CliRunner

    import pkpd.analysis.design
    import pkpd.running.cohort
    import pkpd.running.resources
    from pkpd.analysis.design import DesignError
    from pkpd.cli import main

    seen = []
    original = pkpd.analysis.design.compare_memory

    def spy(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    def must_not_run(*args, **kwargs):
        raise AssertionError("the comparison should have been refused before running")

    monkeypatch.setattr(pkpd.design, "compare_memory", spy)
    monkeypatch.setattr(pkpd.design, "_run", must_not_run)
    n = 60_000
    with pytest.raises(DesignError):
        pkpd.analysis.design.compare(**COMPARE, n=n, cohort_kwargs={"memory_limit": 1})
    mem = seen[0]
    assert mem["held"] > 0 and mem["total"] == mem["largest_run"] + mem["held"]
    limit = (mem["largest_run"] + mem["total"]) // 2  # every run fits, the sum does not
    with pytest.raises(DesignError, match=r"comparing 3 regimens on 60,000 patients") as exc:
        pkpd.analysis.design.compare(**COMPARE, n=n, cohort_kwargs={"memory_limit": limit})
    assert "at most about" in str(exc.value)
    monkeypatch.setattr(pkpd.running.resources, "available_memory", lambda: int(limit / 0.8))
    r = CliRunner().invoke(
        main, ["compare", MODEL, *COMPARE["regimens"], "--population", POP, "--patients",
               str(n), "--anchors-from", REGIMEN],
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    err = r.output.strip()
    assert err.startswith("pkpd: error: comparing 3 regimens") and "\n" not in err, err
