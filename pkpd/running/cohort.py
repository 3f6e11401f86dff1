"""Monte Carlo virtual-patient cohorts: draws, chunks, the parallel kernel, xarray results.

Reproducibility
---------------
Patients are grouped in fixed blocks of :data:`BLOCK` consecutive indices. Block ``b`` draws
its random numbers from generators seeded with ``SeedSequence(seed, spawn_key=(b, purpose))``
(one independent stream per purpose: covariates, random effects, event times, residual
error, a PCA pump's demands, and the random effects and residual errors of each further
drug of its reservoir), always for the whole block. A patient's draws therefore depend
only on the seed and its index: the same seed gives the same cohort, bit for bit,
whatever the chunk size, the number of threads or of Dask workers, and the first M
patients of a cohort of N are the cohort of M. Random numbers are drawn in numpy, outside numba.

Memory
------
In summary mode (no trajectories) memory is proportional to the chunk, plus the per-patient
metrics. Trajectories are float32; :func:`estimate_memory` is checked before the run and a
request that does not fit is refused with the options that would.

Percentile bands
----------------
With trajectories kept in memory the bands are exact (``numpy.quantile``, linear
interpolation). Otherwise they are computed in one pass from per-time-point histograms with
logarithmic bins of relative width :data:`BAND_BIN_RATIO` - 1 between
:data:`BAND_MIN_NG_ML` and :data:`BAND_MAX_NG_ML`, with the exact bands' definition (linear
interpolation between the two order statistics around ``q (n - 1)``), each order statistic
replaced by the geometric centre of the bin holding it (:func:`quantiles_from_counts`). The
centre is within a factor ``sqrt(BAND_BIN_RATIO)`` of every value in its bin, so a streamed
band differs from the exact one by at most ``sqrt(1.01) - 1 = 0.499 %`` (relative) where
both order statistics lie in the bins' range (``tests/test_cohort.py`` checks this bound
against ``numpy.quantile`` on several models). Values below the lowest edge (including
zero) count as 0 (an absolute error below :data:`BAND_MIN_NG_ML`), values above the highest
as :data:`BAND_MAX_NG_ML`.

PD endpoints
------------
With ``pd=`` each endpoint's effect sites are states of the model (linear: effect
compartments, exact kernel; ``[ode]``: an added equation, adaptive kernels), so their
concentrations ``ce_<endpoint>_<input>`` are outputs like any other (Cmax, AUC, values at
times, thresholds, bands, trajectories, all exact). The PD variables
(:func:`pkpd.inputs.pd.pd_outputs`: the names, units and formulas of :func:`pkpd.simulate`,
``<endpoint>_conc_<input>``, ``<endpoint>_conc_over_c50``, ``<endpoint>``, ...) are further
entries of the ``output`` dimension (units in ``output_units``), computed from the recorded
outputs they are functions of, with no approximation:

* values at named times (``c_at``) and trajectories: for every PD variable;
* Cmax/Tmax: for those that increase with one output, ``f(Cmax)`` at its Tmax; NaN for one
  that decreases with its output or sums several (Olofsen 2012's net effect);
* thresholds: for those that increase with one output, on that output at the level where
  the variable equals the threshold (:meth:`pkpd.inputs.pd.PDOutput.inverse`): the same
  time in continuous time; refused for the others (their time above a level is not a
  function of one recorded output's);
* AUC: for the driving concentrations (a constant times the output's); NaN for effects,
  whose time integral is not an exposure;
* bands: exact from trajectories kept in memory (quantiles of the variable's own
  trajectories); streaming for PD variables of one output, its order statistics mapped
  (reversed ranks for a decreasing map) and then interpolated as for the exact bands: a
  bin centre within 0.499 % of the concentration's order statistic gives a ratio
  ``C/C50`` or a linear effect within 0.499 %, and a fraction of Emax within about gamma
  times that (its logarithmic slope is below gamma). Where the rank ``q (n - 1)`` is whole
  the exact band of the variable is its function of the concentration's exact band.

PD variables are predictions: not with ``residual=True``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import xarray as xr

from pkpd._version import __version__
from pkpd.disclaimer import DISCLAIMER
from pkpd.engine.dosing import EventTable
from pkpd.engine.kernels import (
    SPECIAL_ANCHOR,
    SPECIAL_WINDOW_END,
    SPECIAL_WINDOW_START,
    histogram_update,
    kernel_for,
)
from pkpd.engine.kernels_adaptive import linear_parameters, stats_array
from pkpd.engine.solvers import N_STATS, Status, registry
from pkpd.errors import (
    CovariateError,
    CovariateRangeWarning,
    PkpdError,
    RegimenError,
    SimulationError,
    UnitError,
)
from pkpd.inputs.demand import load_demand
from pkpd.inputs.model import ModelSpec, cohort_inputs, load_model, output_scales
from pkpd.inputs.pca import further_attrs
from pkpd.inputs.pd import PDOutput, augment_model, pd_attrs, pd_outputs
from pkpd.inputs.population import CovariateTable, load_population
from pkpd.inputs.regimen import Bolus, Regimen, _time_ref, load_regimen
from pkpd.inputs.stereo import check_s_ketamine_model, racemic_attrs, racemic_to_s_ketamine
from pkpd.inputs.units import parse_quantity, range_bounds
from pkpd.output import io as output_io
from pkpd.running import pca as pca_pump
from pkpd.running import resources
from pkpd.running import tci as pump
from pkpd.running.bolus_peak import cmax_at_bolus
from pkpd.running.grid import MG_L_TO_NG_ML, bolus_jumps, bolus_on_grid, grid_attrs, time_grid
from pkpd.running.request import (
    BLOCK,
    ChunkResult,
    CohortRequest,
    CohortSetup,
    Companion,
    Range,
    Threshold,
)
from pkpd.running.variables import variable
from pkpd.running.warning_log import ATTR as WARNINGS_ATTR
from pkpd.running.warning_log import record_warnings

__all__ = [
    "BLOCK",
    "ChunkResult",
    "CohortError",
    "CohortRequest",
    "estimate_memory",
    "simulate_cohort",
]

_PURPOSE = {"covariates": 0, "eta": 1, "anchors": 2, "residual": 3, "demand": 4, "demand_stream": 5}
#: The random effects and residual errors of the k-th companion drug of a PCA reservoir.
MAX_COMPANIONS = 8
for _k in range(1, MAX_COMPANIONS + 1):
    _PURPOSE[f"eta_drug{_k}"] = 4 + 2 * _k
    _PURPOSE[f"residual_drug{_k}"] = 5 + 2 * _k

BAND_MIN_NG_ML = 1e-4
BAND_MAX_NG_ML = 1e5
BAND_BIN_RATIO = 1.01
#: Quantiles of the percentile bands.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Exact bands are computed over slabs of band times of at most this many float64 bytes, so
#: they never need a float64 copy of all the trajectories.
BAND_SLAB_BYTES = 8 * 1024**2
_MAX_BAND_POINTS = 600
#: Default step of the streaming bands (h): the smallest multiple of the grid step >= this.
_BAND_EVERY_H = 10 / 60


class CohortError(PkpdError, ValueError):
    """A cohort request is invalid or does not fit in memory."""


def block_rng(seed: int, block: int, purpose: str) -> np.random.Generator:
    """The generator of one block of patients for one purpose (see module docstring)."""
    ss = np.random.SeedSequence(seed, spawn_key=(block, _PURPOSE[purpose]))
    return np.random.Generator(np.random.PCG64(ss))


# ----------------------------------------------------------------------------- set-up


def _omega_blocks(spec: ModelSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """(parameter indices, Cholesky factor) of every block with a known omega."""
    out = []
    for v in spec.variability:
        if v.omega is None:
            continue
        idx = np.array([spec.param_names.index(p) for p in v.parameters])
        out.append((idx, np.linalg.cholesky(v.omega)))
    return out


def _draw_block(setup: CohortSetup, block: int) -> tuple[dict, np.ndarray, dict, Any]:
    """Covariates, etas (BLOCK, n_par) and anchor times of one whole block."""
    pop = setup.population
    lo = block * BLOCK
    hi = lo + BLOCK
    if hasattr(pop, "sample"):
        cov = pop.sample(block_rng(setup.seed, block, "covariates"), BLOCK)
    else:  # CovariateTable: rows of the table, the last block padded by repetition
        rows = np.arange(lo, hi) % pop.n
        cov = {k: np.asarray(v)[rows] for k, v in pop.covariates.items()}
    n_par = len(setup.spec.param_names)
    eta = np.zeros((BLOCK, n_par))
    if setup.iiv:
        rng = block_rng(setup.seed, block, setup.eta_purpose)
        for idx, L in setup.omega_blocks:
            z = rng.standard_normal((BLOCK, idx.size))
            eta[:, idx] = z @ L.T
    anchors = {}
    rng_a = block_rng(setup.seed, block, "anchors")
    for name in sorted(setup.regimen.anchor_names):
        spec_a = setup.regimen.anchor_spec(name)
        if spec_a is None:
            raise RegimenError(
                f"the regimen refers to the event `{name}` but declares no "
                f"[anchors.{name}] to draw it from"
            )
        anchors[name] = spec_a.sample(rng_a, BLOCK)
    return cov, eta, anchors, block_rng(setup.seed, block, setup.residual_purpose)


def _times(text: str, anchors: dict[str, np.ndarray], n: int, what: str) -> np.ndarray:
    anchor, off = _time_ref(text, key=what)
    if anchor is None:
        return np.full(n, off)
    if anchor not in anchors:
        raise CohortError(
            f"`{what}` = {text!r} refers to the event `{anchor}`, which the "
            f"regimen does not use ({', '.join(anchors) or 'no events'})"
        )
    return anchors[anchor] + off


def run_chunk(
    setup: CohortSetup, start: int, stop: int, threads: int | None = None, dest=None
) -> ChunkResult:
    """Simulate patients ``start..stop-1``; return plain numpy arrays (picklable).

    `dest`, in this process only: the cohort's ``(patient, output + compartment, time)``
    array of kept trajectories (in reporting units, ng/mL) and amounts (mg); the exact
    kernel then writes its stored points there directly, with no chunk copy.
    """
    parts, sl, cov, eta, anchors = _chunk_draws(setup, start, stop)
    theta = _theta(setup.spec, cov, eta)
    weight = np.asarray(cov.get("weight", np.full(stop - start, np.nan)), dtype=float)
    ev = pump.event_arrays(setup.regimen, weight, anchors, cov)
    ev = tuple(np.ascontiguousarray(a) for a in ev)
    pca = None
    if setup.regimen.pca is not None:  # the pump's deliveries join the event table
        ev, pca = _run_pca(setup, theta, weight, anchors, ev, start, stop)
    res = _solve_chunk(setup, start, stop, (parts, sl, cov, anchors), theta, ev, threads, dest)
    if pca is not None:
        res.pca = _pca_summary(setup, pca, anchors, stop - start)
    if setup.companions:
        res.companions = []
        for c in setup.companions:
            ev_c, pca_c = pca_pump.replay(pca, c.drug, setup.regimen.pca, weight)
            res.companions.append(_companion_chunk(c, start, stop, ev_c, threads))
            res.pca["drug_dose"].append(pca_c.delivered(pca_c.t_off[:, None])[:, 0])
            if setup.at:
                t_at = _at_times(setup, anchors, stop - start)
                res.pca["drug_dose_at"].append(pca_c.delivered(t_at))
    return res


def _theta(spec: ModelSpec, cov: dict, eta: np.ndarray) -> np.ndarray:
    """The patients' individual parameters ``(n, n_par)`` from their covariates and etas."""
    model_cov = {k: v for k, v in cov.items() if k in spec.covariates}
    theta = np.ascontiguousarray(spec.individual_parameters(model_cov, eta, warn=False))
    if theta.ndim == 1:
        theta = np.broadcast_to(theta, (eta.shape[0], theta.size)).copy()
    return theta


def _companion_chunk(c, start: int, stop: int, ev, threads) -> ChunkResult:
    """A companion drug of the PCA reservoir for patients ``start..stop-1``: the same
    patients (covariates and event times; its own random effects and residual errors) on
    its own model, dosed by the pump rows `ev` (:func:`pkpd.running.pca.replay`)."""
    parts, sl, cov, eta, anchors = _chunk_draws(c.setup, start, stop)
    theta = _theta(c.setup.spec, cov, eta)
    ev = tuple(np.ascontiguousarray(a) for a in ev)
    return _solve_chunk(c.setup, start, stop, (parts, sl, cov, anchors), theta, ev, threads)


