"""Monte Carlo cohorts (pkpd.running.cohort.simulate_cohort) against mathematics and invariants.

Nothing here is compared with numbers copied from the program's output. Each patient of a
cohort is rebuilt independently with the single-patient solver ``pkpd.simulate`` (from the
covariates, the recovered random effects and the drawn end of surgery), and the cohort's
metrics are checked against what their definitions say of that exact trajectory:

* ``c_at`` and ``auc`` are exact (1e-9 relative); ``cmax``/``tmax`` are the maximum of the
  exact solution (issue 14: maxima between the evaluated points included), that of the
  single-patient path and at least the maximum over the evaluated points (grid, dose
  events, special times); stored trajectories are that same trajectory rounded to float32;
* ``time_above`` is the time above the threshold of the linear interpolant of the evaluated
  points, compared with a 5-s reference within a bound derived from the interpolation error
  ``h^2/8 max|c''|`` (see :func:`_time_above_tolerance`);
* random effects are recovered from the drawn parameters and their sample covariance is
  compared with the model's omega within a few standard errors; drawn end-of-surgery times
  with the moments of the declared truncated log-normal (scipy.stats.truncnorm);
* streaming percentile bands with the order statistics of the kept trajectories (half a
  logarithmic bin: sqrt(1.01) - 1 = 0.499 %, against numpy.quantile on several models);
* reproducibility: the same seed gives the same cohort bit for bit whatever the chunk size
  and the number of threads, and a cohort's first M patients are the cohort of M.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import os
import re
import warnings

import numba
import numpy as np
import pytest
import xarray as xr
from scipy import stats

import pkpd
import pkpd.running.cohort
from pkpd.errors import CovariateRangeWarning, PkpdError, SimulationError
from pkpd.inputs.population import CovariateTable
from pkpd.running import cohort as cohort_mod
from pkpd.running.cohort import QUANTILES, CohortError, simulate_cohort
from pkpd.running.request import CohortRequest
from pkpd.running.simulate import time_grid

MODEL = "fanta2015_otto2021"
REGIMEN = "lumbar_fusion_esketamine"
POP = "healthy_volunteers"
EOS = "end_of_surgery"
# The regimen file's declared distribution of the end of surgery (models/regimens/...).
EOS_MEDIAN, EOS_GSD, EOS_RANGE = 4.0, 1.3, (1.5, 10.0)
# The model's declared weight range (models/fanta2015_otto2021.toml); patients rebuilt with
# pkpd.simulate are taken inside it (outside it simulate warns, and warnings are errors).
WEIGHT_RANGE = (45.0, 97.0)


def cohort(population=POP, **kw):
    """`simulate_cohort` of the shipped model and regimen.

    The healthy-volunteer population partly lies outside the model's studied covariate
    ranges (age above 40 years, weights outside 45-97 kg), so the cohort's
    CovariateRangeWarning is expected and silenced here (pyproject makes it an error).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CovariateRangeWarning)
        return simulate_cohort(MODEL, REGIMEN, population, **kw)


def assert_same(a, b, skip=()):
    """Every data variable and every coordinate of `a` and `b` equal, bit for bit."""
    assert sorted(a.data_vars) == sorted(b.data_vars)
    assert sorted(a.coords) == sorted(b.coords)
    for name in list(a.data_vars) + list(a.coords):
        if name in skip:
            continue
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def per_patient(ds):
    """The variables of `ds` that have a patient dimension."""
    return [v for v in ds.data_vars if "patient" in ds[v].dims]


@pytest.fixture(scope="module")
def spec():
    return pkpd.load_model(MODEL)


def rebuild(spec, ds, i, times):
    """Patient `i` of cohort `ds`, simulated alone with pkpd.simulate at `times`.

    The random effects are recovered as log(individual / typical) from the cohort's drawn
    parameters; the drawn end of surgery is passed as the regimen's anchor.
    """
    w = float(ds.weight.values[i])
    typical = spec.individual_parameters({"weight": w}, warn=False)
    theta = np.array([float(ds[f"param_{p}"].values[i]) for p in spec.param_names])
    eta = dict(zip(spec.param_names, np.log(theta / typical), strict=True))
    np.testing.assert_allclose(
        spec.individual_parameters({"weight": w}, eta, warn=False), theta, rtol=1e-14
    )
    eos = float(ds[EOS].values[i])
    return pkpd.simulate(
        spec, REGIMEN, covariates={"weight": w}, eta=eta, anchors={EOS: eos}, times=times
    )


def in_range_patients(ds, k):
    """Up to `k` patients inside the model's weight range: the first ones, then the
    shortest and the longest surgery among them."""
    w = ds.weight.values
    ok = np.nonzero((w > WEIGHT_RANGE[0]) & (w < WEIGHT_RANGE[1]))[0]
    eos = ds[EOS].values[ok]
    chosen = [*ok[: k - 2], ok[np.argmin(eos)], ok[np.argmax(eos)]]
    return sorted(set(int(i) for i in chosen))


def value_at(sim, name, t):
    """Value of `name` in `sim` at time `t` (which must be one of its times, exactly)."""
    idx = np.nonzero(sim.time.values == t)[0]
    assert idx.size, t
    return float(sim[name].values[idx[-1]])


# ----------------------------------------------------------------------------- 1. reproducibility

REPRO = {
    "until": "6 h",
    "every": "5 min",
    "trajectories": ["cp"],
    "residual": True,  # so that the residual-error stream is covered too
    "thresholds": {"cp": ["80 ng/mL"]},
    "windows": {"intraop": ("0 h", EOS), "post": (EOS, f"{EOS} + 2 h")},
}
N_REPRO = 7000  # 7 blocks: 7 chunks of 1024, 3 chunks of 3072 (the last partial), 1 of 8192


@pytest.fixture(scope="module")
def repro_ref():
    return cohort(n=N_REPRO, seed=7, chunk_size=8192, **REPRO)


@pytest.mark.parametrize("chunk_size", [1024, 3072])
def test_chunk_size_does_not_change_the_cohort(repro_ref, chunk_size):
    ds = cohort(n=N_REPRO, seed=7, chunk_size=chunk_size, **REPRO)
    assert_same(repro_ref, ds)


def test_thread_count_does_not_change_the_cohort():
    kw = dict(n=2500, seed=3, chunk_size=1024, **REPRO)
    assert_same(cohort(threads=1, **kw), cohort(threads=2, **kw))


