"""One patient, 48 h perioperative regimen: exact, Dopri5 and Rodas4 against scipy.

Workload: the shipped fanta2015_otto2021 model (S-ketamine + S-norketamine, 10 augmented
states), 70 kg, 0.3 mg/kg bolus, 0.2 mg/kg/h 0-4 h, 0.05 mg/kg/h 4-48 h, output every
10 min over 0-48 h. Every method solves the same linear system ``y' = M y + b u`` with
the same boluses and segment stops at the rate changes; the adaptive ones at rtol 1e-6,
atol 1e-9 (scipy's ``solve_ivp`` RK45 and LSODA as baselines, integrated segment by
segment because their input is discontinuous there, with ``t_eval`` on the grid). Each
timed call follows a warm-up call (compilation excluded); compile time is measured on
its own in a subprocess with an empty numba cache (group ``compile-adaptive``).
numbalsoda is not benchmarked: it is not a dependency of the project.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import pkpd
from pkpd.engine.solvers import N_STATS
from pkpd.engine.solvers import dopri5 as d5
from pkpd.engine.solvers import rosenbrock as ro
from pkpd.engine.solvers.exact import propagate_into, reset_cache, workspace
from pkpd.engine.solvers.linear_rhs import pack

REGIMEN = "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h; 0.05 mg/kg/h from 4 h to 48 h"
T = np.arange(48 * 6 + 1) / 6.0
RTOL, ATOL = 1e-6, 1e-9


@pytest.fixture(scope="module")
def problem():
    spec = pkpd.load_model("fanta2015_otto2021")
    M, b, _ = spec.system(spec.individual_parameters({"weight": 70.0}))
    ev = pkpd.load_regimen(REGIMEN).event_table(70.0)
    X = np.zeros((T.size, M.shape[0]))
    ws = workspace(M.shape[0])
    assert propagate_into(M, b, ev.t, ev.rate, ev.bolus, T, np.zeros(M.shape[0]), 0.0, X, *ws) == 0
    return M, b, ev, X


def _check(X, ref, benchmark, rtol=1e-4):
    # Concentration-carrying states agree with the exact solution (global error of a
    # 1e-6 local tolerance).
    big = np.abs(ref) > 1e-6 * np.abs(ref).max(axis=0)
    err = float(np.max(np.abs(X - ref)[big] / np.abs(ref)[big]))
    benchmark.extra_info["max_rel_err"] = err
    assert err < rtol


@pytest.mark.benchmark(group="adaptive-48h")
def test_exact(benchmark, problem):
    M, b, ev, _ = problem
    N = M.shape[0]
    X = np.zeros((T.size, N))
    ws = workspace(N)
    x0 = np.zeros(N)

    def call():
        reset_cache(ws[2])
        return propagate_into(M, b, ev.t, ev.rate, ev.bolus, T, x0, 0.0, X, *ws)

    assert call() == 0
    assert benchmark(call) == 0


def _kernel_args(M, b, ev):
    N = M.shape[0]
    return (
        pack(M, b),
        b,
        np.zeros(N),
        0.0,
        ev.t,
        ev.rate,
        ev.bolus,
        T,
        np.full(N, RTOL),
        np.full(N, ATOL),
        0.0,
        np.inf,
        100_000,
    )


@pytest.mark.benchmark(group="adaptive-48h")
def test_dopri5(benchmark, problem):
    M, b, ev, ref = problem
    N = M.shape[0]
    args = _kernel_args(M, b, ev)
    out, work, stats = np.zeros((T.size, N)), d5.workspace(N), np.zeros(N_STATS, np.int64)

    def call():
        return d5.solve_linear_dopri5_into(*args, 1, out, work, stats)

    assert call() == 0
    benchmark.extra_info.update(nfev=int(stats[0]), nsteps=int(stats[2]))
    assert benchmark(call) == 0
    _check(out, ref, benchmark)


@pytest.mark.benchmark(group="adaptive-48h")
def test_rodas(benchmark, problem):
    M, b, ev, ref = problem
    N = M.shape[0]
    args = _kernel_args(M, b, ev)
    out, stats = np.zeros((T.size, N)), np.zeros(N_STATS, np.int64)
    work, mats, ipiv = ro.workspace(N)

    def call():
        return ro.solve_linear_rodas_into(*args, out, work, mats, ipiv, stats)

    assert call() == 0
    benchmark.extra_info.update(nfev=int(stats[0]), nsteps=int(stats[2]), njev=int(stats[1]))
    assert benchmark(call) == 0
    _check(out, ref, benchmark)


def _scipy(method, M, b, ev):
    """solve_ivp segment by segment between events, boluses applied at the stops."""
    N = M.shape[0]
    y = np.zeros(N)
    out = np.zeros((T.size, N))
    stops = [*ev.t, T[-1]]
    nfev = 0
    for k in range(len(ev.t)):
        y = y + b * ev.bolus[k]
        a, z = stops[k], stops[k + 1]
        if z <= a:
            continue
        u = ev.rate[k]
        # Grid points in [a, z): an output at z comes after the event there.
        mask = (T >= a) & ((T < z) | (z >= T[-1]))
        t_eval = np.union1d(T[mask], [z])
        r = solve_ivp(
            lambda t, x, u=u: M @ x + b * u,
            (a, z),
            y,
            method=method,
            rtol=RTOL,
            atol=ATOL,
            t_eval=t_eval,
        )
        out[mask] = r.y[:, : mask.sum()].T
        y = r.y[:, -1]
        nfev += r.nfev
    return out, nfev


@pytest.mark.benchmark(group="adaptive-48h")
@pytest.mark.parametrize("method", ["RK45", "LSODA"])
def test_scipy(benchmark, problem, method):
    M, b, ev, ref = problem
    X, nfev = _scipy(method, M, b, ev)
    benchmark.extra_info["nfev"] = nfev
    X = benchmark(_scipy, method, M, b, ev)[0]
    _check(X, ref, benchmark, rtol=1e-3)


@pytest.mark.benchmark(group="compile-adaptive")
def test_compile_time(benchmark, tmp_path):
    """Cold compile of the linear Dopri5 and Rodas4 wrappers (empty cache), then load."""
    code = textwrap.dedent("""
        import time, numpy as np
        from pkpd.engine.solvers.registry import run_linear
        M = -np.eye(2); b = np.array([1.0, 0.0]); e = np.array([0.0])
        out = []
        for m in ("dopri5", "rodas"):
            t0 = time.perf_counter()
            run_linear(m, M, b, e, e, e, np.array([1.0]))
            out.append(time.perf_counter() - t0)
        print(out[0], out[1])
    """)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def measure():
        r = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        return [float(v) for v in r.stdout.strip().splitlines()[-1].split()]

    cold = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info["compile_dopri5_s"], benchmark.extra_info["compile_rodas_s"] = cold
    warm = measure()
    benchmark.extra_info["cache_load_dopri5_s"], benchmark.extra_info["cache_load_rodas_s"] = warm
