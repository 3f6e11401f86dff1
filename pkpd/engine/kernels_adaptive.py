"""The cohort kernel for the adaptive solvers (Dopri5, Rodas4): nonlinear ``[ode]`` models,
and linear models when an adaptive method is asked for.

Same per-patient metrics and the same semantics as :func:`pkpd.engine.kernels.cohort_kernel`
(the exact path): Cmax/Tmax and time above thresholds over every evaluated point of the
grid's span (grid points, dose events before and after their bolus, special times), with
the maxima between those points of an ``[ode]`` model (:mod:`pkpd.engine.peaks_adaptive`), AUC
over windows from the solver's own AUC states (integrated to tolerance, not by
quadrature of the output grid), concentrations at anchored times, optional float32
trajectories, and a per-patient status. Only the solution differs: it comes from the
adaptive solver's dense output at the merged output times instead of a matrix exponential.

The solver and the output map are numba functions passed to :func:`adaptive_patient`,
which is inlined (``inline="always"``) into a small ``parallel=True`` wrapper that refers
to them as globals, so each wrapper is cached on disk: the linear wrappers below, and one
per ``[ode]`` model in its generated module (:mod:`pkpd.ode`). The per-patient solver
protocol is::

    solve_patient(pp, b, y0, t0, source, sp, t_out, rtol, atol, hmax,
                  max_steps, nstiff, out, log, fold, stats) -> status
    outputs_into(t_out, Y, pp, O)       # O[r, o]: output o at t_out[r], mg/L

where ``out`` (and ``Y``) hold what the solver records at each output time: the whole
state for ``[ode]`` models, and for linear models only the linear functionals the metrics
need (the concentrations, then the AUC states), through the solvers' recording map;
``source, sp`` the dosing source and the patient's row in it (:mod:`pkpd.engine.dosing`),
``log = (pre, given)`` what is recorded just before each decision (the left limit at a
bolus) and what each decision gave (bolus, rate), and ``fold``
the running Cmax/Tmax the solver keeps itself (see
:mod:`pkpd.engine.solvers.segments`). For linear models the solver folds
Cmax/Tmax as it goes and, in summary mode, skips the evaluation of every grid row
of a step whose continuous extension provably stays below the running maxima.

Nothing here raises or formats strings; a failed patient gets a status code (and NaN
metrics) and never stops the others.
"""

from __future__ import annotations

import numba
import numpy as np

from pkpd.engine import (
    _stamp,  # noqa: F401  (numba's cache: pkpd/engine/_stamp.py)
    dosing,
    record,
)
from pkpd.engine import peaks_adaptive as _peaks
from pkpd.engine.solvers import N_STATS, STATUS_OK, STATUS_OUTPUT_NONFINITE
from pkpd.engine.solvers import dopri5 as _dopri5
from pkpd.engine.solvers import rosenbrock as _rodas
from pkpd.engine.solvers.finite import all_finite
from pkpd.engine.solvers.linear_rhs import linear_jac, linear_rhs
from pkpd.engine.solvers.linear_system import fill_system

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_jit_inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")

# Kinds of rows in the merged output times (ties: event, then special, then grid, as the
# exact kernel processes them).
_ROW_EVENT = 0
_ROW_SPECIAL = 1
_ROW_GRID = 2