def test_different_seeds_give_different_cohorts(repro_ref):
    other = cohort(n=N_REPRO, seed=8, chunk_size=8192, **REPRO)
    for name in ("weight", "age", EOS, "param_V1", "param_CLN", "cmax", "trajectory"):
        a, b = repro_ref[name].values, other[name].values
        # Continuous draws of independent streams: (almost) never equal.
        assert np.mean(a == b) < 0.01, name


@pytest.mark.parametrize(("big", "small"), [(2500, 1000), (N_REPRO, 2500)])
def test_prefix_of_a_cohort_is_the_smaller_cohort(repro_ref, big, small):
    large = repro_ref if big == N_REPRO else cohort(n=big, seed=7, chunk_size=1024, **REPRO)
    part = large.isel(patient=slice(0, small))
    ds = cohort(n=small, seed=7, chunk_size=1024, **REPRO)
    # Percentile bands are whole-cohort summaries; everything per patient must agree.
    assert_same(part, ds, skip=("band",))


# ----------------------------------------------------------------------------- 2. exactness

EXACT_WINDOWS = {
    "intraop": ("0 h", EOS),
    "postop_24h": (EOS, f"{EOS} + 24 h"),  # ends after the grid: the kernel runs on to it
    "first_hour": ("0 h", "1 h"),
    # After the grid, across the end of the postoperative infusion (end of surgery + 48 h).
    "late": (f"{EOS} + 40 h", f"{EOS} + 50 h"),
}
EXACT_AT = {"at_0": "0 h", "eos": EOS, "eos_1h": f"{EOS} + 1 h", "at_3h": "3 h"}


def _exact_times(eos):
    """The windows' bounds and the `at` times of a patient (h)."""
    windows = {
        "intraop": (0.0, eos),
        "postop_24h": (eos, eos + 24.0),
        "first_hour": (0.0, 1.0),
        "late": (eos + 40.0, eos + 50.0),
    }
    at = {"at_0": 0.0, "eos": eos, "eos_1h": eos + 1.0, "at_3h": 3.0}
    return windows, at


# A uniform grid (the kernel's fast path) and one whose last step is shorter (7 min does
# not divide 12 h: the general path).
@pytest.fixture(scope="module", params=["2 min", "7 min"])
def exact_cohort(request):
    return cohort(
        n=300,
        seed=3,
        until="12 h",
        every=request.param,
        trajectories=["cp"],
        windows=EXACT_WINDOWS,
        at=EXACT_AT,
        bands=False,
    )


def test_each_patient_equals_a_single_patient_simulation(spec, exact_cohort):
    ds = exact_cohort
    grid = ds.time.values
    assert grid[0] == 0.0 and grid[-1] == 12.0
    assert ds.sizes["patient"] == 300 and np.all(ds.status.values == 0)
    outs = list(ds.output.values)
    for i in in_range_patients(ds, 6):
        eos = float(ds[EOS].values[i])
        windows, at = _exact_times(eos)
        # Points the kernel evaluates: the grid, the special times (window bounds, `at`
        # times) and the dose events up to the last of them (bolus and infusion start at
        # 0 h, rate changes at the end of surgery and 48 h later).
        events = [0.0, eos, eos + 48.0]
        specials = [t for ab in windows.values() for t in ab] + list(at.values())
        times = np.unique(np.concatenate([grid, specials, events]))
        sim = rebuild(spec, ds, i, times)
        for o in outs:
            for name, t in at.items():
                got = float(ds.c_at.sel(output=o, at=name).values[i])
                assert got == pytest.approx(value_at(sim, o, t), rel=1e-9, abs=1e-12), (i, o, name)
            for w, (a, b) in windows.items():
                want = value_at(sim, f"auc_{o}", b) - value_at(sim, f"auc_{o}", a)
                got = float(ds.auc.sel(output=o, window=w).values[i])
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (i, o, w)
            # Maximum of the exact solution over the grid's span, maxima between the
            # evaluated points included (issue 14): the single-patient path's, and at
            # least the maximum over the evaluated points (the later special points, on
            # the low postoperative infusion, are lower anyway).
            c = sim[o].values[times <= grid[-1]]
            cmax = float(ds.cmax.sel(output=o).values[i])
            tmax = float(ds.tmax.sel(output=o).values[i])
            assert cmax == pytest.approx(sim[o].attrs["cmax_exact"], rel=1e-9), (i, o)
            assert tmax == pytest.approx(sim[o].attrs["tmax_exact"], abs=1e-8), (i, o)
            assert cmax >= c.max() * (1 - 1e-12), (i, o)
        # Right after the 0.2 mg/kg bolus (right-continuous convention): dose / V1, in
        # ng/mL; no metabolite yet.
        c0 = ds.c_at.sel(at="at_0").values[i]
        v1 = float(ds.param_V1.values[i])
        w = float(ds.weight.values[i])
        assert c0[0] == pytest.approx(0.2 * w / v1 * 1000, rel=1e-12)
        assert c0[1] == 0.0
        traj = ds.trajectory.sel(traj_output="cp").values[i]
        assert traj.dtype == np.float32
        cp_grid = sim.cp.values[np.searchsorted(times, grid)]
        # float32 storage: two roundings (mg/L, then * 1000) of relative size 2^-24 each.
        np.testing.assert_allclose(traj, cp_grid, rtol=1e-6, atol=0)


def test_intraoperative_infusion_stops_at_each_patients_end_of_surgery(spec, exact_cohort):
    """The anchored regimen equals the explicit one written with the patient's drawn time."""
    ds = exact_cohort
    for i in in_range_patients(ds, 5):
        eos = float(ds[EOS].values[i])
        explicit = (
            f"0.2 mg/kg bolus at 0 h; 0.125 mg/kg/h from 0 h to {eos!r} h; "
            f"0.02 mg/kg/h from {eos!r} h for 48 h"
        )
        w = float(ds.weight.values[i])
        typical = spec.individual_parameters({"weight": w}, warn=False)
        theta = np.array([float(ds[f"param_{p}"].values[i]) for p in spec.param_names])
        eta = dict(zip(spec.param_names, np.log(theta / typical), strict=True))
        times = np.array([0.0, eos, eos + 24.0])
        sim = pkpd.simulate(spec, explicit, covariates={"weight": w}, eta=eta, times=times)
        # Dose given by the end of surgery: bolus + intraoperative infusion only.
        assert sim.dose_given.values[1] == pytest.approx(0.2 * w + 0.125 * w * eos, rel=1e-12)
        auc = sim.auc_cp.values
        got = ds.auc.sel(output="cp")
        assert float(got.sel(window="intraop").values[i]) == pytest.approx(
            auc[1] - auc[0], rel=1e-9
        )
        assert float(got.sel(window="postop_24h").values[i]) == pytest.approx(
            auc[2] - auc[1], rel=1e-9
        )
        assert float(ds.c_at.sel(output="cp", at="eos").values[i]) == pytest.approx(
            float(sim.cp.values[1]), rel=1e-9
        )


