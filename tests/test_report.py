"""`pkpd compare`, `pkpd design` and `pkpd report` end to end; the report is self-contained."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

BIN = Path(sys.executable).parent / "pkpd"
MODEL = "fanta2015_otto2021"
POP = "spine_fusion_china"
COMMON = [
    "--population",
    POP,
    "--patients",
    "80",
    "--seed",
    "3",
    "--until",
    "36h",
    "--every",
    "10min",
]
TARGET = "cp >= 50 ng/mL for 50% of 0h..end_of_surgery"


def run(*args, cwd):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    c = run("compare", MODEL, "lumbar_fusion_esketamine", "lumbar_fusion_esketamine_high",
            *COMMON, "--threshold", "cp=50ng/mL", "--out", "cmp.nc", "--plot", "cmp.png",
            cwd=d)  # fmt: skip
    g = run("design", MODEL, *COMMON, "--bolus", "0,0.3", "--rate", "0.05,0.2",
            "--duration", "end_of_surgery", "--anchors-from", "lumbar_fusion_esketamine",
            "--target", TARGET, "--out", "grid.nc", "--plot", "heat.png", cwd=d)  # fmt: skip
    return d, c, g


def test_compare_cli(results):
    d, c, _ = results
    assert c.returncode == 0, c.stderr
    assert "lumbar_fusion_esketamine_high" in c.stdout
    assert re.search(r"Cmax cp \(ng/mL\)\s+[\d.]+ \([\d.]+-[\d.]+\)\s+[\d.]+ \(", c.stdout)
    assert "not a clinical dosing device" in c.stdout
    ds = xr.open_dataset(d / "cmp.nc", engine="h5netcdf")
    assert ds.attrs["kind"] == "compare" and ds.sizes["regimen"] == 2
    # The printed median Cmax is the stored one.
    med = ds.cmax.sel(regimen="lumbar_fusion_esketamine", output="cp", percentile=50.0)
    line = next(x for x in c.stdout.splitlines() if x.startswith("Cmax cp "))
    assert f"{float(med):.4g}" == line.split()[3]
    assert (d / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_design_cli(results):
    d, _, g = results
    if g.returncode != 0 and "pkpd.analysis.risk" in g.stderr:
        pytest.skip("pkpd.risk is not in this installation")
    assert g.returncode == 0, g.stderr
    assert "bolus (2) x rate (2) x duration (1)" in g.stdout
    ds = xr.open_dataset(d / "grid.nc", engine="h5netcdf")
    assert ds.pta.dims == ("bolus", "rate", "duration")
    assert f"best: {ds.attrs['best_regimen']}" in g.stdout
    assert ds.attrs["best_pta"] == float(np.nanmax(ds.pta.values))
    assert (d / "heat.png").stat().st_size > 10_000


def test_cli_bad_input_one_line(tmp_path):
    r = run("design", MODEL, *COMMON, "--bolus", "0,x", "--rate", "0.1", "--duration", "2",
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--bolus" in r.stderr
    r = run("compare", MODEL, "lumbar_fusion_esketamine", *COMMON, "--out", "x.txt", cwd=tmp_path)
    assert r.returncode == 2 and "x.txt" in r.stderr
    r = run("report", "missing.nc", "--out", "r.html", cwd=tmp_path)
    assert r.returncode == 2
    assert not list(tmp_path.iterdir())


def _check_self_contained(html: str, n_min: int) -> None:
    assert not re.search(r"https?://", html), "the report must not reference the network"
    assert "<script" not in html.lower()
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert len(srcs) >= n_min
    for s in srcs:
        assert s.startswith("data:image/png;base64,")
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "not a clinical dosing device" in html


def test_report_compare_and_design(results):
    d, c, g = results
    assert c.returncode == 0
    r = run("report", "cmp.nc", "--out", "cmp.html", cwd=d)
    assert r.returncode == 0, r.stderr
    html = (d / "cmp.html").read_text()
    _check_self_contained(html, 2)
    assert "Model provenance" in html and "10.1007/s00228-021-03104-1" in html
    assert "illustrative" in html  # the end_of_surgery distribution is labelled so
    assert "lumbar_fusion_esketamine_high" in html
    if g.returncode == 0:
        r = run("report", "grid.nc", "--out", "grid.html", cwd=d)
        assert r.returncode == 0, r.stderr
        gh = (d / "grid.html").read_text()
        _check_self_contained(gh, 1)
        assert "best:" in gh


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="headless Chromium not found at /usr/bin/chromium: install it with "
    "`apt-get install chromium` to render the report",
)
def test_report_renders_in_headless_chromium(results, tmp_path):
    d, c, _ = results
    assert c.returncode == 0
    page = tmp_path / "cmp.html"
    assert run("report", str(d / "cmp.nc"), "--out", str(page), cwd=tmp_path).returncode == 0
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1200,2400", page.as_uri()],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert shot.is_file()
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.ndim == 3 and img.shape[0] > 100
    # Non-blank: many distinct colours and a clear spread of intensity (figures drawn).
    assert np.unique((img[..., :3] * 255).astype(int).reshape(-1, 3), axis=0).shape[0] > 50
    assert float(img[..., :3].std()) > 0.05
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
