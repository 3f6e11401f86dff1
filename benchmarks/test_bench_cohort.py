"""Cohort throughput on the reference workload of the cohort issue.

Workload: the shipped Fanta 2015 / Otto 2021 S-ketamine + S-norketamine model with 30 % CV
log-normal variability on every parameter (diagonal omega, omega^2 = ln(1 + 0.3^2)),
healthy-volunteer covariates, the regimen 0.3 mg/kg bolus, 0.2 mg/kg/h for 4 h, 0.05 mg/kg/h
to 48 h, evaluated every minute over 0-48 h (2881 points) with per-patient metrics.

Measured next to each other (patients per second in ``extra_info["patients_per_s"]``):

* ``scipy_lsoda_loop``: scipy ``solve_ivp`` (LSODA, rtol 1e-6, atol 1e-9 mg) in a Python
  loop over patients, output every minute;
* ``numba_ceiling_all_states``: a plain numba exact-propagation loop (one exponential per
  patient, ``prange``) storing every state every minute in float64 - the practical ceiling;
* ``kernel_summary``: ``simulate_cohort`` in summary mode (metrics only, no bands);
* ``kernel_summary_bands``: the same with streaming percentile bands;
* ``kernel_trajectories``: the same keeping every output every minute (float32);
* ``kernel_all_states_float64``: the exact cohort kernel itself storing every
  compartment's amount every minute in float64 into a preallocated array (target 1, next
  to the ceiling loop); ``kernel_amounts_float64_end_to_end``: the same through
  ``simulate_cohort(amounts=True, trajectory_dtype="float64")``;
* ``kernel_tci_summary``: summary mode under a plasma TCI pump for the 4 h of surgery (the
  pump's schedules included);
* ``kernel_pca_summary`` next to ``kernel_pca_plain_summary`` (issue 17), and
  ``[multimodal]`` (three drugs in the reservoir): sufentanil
  (gepts1995_sufentanil) in the spine-fusion population, 0-56 h every minute, under the
  shipped PCA pump (spine_fusion_sufentanil_pca: the closed loop of demands, then the
  kernel with the deliveries as event rows) and under a plain regimen of the same drug,
  events and grid (its background as an infusion, no pump);
* ``kernel_dopri5_summary`` / ``kernel_rodas_summary``: summary mode through the adaptive
  cohort kernels (rtol 1e-6, atol 1e-9; failed patients, e.g. Dopri5's stiffness test,
  counted in ``extra_info["failed_patients"]``).

Every timed call follows a warm-up call on the same shapes (compilation excluded).
"""

from __future__ import annotations

import copy
import inspect
import tomllib
import warnings

import numba
import numpy as np
import pytest
import scipy.linalg
from scipy.integrate import solve_ivp

import pkpd
import pkpd.engine.kernels
from pkpd.inputs.model import ModelSpec, models_dir
from pkpd.running.cohort import simulate_cohort

REGIMEN = "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h; 0.05 mg/kg/h from 4 h to 48 h"
GRID = {"until": "48 h", "every": "1 min"}
N = 16384


@pytest.fixture(scope="module")
def model():
    with open(models_dir() / "fanta2015_otto2021.toml", "rb") as fh:
        data = tomllib.load(fh)
    data = copy.deepcopy(data)
    data["variability"] = [
        {
            "parameters": list(data["parameters"]),
            "cv_percent": [30.0] * len(data["parameters"]),
            "cv_convention": "lognormal",
            "source": "benchmark workload: 30 % CV on every parameter",
            "tag": "assumed",
        }
    ]
    return ModelSpec.from_dict(data, file="<benchmark: fanta2015_otto2021 with 30% CV>")