@pytest.fixture(scope="module")
def big_cohort():
    """20,000 patients on a short coarse grid (draws only matter here)."""
    return cohort(n=20_000, seed=11, until="2 h", every="10 min", bands=False)


def test_end_of_surgery_follows_the_declared_truncated_lognormal(big_cohort):
    t = big_cohort[EOS].values
    n = t.size
    assert np.all((t >= EOS_RANGE[0]) & (t <= EOS_RANGE[1]))
    mu, sigma = math.log(EOS_MEDIAN), math.log(EOS_GSD)
    a, b = ((math.log(x) - mu) / sigma for x in EOS_RANGE)
    dist = stats.truncnorm(a, b, loc=mu, scale=sigma)
    m, v, _, k = (float(x) for x in dist.stats(moments="mvsk"))
    x = np.log(t)
    # Standard errors of the sample mean and variance (excess kurtosis k).
    assert abs(x.mean() - m) < 4 * math.sqrt(v / n)
    assert abs(x.var(ddof=1) - v) < 4 * v * math.sqrt((2 + k) / n)
    # The whole distribution, not only two moments (fixed seed, so deterministic).
    assert stats.kstest(x, dist.cdf).pvalue > 1e-3


# ----------------------------------------------------------------------------- 4. time above


def _linear_time_above(t, c, thr):
    """Time above `thr` of the linear interpolant of (t, c)."""
    a, b, dt = c[:-1] - thr, c[1:] - thr, np.diff(t)
    both = (a >= 0) & (b >= 0)
    one = ~both & ((a > 0) | (b > 0))
    num = np.where(a > 0, a, b)
    frac = np.divide(num, np.abs(b - a), out=np.zeros_like(num), where=one)
    return float(np.sum(dt * np.where(both, 1.0, frac)))


def _time_above_tolerance(tf, cf, m, thr, safety=1.5):
    """Bound on |time above of the coarse interpolant - time above of the 5-s reference|.

    `tf`, `cf`: the reference samples, each coarse interval split into `m` equal parts (so
    coarse point j is fine point j*m). On a coarse interval of length h the linear
    interpolant L differs from c by at most delta = h^2/8 max|c''| (c is smooth between
    evaluated points: the dose events are evaluated points); L and c can only disagree about
    being above the threshold where |c - thr| <= delta, so the error of the coarse time
    above is at most the measure of that set. The same argument bounds the reference's own
    error with the fine step. max|c''| is estimated by second differences of the fine
    samples (times `safety`), and the measure by counting fine sub-intervals that come
    within delta of the threshold.
    """
    n_coarse = (tf.size - 1) // m
    tol = 0.0
    for j in range(n_coarse):
        t = tf[j * m : (j + 1) * m + 1]
        c = cf[j * m : (j + 1) * m + 1]
        hf = (t[-1] - t[0]) / m
        d2 = np.abs(np.diff(c, 2)) / hf**2
        c2 = safety * float(d2.max()) if d2.size else 0.0
        delta = (t[-1] - t[0]) ** 2 / 8 * c2
        eps = hf**2 / 8 * c2
        lo, hi = np.minimum(c[:-1], c[1:]), np.maximum(c[:-1], c[1:])
        dist = np.where((lo <= thr) & (thr <= hi), 0.0, np.minimum(abs(lo - thr), abs(hi - thr)))
        tol += hf * np.count_nonzero(dist <= delta + eps)  # the coarse interpolant's error
        tol += hf * np.count_nonzero(dist <= 2 * eps)  # the reference's own error
    return tol


def test_time_above_threshold_against_a_fine_reference(spec):
    thresholds = {"cp": ["60 ng/mL", "100 ng/mL"], "cp_norketamine": ["50 ng/mL"]}
    ds = cohort(
        n=200, seed=5, until="12 h", every="5 min", thresholds=thresholds, at={}, bands=False
    )
    labels = list(ds.threshold.values)
    thr = [("cp", 60.0), ("cp", 100.0), ("cp_norketamine", 50.0)]
    assert len(labels) == 3 and all(
        f"{v:g} ng/mL" in lab for lab, (_, v) in zip(labels, thr, strict=True)
    )
    # the same thresholds as numbers, and the grid span as numbers
    assert list(ds.threshold_output.values) == [o for o, _ in thr]
    np.testing.assert_allclose(ds.threshold_level.values, [v for _, v in thr], rtol=1e-12)
    assert list(ds.threshold_units.values) == ["ng/mL"] * 3
    assert ds.threshold_level.attrs["units"] == "ng/mL"
    assert (ds.attrs["grid_start_h"], ds.attrs["grid_end_h"]) == (0.0, 12.0)
    assert ds.attrs["grid_points"] == 145
    grid = time_grid(0.0, "12 h", "5 min")  # the cohort's grid (no trajectories kept)
    m = 60  # 5 min / 60 = 5 s
    crossed = 0
    for i in in_range_patients(ds, 8):
        eos = float(ds[EOS].values[i])
        coarse = np.unique(np.append(grid, eos))  # the points the kernel evaluates
        fine = np.concatenate(
            [a + (b - a) * np.arange(m) / m for a, b in itertools.pairwise(coarse)] + [coarse[-1:]]
        )
        sim = rebuild(spec, ds, i, fine)
        for j, (o, v) in enumerate(thr):
            got = float(ds.time_above.values[i, j])
            cf = sim[o].values
            # Same evaluated points, same definition (linear interpolation): exact.
            assert got == pytest.approx(
                _linear_time_above(coarse, cf[::m], v), rel=1e-9, abs=1e-12
            ), (i, o, v)
            # Against the 5-s reference: within the interpolation-error bound.
            ref = _linear_time_above(fine, cf, v)
            tol = _time_above_tolerance(fine, cf, m, v)
            assert abs(got - ref) <= tol + 1e-12, (i, o, v, got, ref, tol)
            crossed += 0.0 < ref < 12.0
            # The bound is an O(h^2) effect, a fraction of the 5-min step (it counts 5-s
            # sub-intervals near each crossing, so it is never below 5 s per crossing).
            assert tol < 2.5 / 60, (i, o, v, tol)
    assert crossed >= 5  # the thresholds are actually crossed


