"""A summary-mode cohort from the command against the API (issue 15), group ``cli-cohort``.

Workload: the shipped ``fanta2015_otto2021`` model (its own variability), healthy
volunteers, 0.3 mg/kg bolus, 0.2 mg/kg/h for 4 h, 0.05 mg/kg/h to 48 h, every minute over
0-48 h, no bands, 300,000 patients, seed 1. Rows, measured next to each other in one run:

* ``api``: ``pkpd.simulate_cohort`` in memory (the reference rate);
* ``cli-zarr`` / ``cli-nc``: ``pkpd simulate ... --out FILE`` run in-process through click
  (so that the interpreter's start and the imports are not counted: the start-up is the
  ``startup`` group), writing the store or the file.

Each timed round follows an untimed one on the same shapes (compilation excluded).
Patients per second are in ``extra_info["patients_per_s"]``; the issue's goal is the
command at 0.8x the API's rate or better, whatever the output format.
"""

from __future__ import annotations

import shutil
import warnings

import pytest
from click.testing import CliRunner

import pkpd
from pkpd.cli import main

REGIMEN = "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h; 0.05 mg/kg/h from 4 h to 48 h"
N = 300_000
ARGS = ["fanta2015_otto2021", REGIMEN, "--patients", str(N), "--population",
        "healthy_volunteers", "--until", "48h", "--every", "1min", "--no-bands", "--seed",
        "1"]  # fmt: skip


def _api_cohort(regimen, population, n, **grid):
    """A summary-mode cohort of the shipped model through the API, no bands, seed 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pkpd.simulate_cohort("fanta2015_otto2021", regimen, population, n,
                                    bands=False, seed=1, progress=False, **grid)  # fmt: skip


def _rate(benchmark):
    benchmark.extra_info["patients"] = N
    benchmark.extra_info["patients_per_s"] = N / benchmark.stats.stats.median


@pytest.mark.benchmark(group="cli-cohort")
def test_api(benchmark):
    def run():
        return _api_cohort(REGIMEN, "healthy_volunteers", N, until="48 h", every="1 min")

    run()
    benchmark.pedantic(run, rounds=3, iterations=1)
    _rate(benchmark)


@pytest.mark.benchmark(group="cli-cohort")
@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_cli(benchmark, tmp_path, suffix):
    out = tmp_path / f"cohort{suffix}"

    def run():
        if out.is_dir():
            shutil.rmtree(out)
        r = CliRunner().invoke(main, ["--quiet", "simulate", *ARGS, "--out", str(out)])
        assert r.exit_code == 0, r.output

    run()
    benchmark.pedantic(run, rounds=3, iterations=1)
    _rate(benchmark)


# ----------------------------------------------------------------------------- design
# The design row: a 5 x 5 bolus x rate grid x 10,000 patients (anchored target
# window, risk) from the command, next to a summary-mode cohort of as many
# patient-simulations (250,000) through the API, in the same run (group ``design``).
DESIGN = ["--quiet", "design", "fanta2015_otto2021", "--population", "spine_fusion_china",
          "--patients", "10000", "--seed", "1", "--bolus", "0,0.1,0.2,0.3,0.4", "--rate",
          "0.1,0.2,0.3,0.4,0.5", "--duration", "end_of_surgery", "--anchors-from",
          "lumbar_fusion_esketamine", "--target",
          "cp >= 50 ng/mL for 50% of 0h..end_of_surgery", "--risk", "psychotomimetic",
          "--risk-rule", "mean", "--max-risk", "0.1"]  # fmt: skip


@pytest.mark.benchmark(group="design")
def test_design_grid(benchmark, tmp_path):
    def run():
        r = CliRunner().invoke(main, [*DESIGN, "--out", str(tmp_path / "grid.nc")])
        assert r.exit_code == 0, r.output

    run()
    benchmark.pedantic(run, rounds=2, iterations=1)
    benchmark.extra_info["patient_simulations"] = 250_000


@pytest.mark.benchmark(group="design")
def test_design_reference_cohort(benchmark):
    def run():
        return _api_cohort("lumbar_fusion_esketamine", "spine_fusion_china", 250_000)

    run()
    benchmark.pedantic(run, rounds=2, iterations=1)
    benchmark.extra_info["patient_simulations"] = 250_000


# ----------------------------------------------------------------------------- README cohort
# The first row: the README's cohort command (100,000 patients, two anchored AUC
# windows, a threshold, an anchored time, streaming bands, a `.zarr` store and the band
# figure), next to the same cohort in summary mode (`--no-bands`, no metrics, `.zarr`),
# from the command in the same run (group ``readme-cohort``). Goal: the first at 0.7x the
# second's rate or better.
README_COHORT = [
    "--quiet",
    "simulate",
    "fanta2015_otto2021",
    "lumbar_fusion_esketamine",
    "--patients",
    "100000",
    "--population",
    "spine_fusion_china",
    "--seed",
    "1",
]
README_METRICS = ["--window", "intraop=0h..end_of_surgery",
                  "--window", "postop24=end_of_surgery..end_of_surgery+24h",
                  "--threshold", "cp=50ng/mL", "--at", "eos=end_of_surgery"]  # fmt: skip


def _readme_run(benchmark, tmp_path, extra):
    out = tmp_path / "cohort.zarr"

    def run():
        if out.is_dir():
            shutil.rmtree(out)
        r = CliRunner().invoke(main, [*README_COHORT, *extra, "--out", str(out)])
        assert r.exit_code == 0, r.output

    run()
    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info["patients"] = 100_000
    benchmark.extra_info["patients_per_s"] = 100_000 / benchmark.stats.stats.median


@pytest.mark.benchmark(group="readme-cohort")
def test_readme_cohort(benchmark, tmp_path):
    _readme_run(benchmark, tmp_path, [*README_METRICS, "--plot", str(tmp_path / "bands.png")])


@pytest.mark.benchmark(group="readme-cohort")
def test_readme_cohort_summary(benchmark, tmp_path):
    _readme_run(benchmark, tmp_path, ["--no-bands"])