def _solve_chunk(setup, start, stop, draws, theta, ev, threads, dest=None) -> ChunkResult:
    """The metrics and kept rows of patients ``start..stop-1`` under the event table `ev`
    (`draws`: the blocks' draws, the chunk's slice of them, covariates and event times)."""
    parts, sl, cov, anchors = draws
    n = stop - start
    spec = setup.spec
    specials = _special_times(setup, anchors, n)
    grid = setup.grid
    ev_t = ev[0]
    t0 = float(min(grid[0], ev_t.min() if ev_t.size else grid[0], specials[0].min(initial=grid[0])))
    lay = _StoreLayout(setup)
    n_out = len(spec.output_names)
    res = ChunkResult(
        start=start,
        stop=stop,
        covariates=cov,
        anchors=anchors,
        theta=theta,
        cmax=np.empty((n, n_out)),
        tmax=np.empty((n, n_out)),
        auc=np.full((n, n_out, len(setup.windows)), np.nan),
        t_above=np.empty((n, len(setup.kernel_thresholds))),
        c_at=np.full((n, n_out, len(setup.at)), np.nan),
        status=np.zeros(n, dtype=np.int64),
    )
    # Stored outputs are in reporting units (ng/mL for concentrations), amounts in mg: the
    # exact kernel scales as it stores (one rounding to the storage dtype).
    in_place = dest is not None and not setup.adaptive and not setup.residual
    if in_place:
        # The kernel writes the first rows (outputs, amounts); PD rows follow them.
        traj_rows = dest[start:stop]
    else:
        traj_rows = np.zeros((n, lay.rows.size, lay.n_store_t), dtype=setup.traj_dtype)
    traj = traj_rows[:, : lay.store_idx.size]
    old = numba.get_num_threads()
    if threads:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        if setup.adaptive:
            res.solver_stats = _run_adaptive(setup, theta, cov, t0, ev, specials, lay, res, traj)
            traj *= lay.scale[: lay.store_idx.size, None].astype(traj.dtype)  # mg/L -> ng/mL
        else:
            _run_exact(setup, theta, t0, ev, specials, lay, res, traj_rows)
    finally:
        numba.set_num_threads(old)
    _chunk_extras(setup, res, ev, traj, lay, parts, sl)
    res.at_bolus = cmax_at_bolus(spec, res.tmax, ev[0], ev[2])
    if setup.pd_store:
        pd_rows = _pd_values(setup, setup.pd_store, lay.store, traj, axis=1)
        if in_place:
            traj_rows[:, lay.rows.size :] = pd_rows
        else:
            res.pd_trajectory = pd_rows.astype(setup.traj_dtype)
    if setup.store_out and not in_place:
        res.trajectory = traj if res.trajectory is None else res.trajectory
    if setup.amounts and not in_place:
        res.amount = traj_rows[:, lay.store_idx.size : lay.rows.size]
    return res


def _run_pca(setup: CohortSetup, theta, weight, anchors, ev, start: int, stop: int):
    """The PCA pump of patients ``start..stop-1``: their draws come from their whole
    blocks (two streams per block, :mod:`pkpd.running.pca`), so chunks, threads and workers
    do not change them."""
    reg, demand = setup.regimen, setup.demand
    n = stop - start
    on, off = pca_pump.pump_times(reg.pca, anchors, n)
    kc = pca_pump.stream_length(demand, float(np.max(off - on)))
    b0, b1 = start // BLOCK, (stop - 1) // BLOCK + 1
    parts = [
        pca_pump.draw(
            demand,
            block_rng(setup.seed, b, "demand"),
            block_rng(setup.seed, b, "demand_stream"),
            BLOCK,
            kc,
        )
        for b in range(b0, b1)
    ]
    draws = pca_pump.PCADraws.concat(parts)[slice(start - b0 * BLOCK, stop - b0 * BLOCK)]
    return pca_pump.run(reg, setup.spec, demand, theta, weight, anchors, ev, draws)


def _pca_summary(setup: CohortSetup, pca, anchors, n: int) -> dict:
    """Per-patient PCA results of a chunk (plain arrays): counts, amounts, times."""
    out = {name: pca.counts[:, i] for i, name in enumerate(pca_pump.COUNT_NAMES)}
    out["dose"] = pca.delivered(pca.t_off[:, None])[:, 0]
    out["drug_dose"] = [out["dose"]]  # the reservoir's drugs: this one, then its companions
    if setup.at:
        out["dose_at"] = pca.delivered(_at_times(setup, anchors, n))
        out["drug_dose_at"] = [out["dose_at"]]
    out["lockout_hours"] = pca.lockout_hours()
    out["reservoir_empty"] = np.where(np.isfinite(pca.t_empty), pca.t_empty, np.nan)
    out["pain_initial"] = pca.p0
    out["start"] = pca.t_on
    out["c50"] = pca.c50
    return out


def _at_times(setup: CohortSetup, anchors: dict, n: int) -> np.ndarray:
    """The times of `setup.at` of `n` patients ``(n, n_at)``, h."""
    return np.stack([_times(v, anchors, n, "at") for v in setup.at.values()], axis=1)


def _pd_by_name(setup: CohortSetup) -> dict[str, PDOutput]:
    return {po.name: po for po in setup.pd_outputs}


def _pd_values(setup: CohortSetup, names, outs, arr, axis: int) -> np.ndarray:
    """PD variables `names` from the model outputs `outs` along `axis` of `arr`
    (reporting units), stacked along that axis (float64)."""
    by = _pd_by_name(setup)
    vals = []
    for name in names:
        po = by[name]
        xs = [np.take(arr, outs.index(o), axis=axis) for o, _, _ in po.terms]
        vals.append(np.broadcast_to(po.value(*xs), xs[0].shape))
    return np.stack(vals, axis=axis)


def _chunk_draws(setup: CohortSetup, start: int, stop: int):
    """The random draws of patients ``start..stop-1``, from their whole blocks.

    Returns the blocks' draws, the chunk's slice of them, and the chunk's covariates, etas
    and anchor times.
    """
    b0, b1 = start // BLOCK, (stop - 1) // BLOCK + 1
    parts = [_draw_block(setup, b) for b in range(b0, b1)]
    sl = slice(start - b0 * BLOCK, stop - b0 * BLOCK)
    cov = {k: np.concatenate([p[0][k] for p in parts])[sl] for k in parts[0][0]}
    eta = np.concatenate([p[1] for p in parts])[sl]
    anchors = {k: np.concatenate([p[2][k] for p in parts])[sl] for k in parts[0][2]}
    return parts, sl, cov, eta, anchors


def _special_times(setup: CohortSetup, anchors: dict, n: int):
    """Window bounds and anchored concentration times, sorted per patient.

    Returns ``(times, kinds, slots)``, each ``(n, n_special)``.
    """
    cols, kinds, slots = [], [], []
    for w, (a, b) in enumerate(setup.windows.values()):
        ta = _times(a, anchors, n, "window start")
        tb = _times(b, anchors, n, "window end")
        if np.any(tb < ta):
            raise CohortError(
                f"window {list(setup.windows)[w]!r} ends before it starts for some patients"
            )
        cols += [ta, tb]
        kinds += [SPECIAL_WINDOW_START, SPECIAL_WINDOW_END]
        slots += [w, w]
    for j, text in enumerate(setup.at.values()):
        cols.append(_times(text, anchors, n, "at"))
        kinds.append(SPECIAL_ANCHOR)
        slots.append(j)
    if not cols:
        return np.zeros((n, 0)), np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), np.int64)
    spec_t = np.stack(cols, axis=1)
    order = np.argsort(spec_t, axis=1, kind="stable")
    spec_t = np.take_along_axis(spec_t, order, axis=1)
    spec_kind = np.asarray(kinds, dtype=np.int64)[order]
    spec_slot = np.asarray(slots, dtype=np.int64)[order]
    return spec_t, spec_kind, spec_slot


class _StoreLayout:
    """Which rows a chunk stores, at which stride: the stored outputs (kept trajectories,
    or the band outputs in summary mode), then the amounts of every compartment."""

    def __init__(self, setup: CohortSetup) -> None:
        spec = setup.spec
        outs = spec.output_names
        self.store = setup.store_out if setup.store_out else setup.band_outputs
        self.stride = setup.store_stride if setup.store_out else setup.band_stride
        self.store_idx = np.array([outs.index(o) for o in self.store], dtype=np.int64)
        grid = setup.grid
        self.n_store_t = (grid.size - 1) // self.stride + 1 if self.store_idx.size else 0
        # Amounts: every compartment, stored as the kernel's extra rows after the outputs.
        self.extra = np.arange(spec.n_comp if setup.amounts else 0, dtype=np.int64)
        self.rows = np.concatenate([self.store_idx, len(outs) + self.extra])
        self.thr_out = np.array(
            [outs.index(t.recorded_output) for t in setup.kernel_thresholds], dtype=np.int64
        )
        self.thr_val = np.array([t.value for t in setup.kernel_thresholds], dtype=float)
        self.scale = np.ones(self.rows.size)
        self.scale[: self.store_idx.size] = _output_scales(spec)[0][self.store_idx]


def _exact_kept_states(spec) -> np.ndarray:
    """The augmented states the exact kernel keeps: the compartments, then each output's
    cumulative AUC (the dose and elimination accumulators are dropped)."""
    n_out = len(spec.output_names)
    return np.concatenate(
        [np.arange(spec.n_comp), spec.n_comp + 1 + len(spec.analyte_names) + np.arange(n_out)]
    )


def exact_state_size(spec) -> int:
    """The state size a linear model's exact cohort kernel is compiled for
    (:func:`pkpd.engine.kernels.kernel_for`): models of the same size share one kernel."""
    return int(_exact_kept_states(spec).size)


def _run_exact(setup, theta, t0, ev, specials, lay: _StoreLayout, res: ChunkResult, traj_rows):
    """Fill the chunk's metrics and stored rows with the exact (matrix exponential) kernel."""
    spec = setup.spec
    keep = _exact_kept_states(spec)
    kernel_for(keep.size)(
        theta, spec.comps_i, spec.flows_i, spec.flows_f, spec.effects_i, spec.outputs_i,
        spec.dose_index, len(spec.analyte_names), keep, EventTable(*ev), t0, setup.grid,
        *specials,
        lay.thr_out, lay.thr_val, lay.rows, lay.stride, lay.extra, lay.scale,
        _uniform(setup.grid), res.cmax, res.tmax, res.auc, res.t_above, res.c_at, traj_rows,
        res.status,
    )  # fmt: skip


def _chunk_extras(setup, res: ChunkResult, ev, traj, lay: _StoreLayout, parts, sl) -> None:
    """Limits at boluses, residual error and streaming-band counts of a solved chunk."""
    ev_t, _, ev_bolus = ev
    if setup.store_out and _records_bolus_limits(setup):
        _bolus_limits(setup, res, ev_t, ev_bolus, traj, lay.store_idx)
    elif setup.store_out:
        # [ode] models: the jump of an output at a bolus is not known here; count the
        # boluses on the trajectory grid after its first point (pkpd.metrics warns).
        idx = bolus_on_grid(setup.grid[:: setup.store_stride], ev_t, ev_bolus)[0]
        res.boluses_without_limits = int((idx > 0).sum())
    if setup.residual and setup.store_out:
        res.trajectory = _apply_residual(setup, traj, lay.store, parts, sl)
        traj = res.trajectory
    if setup.band_outputs and not setup.keep_in_memory:
        # Streaming bands only: kept trajectories give exact bands at the end (no counts).
        bidx = [lay.store.index(o) for o in setup.band_outputs]
        bstep = setup.band_stride // lay.stride
        n_band_t = len(range(0, lay.n_store_t, bstep))
        counts = np.zeros((len(bidx), n_band_t, _edges().size + 1), dtype=np.int64)
        # ng/mL; in summary mode the kernel stored just the band points: no copy of them.
        src = traj if bidx == list(range(traj.shape[1])) else traj[:, bidx]
        btraj = np.ascontiguousarray(src[:, :, ::bstep])
        histogram_update(btraj, np.log(_edges()), counts)
        res.band_counts = counts


def _records_bolus_limits(setup: CohortSetup) -> bool:
    """Whether stored trajectories come with their limits at boluses on the grid: linear
    models (the jump of a bolus is known), for a regimen with instantaneous boluses. With
    residual error the limits are the model's values (taken before the error is drawn)."""
    return setup.spec.is_linear and any(
        isinstance(d, Bolus) and d.duration == 0 for d in setup.regimen.doses
    )