# ----------------------------------------------------------------------------- 5. IIV


def test_random_effects_have_the_models_omega(spec, big_cohort):
    ds = big_cohort
    n = ds.sizes["patient"]
    typical = spec.individual_parameters({"weight": ds.weight.values}, warn=False)
    theta = np.stack([ds[f"param_{p}"].values for p in spec.param_names], axis=1)
    eta = np.log(theta / typical)
    names = spec.param_names
    varied = [p for v in spec.variability for p in v.parameters]
    assert sorted(varied) == sorted(["V1", "CL", "VN1", "CLN"])
    # Parameters without variability are their typical values, exactly.
    for j, p in enumerate(names):
        if p not in varied:
            np.testing.assert_array_equal(theta[:, j], typical[:, j], err_msg=p)
    omega = np.zeros((len(names), len(names)))
    for v in spec.variability:
        idx = [names.index(p) for p in v.parameters]
        omega[np.ix_(idx, idx)] = v.omega
    idx = [names.index(p) for p in varied]
    om = omega[np.ix_(idx, idx)]  # includes the zero covariances between blocks
    e = eta[:, idx]
    # Standard errors: mean sqrt(w_ii / n); covariance sqrt((w_ii w_jj + w_ij^2) / n)
    # (for a variance: w_ii sqrt(2 / n)).
    np.testing.assert_array_less(np.abs(e.mean(axis=0)), 4 * np.sqrt(np.diag(om) / n))
    s = np.cov(e, rowvar=False)
    se = np.sqrt((np.outer(np.diag(om), np.diag(om)) + om**2) / n)
    assert np.all(np.abs(s - om) < 4 * se), (s, om)


def test_without_iiv_every_patient_has_the_typical_parameters(spec):
    ds = cohort(n=300, seed=2, until="2 h", every="10 min", bands=False, iiv=False)
    typical = spec.individual_parameters({"weight": ds.weight.values}, warn=False)
    for j, p in enumerate(spec.param_names):
        np.testing.assert_array_equal(ds[f"param_{p}"].values, typical[:, j], err_msg=p)
    # The model's own allometry, as written in its file (V1 133 L, CL 95.2 L/h at 70 kg).
    w = ds.weight.values
    np.testing.assert_allclose(ds.param_V1.values, 133.0 * w / 70, rtol=1e-14)
    np.testing.assert_allclose(ds.param_CL.values, 95.2 * (w / 70) ** 0.75, rtol=1e-14)


def test_residual_error_is_the_models_proportional_error(spec):
    """Sampled observations: Y = F (1 + sd * eps), eps ~ N(0, 1) independent."""
    kw = dict(n=1000, seed=13, until="4 h", every="20 min", trajectories=True, bands=False)
    clean = cohort(**kw)
    noisy = cohort(residual=True, **kw)
    # Residual error only touches the stored observations, never the metrics.
    assert_same(clean, noisy, skip=("trajectory",))
    for o in ("cp", "cp_norketamine"):
        r = spec.residual[o]
        assert r.type == "proportional"
        f = clean.trajectory.sel(traj_output=o).values.astype(np.float64)
        y = noisy.trajectory.sel(traj_output=o).values.astype(np.float64)
        ok = f > 0  # no metabolite at 0 h
        assert np.all(y[~ok] == 0)
        eps = np.where(ok, y / np.where(ok, f, 1) - 1, np.nan) / r.proportional_sd
        e = eps[ok]
        n = e.size
        assert abs(e.mean()) < 4 / math.sqrt(n), o
        assert abs(e.var() - 1) < 4 * math.sqrt(2 / n), o
        # Independent from one observation time to the next.
        a, b = eps[:, 1:-1].ravel(), eps[:, 2:].ravel()
        assert abs(np.corrcoef(a, b)[0, 1]) < 4 / math.sqrt(a.size), o


# ----------------------------------------------------------------------------- 6. bands

HALF_BIN = math.sqrt(1.01)  # a reported streaming quantile is the bin's geometric centre


@pytest.mark.parametrize("slab", [1, 3 * 8 * 500 * 2, 10**9])
def test_exact_bands_slab_by_slab_equal_one_quantile_call(monkeypatch, slab):
    """Slabs of one, three or all band times give numpy.quantile over the whole array."""
    rng = np.random.default_rng(3)
    traj = rng.lognormal(3.0, 0.5, size=(500, 3, 40)).astype(np.float32)
    monkeypatch.setattr(pkpd.cohort, "BAND_SLAB_BYTES", slab)
    for idx, step in (([0, 2], 1), ([1], 3), ([0, 1, 2], 7)):
        got = pkpd.running.cohort._exact_bands(traj, idx, step)
        want = np.quantile(traj[:, idx, ::step].astype(np.float64), QUANTILES, axis=0)
        np.testing.assert_array_equal(got, want)


def test_streaming_bands_agree_with_exact_bands():
    kw = dict(n=4000, seed=9, until="8 h", every="10 min")
    exact = cohort(trajectories=["cp"], **kw)
    streaming = cohort(**kw)
    assert "exact" in exact.band.attrs["method"]
    assert "streaming" in streaming.band.attrs["method"]
    q = exact["quantile"].values
    np.testing.assert_array_equal(q, streaming["quantile"].values)
    np.testing.assert_array_equal(exact.band_time.values, streaming.band_time.values)
    np.testing.assert_array_equal(exact.band_time.values, exact.time.values)
    x = exact.trajectory.sel(traj_output="cp").values.astype(np.float64)  # (n, n_t)
    n = x.shape[0]
    # Exact bands: numpy.quantile (linear interpolation) of the stored trajectories.
    e = exact.band.sel(band_output="cp").values
    np.testing.assert_array_equal(e, np.quantile(x, q, axis=0))
    s = streaming.band.sel(band_output="cp").values
    xs = np.sort(x, axis=0)
    for qi, qq in enumerate(q):
        # The q-quantile of the empirical distribution is the order statistic X_(k),
        # k = ceil(q n) (1-based); allow either neighbour when q n is an integer up to
        # rounding.
        ks = {max(math.ceil(qq * n - 1e-9), 1), max(math.ceil(qq * n + 1e-9), 1)}
        k1, k2 = min(ks), max(ks)
        lo, hi = xs[k1 - 1], xs[k2 - 1]  # equal unless q n is an integer
        # Streaming: within half a logarithmic bin of X_(k) (relative error <= 0.5 %).
        assert np.all(s[qi] >= lo / HALF_BIN * (1 - 1e-9)), qq
        assert np.all(s[qi] <= hi * HALF_BIN * (1 + 1e-9)), qq
        # Exact vs streaming: numpy's linear interpolation at position q (n - 1) lies
        # between the order statistics next to X_(k), so the two differ by at most half a
        # bin of X_(k) plus the gap to the neighbouring order statistics.
        gap = xs[min(k2, n - 1)] - xs[max(k1 - 2, 0)]
        assert np.all(np.abs(s[qi] - e[qi]) <= (HALF_BIN - 1) * hi + gap + 1e-9), qq
    # And in the usual sense: the bands agree to about the bin width.
    np.testing.assert_allclose(s, e, rtol=0.02)


