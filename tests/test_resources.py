"""Resources and inputs that used to crash: grid size, all-failed cohorts, band step, memory.

The memory estimate (:func:`pkpd.cohort.estimate_memory`) is compared with the peak resident
memory of fresh subprocesses (see :func:`_measure`), not with numbers of our own making.
"""

from __future__ import annotations

import subprocess
import sys
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
    one_line_error(r, "points", "10,000,000", "`every`", "`until`")
    assert list(tmp_path.iterdir()) == []


def test_the_grid_limit_is_checked_before_allocating():
    from pkpd.simulate import MAX_GRID_POINTS, GridError, time_grid

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

    from pkpd.cohort import simulate_cohort
    from pkpd.errors import SimulationError
    from pkpd.solvers import STATUS_MAX_STEPS

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
