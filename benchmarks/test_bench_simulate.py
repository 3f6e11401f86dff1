"""Benchmarks of one patient over a 48 h perioperative regimen (exact solver).

Workload: the shipped Fanta 2015 / Otto 2021 S-ketamine + S-norketamine model (10
augmented states), 70 kg, the demo regimen (0.2 mg/kg bolus, 0.125 mg/kg/h for 4 h,
0.02 mg/kg/h for 48 h), output every minute over 0-48 h (2881 points).

* ``kernel``: the numba kernel alone (`propagate_into`, work arrays preallocated);
* ``fill_system``: building the system matrix from individual parameters;
* ``api``: `pkpd.simulate` end to end (parsing, covariates, xarray Dataset);
* ``scipy_stepping``: the same piecewise-exact stepping written in Python with
  scipy.linalg.expm, as a baseline;
* compile time: a subprocess with an empty numba cache times the first kernel call.

Every timed call follows a warm-up call, so compilation is excluded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.linalg

import pkpd
from pkpd.engine.solvers import linear_system as ls
from pkpd.engine.solvers.exact import propagate_into, reset_cache, workspace

REGIMEN = "lumbar_fusion_esketamine"
T = np.arange(48 * 60 + 1) / 60.0


@pytest.fixture(scope="module")
def problem():
    spec = pkpd.load_model("fanta2015_otto2021")
    theta = spec.individual_parameters({"weight": 70.0})
    M, b, _C = spec.system(theta)
    ev = pkpd.load_regimen(REGIMEN).event_table(70.0)
    return spec, theta, M, b, ev


@pytest.mark.benchmark(group="one-patient-48h")
def test_kernel(benchmark, problem):
    _, _, M, b, ev = problem
    N = M.shape[0]
    X = np.zeros((T.size, N))
    ws = workspace(N)
    x0 = np.zeros(N)

    def call():
        reset_cache(ws[2])
        return propagate_into(M, b, ev.t, ev.rate, ev.bolus, T, x0, 0.0, X, *ws)

    assert call() == 0
    benchmark.extra_info.update(n_states=N, n_out=T.size)
    assert benchmark(call) == 0


@pytest.mark.benchmark(group="one-patient-48h")
def test_fill_system(benchmark, problem):
    spec, theta, M, b, _ = problem
    C = np.zeros((len(spec.outputs), spec.n_comp))
    args = (
        theta,
        spec.comps_i,
        spec.flows_i,
        spec.flows_f,
        spec.effects_i,
        spec.outputs_i,
        spec.dose_index,
        len(spec.analyte_names),
        M.copy(),
        b.copy(),
        C,
    )
    ls.fill_system(*args)
    benchmark(ls.fill_system, *args)


@pytest.mark.benchmark(group="one-patient-48h")
def test_api(benchmark, problem):
    spec = problem[0]
    reg = pkpd.load_regimen(REGIMEN)
    pkpd.simulate(spec, reg, covariates={"weight": 70.0}, times=T)
    benchmark(pkpd.simulate, spec, reg, covariates={"weight": 70.0}, times=T)


@pytest.mark.benchmark(group="one-patient-48h")
def test_scipy_stepping(benchmark, problem):
    """The same algorithm in Python with scipy.linalg.expm (cached per step length)."""
    _, _, M, b, ev = problem
    N = M.shape[0]

    def solve():
        cache = {}
        times = np.union1d(T, ev.t)
        x = np.zeros(N)
        out = np.empty((T.size, N))
        rate, t, k, j = 0.0, 0.0, 0, 0
        for to in times:
            h = round(to - t, 12)
            if h > 0:
                if h not in cache:
                    Maug = np.zeros((N + 1, N + 1))
                    Maug[:N, :N], Maug[:N, N] = M * h, b * h
                    E = scipy.linalg.expm(Maug)
                    cache[h] = (E[:N, :N], E[:N, N])
                phi, g = cache[h]
                x = phi @ x + g * rate
            t = to
            while k < ev.t.size and ev.t[k] == to:
                x = x + b * ev.bolus[k]
                rate = ev.rate[k]
                k += 1
            if j < T.size and T[j] == to:
                out[j] = x
                j += 1
        return out

    ref = solve()
    X = np.zeros((T.size, N))
    assert propagate_into(M, b, ev.t, ev.rate, ev.bolus, T, np.zeros(N), 0.0, X, *workspace(N)) == 0
    np.testing.assert_allclose(ref, X, rtol=1e-9, atol=1e-12)
    benchmark(solve)


@pytest.mark.benchmark(group="compile")
def test_compile_time(benchmark, tmp_path):
    """Cold numba compilation of fill_system + propagate_into (and expm), in a subprocess
    with an empty cache folder; then the load time from that cache in a second one."""
    code = textwrap.dedent("""
        import time, numpy as np, pkpd
        from pkpd.engine.solvers.exact import propagate
        spec = pkpd.load_model("fanta2015_otto2021")
        t0 = time.perf_counter()
        M, b, C = spec.system(spec.typical_theta())
        X, s = propagate(M, b, np.array([0.0]), np.array([1.0]), np.array([1.0]),
                         np.array([0.0, 1.0]))
        print(time.perf_counter() - t0)
    """)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def measure():
        r = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        return float(r.stdout.strip().splitlines()[-1])

    cold = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info["compile_s"] = cold
    benchmark.extra_info["cache_load_s"] = measure()
