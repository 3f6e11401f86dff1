"""Compile ahead: the machine code a model's cohorts and single patients need, before first use.

numba compiles the cohort kernel once per state size (a linear model's exact kernel is
specialised to its size, `pkpd.engine.kernels.kernel_for`) and once per ``[ode]`` model
(its generated module), then keeps the code in its disk cache (:func:`pkpd.cache.cache_root`
and numba's own cache). A cold compile costs about a minute per state size on a 2-core
machine, and it happened at a user's first cohort of each model. :func:`compile_kernels`
pays it ahead (``pkpd compile``, ``make kernels``): once per machine and package version,
for every shipped model or the given ones, in parallel processes, one per distinct kernel
first so that no process waits on another's compile.

Each model is compiled by running what a user runs, through the same code path: a two-patient
cohort (``float32`` stored rows and streaming bands, the default) and one patient. So the
compiled signatures are the ones those runs need, not a list kept by hand that could drift
from the kernels' arguments. A cohort with ``trajectory_dtype="float64"`` (the NONMEM export)
still compiles its own signature at first use.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numba
from numba.core.registry import CPUDispatcher

from pkpd.errors import CacheError
from pkpd.inputs.model import available_models, load_model
from pkpd.running.cohort import exact_state_size, simulate_cohort
from pkpd.running.simulate import simulate

#: What every compile run simulates: a dose any model takes, in a population that has
#: every covariate a shipped model reads.
_REGIMEN = "1 mg bolus at 0 h"
_POPULATION = "healthy_volunteers"


@dataclass(frozen=True)
class Compiled:
    """One model's compile run."""

    #: The model's name, or its file as given.
    model: str
    #: Which kernel the model's cohorts use, e.g. ``"exact kernel, 7 states"``.
    kernel: str
    #: Models with the same key share their kernel (:func:`kernel_key`).
    key: str
    #: Wall time of the run in its process (s), imports excluded.
    seconds: float
    #: Functions numba compiled in the run (0: everything came from the caches).
    compiled: int


def kernel_name(spec) -> str:
    """Which kernel a model's cohorts compile, in words."""
    if spec.is_linear:
        return f"exact kernel, {exact_state_size(spec)} states"
    return "[ode] model, its own kernels"


def kernel_key(spec) -> str:
    """Models with the same key share their compiled cohort kernel: a linear model's exact
    kernel is compiled per state size, an ``[ode]`` model's generated module per model."""
    return kernel_name(spec) if spec.is_linear else f"[ode] {spec.name}"


def _numba_compiles() -> int:
    """Signatures numba compiled (rather than loaded from its cache) in this process, over
    the package's modules, the kernel copies and the generated ``[ode]`` modules."""
    seen, total = set(), 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("pkpd") or module is None:
            continue
        for obj in list(vars(module).values()):
            if isinstance(obj, CPUDispatcher) and id(obj) not in seen:
                seen.add(id(obj))
                total += sum(obj.stats.cache_misses.values())
    return total


def compile_model(model: str) -> Compiled:
    """Run a two-patient cohort and one patient of `model` in this process, compiling what
    they need (or loading it from the caches)."""
    spec = load_model(model)
    # A worker process runs several models: count this model's compiles only.
    before = _numba_compiles()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # The population's covariate ranges and defaults are not the point of this run.
        warnings.simplefilter("ignore")
        ds = simulate_cohort(spec, _REGIMEN, _POPULATION, n=2, seed=0, until="2 h",
                             every="10 min", progress=False)  # fmt: skip
        # One patient with the first virtual patient's covariates (a children's model
        # has no default weight).
        covariates = {c: float(ds[c].values[0]) for c in spec.covariates if c in ds.coords}
        simulate(spec, _REGIMEN, covariates, until="2 h", every="10 min")
    seconds = time.perf_counter() - t0
    compiled = _numba_compiles() - before
    return Compiled(str(model), kernel_name(spec), kernel_key(spec), seconds, compiled)


def schedule(keys: list[str]) -> list[list[int]]:
    """Two rounds of model indices: the first model of each kernel key, then the others
    (whose kernel the first round compiled), each round in the order given."""
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    leaders = sorted(first.values())
    return [leaders, [i for i in range(len(keys)) if i not in set(leaders)]]


def compile_kernels(models=None, jobs: int | None = None, on_done=None) -> list[Compiled]:
    """Compile, ahead of their first use, the kernels of `models` (default: every shipped
    model) in `jobs` worker processes (default: the number of CPUs).

    Models are checked (loaded) here first, so a wrong name fails before any process starts
    (and :class:`~pkpd.errors.CacheError` with numba's JIT disabled: nothing to compile).
    One model per distinct kernel (:func:`kernel_key`) runs in a first round, the others
    (which then load the shared kernel from the cache) in a second, so no worker waits on a
    lock while another compiles. `on_done(result)` is called as each model finishes.
    Returns one :class:`Compiled` per model, in the order given.
    """
    if numba.config.DISABLE_JIT:
        raise CacheError("NUMBA_DISABLE_JIT is set: numba would compile nothing to cache")
    names = list(available_models()) if models is None else [str(m) for m in models]
    if not names:
        raise ValueError("compile_kernels: no model given")
    if jobs is None:
        jobs = os.cpu_count() or 1
    if int(jobs) != jobs or jobs < 1:
        raise ValueError(f"compile_kernels: jobs={jobs!r}; expected a whole number >= 1")
    rounds = schedule([kernel_key(load_model(m)) for m in names])
    results: dict[int, Compiled] = {}
    # spawn: a fresh interpreter per worker (no forked numba threads or locks).
    context = multiprocessing.get_context("spawn")
    workers = min(int(jobs), len(rounds[0]))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for batch in rounds:
            futures = {pool.submit(compile_model, names[i]): i for i in batch}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                if on_done is not None:
                    on_done(results[futures[fut]])
    return [results[i] for i in range(len(names))]