#: The documented bound of streamed bands against exact ones: the geometric centre of a
#: logarithmic bin is within a factor sqrt(1.01) of every value in it (see pkpd.cohort).
STREAM_BOUND = HALF_BIN - 1.0


@pytest.mark.parametrize(
    "model,regimen,population,n",
    [
        (MODEL, REGIMEN, POP, 1001),
        ("domino_racemic", "0.5 mg/kg bolus at 0 h; 1 mg/kg/h from 0.5 h to 2 h", POP, 2000),
        ("simons2022_s_ketamine", "20 mg over 1 h from 0 h", POP, 777),
        ("perezruixo2021_esketamine", "lumbar_fusion_esketamine_high", POP, 1500),
    ],
)
def test_streamed_bands_within_the_documented_bound_of_exact_order_statistics(
    model, regimen, population, n
):
    """Streamed bands (histograms) against numpy.quantile (linear interpolation between
    order statistics) of the stored trajectories of the same cohort: every band value, of
    every concentration output, within the documented relative bound (float32 values, so
    a relative slack of 1e-6 for rounding at a bin edge)."""
    kw = dict(n=n, seed=4, until="12 h", every="10 min", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CovariateRangeWarning)
        stored = simulate_cohort(model, regimen, population, trajectories=True, bands=False, **kw)
        streamed = simulate_cohort(model, regimen, population, **kw)
    assert "streaming" in streamed.band.attrs["method"]
    np.testing.assert_array_equal(streamed.band_time.values, stored.time.values)
    for o in streamed.band_output.values:
        x = stored.trajectory.sel(traj_output=o).values.astype(np.float64)
        exact = np.quantile(x, QUANTILES, axis=0)
        got = streamed.band.sel(band_output=o).values
        # Both order statistics inside the binned range: the relative bound. Values below
        # its lowest edge are reported as 0 (see pkpd.cohort): an absolute error below it.
        lower = np.quantile(x, QUANTILES, axis=0, method="lower")
        inside = lower >= pkpd.running.cohort.BAND_MIN_NG_ML
        assert inside.mean() > 0.9
        rel = np.abs(got[inside] / exact[inside] - 1)
        assert rel.max() <= STREAM_BOUND * (1 + 1e-6), (o, rel.max())
        bound = STREAM_BOUND * (1 + 1e-6) * exact + pkpd.running.cohort.BAND_MIN_NG_ML
        assert np.all(np.abs(got - exact) <= bound), o


# ----------------------------------------------------------------------------- 7. memory


def test_tiny_memory_limit_is_refused_with_options():
    with pytest.raises(CohortError) as exc:
        cohort(n=1000, until="2 h", every="10 min", trajectories=True, memory_limit=1)
    msg = str(exc.value)
    assert ".zarr" in msg
    assert re.search(r"at most about [\d,]+ patients", msg), msg


def test_memory_refusal_names_a_cohort_size_that_fits(monkeypatch):
    """The number of patients the message proposes passes the same check; a few more don't."""
    calls = []
    original = pkpd.running.cohort.estimate_memory

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(pkpd.cohort, "estimate_memory", spy)
    kw = dict(until="4 h", every="1 min", trajectories=True, bands=False, chunk_size=1024)
    probe = 10_000
    with pytest.raises(CohortError):
        cohort(n=probe, memory_limit=1, **kw)
    args, kwargs = calls[0]
    assert args[0] == probe

    def total(k):  # the same estimate for k patients
        return original(k, *args[1:], **kwargs)["total"]

    assert total(201) > total(200)
    limit = (total(200) + total(201)) // 2  # room for 200 patients, not 201
    with pytest.raises(CohortError) as exc:
        cohort(n=probe, memory_limit=limit, **kw)
    fit = int(re.search(r"at most about ([\d,]+) patients", str(exc.value))[1].replace(",", ""))
    assert fit == 200
    ds = cohort(n=fit, memory_limit=limit, **kw)  # accepted
    assert ds.sizes["patient"] == fit
    with pytest.raises(CohortError, match=r"\.zarr"):
        cohort(n=round(1.02 * fit) + 1, memory_limit=limit, **kw)


