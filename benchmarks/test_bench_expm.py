"""Benchmarks of the numba matrix exponential ``pkpd.engine.solvers.expm``.

Run with ``python -m pytest benchmarks/test_bench_expm.py --benchmark-only``.
Kernel timings exclude compilation (a warm-up call precedes each benchmark); the cold
numba compile time is measured separately on a fresh copy of the module.
"""

from __future__ import annotations

import importlib.util
import time

import numba
import numpy as np
import pytest
import scipy.linalg

from pkpd.engine.solvers import expm as expm_mod
from pkpd.engine.solvers.expm import _pade_degree, _scaling_exponent, expm_into, expm_work

pytestmark = pytest.mark.benchmark(group="expm")


def compartment_matrix(n: int, dt: float, seed: int = 2005) -> np.ndarray:
    """dt * A for a mammillary model: central compartment 0 exchanging with n - 1
    peripheral ones, extra random transfers, rates 0.01 .. 2 per hour.

    ``A[i, j]`` (i != j) is the rate from j to i; the diagonal is minus the total outflow
    (transfers plus elimination), so columns sum to minus the elimination rate.
    """
    rng = np.random.default_rng(seed)
    K = np.exp(rng.uniform(np.log(0.01), np.log(2.0), (n, n))) * (rng.random((n, n)) < 0.3)
    K[0, 1:] = np.exp(rng.uniform(np.log(0.01), np.log(2.0), n - 1))
    K[1:, 0] = np.exp(rng.uniform(np.log(0.01), np.log(2.0), n - 1))
    np.fill_diagonal(K, 0.0)
    ke = np.zeros(n)
    ke[0] = 0.3
    return dt * (K - np.diag(K.sum(axis=0) + ke))


def _describe(benchmark, A: np.ndarray) -> None:
    norm1 = float(np.linalg.norm(A, 1))
    m = int(_pade_degree(norm1))
    benchmark.extra_info["n"] = A.shape[0]
    benchmark.extra_info["norm1"] = norm1
    benchmark.extra_info["pade_degree"] = m
    benchmark.extra_info["squarings"] = int(_scaling_exponent(norm1)) if m == 13 else 0


@pytest.mark.parametrize("n", [6, 12])
def test_expm_into(benchmark, n):
    A = compartment_matrix(n, dt=1.0)
    work, piv = expm_work(n)
    out = np.empty((n, n))
    assert expm_into(A, out, work, piv) == 0  # warm-up: compile / load from cache
    _describe(benchmark, A)
    status = benchmark(expm_into, A, out, work, piv)
    assert status == 0
    np.testing.assert_allclose(out, scipy.linalg.expm(A), rtol=0, atol=1e-13)


def test_scipy_expm_6x6(benchmark):
    A = compartment_matrix(6, dt=1.0)
    scipy.linalg.expm(A)
    _describe(benchmark, A)
    benchmark(scipy.linalg.expm, A)


def _fresh_module(name: str):
    """Import a new, independent copy of pkpd/engine/solvers/expm.py (new dispatchers)."""
    spec = importlib.util.spec_from_file_location(name, expm_mod.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_numba_compile_time(benchmark, tmp_path, monkeypatch):
    """Cold compile of expm_into and its helpers for float64 C arrays, run once.

    A fresh copy of the module has dispatchers that have compiled nothing, and pointing
    numba's cache at an empty folder makes cache=True miss, so the first call compiles
    ``expm_into`` *and* every helper it calls. (Re-jitting ``expm_into.py_func`` alone
    would reuse the already compiled helpers and under-report.) A second copy with the
    same cache folder then measures the cost of loading from the on-disk cache.
    """
    if numba.config.DISABLE_JIT:
        pytest.skip("NUMBA_DISABLE_JIT is set")
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    n = 6
    A = compartment_matrix(n, dt=1.0)

    def setup():
        module = _fresh_module("_pkpd_expm_cold_copy")
        work, piv = module.expm_work(n)
        return (module.expm_into, A, np.empty((n, n)), work, piv), {}

    def first_call(kernel, A, out, work, piv):
        t0 = time.perf_counter()
        status = kernel(A, out, work, piv)
        benchmark.extra_info["compile_s"] = time.perf_counter() - t0
        return status

    assert benchmark.pedantic(first_call, setup=setup, rounds=1, iterations=1) == 0

    warm = _fresh_module("_pkpd_expm_cached_copy")
    work, piv = warm.expm_work(n)
    t0 = time.perf_counter()
    assert warm.expm_into(A, np.empty((n, n)), work, piv) == 0
    benchmark.extra_info["cache_load_s"] = time.perf_counter() - t0