def _bolus_limits(setup, res: ChunkResult, ev_t, ev_bolus, traj, store_idx) -> None:
    """The stored outputs just before and just after each bolus on the trajectory grid.

    The kernels store the value at a grid time after a bolus given then (right-continuous);
    :mod:`pkpd.metrics` needs the value before it too, to end the interval before the
    bolus. A bolus adds to the dose compartment only, so the outputs jump by the dose
    times :func:`pkpd.running.grid.bolus_jumps`. One slot per event column (``NaN`` where the
    event is no bolus on the grid); slots of boluses at one grid time repeat its limits.
    """
    tg = setup.grid[:: setup.store_stride]
    idx, inc, pend = bolus_on_grid(tg, ev_t, ev_bolus)  # (n, K)
    jump = bolus_jumps(setup.spec, res.theta)[:, store_idx]  # (n, n_store), ng/mL per mg
    on = idx >= 0
    at = np.take_along_axis(traj, np.where(on, idx, 0)[:, None, :], axis=2).astype(float)
    at[~np.broadcast_to(on[:, None, :], at.shape)] = np.nan
    res.bolus_time = np.where(on, tg[np.where(on, idx, 0)], np.nan)
    res.pre_bolus = at - jump[:, :, None] * inc[:, None, :]
    res.post_bolus = at + jump[:, :, None] * pend[:, None, :]


def _run_adaptive(setup, theta, cov, t0, ev, specials, lay: _StoreLayout, res, traj):
    """Fill the chunk's metrics with an adaptive solver; returns per-patient counters.

    Linear models run their reduced system ``dy/dt = M y + b u`` (compartments and AUC
    states) and record only the concentrations and AUCs;
    ``[ode]`` models their generated right-hand side. With ``auto_stiff``, patients for
    whom Dopri5 reports stiffness are solved again with Rodas4.
    """
    spec = setup.spec
    n = theta.shape[0]
    if spec.is_linear:
        try:
            P, B, auc_index = linear_parameters(spec, theta)
        except ValueError:
            raise CohortError(
                f"model {spec.name!r}: the input map differs between patients; use method='exact'"
            ) from None
        N = B.size
        Y0 = np.zeros((n, N))
        kernels = registry.LINEAR_COHORT_KERNELS
    else:
        P, B, Y0, auc_index, kernels = cohort_inputs(spec, theta, cov, ev)
        N = Y0.shape[1]
    rtol = registry.tolerance(setup.rtol, N, "rtol")
    atol = registry.tolerance(setup.atol, N, "atol")
    stats = stats_array(n)
    grid = setup.grid
    cmax, tmax, auc, t_above, c_at, status = (
        res.cmax, res.tmax, res.auc, res.t_above, res.c_at, res.status
    )  # fmt: skip
    thr_out, thr_val, store_idx, stride = lay.thr_out, lay.thr_val, lay.store_idx, lay.stride

    def call(method, rows):
        def pick(a):
            return a if rows is None else np.ascontiguousarray(a[rows])

        out = [pick(a) for a in (cmax, tmax, auc, t_above, c_at, traj, status, stats)]
        kernels[method](
            pick(P), B, pick(Y0), t0, grid, EventTable(*[pick(a) for a in ev]),
            *[pick(a) for a in specials], rtol, atol, np.inf, registry.DEFAULT_MAX_STEPS,
            registry.DEFAULT_NSTIFF,
            np.ascontiguousarray(auc_index, dtype=np.int64), thr_out, thr_val, store_idx,
            stride, *out,
        )  # fmt: skip
        if rows is not None:
            for dst, src in zip(
                (cmax, tmax, auc, t_above, c_at, traj, status, stats), out, strict=True
            ):
                dst[rows] = src

    call(setup.method, None)
    if setup.auto_stiff:
        stiff = np.nonzero(status == Status.STIFF)[0]
        if stiff.size:
            call(registry.STIFF_FALLBACK, stiff)
    return stats


def _uniform(grid: np.ndarray) -> bool:
    """A grid whose steps agree to rounding (the kernel's fast path applies)."""
    if grid.size < 3:
        return grid.size == 2
    d = np.diff(grid)
    return bool(np.max(np.abs(d - d[0])) <= 64 * np.finfo(float).eps * max(1.0, abs(grid[-1])))


def _apply_residual(setup, traj, store, parts, sl):
    """Sampled observations: the model's residual error applied to stored trajectories."""
    eps = np.concatenate([p[3].standard_normal((BLOCK, *traj.shape[1:])) for p in parts])[sl]
    out = traj.astype(np.float64)  # reporting units (ng/mL); the model's additive SD is mg/L
    scale = _output_scales(setup.spec)[0]
    outs = setup.spec.output_names
    for j, o in enumerate(store):
        r = setup.spec.residual.get(o)
        if r is None:
            raise CohortError(f"residual error requested but the model declares none for `{o}`")
        e = eps[:, j, :]
        if r.type == "exponential":
            out[:, j, :] *= np.exp(r.proportional_sd * e)
        else:
            # Combined error as NONMEM's Y = F + sqrt(prop^2 F^2 + add^2) * EPS (one draw).
            add = r.additive_sd * scale[outs.index(o)]
            sd = np.sqrt((r.proportional_sd * out[:, j, :]) ** 2 + add**2)
            out[:, j, :] += sd * e
    return out.astype(traj.dtype)


def _edges() -> np.ndarray:
    n = math.ceil(math.log(BAND_MAX_NG_ML / BAND_MIN_NG_ML) / math.log(BAND_BIN_RATIO))
    return BAND_MIN_NG_ML * BAND_BIN_RATIO ** np.arange(n + 1)


def _pd_streaming_bands(setup: CohortSetup, counts: np.ndarray) -> np.ndarray:
    """Streaming bands of the PD variables `setup.pd_bands` (each a monotone function `f`
    of one band output), ``(quantile, pd_band, band_time)``.

    The exact band of ``f(X)`` interpolates linearly between two order statistics of
    ``f(X)``, which are ``f`` of order statistics of ``X`` (reversed ranks when `f`
    decreases); each is taken as ``f`` of the bin centre holding the order statistic of
    ``X``, as :func:`quantiles_from_counts` does for ``X`` itself.
    """
    by = _pd_by_name(setup)
    out = np.empty((len(QUANTILES), len(setup.pd_bands), counts.shape[1]))
    for j, name in enumerate(setup.pd_bands):
        po = by[name]
        c = counts[setup.band_outputs.index(po.terms[0][0])]
        out[:, j] = quantiles_from_counts(c, QUANTILES, transform=po.value, increasing=po.rising)
    return out


def quantiles_from_counts(
    counts: np.ndarray, q, transform=None, increasing: bool = True
) -> np.ndarray:
    """Quantiles (last axis of `counts` = bins) from log-spaced histograms (see module).

    The definition of the exact bands (``numpy.quantile``, linear): at the position
    ``p = q (n - 1)`` between the order statistics ``X_(floor p)`` and ``X_(floor p + 1)``
    (0-based), ``X_(floor p) + (p - floor p) (X_(floor p + 1) - X_(floor p))``, each order
    statistic replaced by the geometric centre of the bin that holds it. Each centre is
    within a factor ``sqrt(BAND_BIN_RATIO)`` of its order statistic, and so is their
    weighted mean of the exact value.
    """
    edges = _edges()
    centres = np.concatenate([[0.0], np.sqrt(edges[:-1] * edges[1:]), [edges[-1]]])
    if transform is not None:
        # A monotone function of the values (a PD variable of one output): its order
        # statistics are the function of the values' (ranks reversed when it decreases).
        centres = np.asarray(transform(centres), dtype=float)
    cum = np.cumsum(counts, axis=-1)
    total = cum[..., -1]
    out = np.empty((len(q), *counts.shape[:-1]))
    for i, qq in enumerate(q):
        pos = qq * (total - 1.0)
        lo = np.floor(pos)
        frac = pos - lo
        hi = np.minimum(lo + 1.0, total - 1.0)
        if not increasing:
            lo, hi = total - 1.0 - lo, total - 1.0 - hi
        # The order statistic of 0-based rank r lies in the first bin with cum > r.
        c_lo = centres[np.argmax(cum > lo[..., None], axis=-1)]
        c_hi = centres[np.argmax(cum > hi[..., None], axis=-1)]
        out[i] = c_lo + frac * (c_hi - c_lo)
    return out


# ----------------------------------------------------------------------------- memory