@_jit
def merge_rows(grid, source, sp, spec_t):
    """Merged output rows of one patient: ``(times, kinds, index, ev_row, sp_row, dec_t)``.

    Grid points, the decision times of the dosing source `source` (patient row `sp`)
    inside the grid's span, and every special time, in time order; at equal times
    decisions come first, then special times, then the grid point (the exact kernel's
    order). ``dec_t`` holds the decision times up to the last output time (those the
    solver applies), ``ev_row[k]`` the row of decision `k` (-1 outside the span),
    ``sp_row[s]`` that of special time `s`.
    """
    n_t = grid.shape[0]
    lo = grid[0]
    hi = grid[n_t - 1]
    S = spec_t.shape[0]
    t_last = hi
    if S > 0 and spec_t[S - 1] > t_last:
        t_last = spec_t[S - 1]
    K = dosing.decisions_until(source, sp, t_last)
    dec_t = np.empty(K)
    for k in range(K):
        dec_t[k] = dosing.next_decision_time(source, sp, k)
    m = n_t + S
    for k in range(K):
        if lo <= dec_t[k] <= hi:
            m += 1
    times = np.empty(m)
    kinds = np.empty(m, dtype=np.int64)
    index = np.empty(m, dtype=np.int64)
    ev_row = np.full(K, -1, dtype=np.int64)
    sp_row = np.empty(S, dtype=np.int64)
    g = 0
    k = 0
    s = 0
    r = 0
    while r < m:
        while k < K and not (lo <= dec_t[k] <= hi):
            k += 1
        te = dec_t[k] if k < K else np.inf
        ts = spec_t[s] if s < S else np.inf
        is_ev = k < K and te <= ts
        tx = te if is_ev else ts
        # The grid points before the next event or special time, as one run (most rows).
        while g < n_t and grid[g] < tx:
            times[r] = grid[g]
            kinds[r] = _ROW_GRID
            index[r] = g
            g += 1
            r += 1
        if r == m:  # no event or special time left (tx = inf): the grid is exhausted
            break
        times[r] = tx
        if is_ev:
            kinds[r] = _ROW_EVENT
            index[r] = k
            ev_row[k] = r
            k += 1
        else:
            kinds[r] = _ROW_SPECIAL
            index[r] = s
            sp_row[s] = r
            s += 1
        r += 1
    return times, kinds, index, ev_row, sp_row, dec_t


@_jit
def _left_limits(ev_row, bolus, times, pre):
    """The left limits before the boluses of the grid's span, from the solver's records
    just before each event: ``(t_pre, Y_pre, pre_row)``."""
    K = ev_row.shape[0]
    N = pre.shape[1]
    n_ev = 0
    for k in range(K):
        if ev_row[k] >= 0 and bolus[k] != 0.0:
            n_ev += 1
    t_pre = np.empty(n_ev)
    Y_pre = np.empty((n_ev, N))
    pre_row = np.empty(n_ev, dtype=np.int64)
    e = 0
    for k in range(K):
        r = ev_row[k]
        if r >= 0 and bolus[k] != 0.0:
            t_pre[e] = times[r]
            pre_row[e] = r
            for i in range(N):
                Y_pre[e, i] = pre[k, i]
            e += 1
    return t_pre, Y_pre, pre_row


@_jit
def _cmax_rows(p, times, O, t_pre, O_pre, pre_row, r_end, cmax, tmax):
    """Cmax/Tmax: every evaluated point of the grid's span (rows before `r_end`) in time
    order, the left limit before a bolus just before its row (tight runs in between)."""
    n_ev = pre_row.shape[0]
    for o in range(cmax.shape[1]):
        cmv = -np.inf  # an output may be negative throughout; every value is finite
        tmv = tmax[p, o]
        start = 0
        for e in range(n_ev + 1):
            stop = pre_row[e] if e < n_ev else r_end
            cmv, tmv = record.fold_run(O[:, o], start, 1, stop - start, times, start, cmv, tmv)
            if e < n_ev:
                cmv, tmv = record.fold_run(O_pre[:, o], e, 1, 1, t_pre, e, cmv, tmv)
            start = stop
        cmax[p, o] = cmv
        tmax[p, o] = tmv