def test_memory_estimate_bounds_the_peak_allocation(monkeypatch):
    import tracemalloc

    seen = []
    original = pkpd.running.cohort.estimate_memory

    def spy(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(pkpd.cohort, "estimate_memory", spy)
    cohort(n=10, until="1 h", every="10 min")  # compile/load everything outside the trace
    tracemalloc.start()
    try:
        ds = cohort(n=8000, seed=1, until="24 h", every="1 min", trajectories=True, chunk_size=1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ds.trajectory.nbytes > 0.5 * seen[-1]["total"]  # trajectories dominate
    # numpy's allocations are traced; allow 25 % for Python objects and xarray overheads.
    assert peak <= 1.25 * seen[-1]["total"], (peak, seen[-1])


def test_memory_check_counts_trajectories_gathered_from_dask(monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the request should have been refused before running")

    monkeypatch.setattr(pkpd.cohort, "_run", must_not_run)
    kw = dict(n=100_000, until="82 h", every="1 min", trajectories=True)
    with pytest.raises(CohortError):  # refused without dask (trajectories ~ 4 GB)
        cohort(memory_limit=2 * 10**9, **kw)
    with pytest.raises(CohortError):  # the same trajectories end up in memory with dask
        cohort(memory_limit=2 * 10**9, dask="local", **kw)


# ----------------------------------------------------------------------------- 8. covariate table


def _write_table(path, n=50, seed=0):
    rng = np.random.default_rng(seed)
    weight = np.round(rng.uniform(50, 95, n), 1)
    age = np.round(rng.uniform(19, 39, n), 1)
    sex = rng.choice(["F", "M"], n)
    ids = [f"P{k:03d}" for k in range(n)]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("id,sex,age,weight [kg]\n")
        for row in zip(ids, sex, age, weight, strict=True):
            fh.write(",".join(str(x) for x in row) + "\n")
    return ids, sex, age, weight


def test_covariate_table_gives_one_patient_per_row(tmp_path):
    path = tmp_path / "patients.csv"
    ids, sex, age, weight = _write_table(path)
    table = CovariateTable.from_csv(path)
    # Every covariate is inside the model's ranges: no warning (warnings are errors here).
    ds = simulate_cohort(
        MODEL, REGIMEN, table, seed=1, until="6 h", every="10 min", bands=False, iiv=False
    )
    assert ds.sizes["patient"] == 50
    np.testing.assert_array_equal(ds.weight.values, weight)
    np.testing.assert_array_equal(ds.age.values, age)
    np.testing.assert_array_equal(ds.id.values, ids)
    np.testing.assert_array_equal(ds.sex.values, np.where(sex == "F", "female", "male"))
    np.testing.assert_allclose(ds.param_V1.values, 133.0 * weight / 70, rtol=1e-14)
    assert np.all(ds.status.values == 0)
    # The same table given by its path.
    by_path = simulate_cohort(
        MODEL, REGIMEN, str(path), seed=1, until="6 h", every="10 min", bands=False, iiv=False
    )
    assert_same(ds, by_path)


# ----------------------------------------------------------------------------- 9. output files

FILE_KW = dict(n=2500, seed=5, chunk_size=1024, until="6 h", every="10 min")


def listing(path):
    return sorted(os.listdir(path))  # includes dot-files (hidden temporary stores)


def test_netcdf_output_reads_back_equal(tmp_path):
    target = tmp_path / "c.nc"
    ds = cohort(trajectories=["cp"], out=target, **FILE_KW)
    mem = cohort(trajectories=["cp"], **FILE_KW)
    assert listing(tmp_path) == ["c.nc"]
    with xr.open_dataset(target) as back:
        back = back.load()
    assert_same(mem, back)
    assert_same(mem, ds)
    assert back.attrs["model"] == MODEL and int(back.attrs["seed"]) == 5


def test_zarr_output_reads_back_equal(tmp_path):
    target = tmp_path / "c.zarr"
    ds = cohort(trajectories=["cp"], out=target, **FILE_KW)
    assert listing(tmp_path) == ["c.zarr"]
    back = xr.open_zarr(target).load()
    mem = cohort(trajectories=["cp"], **FILE_KW)
    # Metrics, parameters, covariates and trajectories: bit for bit. The bands of a Zarr
    # run are streamed (the trajectories are not in memory), those of `mem` are exact.
    assert_same(mem, back, skip=("band",))
    assert_same(back, ds.load())
    streaming = cohort(**FILE_KW)  # no trajectories: streaming bands of the same values
    np.testing.assert_array_equal(
        back.band.sel(band_output="cp").values, streaming.band.sel(band_output="cp").values
    )
    assert back.attrs["model"] == MODEL and int(back.attrs["n_patients"]) == 2500


def test_zarr_output_replaces_an_existing_store(tmp_path):
    target = tmp_path / "c.zarr"
    cohort(out=target, **FILE_KW)
    kw = dict(FILE_KW, seed=6)
    cohort(out=target, **kw)
    assert listing(tmp_path) == ["c.zarr"]
    back = xr.open_zarr(target).load()
    assert_same(cohort(**kw), back)


@pytest.mark.parametrize("name", ["c.nc", "c.zarr"])
def test_failed_run_leaves_nothing_behind(tmp_path, monkeypatch, name):
    original = pkpd.running.cohort.run_chunk
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated failure in the second chunk")
        return original(*args, **kwargs)

    monkeypatch.setattr(pkpd.cohort, "run_chunk", failing)
    with pytest.raises(RuntimeError, match="second chunk"):
        cohort(trajectories=["cp"], out=tmp_path / name, **FILE_KW)
    assert len(calls) == 2
    assert listing(tmp_path) == []


@pytest.mark.parametrize("name", ["c.nc", "c.zarr"])
def test_failed_run_keeps_the_previous_output(tmp_path, monkeypatch, name):
    target = tmp_path / name
    cohort(out=target, **FILE_KW)
    original = pkpd.running.cohort.run_chunk
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated failure in the second chunk")
        return original(*args, **kwargs)

    monkeypatch.setattr(pkpd.cohort, "run_chunk", failing)
    with pytest.raises(RuntimeError, match="second chunk"):
        cohort(out=target, **dict(FILE_KW, seed=6))
    monkeypatch.undo()
    assert listing(tmp_path) == [name]
    opened = xr.open_zarr(target) if name.endswith(".zarr") else xr.open_dataset(target)
    with opened as back:
        assert_same(cohort(**FILE_KW), back.load())


# ----------------------------------------------------------------------------- 10. failures


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_a_failing_patient_is_flagged_without_affecting_the_others(monkeypatch, bad_value):
    """A patient whose parameters are not finite fails alone (status, NaN metrics)."""
    kw = dict(n=300, seed=4, until="6 h", every="5 min", thresholds={"cp": ["80 ng/mL"]})
    spec = pkpd.load_model(MODEL)
    good = cohort(**kw)
    bad, col = 17, spec.param_names.index("CL")
    original = spec.individual_parameters

    def poisoned(*args, **kwargs):
        theta = np.array(original(*args, **kwargs), dtype=float)
        if theta.ndim == 2 and theta.shape[0] > bad:  # the cohort's chunk of patients
            theta[bad, col] = bad_value
        return theta

    # The model's own checks refuse non-finite parameters, so they are injected after them.
    monkeypatch.setattr(spec, "individual_parameters", poisoned)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CovariateRangeWarning)
        ds = simulate_cohort(spec, REGIMEN, POP, **kw)
        with pytest.raises(SimulationError, match=rf"1 of 300 .*patient {bad}\b"):
            simulate_cohort(spec, REGIMEN, POP, raise_on_failure=True, **kw)
    status = ds.status.values
    assert status[bad] != 0
    assert np.all(np.delete(status, bad) == 0)
    assert ds.attrs["n_failed"] == 1
    for v in ("cmax", "tmax", "auc", "c_at", "time_above"):
        assert np.all(np.isnan(ds[v].values[bad])), v
    keep = np.delete(np.arange(300), bad)
    a, b = good.isel(patient=keep), ds.isel(patient=keep)
    assert_same(a, b, skip=("band",))


# ----------------------------------------------------------------------------- 11. errors

QUICK = dict(until="2 h", every="10 min", bands=False)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(population="no_such_population", n=10), "no_such_population"),
        (dict(population=None, n=10), "population"),
        (dict(n=0), "`n`"),
        (dict(n=-5), "`n`"),
        (dict(n=2.5), "`n`"),
        (dict(n=10, seed=-1), "seed"),
        (dict(n=10, seed=1.5), "seed"),
        (dict(n=10, trajectories=["cp_nope"]), "cp_nope"),
        (dict(n=10, thresholds={"ce": ["1 ng/mL"]}), "'ce'"),
        (dict(n=10, windows={"w": ("0 h", "end_of_anaesthesia")}), "end_of_anaesthesia"),
        (dict(n=10, windows={"w": ("induction + 1 h", "2 h")}), "induction"),
        (dict(n=10, at={"x": "extubation"}), "extubation"),
        (dict(n=200, windows={"w": (EOS, "3 h")}), "ends before it starts"),
        (dict(n=10, trajectories=["cp"], trajectory_every="15 min"), "trajectory_every"),
    ],
)
def test_invalid_requests_raise_a_pkpd_error(kwargs, pattern):
    kw = dict(QUICK)
    kw.update(kwargs)
    population = kw.pop("population", POP)
    with pytest.raises(PkpdError, match=pattern):
        cohort(population=population, **kw)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_invalid_n_with_a_covariate_table(tmp_path, n):
    path = tmp_path / "patients.csv"
    _write_table(path, n=5)
    table = CovariateTable.from_csv(path)
    with pytest.raises(CohortError, match="`n`"):
        simulate_cohort(MODEL, REGIMEN, table, n=n, **QUICK)