def _cohort(model, n, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate_cohort(
            model, REGIMEN, "healthy_volunteers", n, seed=1, progress=False, **GRID, **kw
        )


def _rate(benchmark, n):
    benchmark.extra_info["patients"] = n
    benchmark.extra_info["patients_per_s"] = n / benchmark.stats.stats.median
    benchmark.extra_info["threads"] = numba.get_num_threads()


@pytest.mark.benchmark(group="cohort")
@pytest.mark.parametrize(
    "mode", ["summary", "summary_bands", "trajectories", "dopri5_summary", "rodas_summary"]
)
def test_kernel(benchmark, model, mode):
    kw = {
        "summary": {"bands": False},
        "summary_bands": {"bands": True},
        "trajectories": {"bands": False, "trajectories": True},
        # The adaptive cohort kernels on the same linear workload, rtol 1e-6, atol 1e-9.
        "dopri5_summary": {"bands": False, "method": "dopri5", "rtol": 1e-6, "atol": 1e-9},
        "rodas_summary": {"bands": False, "method": "rodas", "rtol": 1e-6, "atol": 1e-9},
    }[mode]
    _cohort(model, 2048, **kw)  # warm-up (compile or load the cache)
    ds = benchmark.pedantic(_cohort, args=(model, N), kwargs=kw, rounds=3, iterations=1)
    _rate(benchmark, N)
    benchmark.extra_info["failed_patients"] = int(ds.attrs["n_failed"])


#: The same exposure under a plasma TCI pump for the 4 h of surgery (issue 17).
TCI_REGIMEN = (
    "TCI plasma 150 ng/mL at 0 h until 4 h using fanta2015_otto2021 max 1 mg/kg/min; "
    "0.05 mg/kg/h from 4 h to 48 h"
)


@pytest.mark.benchmark(group="cohort")
def test_kernel_tci_summary(benchmark, model):
    """Summary mode under a plasma TCI pump (issue 17), next to ``kernel[summary]``: the
    pump's schedules (its model at each patient's weight: one schedule per patient, 1,440
    updates each) and the kernel with those 1,440 rate changes per patient."""

    def run(n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return simulate_cohort(model, TCI_REGIMEN, "healthy_volunteers", n, seed=1,
                                   progress=False, bands=False, **GRID)  # fmt: skip

    run(2048)
    benchmark.pedantic(run, args=(N,), rounds=3, iterations=1)
    _rate(benchmark, N)


def _pca_regimens():
    """The shipped PCA regimen and the same file with its pump replaced by a plain
    infusion of the pump's background (1 mL/h of 4 ug/kg, at most 250 ug, in 200 mL:
    at most 1.25 ug/h; 1.25 ug/h here) over the same 48 h from the same drawn event."""
    from pkpd.inputs.regimen import Regimen, load_regimen

    reg = load_regimen("spine_fusion_sufentanil_pca")
    with open(reg.file, "rb") as fh:
        data = tomllib.load(fh)
    del data["pca"]
    data["infusion"] = [{"rate": "1.25 ug/h", "start": "end_of_surgery", "duration": "48 h"}]
    return reg, Regimen.from_dict(data, file="<benchmark: PCA background as an infusion>")


@pytest.mark.benchmark(group="cohort")
@pytest.mark.parametrize("pump", ["pca", "plain", "multimodal"])
def test_kernel_pca_summary(benchmark, pump):
    """Summary mode under the shipped PCA pump, next to the same drug, events and grid
    without the pump, and under the same pump with S-ketamine and dexmedetomidine in the
    reservoir (``spine_fusion_multimodal_pca``: two further models solved per patient)."""
    regimen = dict(zip(("pca", "plain"), _pca_regimens(), strict=True)).get(
        pump, "spine_fusion_multimodal_pca"
    )

    def run(n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return simulate_cohort("gepts1995_sufentanil", regimen, "spine_fusion_china", n,
                                   seed=1, progress=False, bands=False, until="56 h",
                                   every="1 min")  # fmt: skip

    run(2048)
    ds = benchmark.pedantic(run, args=(N,), rounds=3, iterations=1)
    _rate(benchmark, N)
    if pump != "plain":
        benchmark.extra_info["median_deliveries"] = float(np.median(ds.pca_deliveries.values))


@pytest.mark.benchmark(group="cohort")
def test_kernel_all_states_float64(benchmark, model, monkeypatch):
    """Target (1): the project's exact cohort kernel (`pkpd.engine.kernels.kernel_for`, the one
    `simulate_cohort` calls) storing every compartment's amount every minute in float64
    into a preallocated array, as the ceiling loop below does, with the per-patient
    metrics computed as well. Inputs are those of a real `simulate_cohort` call."""
    import pkpd.running.cohort

    captured = {}
    real = pkpd.running.cohort.kernel_for

    def capture(nr):
        def call(*args):
            captured["kernel"], captured["args"] = real(nr), list(args)
            return real(nr)(*args)

        return call

    monkeypatch.setattr(pkpd.cohort, "kernel_for", capture)
    _cohort(model, N, bands=False, chunk_size=N)
    kernel, args = captured["kernel"], captured["args"]
    names = list(inspect.signature(pkpd.engine.kernels.cohort_kernel.py_func).parameters)
    arg = {k: i for i, k in enumerate(names)}
    n_out, nc = len(model.output_names), model.n_comp
    # Store rows: the extra rows after the outputs, one per compartment (unscaled mg).
    args[arg["store_out"]] = n_out + np.arange(nc, dtype=np.int64)
    args[arg["store_stride"]] = 1
    args[arg["extra_state"]] = np.arange(nc, dtype=np.int64)
    args[arg["store_scale"]] = np.ones(nc)
    traj = np.zeros((N, nc, 2881))
    args[arg["traj"]] = traj
    kernel(*args)
    benchmark.pedantic(kernel, args=tuple(args), rounds=3, iterations=1)
    _rate(benchmark, N)
    benchmark.extra_info["stored_values_per_patient"] = nc * 2881
    assert np.all(args[arg["status"]] == 0)
    # The stored central amount over V1 is the output: the same numbers as the summary.
    theta = args[arg["theta"]]
    cp = traj[:, 0, :] / theta[:, :1]  # mg/L
    np.testing.assert_allclose(cp.max(axis=1), args[arg["cmax"]][:, 0], rtol=1e-12)


@pytest.mark.benchmark(group="cohort")
def test_kernel_amounts_float64_end_to_end(benchmark, model):
    """`simulate_cohort(..., amounts=True, trajectory_dtype="float64")`: the same values
    plus the outputs, returned in a Dataset (fresh arrays each call: page faults count)."""
    n = 4096
    kw = {"bands": False, "amounts": True, "trajectory_dtype": "float64"}
    _cohort(model, 512, **kw)
    benchmark.pedantic(_cohort, args=(model, n), kwargs=kw, rounds=3, iterations=1)
    _rate(benchmark, n)


@numba.njit(parallel=True, cache=True)
def _ceiling(phis, gs, ev_idx, ev_rate, ev_bolus, n_t, out):
    """Exact propagation on a uniform grid with events on grid points; all states stored."""
    n, N = gs.shape
    for p in numba.prange(n):
        x = np.zeros(N)
        xt = np.zeros(N)
        rate = 0.0
        k = 0
        for g in range(n_t):
            if g > 0:
                for i in range(N):
                    acc = gs[p, i] * rate
                    for j in range(N):
                        acc += phis[p, i, j] * x[j]
                    xt[i] = acc
                for i in range(N):
                    x[i] = xt[i]
            while k < ev_idx.shape[0] and ev_idx[k] == g:
                x[0] += ev_bolus[p, k]
                rate = ev_rate[p, k]
                k += 1
            for i in range(N):
                out[p, g, i] = x[i]


@pytest.mark.benchmark(group="cohort")
def test_numba_ceiling_all_states(benchmark, model):
    """Hand-written loop: per patient one expm (scipy, outside the timed loop) and the
    mat-vec propagation with every compartment state stored every minute (float64)."""
    n = 4096
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = simulate_cohort(
            model,
            REGIMEN,
            "healthy_volunteers",
            n,
            seed=1,
            progress=False,
            until="1 h",
            every="30 min",
            bands=False,
        )
    theta = np.stack([ds[f"param_{p}"].values for p in model.param_names], axis=1)
    nc = model.n_comp
    h = 1 / 60
    phis = np.empty((n, nc, nc))
    gs = np.empty((n, nc))
    for p in range(n):
        M, b, _ = model.system(theta[p])
        A = np.zeros((nc + 1, nc + 1))
        A[:nc, :nc], A[:nc, nc] = M[:nc, :nc] * h, b[:nc] * h
        E = scipy.linalg.expm(A)
        phis[p], gs[p] = E[:nc, :nc], E[:nc, nc]
    w = ds.weight.values
    ev_idx = np.array([0, 240, 2880])
    ev_rate = np.stack([0.2 * w, 0.05 * w, 0 * w], axis=1)
    ev_bolus = np.stack([0.3 * w, 0 * w, 0 * w], axis=1)
    out = np.empty((n, 2881, nc))
    _ceiling(phis, gs, ev_idx, ev_rate, ev_bolus, 2881, out)
    benchmark.pedantic(
        _ceiling, args=(phis, gs, ev_idx, ev_rate, ev_bolus, 2881, out), rounds=3, iterations=1
    )
    _rate(benchmark, n)
    # Same numbers as the project's exact solver for patient 0 (sanity, not timing).
    ref = pkpd.simulate(
        model,
        REGIMEN,
        covariates={"weight": float(w[0])},
        times=[24.0],
        eta=dict(
            zip(
                model.param_names,
                np.log(theta[0] / model.individual_parameters({"weight": float(w[0])})),
                strict=True,
            )
        ),
    )
    assert out[0, 1440, 0] / theta[0, 0] * 1000 == pytest.approx(float(ref.cp[0]), rel=1e-9)


@pytest.mark.benchmark(group="cohort")
def test_scipy_lsoda_loop(benchmark, model):
    """scipy solve_ivp (LSODA) over patients in Python: the baseline users replace."""
    n = 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = simulate_cohort(
            model,
            REGIMEN,
            "healthy_volunteers",
            n,
            seed=1,
            progress=False,
            until="1 h",
            every="30 min",
            bands=False,
        )
    theta = np.stack([ds[f"param_{p}"].values for p in model.param_names], axis=1)
    nc = model.n_comp
    t_eval = np.arange(2881) / 60

    def run():
        cmax = np.empty(n)
        for p in range(n):
            M, _, _ = model.system(theta[p])
            A = M[:nc, :nc]
            w = ds.weight.values[p]
            x = np.zeros(nc)
            x[0] = 0.3 * w
            ys = []
            for t0, t1, r in ((0, 4, 0.2 * w), (4, 48, 0.05 * w)):
                u = np.zeros(nc)
                u[0] = r
                te = t_eval[(t_eval >= t0) & (t_eval <= t1)]
                sol = solve_ivp(
                    lambda t, y, u=u, A=A: A @ y + u,
                    (t0, t1),
                    x,
                    method="LSODA",
                    t_eval=te,
                    rtol=1e-6,
                    atol=1e-9,
                )
                ys.append(sol.y[0])
                x = sol.y[:, -1]
            cmax[p] = np.concatenate(ys).max() / theta[p, 0]
        return cmax

    benchmark.pedantic(run, rounds=1, iterations=1)
    _rate(benchmark, n)


@pytest.mark.benchmark(group="cohort-ode")
def test_kernel_ode_summary(benchmark):
    """An ``[ode]`` model's cohort kernel in summary mode: flint2017_s_ketamine_children
    (time-varying S-norketamine clearance), a bolus and a 24-h infusion, 1-min grid over
    48 h, 2,048 patients; Cmax/Tmax include the search for maxima between grid points
    (:mod:`pkpd.engine.peaks_adaptive`)."""
    regimen = "1 mg/kg bolus at 0 h; 1 mg/kg/h from 0 h to 24 h"

    def run(n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return simulate_cohort(
                "flint2017_s_ketamine_children", regimen, "healthy_volunteers", n, seed=1,
                progress=False, bands=False, **GRID,
            )  # fmt: skip

    run(64)  # warm-up (compile or load the cache)
    n = 2048
    ds = benchmark.pedantic(run, args=(n,), rounds=3, iterations=1)
    _rate(benchmark, n)
    benchmark.extra_info["failed_patients"] = int(ds.attrs["n_failed"])


@pytest.mark.benchmark(group="compile-cohort")
def test_first_cohort_cold_kernel(benchmark, tmp_path):
    """The first 1,000-patient cohort of a shipped model whose state size has no compiled
    kernel yet (issue 15's first-run row): a subprocess with an empty ``PKPD_CACHE_DIR``
    (the package's own numba cache warm, as after any earlier run), so the time is the
    specialised exact kernel's compile; then the same cohort loading it from that cache."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import time, warnings
        warnings.simplefilter("ignore")
        import pkpd
        t0 = time.perf_counter()
        pkpd.simulate_cohort("gepts1995_sufentanil", "1 ug/kg bolus at 0 h",
                             "healthy_volunteers", 1000, seed=1, progress=False)
        print(time.perf_counter() - t0)
    """)
    env = {**os.environ, "PKPD_CACHE_DIR": str(tmp_path)}

    def measure():
        r = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        return float(r.stdout.strip().splitlines()[-1])

    benchmark.extra_info["first_cohort_s"] = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info["cached_s"] = measure()


@pytest.mark.benchmark(group="compile-cohort")
def test_first_cohort_after_compile_ahead(benchmark, tmp_path):
    """Issue 15's first-run row with the kernels compiled ahead: on a fresh install (empty
    ``PKPD_CACHE_DIR`` and ``NUMBA_CACHE_DIR``), ``pkpd compile`` (timed, the benchmark's
    value), then the first 1,000-patient cohort of every shipped model, each in a new
    process, timed inside it from before ``import pkpd`` (``extra_info``: each model and the
    slowest). Several minutes on a 2-core machine."""
    import json
    import os
    import subprocess
    import sys
    import textwrap
    import time

    env = {**os.environ, "PKPD_CACHE_DIR": str(tmp_path / "pkpd"),
           "NUMBA_CACHE_DIR": str(tmp_path / "numba")}  # fmt: skip
    pkpd_cmd = [sys.executable, "-c", "from pkpd.cli import main; main()"]

    def compile_all():
        t0 = time.perf_counter()
        subprocess.run([*pkpd_cmd, "compile"], env=env, check=True, capture_output=True)
        return time.perf_counter() - t0

    benchmark.pedantic(compile_all, rounds=1, iterations=1)
    code = textwrap.dedent("""
        import json, sys, time, warnings
        t0 = time.perf_counter()
        warnings.simplefilter("ignore")
        import pkpd
        pkpd.simulate_cohort(sys.argv[1], "1 mg bolus at 0 h", "healthy_volunteers", 1000,
                             seed=1, progress=False)
        print(json.dumps(time.perf_counter() - t0))
    """)
    names = subprocess.run(
        [sys.executable, "-c", "import pkpd; print(*pkpd.available_models())"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    first = {}
    for name in names:
        r = subprocess.run([sys.executable, "-c", code, name], env=env, check=True,
                           capture_output=True, text=True)  # fmt: skip
        first[name] = round(json.loads(r.stdout.strip().splitlines()[-1]), 2)
    benchmark.extra_info["first_cohort_s"] = first
    benchmark.extra_info["slowest_first_cohort_s"] = max(first.values())