def estimate_memory(
    n: int,
    n_out: int,
    n_store: int,
    n_store_t: int,
    n_metrics: int,
    chunk: int,
    keep_trajectories: bool,
    exact_bands: bool = False,
    itemsize: int = 4,
    n_amounts: int = 0,
    *,
    covariate_bytes: int = 64,
    text_bytes: int = 0,
    n_scaled: int | None = None,
    n_band: int = 0,
    n_band_t: int = 0,
    streaming_bands: bool = False,
    chunk_trajectories: bool = False,
    residual: bool = False,
    adaptive: bool = False,
    n_grid: int = 0,
    chunk_patient_bytes: int = 0,
) -> dict[str, int]:
    """Bytes a cohort adds to the process at its peak, term by term (see README, Memory).

    Each term models where the memory really goes; ``tests/test_resources.py`` compares the
    total with the peak resident memory of fresh processes over sizes and modes.

    * ``results``: per patient, the chunk's raw arrays (covariates and event times,
      `covariate_bytes`; `n_metrics` float64 metrics and individual parameters; the status;
      the solver counters if `adaptive`), alive until the end, plus at the peak of the
      assembly (``xarray.concat``) the final Dataset and the chunk Datasets' copies (the
      `n_scaled` unit-scaled metrics, the `text_bytes` of text covariates, status, index).
    * ``trajectories``: kept trajectories and `n_amounts` amounts, `itemsize` bytes per value,
      held once (the exact kernel writes into the final array).
    * ``chunk``: the working set of one chunk of ``min(chunk, n)`` patients (a cohort
      smaller than a chunk does not pay for a whole one): random draws of whole blocks,
      event tables, `chunk_patient_bytes` per patient (the per-patient systems of a linear
      model run by an adaptive solver), the chunk's own stored points when the kernel
      does not write in place (`chunk_trajectories`: adaptive solvers, residual error,
      Zarr output), the band points of streaming bands.
    * ``bands``: streaming bands hold per-time-point histograms (accumulated, the chunk's
      own, and the cumulative sums of the quantile search); exact bands one slab of
      float64 values of at most :data:`BAND_SLAB_BYTES` (or one band time of every
      patient) with its float32 gather and ``numpy.quantile``'s partitioned copy.
    * ``grid``: the time grid and its copies; ``base``: Python objects and xarray indexes.
    """
    n_scaled = n_out if n_scaled is None else n_scaled
    raw = covariate_bytes + 8 * n_metrics + 8 + (8 * N_STATS if adaptive else 0)
    final = covariate_bytes + 8 * n_metrics + 1 + 8
    copies = 8 * n_scaled + text_bytes + 1 + 8
    per_patient = raw + final + copies
    rows = n_store + n_amounts
    traj = itemsize * n * rows * n_store_t if keep_trajectories else 0
    c = min(chunk, n)
    blocks = -(-c // BLOCK) + (1 if c < n else 0)  # a chunk may straddle one more block
    work = 2 * blocks * BLOCK * (covariate_bytes + 8 * n_metrics)
    work += c * (_CHUNK_OTHER_BYTES + chunk_patient_bytes)
    if chunk_trajectories and rows:
        work += c * rows * n_store_t * itemsize
        if residual:  # standard normal draws of whole blocks, a float64 copy, two temporaries
            work += 8 * n_store_t * (blocks * BLOCK * n_store + c * n_store + 2 * c)
    held = bands = 0
    if streaming_bands and n_band:
        # The band points: the kernel's own (summary mode) or a copy from the chunk's stored
        # trajectories.
        work += c * n_band * n_band_t * 4
        counts = 8 * n_band * n_band_t * (_edges().size + 1)
        held = counts * (2 if n > chunk else 1)  # accumulated, and the next chunk's own
        bands = 2 * counts  # at the end: the counts and their cumulative sums
    elif exact_bands and keep_trajectories and n_band:
        slab = max(min(BAND_SLAB_BYTES, 8 * n * n_band * n_band_t), 8 * n * n_band)
        bands = int(2.5 * slab)
    grid = 4 * 8 * n_grid
    # Two peaks: while the chunks run (raw results, kept trajectories, one chunk's working
    # set), and while the Dataset is assembled (the chunk working set is gone by then).
    running = n * raw + traj + work + held
    assembling = n * per_patient + traj + bands
    total = max(running, assembling) + grid + _BASE_BYTES
    return {
        "results": n * per_patient,
        "dataset": n * final + traj,  # what the returned Dataset itself holds
        "trajectories": traj,
        "chunk": work + held,
        "bands": bands,
        "grid": grid,
        "base": _BASE_BYTES,
        "total": total,
    }


#: Per patient of a chunk, arrays not counted elsewhere: event tables (time, rate, bolus per
#: breakpoint), special times, the adaptive solvers' parameters and initial states.
_CHUNK_OTHER_BYTES = 256
#: Python objects, xarray indexes and attributes of a result (measured: 0.1-0.3 MB for 3
#: patients); a margin, not a term that grows.
_BASE_BYTES = 1024**2


def largest_fitting(estimate, limit: int, n: int) -> int:
    """The largest cohort size ``k <= n`` with ``estimate(k)["total"] <= limit`` (0: none).

    `estimate` is non-decreasing in `k`, so a bisection finds the size that the same check
    accepts: the advice of a refusal is consistent with the check itself.
    """
    if estimate(1)["total"] > limit:
        return 0
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(mid)["total"] <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _covariate_bytes(pop) -> tuple[int, int]:
    """Bytes per patient of the drawn (or tabled) covariates, and of those that are text."""
    if hasattr(pop, "sample"):
        cov = pop.sample(np.random.default_rng(0), 8)
    else:
        cov = {k: np.asarray(v) for k, v in pop.covariates.items()}
    total = text = 0
    for v in cov.values():
        size = np.asarray(v).dtype.itemsize
        total += size
        if np.asarray(v).dtype.kind in "OU":
            text += size
    return total, text


# ----------------------------------------------------------------------------- API


def simulate_cohort(
    model,
    regimen,
    population=None,
    n: int | None = None,
    seed: int = 0,
    *,
    until=None,
    every="1 min",
    windows: dict[str, tuple[str, str]] | None = None,
    at: dict[str, str] | None = None,
    thresholds: dict[str, list] | None = None,
    ranges: dict[str, list] | None = None,
    trajectories: list[str] | bool | None = None,
    trajectory_every=None,
    bands: bool = True,
    band_every=None,
    iiv: bool = True,
    residual: bool = False,
    chunk_size: int = 8 * BLOCK,
    threads: int | None = None,
    out=None,
    dask=None,
    progress: bool | None = None,
    raise_on_failure: bool | str = False,
    memory_limit: int | None = None,
    method: str = "auto",
    rtol=None,
    atol=None,
    amounts: bool = False,
    trajectory_dtype: str = "float32",
    extra_columns: str = "error",
    estimate_only: bool = False,
    pd=None,
    pd_parameters: dict | None = None,
    racemic: bool = False,
):
    """Simulate a virtual cohort and return an :class:`xarray.Dataset`.

    Parameters
    ----------
    model, regimen
        As for :func:`pkpd.simulate`; a regimen's named events (e.g. ``end_of_surgery``)
        are drawn per patient from the distributions declared in its file.
    population : str, Population or CovariateTable
        A shipped population name, a population file, a loaded population, or a real
        covariate table (one row per patient; then `n` defaults to its length). Every
        covariate the model uses (and weight for per-kg doses) should be drawn or in the
        table: one missing takes the model's default for every patient with a
        :class:`~pkpd.errors.CovariateDefaultWarning` (recorded in
        ``attrs["covariate_defaults"]``; an error for the weight of a paediatric model, or
        for per-kg doses). Levels of categorical covariates must be the model's.
    n, seed : int
        Number of patients; seed of the cohort (the module docstring says what it fixes).
    until, every
        Evaluation grid (default: to 24 h after the last dose event, every minute). Cmax,
        Tmax and times above thresholds are evaluated on it (plus every dose event).
    windows : dict, optional
        AUC windows ``name -> (start, end)``; times may refer to regimen events, e.g.
        ``{"postop_24h": ("end_of_surgery", "end_of_surgery + 24 h")}``. Default: the whole
        grid.
    at, thresholds : dict, optional
        Values at ``name -> time`` (``{"eos": "end_of_surgery"}``; default: each regimen
        event); time above ``output -> ["100 ng/mL", ...]``.
    ranges : dict, optional
        Time within ranges ``output -> ["50..150 ng/mL", ...]`` (a range is a text
        ``"LOW..HIGH"`` or a ``(low, high)`` pair; bounds as for `thresholds`, PD variables
        included): ``time_within`` (patient, range), the time with ``low <= c <= high``
        over the grid's span. It is the time above the low bound minus the time above the
        high bound, both integrated by the kernel on the same evaluated points (the sets
        are nested, so the difference is exact: the measure of the set where the linear
        interpolant lies in the range).
    trajectories, trajectory_every : optional
        Outputs whose time courses are kept (a list or True: all), on a step that is a
        multiple of `every` (default `every`).
    amounts : bool
        Also keep the amount in every compartment (mg) on the trajectory grid, as
        ``amount`` (patient, compartment, time); implies ``trajectories=True`` when none
        are named. Exact solver only (linear models).
    trajectory_dtype : {"float32", "float64"}
        Storage of kept trajectories and amounts (float32: half the memory, rounding 6e-8).
    bands : bool
        Percentile bands (5, 25, 50, 75, 95 %) over time of every concentration output:
        exact when trajectories are kept in memory, streaming otherwise (on a
        `band_every` grid; see the module docstring for accuracy).
    band_every : optional
        Step of the streaming bands, a whole multiple of `every` (default: the smallest
        one of at least 10 minutes).
    iiv, residual : bool
        Draw inter-individual variability (the model's omega; False: typical parameters);
        apply the model's residual error to the stored trajectories (sampled observations).
    chunk_size, threads, out, dask, progress, raise_on_failure, memory_limit, estimate_only
        How and where the cohort runs and is written: see :class:`CohortRequest`.
    method, rtol, atol
        Solver and tolerances, as for :func:`pkpd.simulate`: ``"auto"`` is the exact kernel
        for linear models and Dopri5 for ``[ode]`` models (Rodas4 when the model file says
        ``stiff = true``; patients for whom Dopri5 detects stiffness are solved again with
        Rodas4); tolerances default to 1e-6 and 1e-9 (mg, mg/L, mg*h/L). Metrics have the
        same definitions with every method (adaptive: AUCs integrated by the solver).
    extra_columns : {"error", "ignore"}
        A covariate table's columns must be the model's covariates, ``id``, ``sex``, ``age``,
        ``weight``, ``height`` or ``bmi``; ``"ignore"`` keeps others as unused coordinates.
        A name differing from a model covariate only in case (``Race``) is an error.
    pd, pd_parameters, racemic : optional
        As for :func:`pkpd.simulate`: PD endpoints, whose effect sites and PD variables
        become outputs (module docstring, "PD endpoints"); user-supplied PD values; a
        regimen in racemic ketamine amounts (an S-ketamine model gets the S half).

    Returns
    -------
    xarray.Dataset
        Dimension ``patient`` with covariates and drawn event times as coordinates; metrics
        ``cmax``, ``tmax`` (``cmax_at_bolus``: the peak is the instantaneous-bolus jump),
        ``auc``, ``time_above``, ``time_within``, ``c_at``; individual parameters
        ``param_<name>``; ``status``; optional ``trajectory`` (patient, output, time) and
        ``band`` (quantile, output, band_time). Units in ``attrs``; numbers are stored as
        numbers (``threshold_level`` coordinate, ``grid_start_h``/``grid_end_h`` attrs).
    """
    return _run_cohort(CohortRequest(**locals()))  # its fields are these parameters


# Warnings raised while a request runs point at the caller of `simulate_cohort`: their
# stacklevel is the frames below `_run_cohort` (the warning's own, ...) plus these three:
# `_run_cohort`, `simulate_cohort` and its caller.
_CALLER_FRAMES = 3


def _run_cohort(req: CohortRequest):
    """Validate `req`, check its memory, run its chunks and return the cohort (see
    :func:`simulate_cohort`, the only caller: warnings count its frame)."""
    t_start = time.perf_counter()
    # The block adds no frame: the warnings' stacklevel (_CALLER_FRAMES) is unchanged.
    with record_warnings() as log:
        plan = _plan(req)
        mem = plan.estimate(plan.setup.n)
        if req.estimate_only:
            return mem
        limit = (
            req.memory_limit
            if req.memory_limit is not None
            else int(0.8 * resources.available_memory())
        )
        if mem["total"] > limit:
            fit = largest_fitting(plan.estimate, limit, plan.setup.n)
            raise CohortError(
                f"the request needs about {mem['total'] / 1e9:.2f} GB "
                f"(trajectories {mem['trajectories'] / 1e9:.2f} GB) but {limit / 1e9:.2f} GB are "
                f"available: write to a .zarr file (streams to disk), keep fewer trajectories or "
                f"a coarser trajectory_every, or simulate at most about {fit:,} patients"
            )
        setup = plan.setup
        if setup.amounts and setup.adaptive:
            raise CohortError(
                "amounts are kept by the exact solver only (linear models); "
                f"method={setup.method!r}"
            )
        for spec in (setup.spec, *(c.setup.spec for c in setup.companions)):
            _warn_missing_omega(spec, setup.iiv)
        writer = output_io.ZarrWriter(req.out) if plan.zarr_out else None
        try:
            results, counts, traj_all, amount_all, comp = _collect(req, plan, writer, t_start)
            ds = _assemble(setup, results, counts, traj_all, amount_all)
            for k, c in enumerate(setup.companions):
                rc = [r.companions[k] for r in results]
                ds = _merge_companion(ds, _assemble(c.setup, rc, *comp[k]), c)
            _finish_attrs(ds, plan, t_start)
            ds.attrs[WARNINGS_ATTR] = log.attr()  # the warnings so far, for the files
            if plan.show:
                sys.stderr.write("\n")
            _check_failures(ds, req.raise_on_failure)
            if writer is not None:
                writer.finish(ds)
                return writer.open()
            if req.out is not None:
                target = output_io.check_target(req.out, (".nc",), "out")
                with output_io.atomic_outputs() as stage:
                    stage(target, lambda tmp: output_io.write_netcdf(ds, tmp))
            return ds
        except BaseException:
            if writer is not None:
                writer.abort()
            raise


@dataclass(frozen=True)
class _Plan:
    """A validated request: the chunks' set-up, the chunk bounds, where the results go, the
    model defaults used for missing covariates, and the memory estimate by cohort size."""

    setup: CohortSetup
    bounds: list[tuple[int, int]]
    zarr_out: bool
    show: bool
    defaults: dict
    estimate: Callable[[int], dict[str, int]]


def _plan(req: CohortRequest) -> _Plan:
    """Validate `req` (in the order the errors are documented) into a :class:`_Plan`."""
    spec, regimen, pd_outs, extra_attrs = _pd_and_stereo(req)
    method, auto_stiff, rtol, atol = _resolve_method(spec, req.method, req.rtol, req.atol)
    reg = load_regimen(regimen)
    pump.check(reg, spec)
    demand = pca_pump.check(reg, spec)
    pop, n = _population(req.population, req.n)
    defaults = _check_covariates(spec, reg, pop, req.extra_columns)
    seed = req.seed
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise CohortError(f"`seed` must be a non-negative integer, got {seed!r}")
    start = min(0.0, reg.start_time)
    until = req.until if req.until is not None else _end(reg) + 24.0
    grid = time_grid(start, until, req.every)
    step = float(grid[1] - grid[0]) if grid.size > 1 else 1.0
    if req.trajectory_dtype not in ("float32", "float64"):
        raise CohortError(
            f"`trajectory_dtype` must be 'float32' or 'float64', got {req.trajectory_dtype!r}"
        )
    trajectories = True if req.amounts and not req.trajectories else req.trajectories
    drugs = pca_pump.companions(reg.pca, spec) if reg.pca is not None else []
    prefixes = [pca_pump.prefix(d.drug) for d in drugs]
    trajectories, comp_traj = pca_pump.split_names(trajectories, prefixes)
    thresholds, comp_thr = pca_pump.split_names(req.thresholds, prefixes)
    ranges, comp_rng = pca_pump.split_names(req.ranges, prefixes)
    store_out, pd_store, thr, rng = _main_outputs(
        (trajectories, thresholds, ranges), spec, pd_outs, drugs, prefixes
    )
    keep_any = bool(store_out) or any(bool(t) for t in comp_traj)
    store_stride = _stride(req.trajectory_every, step, "trajectory_every") if keep_any else 1
    win = (
        dict(req.windows)
        if req.windows
        else {"total": (f"{float(grid[0])!r} h", f"{float(grid[-1])!r} h")}
    )
    at_ = dict(req.at) if req.at is not None else {a: a for a in sorted(reg.anchor_names)}
    chunk = max(BLOCK, math.ceil(req.chunk_size / BLOCK) * BLOCK)
    zarr_out = req.out is not None and str(req.out).lower().endswith(".zarr")
    if req.out is not None and not zarr_out:
        output_io.check_target(req.out, (".nc", ".zarr"), "out")  # before the work, not after
    # Trajectories come back to this process (and into the returned Dataset) unless they
    # stream to a Zarr store, with or without Dask.
    keep = bool(store_out) and not zarr_out
    bands = _bands(req, spec, store_out, store_stride, grid, step, keep_any)
    pd_bands = _pd_bands(pd_outs, pd_store, bands[0], keep)
    setup = CohortSetup(
        spec=spec, regimen=reg, population=pop, seed=int(seed), n=n, grid=grid, windows=win,
        at=at_, thresholds=thr, store_out=store_out, store_stride=store_stride,
        iiv=req.iiv, residual=req.residual, keep_in_memory=keep, band_outputs=bands[0],
        band_stride=bands[1], omega_blocks=_omega_blocks(spec) if req.iiv else [],
        method=method, rtol=rtol, atol=atol, auto_stiff=auto_stiff,
        amounts=bool(req.amounts), traj_dtype=req.trajectory_dtype, pd_outputs=tuple(pd_outs),
        pd_store=pd_store, pd_bands=pd_bands, extra_attrs=extra_attrs, ranges=tuple(rng),
        demand=demand,
    )  # fmt: skip
    if drugs:
        comps = tuple(
            _companion(req, setup, k, d, prefixes[k - 1], (comp_traj[k - 1],
                       comp_thr[k - 1], comp_rng[k - 1]), (step, keep_any, zarr_out), defaults)
            for k, d in enumerate(drugs, 1)
        )  # fmt: skip
        setup = dataclasses.replace(setup, companions=comps)
    show = req.progress if req.progress is not None else sys.stderr.isatty()
    return _Plan(
        setup=setup,
        bounds=[(s, min(s + chunk, n)) for s in range(0, n, chunk)],
        zarr_out=zarr_out,
        show=show,
        defaults=defaults,
        estimate=functools.partial(_estimate_all, setup, chunk, _covariate_bytes(pop)),
    )


def _pd_and_stereo(req: CohortRequest):
    """The model (with the effect sites of the PD endpoints), the regimen (halved for a
    racemic regimen on an S-ketamine model), the PD variables and the result attributes
    they add."""
    spec = load_model(req.model)
    regimen = req.regimen
    extra: dict = {}
    if req.racemic:
        check_s_ketamine_model(spec)
        regimen = racemic_to_s_ketamine(regimen)
        extra.update(racemic_attrs())
    if not req.pd:
        if req.pd_parameters:
            raise CohortError("`pd_parameters` given without `pd` endpoints")
        return spec, regimen, [], extra
    if req.residual:
        raise CohortError(
            "`residual` applies the model's residual error to measured concentrations; PD "
            "variables and effect sites are predictions: simulate them without `residual`"
        )
    names = [req.pd] if isinstance(req.pd, str) else list(req.pd)
    # stacklevel: warn -> augment_model -> here, _plan, then the caller frames
    bundle = augment_model(spec, names, req.pd_parameters, stacklevel=2 + _CALLER_FRAMES)
    extra.update(pd_attrs(bundle))
    return bundle.model, regimen, pd_outputs(bundle), extra


def _main_outputs(asked, spec, pd_outs, drugs, prefixes):
    """The main model's kept outputs, PD trajectories, thresholds and ranges from `asked`
    (trajectories, thresholds, ranges: those without a further drug's prefix); an unknown
    output's error also lists the further drugs' outputs."""
    traj, thresholds, ranges = asked
    try:
        store_out, pd_store = _store_outputs(traj, spec.output_names, pd_outs)
        return (
            store_out,
            pd_store,
            _thresholds(thresholds, spec, pd_outs),
            _ranges(ranges, spec, pd_outs),
        )
    except CohortError as exc:
        if not drugs:
            raise
        further = [p + o for d, p in zip(drugs, prefixes, strict=True)
                   for o in pca_pump.further_model(d).output_names]  # fmt: skip
        raise CohortError(f"{exc}, or of the PCA reservoir's further drugs: "
                          f"{', '.join(further)}") from None  # fmt: skip


def _companion(req, setup: CohortSetup, k: int, drug, prefix: str, asked, how, defaults):
    """The :class:`Companion` run of the `k`-th further drug of the PCA reservoir: its own
    model and random effects, the main run's patients, grid, windows and named times.
    `asked`: its trajectories, thresholds and ranges; `how`: the grid step, whether any
    drug keeps trajectories, whether they stream to Zarr. `defaults` gains the model
    defaults its patients take (``"<model>:<covariate>"``)."""
    if k > MAX_COMPANIONS:
        raise CohortError(f"a PCA reservoir holds at most {MAX_COMPANIONS + 1} drugs here")
    traj, thr, rng = asked
    step, keep_any, zarr_out = how
    spec = pca_pump.further_model(drug)
    used = _check_covariates(spec, setup.regimen, setup.population, "ignore")
    defaults.update({f"{spec.name}:{name}": v for name, v in used.items()})
    store_out, _ = _store_outputs(traj, spec.output_names)
    band_outputs, _ = _bands(req, spec, store_out, setup.store_stride, setup.grid, step, keep_any)
    # fmt: off
    return Companion(
        drug=drug,
        prefix=prefix,
        setup=dataclasses.replace(
            setup, spec=spec, thresholds=_thresholds(thr, spec), ranges=tuple(_ranges(rng, spec)),
            store_out=store_out, keep_in_memory=bool(store_out) and not zarr_out,
            band_outputs=band_outputs, omega_blocks=_omega_blocks(spec) if req.iiv else [],
            method="exact", auto_stiff=False, amounts=False, pd_outputs=(), pd_store=[],
            pd_bands=[], extra_attrs={}, demand=None, eta_purpose=f"eta_drug{k}",
            residual_purpose=f"residual_drug{k}",
        ),
    )
    # fmt: on


def _pd_bands(pd_outs, pd_store, band_outputs, exact: bool) -> list[str]:
    """PD variables with percentile bands: with trajectories kept in memory those kept
    (exact bands from their trajectories); streaming (no trajectories, or trajectories
    written to Zarr), those of one output that has bands (the output's order statistics
    mapped, see :func:`_pd_streaming_bands`)."""
    if not band_outputs:
        return []
    if exact:
        return list(pd_store)
    return [po.name for po in pd_outs if po.single and po.terms[0][0] in band_outputs]


def _bands(req: CohortRequest, spec, store_out, store_stride, grid, step, keep_any=None):
    """The outputs of the percentile bands and the stride of their times on the grid
    (`keep_any`: some drug of the run keeps trajectories, default `store_out`: then every
    drug's bands are at the stride of exact bands, so that they share their times)."""
    outs = spec.output_names
    # Streaming bands use logarithmic bins of concentrations (ng/mL): outputs of [ode]
    # models that are not concentrations get exact bands only (keep their trajectories).
    conc = _output_scales(spec)[0] == MG_L_TO_NG_ML
    bands = req.bands
    band_outputs = [o for o, is_c in zip(outs, conc, strict=True) if is_c] if bands else []
    keep_any = bool(store_out) if keep_any is None else keep_any
    if bands and keep_any:  # bands of the kept outputs (of every drug), at their times
        band_outputs = list(store_out)
        n_store_t = (grid.size - 1) // store_stride + 1
        band_stride = store_stride * max(1, math.ceil(n_store_t / _MAX_BAND_POINTS))
    else:
        band_stride = _stride(req.band_every, step, "band_every") if bands else 1
        if bands and req.band_every is None:
            band_stride = max(1, math.ceil(_BAND_EVERY_H / step - 1e-9))
    return band_outputs, band_stride


def _estimate_all(setup: CohortSetup, chunk: int, cov, k: int) -> dict[str, int]:
    """:func:`_estimate` of the run and of its companion drugs, summed (their patients'
    covariates counted again: an overestimate of a few bytes per patient)."""
    out = _estimate(setup, chunk, cov, k)
    for c in setup.companions:
        for key, v in _estimate(c.setup, chunk, cov, k).items():
            out[key] = out.get(key, 0) + v
    if any(c.setup.keep_in_memory for c in setup.companions):
        out["total"] += out["trajectories"]  # joining the drugs' trajectories copies them
    return out


def _estimate(setup: CohortSetup, chunk: int, cov: tuple[int, int], k: int) -> dict[str, int]:
    """:func:`estimate_memory` of the request `setup` for a cohort of `k` patients (`cov`:
    bytes per patient of the covariates and of those that are text)."""
    spec, grid = setup.spec, setup.grid
    outs, store_out = spec.output_names, setup.store_out
    n_store_t = (grid.size - 1) // setup.store_stride + 1 if store_out else 0
    n_win, n_at = len(setup.windows), len(setup.at)
    n_metrics = (
        len(outs) * (2 + n_win + n_at)
        + len(setup.kernel_thresholds)
        + len(setup.ranges)
        + len(spec.param_names)
    )
    cov_bytes, text_bytes = cov
    keep = setup.keep_in_memory
    in_place = keep and not setup.adaptive and not setup.residual
    # A linear model on an adaptive solver builds every patient's system (N x N, a reduced
    # copy and the packed parameters: about two N x N float64 matrices at the peak).
    N = spec.n_states
    systems = 8 * (2 * N * N + 2 * N) if setup.adaptive and spec.is_linear else 0
    systems += pump.event_bytes(setup.regimen) + pca_pump.event_bytes(setup.regimen)
    band_outputs = setup.band_outputs
    n_pd = len(setup.pd_outputs)
    n_metrics += n_pd * (2 + n_win + n_at)
    return estimate_memory(
        k, len(outs) + n_pd, len(store_out) + len(setup.pd_store), n_store_t, n_metrics, chunk,
        keep, exact_bands=bool(band_outputs),
        itemsize=np.dtype(setup.traj_dtype).itemsize,
        n_amounts=spec.n_comp if setup.amounts else 0,
        covariate_bytes=cov_bytes + 8 * len(setup.regimen.anchor_names), text_bytes=text_bytes,
        n_scaled=(len(outs) + n_pd) * (1 + n_win + n_at),
        n_band=len(band_outputs) + len(setup.pd_bands),
        n_band_t=len(range(0, grid.size, setup.band_stride)) if band_outputs else 0,
        streaming_bands=bool(band_outputs) and not keep,
        chunk_trajectories=bool(store_out) and not in_place, residual=setup.residual,
        adaptive=setup.adaptive, n_grid=grid.size, chunk_patient_bytes=systems,
    )  # fmt: skip


def _collect(req: CohortRequest, plan: _Plan, writer, t_start: float):
    """Run the chunks; returns their results (without the large arrays), the summed
    band counts, and the kept trajectories and amounts (in one preallocated array)."""
    setup = plan.setup
    n, n_store = setup.n, len(setup.store_out)
    n_amounts = setup.spec.n_comp if setup.amounts else 0
    n_pd = len(setup.pd_store)
    keep = setup.keep_in_memory
    n_store_t = (setup.grid.size - 1) // setup.store_stride + 1 if setup.store_out else 0
    # Kept trajectories (ng/mL), amounts (mg) and PD trajectories go straight into one final
    # array, so they are held once; the exact kernel writes there itself (see `run_chunk`).
    shape = (n, n_store + n_amounts + n_pd, n_store_t)
    kept = np.zeros(shape, setup.traj_dtype) if keep else None
    traj_all = kept[:, :n_store] if keep else None
    amount_all = kept[:, n_store : n_store + n_amounts] if keep and setup.amounts else None
    results: list[ChunkResult] = []
    counts = None
    # Companion drugs: their summed band counts and kept trajectories (not written in place).
    comp = [[None, _kept(c.setup, n)] for c in setup.companions]
    done = 0
    for res in _run(setup, plan.bounds, req.threads, req.dask, kept):
        for acc, cres in zip(comp, res.companions or (), strict=True):
            if cres.band_counts is not None:
                acc[0] = cres.band_counts if acc[0] is None else acc[0] + cres.band_counts
                cres.band_counts = None
            if acc[1] is not None and writer is None:
                acc[1][res.start : res.stop] = cres.trajectory
                cres.trajectory = None
        if res.band_counts is not None:
            if counts is None:
                counts = res.band_counts
            else:
                counts += res.band_counts  # in place: one array of counts is held
            res.band_counts = None
        if writer is not None:
            writer.append(_chunk_dataset_all(setup, res))
            res.trajectory = res.pd_trajectory = None
            for cres in res.companions or ():
                cres.trajectory = None
        elif traj_all is not None and res.trajectory is not None:
            traj_all[res.start : res.stop] = res.trajectory
            res.trajectory = None
            if amount_all is not None:
                amount_all[res.start : res.stop] = res.amount
                res.amount = None
            if n_pd:
                kept[res.start : res.stop, n_store + n_amounts :] = res.pd_trajectory
                res.pd_trajectory = None
        results.append(res)
        done += res.stop - res.start
        if plan.show:
            _progress(done, n, time.perf_counter() - t_start)
    if keep and n_pd:
        # Model outputs then PD variables: a view when no amounts lie between them.
        traj_all = (
            kept[:, : n_store + n_pd]
            if not n_amounts
            else np.concatenate([kept[:, :n_store], kept[:, n_store + n_amounts :]], axis=1)
        )
    return results, counts, traj_all, amount_all, comp


def _kept(setup: CohortSetup, n: int):
    """The array of a companion drug's kept trajectories, or None."""
    if not setup.keep_in_memory:
        return None
    n_t = (setup.grid.size - 1) // setup.store_stride + 1
    return np.zeros((n, len(setup.store_out), n_t), setup.traj_dtype)


def _finish_attrs(ds, plan: _Plan, t_start: float) -> None:
    """Covariate defaults, range warnings and timing of the assembled cohort."""
    ds.attrs["covariate_defaults"] = (
        "; ".join(f"{k}={v}" for k, v in plan.defaults.items()) or "none"
    )
    specs = (plan.setup.spec, *(c.setup.spec for c in plan.setup.companions))
    for msg in (m for spec in specs for m in check_ranges(spec, ds)):
        warnings.warn(
            msg + "; predictions for them are extrapolations",
            CovariateRangeWarning,
            stacklevel=1 + _CALLER_FRAMES,
        )
    elapsed = time.perf_counter() - t_start
    ds.attrs["elapsed_s"] = elapsed
    n = plan.setup.n
    ds.attrs["patients_per_second"] = n / elapsed if elapsed > 0 else float("inf")


def _check_failures(ds, raise_on_failure) -> None:
    """Raise :class:`SimulationError` for failed patients if `raise_on_failure` says so."""
    n = ds.sizes["patient"]
    n_failed = int((ds.status.values != 0).sum())
    if n_failed and raise_on_failure and (raise_on_failure != "all" or n_failed == n):
        first = int(np.nonzero(ds.status.values)[0][0])
        raise SimulationError(
            f"{n_failed} of {n} patients failed (first: patient {first}, "
            f"{Status.describe(ds.status.values[first], 'unknown')})"
        )


def _resolve_method(spec: ModelSpec, method, rtol, atol):
    """``(method, auto_stiff, rtol, atol)`` for the chunks (validated as in simulate)."""
    rtol, atol = registry.check(method, rtol, atol)
    try:
        method, auto_stiff, _ = registry.resolve(method, spec)
    except ValueError as e:
        raise CohortError(str(e)) from None
    return method, auto_stiff, rtol, atol


def _end(reg: Regimen) -> float:
    """Latest possible end of dosing: anchors at the top of their range."""
    if not reg.anchor_names:
        return reg.end_time
    hi = {}
    for a in reg.anchor_names:
        s = reg.anchor_spec(a)
        hi[a] = s.high if s is not None and np.isfinite(s.high) else reg.resolve().end_time
    return reg.resolve(hi).end_time


def _population(population, n):
    if population is None:
        raise CohortError(
            "a cohort needs a `population` (a shipped name such as "
            "'healthy_volunteers', a population file, or a CovariateTable)"
        )
    if isinstance(population, str) and population.endswith(".csv"):
        population = CovariateTable.from_csv(population)
    if isinstance(population, CovariateTable):
        if n is None:
            n = population.n
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n:
            raise CohortError(f"`n` must be a positive integer, got {n!r}")
        if n > population.n:
            raise CohortError(
                f"`n` = {n} but the covariate table {population.file or ''} has "
                f"{population.n} rows (one per patient); pass n <= {population.n}"
            )
        return population, int(n)
    pop = load_population(population)
    if n is None:
        raise CohortError("`n` (number of patients) is required with a population")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise CohortError(f"`n` must be a positive integer, got {n!r}")
    return pop, int(n)


def _check_covariates(spec: ModelSpec, reg: Regimen, pop, extra_columns: str) -> dict:
    """Check what the population supplies against what the model and the regimen use.

    Before any patient is simulated: columns of a covariate table the model does not know
    (errors unless `extra_columns` is "ignore"), names differing from the model's only in
    case, levels of categorical covariates, weights for per-kg doses. Returns the model
    defaults used for covariates the population does not supply, each reported once
    (:meth:`ModelSpec.report_default`: a warning, or an error where a default will not do).
    """
    if extra_columns not in ("error", "ignore"):
        raise CohortError(f"`extra_columns` must be 'error' or 'ignore', got {extra_columns!r}")
    table = isinstance(pop, CovariateTable)
    names = list(pop.covariates)
    if table:
        file = pop.file or ""
        where = f"{file}: " if file else ""
        source = f"the covariate table {file}" if file else "the covariate table"
        hint = (
            " (pass extra_columns='ignore', or --extra-columns ignore to `pkpd simulate`, "
            "to keep other columns)"
        )
        unknown = spec.check_covariate_names(
            names, where=where, what="column", also=("id",), hint=hint
        )
        if unknown and extra_columns == "error":
            raise CovariateError(
                f"{where}column {unknown[0]!r} is not a covariate of model {spec.name!r}; "
                f"expected {', '.join([*spec.accepted_covariates(), 'id'])}{hint}"
            )
    else:
        where = f"{pop.file}: " if pop.file else ""
        source = f"population {pop.name!r}"
        # A population describes people, not one model: covariates the model does not use
        # are fine (e.g. a centre), but a near miss of the model's names is not.
        spec.check_covariate_names(names, where=where, also=("id",))
    if reg.uses_weight and "weight" not in names:
        raise CovariateError(
            f"the regimen has per-kg doses but {source} has no `weight` (give a weight "
            "column, or bmi and height)"
        )
    for name, cov in spec.covariates.items():
        if not cov.categorical or name not in names:
            continue
        if table:
            values = np.asarray(pop.covariates[name]).tolist()
            ok = np.array([isinstance(x, str) and x in cov.levels for x in values])
            if not ok.all():
                r = int(np.argmin(ok))
                raise CovariateError(
                    f"{where}row {r + 1}: column `{name}`: {values[r]!r} is not a level of "
                    f"covariate `{name}` of model {spec.name!r}; expected one of "
                    f"{', '.join(cov.levels)} ({int((~ok).sum())} rows affected)"
                )
        else:
            cat, fixed = pop.categorical.get(name), pop.fixed.get(name)
            key = f"categorical.{name}" if cat is not None else f"fixed.{name}"
            levels = cat.levels if cat is not None else (fixed.value,)
            bad = [lv for lv in levels if lv not in cov.levels]
            if bad:
                raise CovariateError(
                    f"{where}`{key}`: level {bad[0]!r} is not a level of covariate `{name}` of "
                    f"model {spec.name!r}; expected {', '.join(cov.levels)}"
                )
    need = ("weight",) if reg.uses_weight else ()
    defaults = {}
    for name in spec.covariates:
        if name in spec.used_covariates and name not in names:
            # report_default, here, _plan, then the caller frames
            defaults[name] = spec.report_default(
                name, need=need, source=source, stacklevel=3 + _CALLER_FRAMES
            )
    return defaults


def _store_outputs(trajectories, outs, pd_outs=()) -> tuple[list[str], list[str]]:
    """The model outputs whose trajectories the kernels store (those asked for, and the
    outputs of the PD variables asked for) and the PD variables whose trajectories are
    computed from them."""
    if not trajectories:
        return [], []
    pd_names = [po.name for po in pd_outs]
    if trajectories is True:
        return list(outs), pd_names
    names = [trajectories] if isinstance(trajectories, str) else list(trajectories)
    for o in names:
        if o not in outs and o not in pd_names:
            raise CohortError(
                f"no output named {o!r} for trajectories; expected one of "
                f"{', '.join([*outs, *pd_names])}"
            )
    store = [o for o in names if o in outs]
    pd_store = [o for o in names if o in pd_names]
    for po in pd_outs:
        if po.name in pd_store:
            store += [o for o, _, _ in po.terms if o not in store]
    return store, pd_store


def _stride(value, step, name) -> int:
    if value is None:
        return 1
    h = value if isinstance(value, int | float) else parse_quantity(value, "time", key=name).value
    k = h / step
    if k < 1 - 1e-9 or abs(k - round(k)) > 1e-6 * k:
        raise CohortError(
            f"`{name}` ({value!r}) must be a whole multiple of the grid step ({step * 60:g} min)"
        )
    return max(1, round(k))


def _thresholds(thresholds, spec, pd_outs=(), what="thresholds") -> list[Threshold]:
    """Parse ``output -> [level, ...]`` into :class:`Threshold` objects (`what` names the
    argument in errors: ``thresholds`` or ``ranges``)."""
    out = []
    pd_by = {po.name: po for po in pd_outs}
    for o, vals in (thresholds or {}).items():
        if o in pd_by:
            out.extend(_pd_thresholds(pd_by[o], vals, what))
            continue
        if o not in spec.output_names:
            raise CohortError(
                f"`{what}`: unknown output {o!r}; expected one of "
                f"{', '.join([*spec.output_names, *pd_by])}"
            )
        ode_out = next((x for x in spec.ode.outputs if x.name == o), None) if spec.ode else None
        if ode_out is not None and not ode_out.concentration:
            out.extend(_plain_thresholds(o, vals, ode_out.unit, what))
            continue
        an = next(x.analyte for x in spec.outputs if x.name == o)
        for v in [vals] if isinstance(vals, str | int | float) else vals:
            mg_l = parse_quantity(
                v, "concentration", molar_mass=spec.molar_mass(an), key=f"{what}.{o}"
            ).value
            ng_ml = mg_l * MG_L_TO_NG_ML
            out.append(Threshold(o, mg_l, ng_ml, "ng/mL", f"{o} > {ng_ml:g} ng/mL"))
    return out


def _ranges(ranges, spec, pd_outs=()) -> list[Range]:
    """Parse ``output -> [range, ...]`` (``"50..150 ng/mL"`` or ``(low, high)``, see
    :func:`pkpd.inputs.units.range_bounds`) into :class:`Range` objects, each bound parsed
    as a threshold of its output (units, PD variables and their inverse included)."""
    out = []
    for o, vals in (ranges or {}).items():
        items = [vals] if isinstance(vals, str) or _is_pair(vals) else list(vals)
        if not items:
            raise CohortError(f"`ranges.{o}`: no range given; expected e.g. '50..150 ng/mL'")
        for v in items:
            try:
                lo_text, hi_text = range_bounds(v, f"ranges.{o}")
            except UnitError as exc:
                raise CohortError(str(exc)) from None
            lo, hi = _thresholds({o: [lo_text, hi_text]}, spec, pd_outs, what="ranges")
            if not lo.value < hi.value:
                raise CohortError(
                    f"`ranges.{o}` = {v!r}: the low bound must be below the high bound "
                    f"({lo.level:g} >= {hi.level:g} {lo.units})".rstrip()
                )
            unit = f" {lo.units}" if lo.units not in ("", "1") else ""
            label = f"{o} within {lo.level:g}..{hi.level:g}{unit}"
            if lo.kernel_output is not None:
                # A PD variable: the bounds on its driving output, as its thresholds say.
                label += (
                    f" ({lo.kernel_output} within {lo.value * MG_L_TO_NG_ML:.6g}.."
                    f"{hi.value * MG_L_TO_NG_ML:.6g} ng/mL)"
                )
            out.append(Range(o, lo, hi, label))
    return out


def _is_pair(v) -> bool:
    """A ``(low, high)`` pair of bounds (not a list of range texts)."""
    return (
        isinstance(v, tuple | list)
        and len(v) == 2
        and not any(isinstance(x, str) and ".." in x for x in v)
        and not any(isinstance(x, tuple | list) for x in v)
    )


def _pd_thresholds(po: PDOutput, vals, what="thresholds") -> list[Threshold]:
    """Thresholds on a PD variable: on its model output, at the level where the variable
    equals the threshold (:meth:`PDOutput.inverse`), for variables that increase with one
    output; refused otherwise (their time above a level is not a function of one recorded
    output's)."""
    if not po.increasing:
        if not po.single:
            why = f"it sums {len(po.terms)} outputs ({', '.join(t[0] for t in po.terms)})"
        else:
            o, factor, slope = po.terms[0]
            why = f"it decreases as {o} increases"
            if po.affine and po.c50 is None:
                why += (
                    f" (the time with it below a level L is the time with {o} above "
                    f"L / {factor * slope:.6g} ng/mL)"
                )
        raise CohortError(
            f"`{what}.{po.name}`: the time with PD variable {po.name!r} above a level is "
            f"not recorded: {why}; set a threshold on an output it is made of instead"
        )
    if po.concentration:
        # A driving concentration: in the endpoint's species (its molar mass converts
        # molar units); the kernel compares the model output (x factor).
        items = []
        for v in [vals] if isinstance(vals, str | int | float) else vals:
            mg_l = parse_quantity(
                v, "concentration", molar_mass=po.molar_mass, key=f"{what}.{po.name}"
            ).value
            items.append(Threshold(po.name, mg_l, mg_l * MG_L_TO_NG_ML, "ng/mL", ""))
    else:
        items = _plain_thresholds(po.name, vals, po.units, what)
    driver = po.terms[0][0]
    out = []
    for t in items:
        x_ng_ml = po.inverse(t.level)
        unit = f" {t.units}" if t.units not in ("", "1") else ""
        label = f"{po.name} > {t.level:g}{unit} ({driver} > {x_ng_ml:.6g} ng/mL)"
        out.append(Threshold(po.name, x_ng_ml / MG_L_TO_NG_ML, t.level, t.units, label, driver))
    return out


def _plain_thresholds(o, vals, unit, what="thresholds") -> list[Threshold]:
    """Thresholds of an output that is not a concentration (a score): in its own unit.

    A number, or a number followed by the output's unit; any other unit is an error, since
    nothing converts a concentration into, say, a pain score.
    """
    out = []
    for v in [vals] if isinstance(vals, str | int | float) else vals:
        text = str(v).strip()
        if unit and text.endswith(unit) and text[: -len(unit)].strip():
            text = text[: -len(unit)].strip()
        try:
            x = float(text)
        except ValueError:
            raise CohortError(
                f"`{what}.{o}` = {v!r}: output {o!r} is not a concentration; expected a "
                f"number in its unit ({unit or 'dimensionless'}), e.g. '{o}=5'"
            ) from None
        if not np.isfinite(x):
            raise CohortError(f"`{what}.{o}` = {v!r}: expected a finite number")
        out.append(Threshold(o, x, x, unit, f"{o} > {x:g} {unit}".rstrip()))
    return out


def _warn_missing_omega(spec, iiv):
    missing = [p for v in spec.variability if v.omega is None for p in v.parameters]
    if iiv and missing:
        warnings.warn(
            f"model {spec.name!r}: inter-individual variability of {', '.join(missing)} is "
            "declared in the source but its value is missing; those parameters vary only "
            "with covariates",
            CovariateRangeWarning,
            stacklevel=1 + _CALLER_FRAMES,
        )


def _run(setup, bounds, threads, dask, dest=None):
    if dask is None:
        for s, e in bounds:
            yield run_chunk(setup, s, e, threads, dest)
        return
    # distributed is imported only when chunks run on Dask (it is slow to import).
    from distributed import Client, LocalCluster

    cluster = None
    if dask == "local" or dask is True:
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    else:
        client = Client(dask)
    try:
        fsetup = client.scatter(setup, broadcast=True)
        futures = [client.submit(run_chunk, fsetup, s, e, threads, pure=False) for s, e in bounds]
        for f in futures:  # in order, so the result is assembled deterministically
            yield f.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _progress(done, n, elapsed):
    frac = done / n
    bar = "#" * int(30 * frac)
    rate = done / elapsed if elapsed > 0 else 0.0
    sys.stderr.write(f"\r[{bar:<30}] {done:,}/{n:,} patients, {rate:,.0f}/s")
    sys.stderr.flush()


# ----------------------------------------------------------------------------- assembly


def _output_scales(spec: ModelSpec) -> tuple[np.ndarray, list[str]]:
    """Factor from internal units and unit of each output (ng/mL for concentrations)."""
    return output_scales(spec)


def _units_attr(units: list[str]) -> str:
    return units[0] if len(set(units)) == 1 else "see output_units"


def _chunk_dataset(setup: CohortSetup, res: ChunkResult) -> xr.Dataset:
    """The xarray form of one chunk (used for Zarr appends and for the final result)."""
    spec = setup.spec
    patient = np.arange(res.start, res.stop)
    coords: dict[str, Any] = {
        "patient": variable("patient", patient),
        "output": ("output", _all_outputs(setup)),
    }
    scale, _ = _output_scales(spec)
    units = _all_units(setup)
    u = _units_attr(units)
    if u != "ng/mL":
        coords["output_units"] = variable("output_units", units)
    for k, v in res.covariates.items():
        arr = np.asarray(v)
        if arr.dtype.kind in "OU":
            arr = arr.astype(str)
        coords[k] = variable("{covariate}", arr, covariate=k)
    for k, v in res.anchors.items():
        coords[k] = variable("{event}", v, event=k)
    flags = {"flag_meanings": "; ".join(f"{s:d}: {s.message}" for s in Status)}
    cmax, tmax, auc, c_at = _pd_metrics(
        setup, res.cmax * scale, res.tmax, res.auc * scale[:, None], res.c_at * scale[:, None]
    )
    data = {
        "cmax": variable("cmax", cmax, units=u),
        "tmax": variable("tmax", tmax),
        "cmax_at_bolus": variable("cmax_at_bolus", _cmax_at_bolus(setup, res)),
        "auc": variable("auc", auc),
        "status": variable("status", res.status.astype(np.int8), flags),
    }
    coords["window"] = ("window", list(setup.windows))
    if setup.at:
        coords["at"] = ("at", list(setup.at))
        data["c_at"] = variable("c_at", c_at, units=u)
    if setup.thresholds:
        _add_thresholds(setup, coords, data, res.t_above[:, : len(setup.thresholds)])
    if setup.ranges:
        _add_ranges(setup, coords, data, res.t_above[:, len(setup.thresholds) :])
    if res.pca is not None:
        _add_pca(setup, coords, data, res.pca)
    kinds = {"volume": "L", "clearance": "L/h", "rate_constant": "1/h", "time": "h"}
    for i, p in enumerate(spec.param_names):
        unit = kinds.get(spec.parameters[p].kind, "1")
        data[f"param_{p}"] = variable("param_{parameter}", res.theta[:, i], units=unit, parameter=p)
    if res.trajectory is not None:
        traj = res.trajectory  # already ng/mL
        if setup.pd_store:
            traj = np.concatenate([traj, res.pd_trajectory], axis=1)
        _add_trajectory(setup, coords, data, traj)
    if res.pre_bolus is not None:
        data["trajectory_bolus_time"] = variable("trajectory_bolus_time", res.bolus_time)
        sides = (("pre", "before", res.pre_bolus), ("post", "after", res.post_bolus))
        for side, when, vals in sides:
            if setup.pd_store:
                pd_vals = _pd_values(setup, setup.pd_store, setup.store_out, vals, axis=1)
                vals = np.concatenate([vals, pd_vals], axis=1)
            data[f"trajectory_{side}_bolus"] = variable("trajectory_{side}_bolus", vals, when=when)
    if res.amount is not None:
        _add_amount(setup, coords, data, res.amount)
    return xr.Dataset(data, coords=coords)


def _chunk_dataset_all(setup: CohortSetup, res: ChunkResult) -> xr.Dataset:
    """:func:`_chunk_dataset` with the companion drugs' outputs (Zarr appends)."""
    ds = _chunk_dataset(setup, res)
    for c, cres in zip(setup.companions, res.companions or (), strict=True):
        ds = _merge_companion(ds, _chunk_dataset(c.setup, cres), c)
    return ds


#: Dimensions along which a companion drug's variables follow the main model's.
_MERGE_DIMS = ("output", "threshold", "range", "traj_output", "band_output")
#: Coordinates along those dimensions that hold output names.
_NAME_COORDS = ("threshold_output", "range_output")


def _merge_companion(ds: xr.Dataset, dc: xr.Dataset, c: Companion) -> xr.Dataset:
    """`ds` with the companion drug's results `dc` (same patients): its outputs, thresholds,
    ranges, trajectories and bands follow the main model's along their dimensions, named
    with its prefix (``s_ketamine_cp``); its parameters become ``param_<prefix><name>``; a
    patient failed if either drug failed. Its model's provenance joins the attributes."""
    p = c.prefix
    units = _units_of(ds) + [u for u in _units_of(dc)]
    ren = {}
    for dim in _MERGE_DIMS:
        if dim in dc.coords:
            ren[dim] = [p + str(v) for v in dc[dim].values]
    for name in _NAME_COORDS:
        if name in dc.coords:
            ren[name] = dc[name].copy(data=[p + str(v) for v in dc[name].values])
    dc = dc.drop_vars([v for v in ("output_units",) if v in dc.coords]).assign_coords(ren)
    ds = ds.drop_vars([v for v in ("output_units",) if v in ds.coords])
    out = {}
    for v in dc.data_vars:
        da = dc[v]
        if v.startswith("param_"):
            da = da.copy()
            name = da.attrs.get("long_name", v)
            da.attrs["long_name"] = f"{c.drug.drug} ({c.setup.spec.name}): {name}"
            out[f"param_{p}{v[len('param_') :]}"] = da
        elif v == "status":
            out[v] = ds[v].where(ds[v] != 0, da)
        elif v.startswith("trajectory_") and v != "trajectory":
            continue  # limits at boluses: the main model's only (see simulate_cohort)
        else:
            dim = next((d for d in _MERGE_DIMS if d in da.dims), None)
            if dim is None:
                continue
            out[v] = xr.concat([ds[v], da], dim=dim, coords="minimal", compat="override",
                               join="override") if v in ds else da  # fmt: skip
    # The dimensions that grow: replace their coordinates, and give the main model's
    # variables along them that the companion lacks (limits at boluses) NaN there.
    grown = {d for v in out.values() for d in v.dims if d in _MERGE_DIMS and d in ds.dims}
    new_coords = {d: np.concatenate([ds[d].values, dc[d].values]) for d in grown}
    keep = ds.drop_vars([v for v in out if v in ds.data_vars])
    for v in list(keep.data_vars):
        for d in grown & set(keep[v].dims):
            out[v] = keep[v].reindex({d: new_coords[d]})
    keep = keep.drop_vars(
        [v for v in out if v in keep.data_vars]
        + [c for c in keep.coords if set(keep[c].dims) & grown]
    )
    merged = keep.assign(out)
    u = _units_attr(units)
    if u != "ng/mL":
        merged = merged.assign_coords(output_units=variable("output_units", units))
    for v in ("cmax", "c_at"):
        if v in merged:
            merged[v].attrs["units"] = u
    spec = c.setup.spec
    merged.attrs.update(further_attrs(p, spec.provenance_attrs()))
    if "n_failed" in merged.attrs:  # a patient failed if either drug failed
        merged.attrs["n_failed"] = int((merged.status.values != 0).sum())
    return merged


def _units_of(ds: xr.Dataset) -> list[str]:
    """The unit of each entry of the ``output`` dimension of a cohort dataset."""
    if "output_units" in ds.coords:
        return [str(u) for u in ds.output_units.values]
    return ["ng/mL"] * ds.sizes["output"]


def _cmax_at_bolus(setup: CohortSetup, res: ChunkResult) -> np.ndarray:
    """(patients, outputs) bool: Cmax is the jump of an instantaneous bolus (PD: False)."""
    n_model = len(setup.spec.output_names)
    flags = np.zeros((res.stop - res.start, n_model + len(setup.pd_outputs)), bool)
    flags[:, :n_model] = res.at_bolus
    return flags


def _all_outputs(setup: CohortSetup) -> list[str]:
    """The ``output`` coordinate: the model's outputs, then the PD variables."""
    return [*setup.spec.output_names, *(po.name for po in setup.pd_outputs)]


def _all_units(setup: CohortSetup) -> list[str]:
    return [*_output_scales(setup.spec)[1], *(po.units for po in setup.pd_outputs)]


def _pd_metrics(setup: CohortSetup, cmax, tmax, auc, c_at):
    """The metrics of the model outputs (reporting units) followed by those of the PD
    variables, computed from the outputs they are functions of (see
    :func:`simulate_cohort`, `pd`): NaN where a metric is not a function of them."""
    if not setup.pd_outputs:
        return cmax, tmax, auc, c_at
    outs = setup.spec.output_names
    n = cmax.shape[0]
    names = [po.name for po in setup.pd_outputs]
    pc = np.full((n, len(names)), np.nan)
    pt = np.full((n, len(names)), np.nan)
    pa = np.full((n, len(names), auc.shape[2]), np.nan)
    pat = _pd_values(setup, names, outs, c_at, axis=1)
    for j, po in enumerate(setup.pd_outputs):
        i = outs.index(po.terms[0][0])
        if po.increasing:
            pc[:, j] = po.value(cmax[:, i])
            pt[:, j] = tmax[:, i]
        if po.concentration:
            pa[:, j] = auc[:, i] * po.terms[0][1]
    return (
        np.concatenate([cmax, pc], axis=1),
        np.concatenate([tmax, pt], axis=1),
        np.concatenate([auc, pa], axis=1),
        np.concatenate([c_at, pat], axis=1),
    )


def _add_thresholds(setup: CohortSetup, coords: dict, data: dict, t_above) -> None:
    """``time_above`` (patient, threshold) and the thresholds as coordinates: the labels
    (text for people) and each one's output, level and unit (for programs)."""
    thr = setup.thresholds
    coords["threshold"] = ("threshold", [t.label for t in thr])
    coords["threshold_output"] = variable("threshold_output", [t.output for t in thr])
    levels = np.array([t.level for t in thr], dtype=float)
    units = [t.units for t in thr]
    level_units = units[0] if len(set(units)) == 1 else "see threshold_units"
    coords["threshold_level"] = variable("threshold_level", levels, units=level_units)
    coords["threshold_units"] = variable("threshold_units", units)
    data["time_above"] = variable("time_above", t_above)


def _add_ranges(setup: CohortSetup, coords: dict, data: dict, t_bounds) -> None:
    """``time_within`` (patient, range): the time above each range's low bound minus that
    above its high bound (columns of `t_bounds` in :attr:`CohortSetup.kernel_thresholds`
    order), and the ranges as coordinates (labels, output, bounds, unit)."""
    rng = setup.ranges
    coords["range"] = ("range", [r.label for r in rng])
    coords["range_output"] = variable("range_output", [r.output for r in rng])
    units = [r.low.units for r in rng]
    bound_units = units[0] if len(set(units)) == 1 else "see range_units"
    for side in ("low", "high"):
        levels = np.array([getattr(r, side).level for r in rng], dtype=float)
        coords[f"range_{side}"] = variable(f"range_{side}", levels, units=bound_units)
    coords["range_units"] = variable("range_units", units)
    data["time_within"] = variable("time_within", time_within_from_bounds(t_bounds))


def time_within_from_bounds(t_bounds: np.ndarray) -> np.ndarray:
    """Time within each range from the times above its bounds: ``t_bounds[..., 2 k]`` above
    the low bound of range ``k`` and ``t_bounds[..., 2 k + 1]`` above its high bound.

    ``{c >= high}`` is a subset of ``{c >= low}`` for the same interpolant, so the
    difference is the measure of ``{low <= c < high}``; rounding of the two sums can make
    it a few ulp negative where both are equal, clipped to 0. NaN (a failed patient) stays.
    """
    d = t_bounds[..., 0::2] - t_bounds[..., 1::2]
    return np.where(d < 0.0, 0.0, d)


def _add_trajectory(setup: CohortSetup, coords: dict, data: dict, traj_ng_ml) -> None:
    """The ``trajectory`` variable (patient, traj_output, time) in ng/mL, and its coords."""
    t = setup.grid[:: setup.store_stride]
    coords["time"] = variable("time", t)
    names = [*setup.store_out, *setup.pd_store]
    coords["traj_output"] = ("traj_output", names)
    outs = _all_outputs(setup)
    units = _all_units(setup)
    data["trajectory"] = variable(
        "trajectory",
        traj_ng_ml,
        units=_units_attr([units[outs.index(o)] for o in names]),
        note=" (with residual error)" if setup.residual else "",
    )


def _add_amount(setup: CohortSetup, coords: dict, data: dict, amount) -> None:
    """The ``amount`` variable (patient, compartment, time) in mg (trajectory times)."""
    coords["compartment"] = ("compartment", setup.spec.comp_names)
    data["amount"] = variable("amount", amount)


def _exact_bands(traj: np.ndarray, idx: list[int], step: int) -> np.ndarray:
    """`QUANTILES` over patients of ``traj[:, idx, ::step]`` (float64), slab by slab.

    Returns ``(quantile, len(idx), band_time)``. Each slab holds at most
    :data:`BAND_SLAB_BYTES` of float64 values, so memory does not grow with the cohort
    beyond the trajectories themselves.
    """
    n = traj.shape[0]
    cols = np.arange(0, traj.shape[2], step)
    out = np.empty((len(QUANTILES), len(idx), cols.size))
    width = max(1, BAND_SLAB_BYTES // (8 * max(1, n) * len(idx)))
    for j0 in range(0, cols.size, width):
        c = cols[j0 : j0 + width]
        slab = traj[:, idx][:, :, c] if len(idx) < traj.shape[1] else traj[:, :, c]
        out[:, :, j0 : j0 + c.size] = np.quantile(slab.astype(np.float64), QUANTILES, axis=0)
    return out


def _add_pain(ds, demand) -> None:
    """Each patient's pain (NRS) on the trajectory grid and its percentiles over the
    patients whose pump runs, when the demand model's output is among the trajectories
    kept in memory (exact at those times: the pain is a function of the concentration)."""
    if "trajectory" not in ds or demand.output not in ds.traj_output.values:
        return
    if "residual error" in ds.trajectory.attrs.get("long_name", ""):
        ds.attrs["pca_pain"] = (
            "not computed: the kept trajectories carry residual error, and the pain follows "
            "the true concentration (run without residual=True)"
        )
        return
    t = ds.time.values
    on = ds.pca_start.values[:, None]
    conc = ds.trajectory.sel(traj_output=demand.output).values / MG_L_TO_NG_ML
    c50 = ds.pca_c50.values[:, None] / MG_L_TO_NG_ML
    pain = demand.pain(t[None, :] - on, conc, ds.pca_pain_initial.values[:, None], c50)
    pain = np.where(t[None, :] >= on, pain, np.nan)
    ds["pain"] = variable("pain_trajectory", pain.astype(np.float32), output=demand.output)
    # Percentiles where at least 5 % of the patients' pumps run (and one at least).
    running = np.isfinite(pain).sum(axis=0) >= max(1, 0.05 * pain.shape[0])
    band = np.full((len(QUANTILES), t.size), np.nan)
    band[:, running] = np.nanquantile(pain[:, running], QUANTILES, axis=0)
    if "quantile" not in ds.coords:
        ds.coords["quantile"] = ("quantile", list(QUANTILES))
    ds["pain_band"] = variable("pain_band", band)


def _add_pca(setup: CohortSetup, coords: dict, data: dict, pca: dict) -> None:
    """The PCA pump's per-patient variables (:func:`_pca_summary`); with several drugs in
    the reservoir, the amount of each (``pca_drug_dose``, ``pca_drug_dose_at``)."""
    for name in pca_pump.COUNT_NAMES:
        data[f"pca_{name}"] = variable(f"pca_{name}", pca[name].astype(np.int32))
    for name in ("dose", "dose_at", "lockout_hours", "reservoir_empty", "pain_initial", "start"):
        if name in pca:
            data[f"pca_{name}"] = variable(f"pca_{name}", pca[name])
    data["pca_c50"] = variable("pca_c50", pca["c50"] * MG_L_TO_NG_ML)
    if setup.companions:
        names = [setup.spec.drug, *(c.drug.drug for c in setup.companions)]
        coords["pca_drug"] = variable("pca_drug", names)
        data["pca_drug_dose"] = variable("pca_drug_dose", np.stack(pca["drug_dose"], axis=1))
        if "drug_dose_at" in pca:
            data["pca_drug_dose_at"] = variable(
                "pca_drug_dose_at", np.stack(pca["drug_dose_at"], axis=1)
            )


def _assemble(setup, results, counts, traj_all, amount_all=None):
    """The cohort Dataset from the chunk results (without trajectories) and `traj_all`.

    `traj_all` is the preallocated ``(patient, traj_output, time)`` float32 array in ng/mL
    (or None when trajectories were not kept in memory); it is wrapped, not copied.
    """
    ds = xr.concat(
        [_chunk_dataset(setup, r) for r in results],
        dim="patient",
        data_vars="minimal",
        coords="minimal",
        compat="override",
        join="override",
    )
    if traj_all is not None:
        coords: dict[str, Any] = {}
        data: dict[str, Any] = {}
        _add_trajectory(setup, coords, data, traj_all)
        if amount_all is not None:
            _add_amount(setup, coords, data, amount_all)
        ds = ds.assign_coords(coords)
        for k in data:
            ds[k] = data[k]
    if setup.band_outputs:
        band_names = [*setup.band_outputs, *setup.pd_bands]
        if traj_all is not None:
            stored = [*setup.store_out, *setup.pd_store]
            idx = [stored.index(o) for o in band_names]
            vals = _exact_bands(traj_all, idx, setup.band_stride // setup.store_stride)
            method = "exact (numpy.quantile, linear interpolation) over stored trajectories"
        else:
            vals = quantiles_from_counts(counts, QUANTILES)
            if setup.pd_bands:
                vals = np.concatenate([vals, _pd_streaming_bands(setup, counts)], axis=1)
            method = (
                f"streaming log-histogram, bins of {100 * (BAND_BIN_RATIO - 1):g} % "
                f"from {BAND_MIN_NG_ML:g} to {BAND_MAX_NG_ML:g} ng/mL: relative error "
                f"<= {100 * (math.sqrt(BAND_BIN_RATIO) - 1):.3g} % against the exact bands"
                + (
                    " (of the concentrations; PD variables: their outputs' order statistics "
                    "mapped, see pkpd.simulate_cohort)"
                    if setup.pd_bands
                    else ""
                )
            )
        bt = setup.grid[:: setup.band_stride]
        ds = ds.assign_coords(
            quantile=("quantile", list(QUANTILES)),
            band_output=("band_output", band_names),
            band_time=variable("band_time", bt),
        )
        all_outs, units = _all_outputs(setup), _all_units(setup)
        ds["band"] = variable(
            "band",
            vals,
            {"method": method},
            units=_units_attr([units[all_outs.index(o)] for o in band_names]),
        )
    ds.attrs.update(setup.spec.provenance_attrs())
    ds.attrs.update(setup.extra_attrs)
    pop = setup.population
    ds.attrs.update(
        {
            "regimen": setup.regimen.text,
            "regimen_name": setup.regimen.name,
            "population": getattr(pop, "name", None)
            or f"covariate table {getattr(pop, 'file', '')}",
            "population_source": getattr(pop, "source", "") or "user covariate table",
            "n_patients": setup.n,
            "seed": setup.seed,
            "random_blocks": f"SeedSequence(seed, spawn_key=(block, purpose)), {BLOCK} patients "
            "per block",
            "iiv": str(setup.iiv),
            "windows": "; ".join(f"{k}: {a} to {b}" for k, (a, b) in setup.windows.items()),
            "at_times": "; ".join(f"{k}: {v}" for k, v in setup.at.items()),
            **grid_attrs(setup.grid),
            **_solver_attrs(setup, results),
            "package": f"ketamine-pkpd {__version__}",
            "disclaimer": DISCLAIMER,
            "n_failed": int((ds.status.values != 0).sum()),
            "assumptions": run_assumptions(ds.attrs, setup.regimen, pop),
        }
    )
    if setup.demand is not None:
        ds.attrs["pca_demand_model"] = setup.demand.name
        _add_pain(ds, setup.demand)
    unrecorded = sum(r.boluses_without_limits for r in results)
    if unrecorded:
        ds.attrs["trajectory_bolus_limits"] = (
            f"not recorded: {unrecorded} bolus(es) on the trajectory grid of an [ode] model; "
            "the stored value there is the one after the bolus"
        )
    return ds


def run_assumptions(attrs, regimen: Regimen, population=None, given_events=()) -> str:
    """``attrs["assumptions"]`` of a run: the model's assumed values (from its provenance
    `attrs`), the regimen's assumed or illustrative event times (not those in
    `given_events`) and the population's assumed or illustrative numbers; ``"none"``."""
    parts = []
    assumed = str(attrs.get("model_assumed_parameters", "none")).strip()
    if assumed and assumed.lower() != "none":
        parts.append(f"model values assumed (not literature): {assumed}")
    parts += regimen.assumed_events(given_events)
    if regimen.pca is not None:
        demand = load_demand(regimen.pca.demand)
        parts.append(
            f"PCA demand model {demand.name} (not calibrated) values assumed: "
            f"{', '.join(demand.assumed) or 'none'}"
        )
    if hasattr(population, "assumed_values"):
        parts += population.assumed_values()
    return "; ".join(dict.fromkeys(parts)) or "none"


def _solver_attrs(setup, results) -> dict:
    """The solver and metric-accuracy attributes (with the adaptive counters)."""
    stats = np.concatenate([r.solver_stats for r in results]) if setup.adaptive else None
    return registry.cohort_attrs(
        setup.method, setup.rtol, setup.atol, stats, setup.auto_stiff, setup.spec.is_linear
    )


def check_ranges(spec: ModelSpec, ds) -> list[str]:
    """Messages for covariates outside the model's studied ranges (fraction of patients)."""
    msgs = []
    for name, cov in spec.covariates.items():
        if cov.range is None or name not in ds.coords:
            continue
        v = ds[name].values.astype(float)
        out = (v < cov.range[0]) | (v > cov.range[1])
        if out.any():
            msgs.append(
                f"{int(out.sum())} of {v.size} patients ({100 * out.mean():.1f}%) have {name} "
                f"({v[out].min():.4g} to {v[out].max():.4g} {cov.unit}) outside the studied range "
                f"[{cov.range[0]:g}, {cov.range[1]:g}] {cov.unit} of {spec.name!r}"
            )
    return msgs