# ----------------------------------------------------------------------------- grid domain


def test_metrics_on_the_grid_do_not_depend_on_later_special_times():
    kw = dict(n=300, seed=12, until="3 h", every="5 min", bands=False)
    kw["thresholds"] = {"cp": ["50 ng/mL"], "cp_norketamine": ["20 ng/mL"]}
    plain = cohort(at={}, **kw)
    later = cohort(at={"late": "20 h"}, **kw)
    for v in ("cmax", "tmax", "time_above"):
        np.testing.assert_array_equal(plain[v].values, later[v].values, err_msg=v)
    assert np.all(plain.tmax.values <= 3.0)
    assert np.all(later.tmax.values <= 3.0)


# ----------------------------------------------------------------------------- amounts


@pytest.fixture(scope="module")
def amounts_cohort():
    kw = dict(n=200, seed=5, until="10 h", every="3 min", bands=False, trajectories=["cp"])
    return (
        cohort(**kw, amounts=True, trajectory_dtype="float64"),
        cohort(**kw, amounts=True),  # float32
        cohort(**kw),
    )


def test_amounts_equal_a_single_patient_simulation(spec, amounts_cohort):
    """Every compartment's amount (float64) against pkpd.simulate of the same patient, and
    the output as amount / volume; metrics do not change when amounts are kept."""
    ds64, ds32, plain = amounts_cohort
    assert ds64.amount.dtype == np.float64 and ds64.trajectory.dtype == np.float64
    assert ds32.amount.dtype == np.float32 and ds32.trajectory.dtype == np.float32
    assert ds64.amount.attrs["units"] == "mg"
    assert list(ds64.compartment.values) == spec.comp_names
    assert ds64.amount.dims == ("patient", "compartment", "time")
    grid = ds64.time.values
    for i in in_range_patients(ds64, 4):
        sim = rebuild(spec, ds64, i, grid)
        for c in spec.comp_names:
            got = ds64.amount.sel(compartment=c).values[i]
            want = sim[f"amount_{c}"].values
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * want.max())
    # cp = central amount / V1, in ng/mL (the trajectory and the amount agree).
    v1 = ds64.param_V1.values[:, None]
    np.testing.assert_allclose(
        ds64.trajectory.sel(traj_output="cp").values,
        ds64.amount.sel(compartment="central").values / v1 * 1000.0,
        rtol=1e-12,
    )
    # float32 storage: rounding of the same values only.
    np.testing.assert_allclose(ds32.amount.values, ds64.amount.values, rtol=2e-7, atol=1e-30)
    for v in ("cmax", "tmax", "auc", "c_at", "status"):
        np.testing.assert_array_equal(ds64[v].values, plain[v].values)


def test_amounts_need_the_exact_solver_and_a_valid_dtype():
    with pytest.raises(CohortError, match="exact solver only"):
        cohort(n=10, until="1 h", amounts=True, method="dopri5")
    with pytest.raises(CohortError, match="trajectory_dtype"):
        cohort(n=10, until="1 h", trajectories=True, trajectory_dtype="float16")


def test_amounts_are_counted_by_the_memory_check_and_written_to_zarr(tmp_path):
    from pkpd.running.cohort import estimate_memory

    # Kept values: 1000 patients x (2 outputs + 5 compartments) x 2881 points x 8 bytes.
    est = estimate_memory(1000, 2, 2, 2881, 20, 1024, True, itemsize=8, n_amounts=5)
    assert est["trajectories"] == 1000 * 7 * 2881 * 8
    kw = dict(n=1000, until="48 h", every="1 min", bands=False, chunk_size=1024)
    # 161 MB of float64 amounts do not fit in 120 MB; 23 MB of float32 outputs do (the
    # estimate follows the measured peak, see tests/test_resources.py).
    with pytest.raises(CohortError, match="GB"):
        cohort(**kw, amounts=True, trajectory_dtype="float64", memory_limit=120_000_000)
    cohort(**kw, trajectories=True, memory_limit=120_000_000)  # float32 outputs only: fits
    out = tmp_path / "amounts.zarr"
    ds = cohort(n=300, until="2 h", every="10 min", bands=False, amounts=True, out=out)
    back = xr.open_zarr(out)
    np.testing.assert_array_equal(back.amount.values, ds.amount.values)
    assert back.amount.attrs["units"] == "mg"