@_jit
def _above_rows(p, times, kinds, index, bolus, O, O_pre, t0, t_end, rec, cmax, tmax, t_above):
    """Time above thresholds over the points of `_cmax_rows` (Cmax is folded again,
    unchanged)."""
    thr_out, thr_val = rec
    n_out = O.shape[1]
    c = np.zeros(n_out)
    c_prev = np.zeros(n_out)
    t_prev = t0
    e = 0
    for r in range(times.shape[0]):
        t = times[r]
        if t > t_end:
            break
        if kinds[r] == _ROW_EVENT and bolus[index[r]] != 0.0:
            for o in range(n_out):
                c[o] = O_pre[e, o]
            e += 1
            record.fold_point(t, c, t_prev, c_prev, cmax, tmax, thr_out, thr_val, t_above, p)
            for o in range(n_out):
                c_prev[o] = c[o]
            t_prev = t
        for o in range(n_out):
            c[o] = O[r, o]
        record.fold_point(t, c, t_prev, c_prev, cmax, tmax, thr_out, thr_val, t_above, p)
        for o in range(n_out):
            c_prev[o] = c[o]
        t_prev = t


@_jit
def _specials_and_store(p, rows, Y, conc, O, specials, auc_index, store, auc, c_at, traj):
    """AUC windows and anchored values at the special rows (``conc`` the rows holding the
    outputs), then the stored grid rows of the outputs ``O``."""
    times, kinds, index, sp_row = rows
    spec_kind, spec_slot = specials
    store_out, store_stride = store
    auc_start = np.zeros((auc.shape[1], auc.shape[2]))
    for s in range(sp_row.shape[0]):
        r = sp_row[s]
        record.special(spec_kind[p, s], spec_slot[p, s], p, Y[r], auc_index, conc[r],
                       auc_start, auc, c_at)  # fmt: skip
    n_store = store_out.shape[0]
    if n_store > 0:
        unscaled = np.ones(n_store)
        for r in range(times.shape[0]):
            if kinds[r] == _ROW_GRID:
                g = index[r]
                if g % store_stride == 0:
                    record.store(traj, p, g // store_stride, O[r], 0, store_out, unscaled)


@_jit_inline
def adaptive_patient(
    solve_patient,
    outputs_into,
    n_rec,
    p,
    P,
    b,
    Y0,
    t0,
    grid,
    ev,
    specials,
    rtol,
    atol,
    limits,
    auc_index,
    thr_out,
    thr_val,
    store_out,
    store_stride,
    metrics,
):
    """Solve patient `p` and reduce its metrics (through :mod:`pkpd.engine.record`).

    Arguments as :func:`pkpd.engine.kernels.cohort_kernel`, grouped (CPython turns a call with
    more than 30 arguments into a star-call, which numba cannot inline):
    ``ev`` the dosing source (:mod:`pkpd.engine.dosing`, any registered one: today
    ``EventTable(t, rate, bolus)``, (n, K) each), ``specials = (spec_t, spec_kind,
    spec_slot)``,
    ``metrics = (cmax, tmax, auc, t_above, c_at, traj, status, stats)``,
    ``limits = (hmax, max_steps, nstiff)``; ``P`` per-patient solver parameters, ``b``
    the bolus map of the state, ``Y0`` initial states, ``auc_index[o]`` the recorded
    column holding the AUC of output `o` or -1, ``stats`` (n, N_STATS) counters.
    ``n_rec``: 0 when the solver records the state (``[ode]`` models), else the number of
    recorded columns, of which the first n_out are the outputs (linear models): then the
    solver folds Cmax/Tmax itself, and in summary mode (no thresholds, no stored
    trajectory) it writes only the rows the other metrics read.
    """
    hmax, max_steps, nstiff = limits
    spec_t, spec_kind, spec_slot = specials
    cmax, tmax, auc, t_above, c_at, traj, status, stats = metrics
    n_out = cmax.shape[1]
    times, kinds, index, ev_row, sp_row, dec_t = merge_rows(grid, ev, p, spec_t[p])
    m = times.shape[0]
    fold_outputs = n_rec > 0
    N = n_rec if fold_outputs else Y0.shape[1]  # recorded columns
    Y = np.empty((m, N))
    pre = np.empty((dec_t.shape[0], N))
    # What each decision gave (bolus, rate): what the metrics below read as the doses.
    given = np.zeros((2, dec_t.shape[0]))
    t_end = grid[grid.shape[0] - 1]
    n_fold = n_out if fold_outputs else 0
    # Running maxima start below every value (an output may be negative throughout).
    cm = np.full(n_fold, -np.inf)
    tm = np.full(n_fold, grid[0])
    lean = fold_outputs and not record.rows_needed(thr_out.shape[0], store_out.shape[0], 0, m)
    # Rows the metrics read in summary mode: the special rows, sorted.
    need = np.sort(sp_row) if lean else np.zeros(0, dtype=np.int64)
    st = solve_patient(
        P[p], b, Y0[p], t0, ev, p, times, rtol, atol, hmax, max_steps, nstiff, Y, (pre, given),
        (cm, tm, grid[0], t_end, lean, need), stats[p],
    )  # fmt: skip
    status[p] = st
    record.start(p, grid[0], cmax, tmax, t_above)
    for o in range(n_out):
        for w in range(auc.shape[2]):
            auc[p, o, w] = 0.0
        for a in range(c_at.shape[2]):
            c_at[p, o, a] = 0.0
    if st != STATUS_OK:
        record.fail(p, cmax, tmax, auc, c_at, t_above)
        return
    O = np.empty((m, n_out))
    if not lean:  # in summary mode only the special rows are read (below)
        outputs_into(times, Y, P[p], O)
    t_pre, Y_pre, pre_row = _left_limits(ev_row, given[0], times, pre)
    O_pre = np.zeros((t_pre.shape[0], n_out))
    if not lean:
        outputs_into(t_pre, Y_pre, P[p], O_pre)
        # A finite state can still give a non-finite output (log or sqrt of a negative
        # number, 0/0 in an [ode] output): the patient fails rather than report metrics
        # that skip those values. (Lean rows are linear maps of the checked state.)
        if not (all_finite(O) and all_finite(O_pre)):
            status[p] = STATUS_OUTPUT_NONFINITE
            record.fail(p, cmax, tmax, auc, c_at, t_above)
            return
    if fold_outputs:
        for o in range(n_out):
            cmax[p, o] = cm[o]
            tmax[p, o] = tm[o]
    else:
        r_end = np.searchsorted(times, t_end, side="right")  # rows of the grid's span
        _cmax_rows(p, times, O, t_pre, O_pre, pre_row, r_end, cmax, tmax)
        # The maxima between the points, on the solution itself (the state is recorded).
        _peaks.refine_patient(
            solve_patient, outputs_into, P[p], b, (dec_t, given[1], given[0]),
            _peaks.point_sequence(times, t_pre, pre_row, r_end), (Y, O, Y_pre, O_pre),
            (rtol, atol, hmax, max_steps, nstiff), cmax[p], tmax[p],
        )  # fmt: skip
    if thr_out.shape[0] > 0:
        _above_rows(p, times, kinds, index, given[0], O, O_pre, t0, t_end,
                    (thr_out, thr_val), cmax, tmax, t_above)  # fmt: skip
    # Linear models record the outputs first (in summary mode O is not filled).
    conc = Y if fold_outputs else O
    _specials_and_store(p, (times, kinds, index, sp_row), Y, conc, O, (spec_kind, spec_slot),
                        auc_index, (store_out, store_stride), auc, c_at, traj)  # fmt: skip


# ----------------------------------------------------------------------------- linear models
#
# A linear model runs its reduced system (compartments, then the cumulative AUC state of
# each output: the dose and elimination accumulators are not needed for metrics) with the
# per-patient parameters ``pp = [M.ravel(), b, R.ravel()]``: ``dy/dt = M y + b u`` and the
# recording map ``R`` (2 n_out, N) whose first n_out rows give the concentrations and the
# last n_out pick the AUC states (see :func:`linear_parameters`).


@_jit
def _n_recorded(P, N):
    """Rows of the recording map in per-patient parameters ``[M.ravel(), b, R.ravel()]``
    of an N-state system."""
    return (P.shape[1] - N * N - N) // N


@_jit
def _recording_map(pp, N, n_rec):
    base = N * N + N
    R = np.empty((n_rec, N))
    for r in range(n_rec):
        for j in range(N):
            R[r, j] = pp[base + r * N + j]
    return R


@_jit
def linear_outputs(t_out, Y, pp, O):
    """Concentrations of a linear model: the first n_out recorded columns."""
    for r in range(t_out.shape[0]):
        for o in range(O.shape[1]):
            O[r, o] = Y[r, o]


@_jit
def linear_dopri5_patient(
    pp, b, y0, t0, source, sp, t_out, rtol, atol, hmax, max_steps, nstiff, out, log, fold,
    stats,
):  # fmt: skip
    """Dopri5 on ``dy/dt = M y + b u``, recording ``R @ y``; workspace here."""
    N = y0.shape[0]
    R = _recording_map(pp, N, out.shape[1])
    work = np.zeros((_dopri5.N_WORK, N))
    return _dopri5.dopri5_solve_mapped(
        linear_rhs, pp, b, y0, t0, source, sp, t_out, rtol, atol, 0.0, hmax, max_steps, nstiff,
        R, out, log, fold, work, stats,
    )  # fmt: skip


@_jit
def linear_rodas_patient(
    pp, b, y0, t0, source, sp, t_out, rtol, atol, hmax, max_steps, nstiff, out, log, fold,
    stats,
):  # fmt: skip
    """Rodas4 on ``dy/dt = M y + b u`` (exact Jacobian), recording ``R @ y``."""
    N = y0.shape[0]
    R = _recording_map(pp, N, out.shape[1])
    work = np.zeros((_rodas.N_WORK, N))
    mats = np.zeros((2, N, N))
    ipiv = np.zeros(N, dtype=np.int64)
    return _rodas.rodas_solve_mapped(
        linear_rhs, linear_jac, pp, b, y0, t0, source, sp, t_out, rtol, atol, 0.0, hmax,
        max_steps, 0, 1, R, out, log, fold, work, mats, ipiv, stats,
    )  # fmt: skip


@_jit
def _linear_dopri5_one(
    p, P, B, Y0, t0, grid, ev, specials, rtol, atol, limits, auc_index, thr_out, thr_val,
    store_out, store_stride, metrics,
):  # fmt: skip
    # The solver is inlined here, outside the parallel loop (numba cannot inline a
    # function argument into a parfor body).
    n_rec = _n_recorded(P, Y0.shape[1])
    adaptive_patient(
        linear_dopri5_patient, linear_outputs, n_rec, p, P, B, Y0, t0, grid, ev, specials, rtol,
        atol, limits, auc_index, thr_out, thr_val, store_out, store_stride, metrics,
    )  # fmt: skip


@numba.njit(cache=True, parallel=True, error_model="numpy")
def linear_dopri5_cohort(
    P, B, Y0, t0, grid, source, spec_t, spec_kind, spec_slot, rtol, atol, hmax, max_steps,
    nstiff, auc_index, thr_out, thr_val, store_out, store_stride, cmax, tmax, auc, t_above,
    c_at, traj, status, stats,
):  # fmt: skip
    """Every patient of a chunk of a linear model through Dopri5 (see module docstring)."""
    for p in numba.prange(P.shape[0]):
        # np.uint64(p): one compile of the patient, not two (see kernels.cohort_kernel).
        _linear_dopri5_one(
            np.uint64(p), P, B, Y0, t0, grid, source, (spec_t, spec_kind, spec_slot), rtol,
            atol, (hmax, max_steps, nstiff), auc_index, thr_out, thr_val, store_out,
            store_stride, (cmax, tmax, auc, t_above, c_at, traj, status, stats),
        )  # fmt: skip


@_jit
def _linear_rodas_one(
    p, P, B, Y0, t0, grid, ev, specials, rtol, atol, limits, auc_index, thr_out, thr_val,
    store_out, store_stride, metrics,
):  # fmt: skip
    # The solver is inlined here, outside the parallel loop (numba cannot inline a
    # function argument into a parfor body).
    n_rec = _n_recorded(P, Y0.shape[1])
    adaptive_patient(
        linear_rodas_patient, linear_outputs, n_rec, p, P, B, Y0, t0, grid, ev, specials, rtol,
        atol, limits, auc_index, thr_out, thr_val, store_out, store_stride, metrics,
    )  # fmt: skip


@numba.njit(cache=True, parallel=True, error_model="numpy")
def linear_rodas_cohort(
    P, B, Y0, t0, grid, source, spec_t, spec_kind, spec_slot, rtol, atol, hmax, max_steps,
    nstiff, auc_index, thr_out, thr_val, store_out, store_stride, cmax, tmax, auc, t_above,
    c_at, traj, status, stats,
):  # fmt: skip
    """Every patient of a chunk of a linear model through Rodas4 (see module docstring)."""
    for p in numba.prange(P.shape[0]):
        # np.uint64(p): one compile of the patient, not two (see kernels.cohort_kernel).
        _linear_rodas_one(
            np.uint64(p), P, B, Y0, t0, grid, source, (spec_t, spec_kind, spec_slot), rtol,
            atol, (hmax, max_steps, nstiff), auc_index, thr_out, thr_val, store_out,
            store_stride, (cmax, tmax, auc, t_above, c_at, traj, status, stats),
        )  # fmt: skip


LINEAR_COHORT_KERNELS = {"dopri5": linear_dopri5_cohort, "rodas": linear_rodas_cohort}


def stats_array(n: int) -> np.ndarray:
    """Per-patient solver counters ``(n, N_STATS)`` (layout ``pkpd.engine.solvers.STAT_*``)."""
    return np.zeros((n, N_STATS), dtype=np.int64)


def linear_parameters(spec, theta: np.ndarray):
    """Per-patient ``P = [M.ravel(), b, R.ravel()]`` of the reduced linear system (see the
    section comment above), the bolus map ``B`` and ``auc_index``. Raises ValueError when
    the input map differs between patients (a per-patient bioavailability: not supported
    here)."""
    n = theta.shape[0]
    n_out = len(spec.output_names)
    n_comp = spec.n_comp
    N = spec.n_states
    auc_states = n_comp + 1 + len(spec.analyte_names) + np.arange(n_out)
    keep = np.concatenate([np.arange(n_comp), auc_states])
    Nr = keep.size
    Mf = np.zeros((n, N, N))
    bf = np.zeros((n, N))
    Cf = np.zeros((n, n_out, n_comp))
    _fill_systems(
        theta, spec.comps_i, spec.flows_i, spec.flows_f, spec.effects_i, spec.outputs_i,
        spec.dose_index, len(spec.analyte_names), Mf, bf, Cf,
    )  # fmt: skip
    b = bf[:, keep]
    if np.any(b != b[:1]):
        raise ValueError("the input map differs between patients")
    R = np.zeros((n, 2 * n_out, Nr))
    R[:, :n_out, :n_comp] = Cf
    R[:, np.arange(n_out) + n_out, n_comp + np.arange(n_out)] = 1.0
    M = Mf[:, keep][:, :, keep]
    P = np.concatenate([M.reshape(n, -1), b, R.reshape(n, -1)], axis=1)
    B = np.ascontiguousarray(b[0])
    return np.ascontiguousarray(P), B, n_out + np.arange(n_out, dtype=np.int64)


@_jit
def _fill_systems(
    theta, comps_i, flows_i, flows_f, effects_i, outputs_i, dose_comp, n_analytes, M, b, C
):
    """`fill_system` for every patient: ``M[p], b[p], C[p]``."""
    for p in range(theta.shape[0]):
        fill_system(
            theta[p], comps_i, flows_i, flows_f, effects_i, outputs_i, dose_comp, n_analytes,
            M[p], b[p], C[p],
        )  # fmt: skip
