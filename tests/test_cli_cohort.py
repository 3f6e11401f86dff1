"""`pkpd simulate --patients` end to end, in subprocesses as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from pkpd.cohort import simulate_cohort

BIN = Path(sys.executable).parent / "pkpd"
MODEL = "fanta2015_otto2021"
REGIMEN = "lumbar_fusion_esketamine"
POP = "spine_fusion_china"
ARGS = [
    "simulate", MODEL, REGIMEN, "--patients", "3000", "--population", POP, "--seed", "7",
    "--until", "30 h", "--every", "5 min",
    "--window", "intraop=0h..end_of_surgery",
    "--window", "postop24=end_of_surgery..end_of_surgery+24h",
    "--threshold", "cp=50ng/mL", "--at", "eos=end_of_surgery",
]  # fmt: skip


def run(*args, cwd):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def api_cohort():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate_cohort(
            MODEL,
            REGIMEN,
            POP,
            n=3000,
            seed=7,
            until="30 h",
            every="5 min",
            windows={
                "intraop": ("0h", "end_of_surgery"),
                "postop24": ("end_of_surgery", "end_of_surgery+24h"),
            },
            thresholds={"cp": ["50ng/mL"]},
            at={"eos": "end_of_surgery"},
            progress=False,
        )


@pytest.mark.parametrize("name", ["cohort.zarr", "cohort.nc"])
def test_cohort_from_the_cli_equals_the_api_and_can_be_replaced(tmp_path, name):
    r = run(*ARGS, "--out", name, "--plot", "bands.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "3,000 patients" in r.stdout and "patients/s" in r.stdout
    assert "not a clinical dosing device" in r.stdout
    opener = xr.open_zarr if name.endswith(".zarr") else xr.open_dataset
    with opener(tmp_path / name) as back:
        back = back.load()
    ref = api_cohort()
    for v in ("cmax", "tmax", "auc", "time_above", "c_at", "status"):
        np.testing.assert_array_equal(back[v].values, ref[v].values, err_msg=v)
    np.testing.assert_array_equal(back.end_of_surgery.values, ref.end_of_surgery.values)
    assert (tmp_path / "bands.png").stat().st_size > 0
    # A second run with another seed replaces the file (a Zarr store is a folder).
    r = run(*[a if a != "7" else "8" for a in ARGS], "--out", name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with opener(tmp_path / name) as again:
        assert int(again.attrs["seed"]) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "bands.png"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--window", "postop=end_of_surgery"], "START..END"),
        (["--threshold", "cp"], "OUTPUT=CONC"),
        (["--window", "w=0h..nonsense_event"], "nonsense_event"),
    ],
)
def test_bad_cohort_options_fail_in_one_line_and_write_nothing(tmp_path, extra, message):
    r = run(*ARGS, *extra, "--out", "c.zarr", cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_that_is_not_a_zarr_store_is_refused(tmp_path):
    (tmp_path / "c.zarr").mkdir()
    (tmp_path / "c.zarr" / "notes.txt").write_text("mine")
    r = run(*ARGS, "--out", "c.zarr", cwd=tmp_path)
    assert r.returncode == 2 and "not a Zarr store" in r.stderr
    assert (tmp_path / "c.zarr" / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_killed_run_leaves_no_complete_looking_store(tmp_path):
    """Kill -9 while chunks are being appended: only the hidden temporary store remains."""
    args = [a if a != "3000" else "400000" for a in ARGS]
    proc = subprocess.Popen(
        [str(BIN), *args, "--chunk-size", "8192", "--out", "big.zarr"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            tmp = [p for p in tmp_path.iterdir() if p.name.startswith(".big.zarr.")]
            if tmp and (tmp[0] / ".zmetadata").exists():
                break  # the first chunk is written; the run is in the middle
            assert proc.poll() is None, "the run ended before it could be interrupted"
            time.sleep(0.05)
        else:
            pytest.fail("no temporary store appeared")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "big.zarr").exists()
    assert all(p.name.startswith(".big.zarr.") for p in tmp_path.iterdir())


def test_amounts_from_the_cli(tmp_path):
    r = run(
        "simulate", MODEL, REGIMEN, "--patients", "200", "--population", POP, "--until", "6 h",
        "--every", "10 min", "--amounts", "--trajectory-dtype", "float64", "--out", "a.nc",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    with xr.open_dataset(tmp_path / "a.nc") as back:
        assert back.amount.dtype == np.float64 and back.amount.attrs["units"] == "mg"
        assert back.amount.sizes == {"patient": 200, "compartment": 5, "time": 37}
        assert list(back.traj_output.values) == ["cp", "cp_norketamine"]  # implied
    r = run("simulate", MODEL, REGIMEN, "--weight", "70", "--amounts", cwd=tmp_path)
    assert r.returncode == 2 and "--amounts" in r.stderr


@pytest.mark.skipif(os.name != "posix", reason="signals")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_cleans_up_like_sigint_and_stale_temporaries_go(tmp_path, sig):
    """SIGTERM (or SIGINT) while chunks are appended: the temporary store is removed and
    the exit status is 128 + the signal; a temporary left by a dead run (kill -9) is
    removed at the start."""
    import re
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:63] or "localhost"
    stale = tmp_path / f".big.zarr.0123abcd.{dead.pid}@{host}.tmp"
    (stale / "cmax").mkdir(parents=True)
    (stale / "cmax" / "0").write_bytes(b"\0" * 4096)
    args = [a if a != "3000" else "400000" for a in ARGS]
    proc = subprocess.Popen(
        [str(BIN), *args, "--chunk-size", "8192", "--out", "big.zarr"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            tmp = [p for p in tmp_path.iterdir() if p.name.startswith(".big.zarr.")]
            if tmp and tmp[0] != stale and (tmp[0] / ".zmetadata").exists():
                break  # the first chunk is written; the run is in the middle
            assert proc.poll() is None, "the run ended before it could be interrupted"
            time.sleep(0.05)
        else:
            pytest.fail("no temporary store appeared")
        assert not stale.exists()
    finally:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert err.strip().splitlines()[-1] == f"pkpd: interrupted ({sig.name})"
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_uppercase_zarr_extension_writes_a_store(tmp_path):
    r = run(*ARGS[:3], "--patients", "200", "--population", POP, "--until", "6 h",
            "--out", "c.ZARR", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    with xr.open_zarr(tmp_path / "c.ZARR") as back:
        assert back.sizes["patient"] == 200
    assert [p.name for p in tmp_path.iterdir()] == ["c.ZARR"]


def test_seed_beyond_64_bits_is_written_to_netcdf(tmp_path):
    seed = str(2**70)
    r = run(*ARGS[:3], "--patients", "200", "--population", POP, "--until", "6 h",
            "--seed", seed, "--out", "c.nc", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    with xr.open_dataset(tmp_path / "c.nc") as back:
        assert back.attrs["seed"] == seed