def test_summary_mode_skips_no_point_that_matters():
    """Without trajectories the exact kernel skips the inner points of blocks whose
    output bound lies below the running Cmax; Cmax, Tmax and every other metric must be
    those of a run that evaluates (and stores) every grid point, bit for bit."""
    kw = dict(n=400, seed=9, until="48 h", every="1 min", bands=False, at={"eos": EOS})
    summary = cohort(**kw)
    full = cohort(**kw, trajectories=True)
    for v in ("cmax", "tmax", "auc", "c_at", "status"):
        np.testing.assert_array_equal(summary[v].values, full[v].values, err_msg=v)
    # ... and Cmax is the maximum of the stored trajectory (grid points and dose events).
    traj_max = full.trajectory.max("time").values
    assert np.all(full.cmax.values >= traj_max * (1 - 1e-6))


# A bolus whose peak stays the running maximum, then an infusion that rises through the
# levels below it: blocks that cross a level upwards while Cmax allows skipping them.
_BOLUS_THEN_RISE = "1 mg/kg bolus at 0 h; 0.4 mg/kg/h from 6 h to 12 h"
# Levels on every side of the shipped regimen's concentrations: 0 (held above throughout,
# the first point on the level), crossed both ways, never reached, a norketamine level and
# a range (two more levels).
_SIDES_THRESHOLDS = {
    "cp": ["0 ng/mL", "5 ng/mL", "50 ng/mL", "1e6 ng/mL"],
    "cp_norketamine": ["20 ng/mL"],
}
_SIDES_RANGES = {"cp": ["30..120 ng/mL"]}


@pytest.mark.parametrize(
    ("regimen", "every", "at"),
    [(REGIMEN, "1 min", EOS), (REGIMEN, "7 min", EOS), (_BOLUS_THEN_RISE, "1 min", "6h")],
)
def test_summary_mode_with_thresholds_equals_the_full_evaluation(regimen, every, at):
    """With thresholds the exact kernel still skips a block when every threshold lies
    wholly on one side of its points (nothing, or the block's whole length, is added to
    the time above; `record.threshold_side`). Levels that are crossed downwards and
    upwards, held above for hours (and exactly 0, where the first point sits on the
    level), never reached, and a range: every metric must be that of a run that evaluates
    every grid point, bit for bit."""
    kw = dict(
        n=300, seed=11, until="48 h", every=every, bands=False, at={"at": at},
        windows={"after": (at, f"{at} + 24 h" if at == EOS else "30 h")},
        thresholds=_SIDES_THRESHOLDS, ranges=_SIDES_RANGES,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CovariateRangeWarning)
        summary = simulate_cohort(MODEL, regimen, POP, **kw)
        keep = dict(trajectories=True, trajectory_dtype="float64")
        full = simulate_cohort(MODEL, regimen, POP, **kw, **keep)
        # Every 3rd and every 31st point stored: skipped blocks evaluate just those points
        # (every 31st: in some blocks the only one is the block's last inner point).
        minutes = int(every.split()[0])
        thin = {
            k: simulate_cohort(MODEL, regimen, POP, **kw, **keep,
                               trajectory_every=f"{k * minutes} min")
            for k in (3, 31)
        }  # fmt: skip
    for v in ("cmax", "tmax", "auc", "c_at", "status", "time_above", "time_within"):
        np.testing.assert_array_equal(summary[v].values, full[v].values, err_msg=v)
        for k, ds in thin.items():
            np.testing.assert_array_equal(ds[v].values, full[v].values, err_msg=f"{v} {k}")
    for k, ds in thin.items():
        np.testing.assert_array_equal(ds.trajectory.values, full.trajectory.values[..., ::k])
    t_above = summary.time_above.values
    np.testing.assert_allclose(t_above[:, 0], 48.0, rtol=1e-12)  # cp >= 0 throughout
    assert np.all(t_above[:, 3] == 0.0)
    assert 0 < np.mean(t_above[:, 2]) < np.mean(t_above[:, 1]) <= 48.0


@pytest.mark.skipif(
    not numba.config.DISABLE_JIT, reason="patches a kernel function: runs in make test-nojit"
)
@pytest.mark.parametrize("regimen", [REGIMEN, _BOLUS_THEN_RISE])
@pytest.mark.parametrize("keep", [False, True])
def test_blocks_settled_against_thresholds_equal_the_point_by_point_fold(
    monkeypatch, regimen, keep
):
    """The exact kernel's block path folds the time above a threshold point by point only
    where the threshold may be crossed (`kernels._thresholds_settled`); elsewhere it adds
    nothing or the block's whole length (`record.above_run`). Against the same kernel
    folding every block point by point (the decision patched to "may be crossed", which
    the JIT cannot do), with and without stored trajectories: bit for bit."""
    from pkpd.engine import kernels

    kw = dict(
        n=6, seed=3, until="48 h", every="1 min", bands=False, trajectories=keep,
        thresholds=_SIDES_THRESHOLDS, ranges=_SIDES_RANGES,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CovariateRangeWarning)
        blocks = simulate_cohort(MODEL, regimen, POP, **kw)
        monkeypatch.setattr(kernels, "_thresholds_settled", lambda *args: False)
        points = simulate_cohort(MODEL, regimen, POP, **kw)
    names = ["cmax", "tmax", "auc", "status", "time_above", "time_within"]
    for v in names + (["trajectory"] if keep else []):
        np.testing.assert_array_equal(blocks[v].values, points[v].values, err_msg=v)
    assert 0 < np.mean(blocks.time_above.values[:, 2]) < 48.0


def test_cohort_request_fields_are_the_parameters_of_simulate_cohort(monkeypatch):
    """`simulate_cohort` builds its request from its own parameters (``**locals()``): the
    request's fields must be exactly those parameters, by name and in order, and a call
    passes each given value through unchanged."""
    params = list(inspect.signature(cohort_mod.simulate_cohort).parameters)
    assert [f.name for f in dataclasses.fields(CohortRequest)] == params
    seen = {}
    monkeypatch.setattr(cohort_mod, "_run_cohort", lambda r: seen.setdefault("request", r))
    cohort_mod.simulate_cohort("m", "r", n=7, seed=3, until="5h", threads=2)
    request = seen["request"]
    assert (request.model, request.regimen, request.n, request.seed) == ("m", "r", 7, 3)
    assert (request.until, request.threads) == ("5h", 2)
