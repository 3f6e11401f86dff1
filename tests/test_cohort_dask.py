"""Cohorts on dask.distributed: a local two-worker cluster gives the single-process cohort.

Every patient's random numbers depend only on the seed and the patient's index (fixed
blocks of 1024), so running the chunks as tasks on other processes must change nothing:
the comparison is bit for bit, on every data variable and coordinate.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pkpd.errors import CovariateRangeWarning
from pkpd.running.cohort import simulate_cohort

pytest.importorskip("distributed")

MODEL = "fanta2015_otto2021"
REGIMEN = "lumbar_fusion_esketamine"
POP = "healthy_volunteers"
EOS = "end_of_surgery"

BASE = {
    "n": 3000,  # three chunks of 1024 (the last partial)
    "seed": 21,
    "chunk_size": 1024,
    "until": "6 h",
    "every": "10 min",
    "thresholds": {"cp": ["80 ng/mL"], "cp_norketamine": ["40 ng/mL"]},
    "windows": {"intraop": ("0 h", EOS), "postop_24h": (EOS, f"{EOS} + 24 h")},
}
# Trajectories with residual error: covers the per-block residual-error stream too.
WITH_TRAJECTORIES = dict(BASE, trajectories=["cp"], residual=True)


def cohort(**kw):
    """The healthy volunteers partly lie outside the model's covariate ranges: the
    CovariateRangeWarning is expected (pyproject makes pkpd warnings errors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CovariateRangeWarning)
        return simulate_cohort(MODEL, REGIMEN, POP, **kw)


def assert_same(a, b, skip=()):
    """Every data variable and every coordinate of `a` and `b` equal, bit for bit."""
    assert sorted(a.data_vars) == sorted(b.data_vars)
    assert sorted(a.coords) == sorted(b.coords)
    for name in list(a.data_vars) + list(a.coords):
        if name in skip:
            continue
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


@pytest.fixture(scope="module")
def dask_with_trajectories():
    return cohort(dask="local", **WITH_TRAJECTORIES)


@pytest.fixture(scope="module")
def single_with_trajectories():
    return cohort(**WITH_TRAJECTORIES)


def test_local_cluster_equals_single_process():
    """Summary mode (no trajectories): every variable, the streaming bands included."""
    single = cohort(**BASE)
    distributed = cohort(dask="local", **BASE)
    assert distributed.sizes["patient"] == 3000
    assert np.all(distributed.status.values == 0)
    assert_same(single, distributed)


def test_local_cluster_equals_single_process_with_trajectories(
    dask_with_trajectories, single_with_trajectories
):
    """Per-patient variables and (noisy) trajectories bit for bit; bands in the next tests."""
    assert_same(single_with_trajectories, dask_with_trajectories, skip=("band",))
    np.testing.assert_array_equal(
        dask_with_trajectories.trajectory.values, single_with_trajectories.trajectory.values
    )


def test_dask_bands_are_exact_quantiles_of_the_returned_trajectories(dask_with_trajectories):
    """Trajectories gathered from the workers are in memory, so the bands are exact."""
    ds = dask_with_trajectories
    assert ds.band.attrs["method"].startswith("exact")
    np.testing.assert_array_equal(ds.band_time.values, ds.time.values)
    traj = ds.trajectory.sel(traj_output="cp").values.astype(np.float64)
    expected = np.quantile(traj, ds["quantile"].values, axis=0)
    np.testing.assert_array_equal(ds.band.sel(band_output="cp").values, expected)


def test_dask_bands_equal_single_process_bands(dask_with_trajectories, single_with_trajectories):
    np.testing.assert_array_equal(
        dask_with_trajectories.band.values, single_with_trajectories.band.values
    )


def test_a_pca_cohort_on_a_local_cluster_equals_the_single_process_one():
    """The PCA pump's demand streams are drawn per block from the seed: Dask workers
    change nothing either (issue 17), the further drugs of its reservoir included (the
    shipped three-drug reservoir: the sufentanil pump's loop, then S-ketamine and
    dexmedetomidine on its deliveries, each with its own random-effect stream)."""
    kw = dict(n=2500, seed=5, chunk_size=1024, until="30 h", every="15 min",
              at={"day1": "end_of_surgery + 24 h"}, bands=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ("gepts1995_sufentanil", "spine_fusion_multimodal_pca", "spine_fusion_china")
        single = simulate_cohort(*args, **kw)
        distributed = simulate_cohort(*args, dask="local", **kw)
    assert "pca_deliveries" in single and single.pca_deliveries.sum() > 0
    assert "s_ketamine_cp" in single.output.values and "param_s_ketamine_CL" in single
    assert_same(single, distributed)
