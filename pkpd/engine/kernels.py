"""The parallel cohort kernel: exact propagation of every patient with streaming metrics.

One call simulates a chunk of patients with ``numba.prange``. Each patient gets the exact
piecewise solution of :mod:`pkpd.engine.solvers.exact` (same step function and exponential
cache), evaluated on a common grid, at its own dose events and at its own "special" times
(bounds of AUC windows and anchored concentration times, which may depend on per-patient
events such as the end of surgery). Per-patient metrics are reduced while stepping, so
nothing of size ``n_time`` is kept unless trajectories are requested.

The per-patient core is one event loop (:func:`_event_loop`): advance to the next point
(the stepper: whole grid steps by one precomputed propagator in :func:`_grid_run`, any
other interval by :func:`pkpd.engine.solvers.exact._step`), ask the dosing source
(:mod:`pkpd.engine.dosing`) at its decision times, and hand every evaluated point to the
recorder (:mod:`pkpd.engine.record`), which owns the metric definitions:

* ``cmax``, ``tmax``: maximum of the exact solution: over every evaluated point (grid,
  dose events just before and just after a bolus, special times) and over the maxima
  between them, located to machine precision where an output's derivative changes sign
  from > 0 to < 0 inside a step (:mod:`pkpd.engine.peaks`; in `_singles`, in the event
  loop, and in the block fast path `_block_peaks`). So Cmax and Tmax do not depend on
  the grid step.
* ``auc``: exact, from the cumulative-AUC states of the augmented system, as the
  difference between the window's end and start.
* ``t_above``: time spent above a threshold, by linear interpolation of the crossing
  between consecutive evaluated points (error O(h^2) per crossing for grid step h).
* ``c_at``: concentration at anchored times, exact.

Status codes per patient follow :data:`pkpd.engine.solvers.STATUS_MESSAGES`; a failed patient
gets NaN metrics and never stops the others.

Everything below the parallel loop works on plain arrays and scalars allocated once per
patient (:func:`_patient`), never inside the loop.
"""

from __future__ import annotations

import numba
import numpy as np

# Absolute imports: this file is also compiled as a copy specialised to one state size
# (see `kernel_for`).
from pkpd.engine import (
    _stamp,  # noqa: F401  (numba's cache: pkpd/engine/_stamp.py)
    dosing,
    peaks,
    record,
)
from pkpd.engine.record import SPECIAL_ANCHOR, SPECIAL_WINDOW_END, SPECIAL_WINDOW_START
from pkpd.engine.solvers.exact import STATUS_OK, _step
from pkpd.engine.solvers.expm import N_WORK, propagator_into
from pkpd.engine.solvers.linear_system import fill_system

__all__ = [
    "BLK",
    "SPECIAL_ANCHOR",
    "SPECIAL_WINDOW_END",
    "SPECIAL_WINDOW_START",
    "cohort_kernel",
    "histogram_update",
    "kernel_for",
]

_CACHE = 4
#: Grid steps per block in the fast path (see `_blocks`).
BLK = 32  # a power of two (the block propagator is computed by squaring)
#: The reduced state size, 0 for any: `kernel_for` copies set it (a compile-time literal).
_NR = 0  # @specialise: replaced by a literal in `kernel_for` copies

_jit = numba.njit(cache=True, nogil=True)
_jit_inline = numba.njit(cache=True, nogil=True, inline="always")


@_jit_inline
def _nr(x):
    """The reduced state size of state `x`: the literal `_NR` in a specialised copy, so
    that LLVM unrolls the small mat-vecs over it."""
    return x.shape[0] if _NR == 0 else _NR


@_jit_inline
def _eval_outputs(x, out_state, out_scale, c):
    for o in range(c.shape[0]):
        c[o] = x[out_state[o]] * out_scale[o]


@_jit_inline
def _propagate(A, a, rate, x, xtmp, Nr):
    """``x = A x + a rate`` in place (`Nr` states)."""
    for i in range(Nr):
        acc = a[i] * rate
        for j in range(Nr):
            acc += A[i, j] * x[j]
        xtmp[i] = acc
    for i in range(Nr):
        x[i] = xtmp[i]


@_jit
def _fold_refined(o, xa, ta, h, rate, system, pk, cm, tm):
    """Fold the maximum of output `o` inside the step ``[ta, ta + h]`` (left-end state
    `xa`; its derivative goes from > 0 to < 0) into ``cm, tm`` (see
    :mod:`pkpd.engine.peaks`)."""
    Mr, br = system
    W, _D, _E, _dprev, _xs, _ys, _xw, mnorm, scratch, _cb = pk
    ts, cs = peaks.refine(xa, ta, h, rate, Mr, br, W[o], mnorm[0], scratch)
    if cs > cm[o]:
        cm[o] = cs
        tm[o] = ts


@_jit
def _fold_refined_into(p, o, xa, ta, h, rate, system, pk, cmax, tmax):
    """`_fold_refined` into the metric arrays of patient `p` (the event loop's points)."""
    Mr, br = system
    W, _D, _E, _dprev, _xs, _ys, _xw, mnorm, scratch, _cb = pk
    ts, cs = peaks.refine(xa, ta, h, rate, Mr, br, W[o], mnorm[0], scratch)
    if cs > cmax[p, o]:
        cmax[p, o] = cs
        tmax[p, o] = ts


@_jit_inline
def _block_peaks(x, rate, g, t_start, grid, blk, prop, system, pk, cm, tm, xtmp, need):
    """The maxima inside the steps of a block (grid points ``g .. g + BLK - 1``, after the
    block start at `t_start`, whose state is ``pk``'s ``xs``; `x` is the block's end).

    Where the derivative changes sign from > 0 to < 0 between two points of the block
    (the start, the BLK - 1 inner points, the end), the step holds a maximum
    (:mod:`pkpd.engine.peaks`). The inner points' derivatives need not be evaluated in
    most blocks: for constant rate the state's derivative evolves as the state does
    without input, ``x'(t_k) = phi^k x'(t_start)``, so the derivative of output `o` at
    inner point k is ``R_k y`` with ``y = M x(t_start) + b rate`` and the block's own
    output rows R_k; the bound tables ``Ub, Lb`` (the elementwise extremes of R_k over
    the inner points) bound it from both sides, rounding included. If the bounds prove
    every inner derivative > 0, the only possible change is in the last step (end < 0);
    if they prove every one < 0, only in the first (start > 0). Otherwise the inner
    derivatives are evaluated (one row of the block mat-vec per output) and every step
    checked. Outputs with ``need[o]`` false are not searched: `_blocks` proved them below
    their running maxima over the whole block, between its points included
    (`_excess_bounds`), so no maximum of theirs there can change Cmax or Tmax.
    """
    RT, _Sf, Ub, Lb, _Smx, _Smn, _phi_c, _gg_c, _cblk = blk
    phi, gg = prop
    Mr, br = system
    _W, D, E, dprev, xs, ys, xw, _mnorm, _scratch, _cb = pk
    Nr = _nr(x)
    n_rows = RT.shape[1] // (BLK - 1)
    h = grid[g] - t_start
    for i in range(Nr):
        acc = br[i] * rate
        for j in range(Nr):
            acc += Mr[i, j] * xs[j]
        ys[i] = acc
    for o in range(cm.shape[0]):
        d_end = peaks.deriv(x, rate, D, E, o)
        d0 = dprev[o]
        dprev[o] = d_end
        if not need[o]:
            continue
        up = 0.0
        lo = 0.0
        ab = 0.0
        for j in range(Nr):
            u = Ub[o, j] * ys[j]
            lw = Lb[o, j] * ys[j]
            up += max(u, lw)
            lo += min(u, lw)
            ab += abs(u) + abs(lw)
        marg = record.BOUND_MARGIN * ab
        if lo - marg > 0.0:
            first = BLK - 1  # only the last step can change sign
        elif up + marg < 0.0:
            first = 0
            if d0 > 0.0:
                _fold_refined(o, xs, t_start, h, rate, system, pk, cm, tm)
            continue
        else:
            first = 0
        prev = d0
        for kk in range(first, BLK):
            if kk < BLK - 1:
                dk = 0.0
                for j in range(Nr):
                    dk += RT[j, kk * n_rows + o] * ys[j]
            else:
                dk = d_end
            if kk == first and first > 0:
                prev = 1.0  # every inner derivative is > 0
            if prev > 0.0 and dk < 0.0:
                # The step from point kk - 1 (state: kk grid steps from the start).
                for j in range(Nr):
                    xw[j] = xs[j]
                for _i in range(kk):
                    _propagate(phi, gg, rate, xw, xtmp, Nr)
                ta = t_start if kk == 0 else grid[g + kk - 1]
                _fold_refined(o, xw, ta, grid[g + kk] - ta, rate, system, pk, cm, tm)
            prev = dk


@numba.njit(cache=True, parallel=True)
def cohort_kernel(
    theta,
    comps_i,
    flows_i,
    flows_f,
    effects_i,
    outputs_i,
    dose_comp,
    n_analytes,
    keep,
    source,
    t0,
    grid,
    spec_t,
    spec_kind,
    spec_slot,
    thr_out,
    thr_val,
    store_out,
    store_stride,
    extra_state,
    store_scale,
    uniform,
    cmax,
    tmax,
    auc,
    t_above,
    c_at,
    traj,
    status,
):
    """Simulate every patient of a chunk; fill the metric arrays in place.

    Parameters
    ----------
    theta : (n, n_par) float64
        Individual parameters (internal units).
    comps_i, flows_i, flows_f, effects_i, outputs_i, dose_comp, n_analytes
        Model tables, as for :func:`pkpd.engine.solvers.linear_system.fill_system`.
    keep : (Nr,) int64
        Indices of the augmented state kept in the reduced system: the compartments, then
        the cumulative AUC state of each output (dose and elimination accumulators are not
        needed for metrics and are dropped for speed).
    source : registered dosing source (:mod:`pkpd.engine.dosing`), one row per patient
        Today :class:`pkpd.engine.dosing.EventTable` of (n, K) float64 arrays (see
        ``Regimen.event_arrays``); the kernel is compiled per source type.
    t0 : float
        Start time (h), common to all patients; no event precedes it.
    grid : (n_t,) float64
        Sorted evaluation grid (h), ``grid[0] >= t0``.
    spec_t : (n, S) float64
        Per-patient special times, sorted in each row.
    spec_kind, spec_slot : (n, S) int64
        What each special time records: a window start / end (slot = window index) or an
        anchored concentration (slot = anchor index).
    thr_out, thr_val : (n_thr,) int64, float64
        Output index and threshold (mg/L) of each time-above metric.
    store_out : (n_store,) int64
        Rows whose trajectories are stored (may be empty): an output index
        ``0..n_out-1``, or ``n_out + r`` for the reduced state ``extra_state[r]``.
    store_stride : int
        Store every `store_stride`-th grid point.
    extra_state : (n_extra,) int64
        Reduced-state indices (compartments first, so a compartment's index is its own)
        that may be stored as rows after the outputs: amounts (mg), unscaled.
    store_scale : (n_store,) float64
        Factor applied to each stored row (e.g. mg/L to ng/mL).
    uniform : bool
        True if the grid is uniform (enables the fast path with one exponential).
    cmax, tmax : (n, n_out) float64
        Output.
    auc : (n, n_out, n_w) float64
        Output: AUC over each window (mg*h/L).
    t_above : (n, n_thr) float64
        Output (h).
    c_at : (n, n_out, n_at) float64
        Output: concentrations at anchored times (mg/L).
    traj : (n, n_store, n_store_t) float32 or float64
        Output: stored trajectories (internal units times `store_scale`).
    status : (n,) int64
        Output: 0 success, else a solver status code.
    """
    model = (comps_i, flows_i, flows_f, effects_i, outputs_i, dose_comp, n_analytes)
    # The cumulative AUC state of each output follows the compartments (the same for
    # every patient: allocated once per chunk, not per patient).
    auc_index = np.empty(outputs_i.shape[0], dtype=np.int64)
    for o in range(outputs_i.shape[0]):
        auc_index[o] = comps_i.shape[0] + o
    for p in numba.prange(theta.shape[0]):
        # np.uint64: numba types the prange index int64 here and uint64 in the parallel
        # body it lowers, which compiled the whole patient twice (half of a cold compile).
        # The uint64 copy is the one that ran: the code that runs is unchanged.
        _patient(
            np.uint64(p),
            theta,
            model,
            keep,
            source,
            t0,
            grid,
            (spec_t, spec_kind, spec_slot),
            (thr_out, thr_val, store_out, store_stride, store_scale),
            extra_state,
            uniform,
            (cmax, tmax, auc, t_above, c_at, traj, status),
            auc_index,
        )


@_jit_inline
def _system(p, theta, model, keep, extra_state):
    """Patient `p`'s reduced system ``(Mr, br)`` (``dx/dt = Mr x + br u``) and the map of
    the evaluated rows ``(out_state, out_scale)``: the outputs, then the extra states."""
    comps_i, flows_i, flows_f, effects_i, outputs_i, dose_comp, n_analytes = model
    n_comp = comps_i.shape[0]
    n_out = outputs_i.shape[0]
    N = n_comp + 1 + n_analytes + n_out
    Nr = _nr(keep)
    M = np.zeros((N, N))
    b = np.zeros(N)
    C = np.zeros((n_out, n_comp))
    fill_system(
        theta[p], comps_i, flows_i, flows_f, effects_i, outputs_i, dose_comp, n_analytes, M, b, C
    )
    Mr = np.empty((Nr, Nr))
    br = np.empty(Nr)
    for i in range(Nr):
        br[i] = b[keep[i]]
        for j in range(Nr):
            Mr[i, j] = M[keep[i], keep[j]]
    n_rows = n_out + extra_state.shape[0]
    out_state = np.empty(n_rows, dtype=np.int64)
    out_scale = np.empty(n_rows)
    for o in range(n_out):
        c_idx = outputs_i[o, 0]
        out_state[o] = c_idx  # compartments come first in `keep`
        out_scale[o] = C[o, c_idx]
    for r in range(extra_state.shape[0]):
        out_state[n_out + r] = extra_state[r]
        out_scale[n_out + r] = 1.0
    return Mr, br, out_state, out_scale


@_jit_inline
def _grid_propagator(Mr, br, h, work, phi, gg):
    """The exponential of one grid step `h` into ``phi, gg`` and the first slot of the
    step cache of `work` (whole grid steps taken by `_step` reuse it); a status."""
    Maug, Eaug, cache_h, cache_phi, cache_g, _xtmp, ework, epiv, counter = work
    Nr = _nr(Mr)
    st = STATUS_OK
    if propagator_into(Mr, br, h, Maug, Eaug, ework, epiv) != 0:
        st = 1
    for i in range(Nr):
        for j in range(Nr):
            phi[i, j] = Eaug[i, j]
            cache_phi[0, i, j] = Eaug[i, j]
        gg[i] = Eaug[i, Nr]
        cache_g[0, i] = Eaug[i, Nr]
    cache_h[0] = h
    counter[0] = 1
    return st


@_jit_inline
def _block_tables(phi, gg, out_state, out_scale, n_out, blk, tmp):
    """Fill the block tables ``blk = (RT, Sf, Ub, Lb, Smx, Smn, phi_c, gg_c, cblk)``.

    Block stepping: the full state advances BLK grid steps at a time (``phi_c, gg_c``, the
    propagator of BLK*h), and the outputs at the BLK-1 points in between come from
    precomputed output rows of phi^k: c_k = R_k x + S_k rate, with R_k = Co phi^k,
    S_k = sum_{i<k} Co phi^i g, stored as ``RT[j, kk * n_rows + o] = R_k[kk, o, j]`` and
    ``Sf``. Exact (the same grid values), with n_out*Nr instead of Nr*Nr work per inner
    point. ``Ub, Lb, Smx, Smn`` bound the outputs at the inner points and the block's end
    (see `_blocks`), and the derivatives at the inner points (`_block_peaks`).
    """
    RT, Sf, Ub, Lb, Smx, Smn, phi_c, gg_c, _cblk = blk
    Maug, xtmp = tmp
    Nr = _nr(phi)
    n_rows = out_state.shape[0]
    R_k = np.zeros((BLK - 1, n_rows, Nr))
    S_k = np.zeros((BLK - 1, n_rows))
    Rcur = np.zeros((n_rows, Nr))
    Scur = np.zeros(n_rows)
    for o in range(n_rows):
        Rcur[o, out_state[o]] = out_scale[o]
    for kk in range(BLK - 1):
        for o in range(n_rows):
            acc = Scur[o]
            for j in range(Nr):
                acc += Rcur[o, j] * gg[j]
            S_k[kk, o] = acc
            for j in range(Nr):
                a2 = 0.0
                for i in range(Nr):
                    a2 += Rcur[o, i] * phi[i, j]
                R_k[kk, o, j] = a2
        for o in range(n_rows):
            Scur[o] = S_k[kk, o]
            Sf[kk * n_rows + o] = S_k[kk, o]
            for j in range(Nr):
                Rcur[o, j] = R_k[kk, o, j]
                RT[j, kk * n_rows + o] = R_k[kk, o, j]
    # Bounds of the inner points' outputs: c_k = sum_j R_k[o, j] x_j + S_k[o] rate is at
    # most sum_j (x_j >= 0 ? max_k R_k[o, j] : min_k R_k[o, j]) x_j + (the same for the
    # rate), whatever the signs.
    for o in range(n_out):
        for j in range(Nr):
            Ub[o, j] = R_k[0, o, j]
            Lb[o, j] = R_k[0, o, j]
        Smx[o] = S_k[0, o]
        Smn[o] = S_k[0, o]
        for kk in range(1, BLK - 1):
            for j in range(Nr):
                Ub[o, j] = max(Ub[o, j], R_k[kk, o, j])
                Lb[o, j] = min(Lb[o, j], R_k[kk, o, j])
            Smx[o] = max(Smx[o], S_k[kk, o])
            Smn[o] = min(Smn[o], S_k[kk, o])
        # ... and of the block's end (power BLK): the skip test bounds every step of the
        # block, the last one's end included (`_blocks`).
        s_end = S_k[BLK - 2, o]
        for j in range(Nr):
            s_end += R_k[BLK - 2, o, j] * gg[j]
            a2 = 0.0
            for i in range(Nr):
                a2 += R_k[BLK - 2, o, i] * phi[i, j]
            Ub[o, j] = max(Ub[o, j], a2)
            Lb[o, j] = min(Lb[o, j], a2)
        Smx[o] = max(Smx[o], s_end)
        Smn[o] = min(Smn[o], s_end)
    # The propagator of BLK steps by repeated squaring of the one-step propagator
    # [[phi, g], [0, 1]] (BLK is a power of two): log2(BLK) small matrix products
    # instead of a second exponential. [[A, a], [0, 1]]^2 = [[A A, A a + a], [0, 1]].
    for i in range(Nr):
        for j in range(Nr):
            phi_c[i, j] = phi[i, j]
        gg_c[i] = gg[i]
    sq = BLK
    while sq > 1:
        for i in range(Nr):
            acc = gg_c[i]
            for j in range(Nr):
                acc += phi_c[i, j] * gg_c[j]
            xtmp[i] = acc
            for j in range(Nr):
                a2 = 0.0
                for m in range(Nr):
                    a2 += phi_c[i, m] * phi_c[m, j]
                Maug[i, j] = a2
        for i in range(Nr):
            gg_c[i] = xtmp[i]
            for j in range(Nr):
                phi_c[i, j] = Maug[i, j]
        sq //= 2


@_jit
def _excess_bounds(phi, gg, system, D, h, cb):
    """Bounds of how far an output rises above the straight line between two grid points
    of a block: ``cb = (Pmax, Qmax)`` with, for every step of the block from state ``x``
    and rate ``r`` at the block's start, ``c(tau) <= max(c_k, c_k+1) + sum_j Pmax[o, j]
    |x_j| + Qmax[o] |r|`` (summary mode skips a block only if this stays below the running
    maxima, `_blocks`).

    The argument. On a step of length h, ``c - (its linear interpolant) <= h^2/8
    sup |c''|`` (the interpolation error of a C^2 function), and the interpolant is at
    most the larger end value. On step k of the block (``k = 0 .. BLK-1``, from the state
    ``x_k = phi^k x + g_k r``, ``g_k = sum_{i<k} phi^i g``), ``c''(tau) = W M^2 e^{M tau}
    x_k + W M e^{M tau} b r`` (the input's part: ``W M^2 G(tau) r + W M b r`` with
    ``G' = e^{M tau} b``). A compartment model's ``M`` is a Metzler matrix (off-diagonal
    entries >= 0: flows, effect-site links, AUC rows) and ``b >= 0``; with ``mu = max_i
    (-M_ii)`` and ``N = M + mu I >= 0``, ``0 <= e^{M tau} = e^{-mu tau} e^{N tau} <=
    e^{N h} = e^{mu h} phi`` entrywise for ``0 <= tau <= h``, and ``phi^k, g_k >= 0``. So
    ``|c''| <= e^{mu h} (|W M^2| phi (phi^k |x| + g_k |r|) + |W M| phi b |r|)``, whose
    maximum over k is at most ``sum_j |x_j| max_k (|W M^2| phi^{k+1})_j + |r| (max_k
    |W M^2| phi g_k + |W M| phi b)``: the tables. The factor ``e^{mu h}`` is that of one
    grid step (about 2 for a 1-min step and a 40/h compartment), not of the block.
    For any other system (not Metzler, a negative input) the bound is +inf: no block is
    skipped.
    """
    Pmax, Qmax, _need = cb
    Mr, br = system
    Nr = _nr(phi)
    n_out = Pmax.shape[0]
    ok = True
    mu = 0.0
    for i in range(Nr):
        mu = max(mu, -Mr[i, i])
        if br[i] < 0.0:
            ok = False
        for j in range(Nr):
            if j != i and Mr[i, j] < 0.0:
                ok = False
    f = np.exp(mu * h) * h * h / 8.0
    pb = np.empty(Nr)  # |phi| b
    for i in range(Nr):
        acc = 0.0
        for j in range(Nr):
            acc += abs(phi[i, j]) * br[j]
        pb[i] = acc
    # g_{BLK-1} (|phi| and |g|: rounding never lowers the bound); g_k grows with k, so
    # max_k |W M^2| phi g_k is taken at k = BLK - 1.
    gk = np.zeros(Nr)
    gn = np.empty(Nr)
    for _k in range(BLK - 1):
        for i in range(Nr):
            acc = abs(gg[i])
            for j in range(Nr):
                acc += abs(phi[i, j]) * gk[j]
            gn[i] = acc
        for i in range(Nr):
            gk[i] = gn[i]
    a2 = np.empty(Nr)
    V = np.empty(Nr)  # |W M^2| |phi|^(k+1), one output at a time
    Vn = np.empty(Nr)
    for o in range(n_out):
        q1 = 0.0
        for j in range(Nr):
            acc = 0.0
            for i in range(Nr):
                acc += D[o, i] * Mr[i, j]
            a2[j] = abs(acc)
            q1 += abs(D[o, j]) * pb[j]
            ok = ok and D[o, j] == D[o, j]
        for j in range(Nr):
            acc = 0.0
            for i in range(Nr):
                acc += a2[i] * abs(phi[i, j])
            V[j] = acc
            Pmax[o, j] = acc
        q2 = 0.0
        for j in range(Nr):
            q2 += V[j] * gk[j]
        for _k in range(1, BLK):
            for j in range(Nr):
                acc = 0.0
                for i in range(Nr):
                    acc += V[i] * abs(phi[i, j])
                Vn[j] = acc
            for j in range(Nr):
                V[j] = Vn[j]
                Pmax[o, j] = max(Pmax[o, j], Vn[j])
        Qmax[o] = f * (q1 + q2) if ok else np.inf
        for j in range(Nr):
            Pmax[o, j] = f * Pmax[o, j] if ok else np.inf


@_jit_inline
def _thresholds_settled(o, x, rate, hi, hi_abs, blk, c_prev, thr_out, thr_val):
    """Whether every threshold of output `o` lies wholly on one side of the block's
    points (`record.threshold_side`), so that the time above it needs none of them: the
    block's previous point `c_prev`, and its inner points and end bounded by ``lo <= c <=
    hi`` (`hi` with absolute sum `hi_abs` is `_blocks`' bound; `lo` is the same sum with
    the other table of each pair, `_block_tables`)."""
    _RT, _Sf, Ub, Lb, Smx, Smn, _phi_c, _gg_c, _cblk = blk
    lo = 0.0
    lo_abs = 0.0
    for j in range(_nr(x)):
        xj = x[j]
        term = (Lb[o, j] if xj >= 0.0 else Ub[o, j]) * xj
        lo += term
        lo_abs += abs(term)
    term = (Smn[o] if rate >= 0.0 else Smx[o]) * rate
    lo += term
    lo_abs += abs(term)
    for j in range(thr_out.shape[0]):
        if thr_out[j] == o:
            side = record.threshold_side(c_prev[o], lo, hi, max(lo_abs, hi_abs), thr_val[j])
            if side == record.SIDE_UNKNOWN:
                return False
    return True


@_jit_inline
def _stored_points(x, rate, g, next_store, store_stride, n_rows, blk):
    """A skipped block's stored inner points (the points of streaming bands, a few per
    block) into its buffer ``cblk``, by the sums `_blocks` evaluates every point with."""
    RT, Sf, _Ub, _Lb, _Smx, _Smn, _phi_c, _gg_c, cblk = blk
    for gs in range(next_store, g + BLK - 1, store_stride):
        for q in range((gs - g) * n_rows, (gs - g + 1) * n_rows):
            acc = Sf[q] * rate
            for j in range(_nr(x)):
                acc += RT[j, q] * x[j]
            cblk[q] = acc


@_jit_inline
def _blocks(p, x, rate, g, t, t_prev, next_store, lim, grid, cur, rows, blk, xtmp, rec, mets,
            prop, system, pk):  # fmt: skip
    """Whole blocks of BLK grid steps before `lim` (see `_block_tables`; the maxima
    between the points: `_block_peaks`); returns ``(g, t, t_prev, next_store)``."""
    c, c_prev, cm, tm = cur
    out_state, out_scale = rows
    RT, Sf, Ub, Lb, Smx, Smn, phi_c, gg_c, cblk = blk
    _W, D, E, dprev, xs, _ys, _xw, _mnorm, _scratch, cb = pk
    Pmax, Qmax, need = cb
    thr_out, thr_val, store_out, store_stride, store_scale = rec
    cmax, tmax, _auc, t_above, _c_at, traj, _status = mets
    Nr = _nr(x)
    n_t = grid.shape[0]
    n_out = cm.shape[0]
    n_rows = out_state.shape[0]
    n_thr = thr_out.shape[0]
    n_store = store_out.shape[0]
    Q = (BLK - 1) * n_rows
    while g + BLK - 1 < n_t and grid[g + BLK - 1] < lim:
        # Summary mode: a block whose bound stays below every running maximum cannot
        # change Cmax or Tmax, so its inner points need not be evaluated.
        # The bound covers the whole block, between its points too: the larger of the
        # start and the grid points' bound, plus the most an output rises above the line
        # between two points (`_excess_bounds`). So a skipped block holds no maximum
        # between points above the running maxima either: its maxima need not be
        # searched (`_block_peaks`). Written out: a helper taking the tables costs
        # reference counts per block (30 % of the summary row).
        skip = True
        settled = True  # every threshold wholly on one side of the block's points
        n_need = 0
        for o in range(n_out):
            bnd = 0.0
            babs = 0.0
            exc = Qmax[o] * abs(rate)
            for j in range(Nr):
                xj = x[j]
                term = (Ub[o, j] if xj >= 0.0 else Lb[o, j]) * xj
                bnd += term
                babs += abs(term)
                exc += Pmax[o, j] * abs(xj)
            term = (Smx[o] if rate >= 0.0 else Smn[o]) * rate
            bnd += term
            babs += abs(term)
            if n_thr > 0 and settled:
                if not _thresholds_settled(o, x, rate, bnd, babs, blk, c_prev, thr_out, thr_val):
                    settled = False  # a threshold may be crossed: fold every point
                    skip = False
            c0 = out_scale[o] * x[out_state[o]]
            if c0 > bnd:
                bnd = c0
            # An output whose bound stays below its running maximum has no maximum in
            # the block that matters: its maxima between points are not searched.
            need[o] = not record.below_max(bnd + exc, babs + abs(c0) + exc, cm[o])
            if need[o]:
                skip = False
                n_need += 1
        stored = record.rows_stored(n_store, next_store, g + BLK - 2)
        if stored and store_stride == 1:
            skip = False  # every point is stored, so every point is folded too
        # The BLK-1 inner points of the block at once: a mat-vec whose inner loop
        # runs over (point, output) pairs, contiguous in RT, so it vectorises.
        if not skip:
            for q in range(Q):
                acc = Sf[q] * rate
                for j in range(Nr):  # Nr is a literal in `kernel_for` copies: unrolled
                    acc += RT[j, q] * x[j]
                cblk[q] = acc
        elif stored:
            _stored_points(x, rate, g, next_store, store_stride, n_rows, blk)
        if n_need > 0:
            for j in range(Nr):
                xs[j] = x[j]
        _propagate(phi_c, gg_c, rate, x, xtmp, Nr)
        if n_need == 0:
            for o in range(n_out):
                dprev[o] = peaks.deriv(x, rate, D, E, o)
        else:
            _block_peaks(x, rate, g, t, grid, blk, prop, system, pk, cm, tm, xtmp, need)
        if settled:
            # No threshold crossed (or none to integrate): a tight Cmax/Tmax loop over
            # the block, then the stored points of the block, if any, and the time above
            # of the thresholds the block lies above.
            for o in range(n_out if not skip else 0):
                cm[o], tm[o] = record.fold_run(cblk, o, n_rows, BLK - 1, grid, g, cm[o], tm[o])
            g_last = g + BLK - 1
            t = grid[g_last]
            _eval_outputs(x, out_state, out_scale, c)
            record.fold_max(t, c, cm, tm)
            for j in range(n_thr):  # each wholly on one side: the end point says which
                if c[thr_out[j]] > thr_val[j]:
                    record.above_run(p, j, grid, g, BLK, t_prev, t_above)
            if n_thr > 0:
                for o in range(n_out):
                    c_prev[o] = c[o]
            while n_store > 0 and next_store <= g_last:
                gi = next_store // store_stride
                kk = next_store - g
                record.store_block(traj, p, gi, cblk, c, kk, BLK - 1, n_rows, store_out,
                                   store_scale)  # fmt: skip
                next_store += store_stride
            t_prev = t
            g = g_last + 1
            continue
        for kk in range(BLK):
            t = grid[g]
            if kk < BLK - 1:
                for o in range(n_rows):
                    c[o] = cblk[kk * n_rows + o]
            else:
                _eval_outputs(x, out_state, out_scale, c)
            record.fold_max(t, c, cm, tm)
            record.fold_point(t, c, t_prev, c_prev, cmax, tmax, thr_out, thr_val, t_above, p)
            for o in range(n_out):
                c_prev[o] = c[o]
            t_prev = t
            if n_store > 0 and g == next_store:
                record.store(traj, p, g // store_stride, c, 0, store_out, store_scale)
                next_store += store_stride
            g += 1
    return g, t, t_prev, next_store


@_jit_inline
def _singles(p, x, rate, g, t, t_prev, next_store, lim, grid, cur, rows, prop, xtmp, rec, mets,
             system, pk):  # fmt: skip
    """Single grid steps before `lim` (and the maxima between them);
    returns ``(g, t, t_prev, next_store)``."""
    c, c_prev, cm, tm = cur
    out_state, out_scale = rows
    phi, gg = prop
    thr_out, thr_val, store_out, store_stride, store_scale = rec
    cmax, tmax, _auc, t_above, _c_at, traj, _status = mets
    Nr = _nr(x)
    n_t = grid.shape[0]
    n_out = cm.shape[0]
    n_thr = thr_out.shape[0]
    n_store = store_out.shape[0]
    _W, D, E, dprev, xs, _ys, _xw, _mnorm, _scratch, _cb = pk
    while g < n_t and grid[g] < lim:
        for j in range(Nr):
            xs[j] = x[j]
        _propagate(phi, gg, rate, x, xtmp, Nr)
        # The maxima inside the step (the derivatives inline: a call per step with the
        # work tuples costs more than the step, in reference counts).
        for o in range(n_out):
            d = peaks.deriv(x, rate, D, E, o)
            if dprev[o] > 0.0 and d < 0.0:
                _fold_refined(o, xs, t, grid[g] - t, rate, system, pk, cm, tm)
            dprev[o] = d
        t = grid[g]
        _eval_outputs(x, out_state, out_scale, c)
        record.fold_max(t, c, cm, tm)
        if n_thr > 0:
            record.fold_point(t, c, t_prev, c_prev, cmax, tmax, thr_out, thr_val, t_above, p)
            for o in range(n_out):
                c_prev[o] = c[o]
        t_prev = t
        if n_store > 0 and g == next_store:
            record.store(traj, p, g // store_stride, c, 0, store_out, store_scale)
            next_store += store_stride
        g += 1
    return g, t, t_prev, next_store


@_jit_inline
def _grid_run(p, x, rate, g, t, t_prev, lim, grid, cur, rows, prop, blk, xtmp, rec, mets, system,
              pk):  # fmt: skip
    """The stepper's fast path: whole grid steps of a uniform grid up to (not including)
    `lim`, the next decision or special time; most of a cohort's work happens here. The
    running maxima stay in ``cm, tm`` and are folded into Cmax once. Returns
    ``(g, t, t_prev, status)``."""
    c, c_prev, cm, tm = cur
    store_stride = rec[3]
    cmax, tmax = mets[0], mets[1]
    n_out = cm.shape[0]
    use_blocks = grid.shape[0] > 2 * BLK
    # Next grid index to store (a multiple of store_stride), without a modulo per step.
    next_store = ((g + store_stride - 1) // store_stride) * store_stride
    for o in range(n_out):
        cm[o] = cmax[p, o]
        tm[o] = tmax[p, o]
    if use_blocks:
        g, t, t_prev, next_store = _blocks(p, x, rate, g, t, t_prev, next_store, lim, grid,
                                           cur, rows, blk, xtmp, rec, mets, prop, system,
                                           pk)  # fmt: skip
    g, t, t_prev, next_store = _singles(p, x, rate, g, t, t_prev, next_store, lim, grid, cur, rows,
                                        prop, xtmp, rec, mets, system, pk)  # fmt: skip
    for o in range(n_out):
        c_prev[o] = c[o]
        if cm[o] > cmax[p, o]:
            cmax[p, o] = cm[o]
            tmax[p, o] = tm[o]
    st = STATUS_OK
    for i in range(x.shape[0]):  # once per segment: a NaN or inf stays one
        if not abs(x[i]) < np.inf:
            st = 1
    return g, t, t_prev, st


@_jit_inline
def _event_loop(p, x, t0, grid, ev, specials, cur, rows, system, work, prop, blk, uniform, rec,
                mets, auc_index, auc_start, dose, pk):  # fmt: skip
    """The per-patient event loop: advance to the next point (a decision time of the
    dosing source `ev`, a special time or a grid point; the stepper), apply the dosing
    decision, hand the points to the recorder. Returns a status."""
    c, c_prev, cm, _tm = cur
    out_state, out_scale = rows
    Mr, br = system
    Maug, Eaug, cache_h, cache_phi, cache_g, xtmp, ework, epiv, counter = work
    spec_t, spec_kind, spec_slot = specials
    thr_out, thr_val, store_out, store_stride, store_scale = rec
    cmax, tmax, auc, t_above, c_at, traj, _status = mets
    bolus, rates = dose
    _W, D, E, dprev, xs, _ys, _xw, _mnorm, _scratch, _cb = pk
    n_t = grid.shape[0]
    S = spec_t.shape[1]
    n_out = cm.shape[0]
    t = t0
    t_prev = t0
    rate = 0.0
    k = 0  # the dosing source's cursor
    g = 0
    s = 0
    st = STATUS_OK
    while st == STATUS_OK and (g < n_t or s < S):
        if uniform and 0 < g < n_t and grid[g - 1] == t:
            lim = dosing.next_decision_time(ev, p, k)
            if s < S and spec_t[p, s] < lim:
                lim = spec_t[p, s]
            g, t, t_prev, st = _grid_run(p, x, rate, g, t, t_prev, lim, grid, cur, rows, prop, blk,
                                         xtmp, rec, mets, system, pk)  # fmt: skip
            if st != STATUS_OK or not (g < n_t or s < S):
                break
        next_out = np.inf
        if g < n_t:
            next_out = grid[g]
        if s < S and spec_t[p, s] < next_out:
            next_out = spec_t[p, s]
        t_dec = dosing.next_decision_time(ev, p, k)
        is_event = t_dec <= next_out and t_dec < np.inf
        target = t_dec if is_event else next_out
        # Cmax, Tmax and time above thresholds cover the grid's span only: points after
        # its end (a late special time) must not change them.
        in_span = n_t > 0 and target <= grid[n_t - 1]
        if target > t:
            for i in range(x.shape[0]):
                xs[i] = x[i]
            st = _step(x, target - t, rate, Mr, br, abs(target), Maug, Eaug, cache_h, cache_phi,
                       cache_g, xtmp, ework, epiv, counter)  # fmt: skip
            if st != STATUS_OK:
                break
            for o in range(n_out):
                d = peaks.deriv(x, rate, D, E, o)
                if in_span and dprev[o] > 0.0 and d < 0.0:
                    _fold_refined_into(p, o, xs, t, target - t, rate, system, pk, cmax, tmax)
                dprev[o] = d
            t = target
        _eval_outputs(x, out_state, out_scale, c)
        if in_span:
            record.fold_point(t, c, t_prev, c_prev, cmax, tmax, thr_out, thr_val, t_above, p)
        for o in range(n_out):
            c_prev[o] = c[o]
        t_prev = t
        if is_event:
            k = dosing.apply(ev, p, k, t, x, bolus, rates)
            if bolus[0] != 0.0:
                for i in range(x.shape[0]):
                    x[i] += br[i] * bolus[0]
                _eval_outputs(x, out_state, out_scale, c)
                if in_span:
                    record.fold_point(t, c, t_prev, c_prev, cmax, tmax, thr_out, thr_val,
                                      t_above, p)  # fmt: skip
                for o in range(n_out):
                    c_prev[o] = c[o]
            rate = rates[0]
            # The derivatives after the event (new state and rate): a step that starts
            # here starts with them.
            for o in range(n_out):
                dprev[o] = peaks.deriv(x, rate, D, E, o)
            continue
        # An output point: specials first (they may coincide with a grid point).
        while s < S and spec_t[p, s] == t:
            record.special(spec_kind[p, s], spec_slot[p, s], p, x, auc_index, c, auc_start, auc,
                           c_at)  # fmt: skip
            s += 1
        if g < n_t and grid[g] == t:
            if store_out.shape[0] > 0 and g % store_stride == 0:
                record.store(traj, p, g // store_stride, c, 0, store_out, store_scale)
            g += 1
        for i in range(x.shape[0]):
            if not np.isfinite(x[i]):
                st = 1
    return st


@_jit_inline
def _peak_work(Mr, br, out_state, out_scale, n_out, work):
    """The work of the maxima between points (:mod:`pkpd.engine.peaks`):
    ``(W, D, E, dprev, xs, ys, xw, mnorm, scratch, cb)``: the output rows ``W`` and those
    of their derivatives ``D = W M``, ``E = W b``, the derivatives at the last point, three
    state buffers, ``||M||_inf``, the scratch of :func:`pkpd.engine.peaks.refine` and the
    continuous bound tables of a block (`_continuous_bounds`)."""
    Maug, Eaug, _cache_h, _cache_phi, _cache_g, _xtmp, ework, epiv, _counter = work
    Nr = _nr(br)
    W = np.zeros((n_out, Nr))
    for o in range(n_out):
        W[o, out_state[o]] = out_scale[o]
    D = np.empty((n_out, Nr))
    E = np.empty(n_out)
    peaks.derivative_rows(Mr, br, W, D, E)
    mnorm = np.empty(1)
    mnorm[0] = peaks.norm_inf(Mr)
    scratch = (np.empty((2, Nr)), np.empty(peaks.K_MAX + 1), np.empty((2, Nr)), Maug, Eaug, ework,
               epiv)  # fmt: skip
    cb = (np.zeros((n_out, Nr)), np.zeros(n_out), np.zeros(n_out, dtype=np.bool_))
    return (W, D, E, np.zeros(n_out), np.empty(Nr), np.empty(Nr), np.empty(Nr), mnorm, scratch,
            cb)  # fmt: skip


@_jit
def _patient(p, theta, model, keep, ev, t0, grid, specials, rec, extra_state, uniform, mets,
             auc_index):  # fmt: skip
    """Simulate patient `p` (the body of :func:`cohort_kernel`'s parallel loop): set up
    its system and work arrays (allocated once per patient, never per step), run the
    event loop, set its status (NaN metrics on failure)."""
    cmax, tmax, auc, t_above, c_at, _traj, status = mets
    n_out = cmax.shape[1]
    n_t = grid.shape[0]
    Mr, br, out_state, out_scale = _system(p, theta, model, keep, extra_state)
    Nr = _nr(br)
    n_rows = out_state.shape[0]
    xtmp = np.zeros(Nr)
    Maug = np.zeros((Nr + 1, Nr + 1))
    work = (Maug, np.zeros((Nr + 1, Nr + 1)), np.full(_CACHE, -1.0), np.zeros((_CACHE, Nr, Nr)),
            np.zeros((_CACHE, Nr)), xtmp, np.zeros((N_WORK, Nr + 1, Nr + 1)),
            np.zeros(Nr + 1, dtype=np.int64), np.zeros(1, dtype=np.int64))  # fmt: skip
    record.start(p, grid[0] if n_t > 0 else t0, cmax, tmax, t_above)
    st = STATUS_OK
    # The exponential of the grid step, for the fast path (uniform grids only).
    phi = np.zeros((Nr, Nr))
    gg = np.zeros(Nr)
    if uniform and n_t > 1:
        st = _grid_propagator(Mr, br, grid[1] - grid[0], work, phi, gg)
    Q = (BLK - 1) * n_rows
    bounds = (np.zeros((n_out, Nr)), np.zeros((n_out, Nr)), np.zeros(n_out), np.zeros(n_out))
    blk = (np.zeros((Nr, Q)), np.zeros(Q), *bounds, np.zeros((Nr, Nr)), np.zeros(Nr), np.zeros(Q))
    pk = _peak_work(Mr, br, out_state, out_scale, n_out, work)
    if uniform and n_t > 2 * BLK and st == STATUS_OK:
        _block_tables(phi, gg, out_state, out_scale, n_out, blk, (Maug, xtmp))
        _excess_bounds(phi, gg, (Mr, br), pk[1], grid[1] - grid[0], pk[9])
    cur = (np.zeros(n_rows), np.zeros(n_rows), np.zeros(n_out), np.zeros(n_out))
    # The dosing source's decision (bolus, rate; one input): one allocation for both.
    dose = np.zeros((2, 1))
    if st == STATUS_OK:
        st = _event_loop(p, np.zeros(Nr), t0, grid, ev, specials, cur, (out_state, out_scale),
                         (Mr, br), work, (phi, gg), blk, uniform, rec, mets, auc_index,
                         np.zeros((n_out, auc.shape[2])), (dose[0], dose[1]), pk)  # fmt: skip
    status[p] = st
    if st != STATUS_OK:
        record.fail(p, cmax, tmax, auc, c_at, t_above)


@numba.njit(cache=True, parallel=True)
def histogram_update(traj, edges_log, counts):
    """Add a chunk of stored trajectories to per-time-point log-spaced histograms.

    Parameters
    ----------
    traj : (n, n_store, n_t) float32
        Concentrations (any positive unit consistent with `edges_log`).
    edges_log : (n_bins - 1,) float64
        Natural logs of the inner bin edges, uniformly spaced; bin 0 holds values below
        the first edge (including zeros), the last bin values above the last edge.
    counts : (n_store, n_t, n_bins) int64
        Updated in place. Parallel over blocks of time points, so no two threads write one
        row; within a block the patients are read in memory order (a run of time points of
        one patient at a time), not with a stride of a whole patient per value.
    """
    n = traj.shape[0]
    n_store = traj.shape[1]
    n_t = traj.shape[2]
    n_edges = edges_log.shape[0]
    lo = edges_log[0]
    width = (edges_log[n_edges - 1] - lo) / (n_edges - 1)
    tb = 32  # time points per block
    for blk in numba.prange((n_t + tb - 1) // tb):
        t0 = blk * tb
        t1 = min(n_t, t0 + tb)
        for p in range(n):
            for j in range(n_store):
                for tt in range(t0, t1):
                    v = traj[p, j, tt]
                    if not v > 0.0:
                        counts[j, tt, 0] += 1
                        continue
                    z = (np.log(v) - lo) / width
                    if z < 0.0:
                        b = 0
                    elif z >= n_edges - 1:
                        b = n_edges
                    else:
                        b = int(z) + 1
                    counts[j, tt, b] += 1


_SPECIALISED: dict[int, object] = {}
_MARKER = "_NR = 0  # @specialise: replaced by a literal in `kernel_for` copies\n"


def cache_dir():
    """Folder for generated kernel sources (``$PKPD_CACHE_DIR`` or ``~/.cache/ketamine-pkpd``)."""
    from pkpd.cache import cache_root

    return cache_root()


def kernel_for(n_states: int):
    """`cohort_kernel` compiled for one reduced state size.

    With the size a compile-time literal (`_NR`, read through `_nr` by every function with
    a hot mat-vec), LLVM unrolls the small mat-vecs of the inner loop (about a third
    faster). The copy is this module's own source with one line changed,
    written once to :func:`cache_dir` under a name that includes a hash of the source, so
    numba's ``cache=True`` keeps the compiled code across runs; any change of this file gives
    a new name. Falls back to the generic kernel if the folder cannot be written or numba's
    JIT is disabled. The copy is returned wrapped by :func:`pkpd.cache.compile_once`, so
    that processes needing it at the same time compile it once.
    """
    import hashlib
    import importlib.util
    import os
    import sys
    import tempfile
    from pathlib import Path

    if numba.config.DISABLE_JIT:
        return cohort_kernel
    if n_states in _SPECIALISED:
        return _SPECIALISED[n_states]
    src = Path(__file__).read_text(encoding="utf-8")
    if src.count(_MARKER) != 1 or "pkpd_kernels_nr" in __name__:
        return cohort_kernel
    src = src.replace(_MARKER, f"_NR = {int(n_states)}\n")
    from pkpd import cache

    # numba's cache of the copy is invalidated by the copy's own file only: the name also
    # hashes every engine module it may call into (pkpd.cache.engine_digest).
    h = hashlib.sha256(src.encode())
    h.update(cache.engine_digest().encode())
    digest = h.hexdigest()[:16]
    name = f"pkpd_kernels_nr{int(n_states)}_{digest}"

    try:
        # Trusted code: private folders and files, checked before use (see pkpd.cache).
        folder = cache.private_folder("kernels")
        cache.private_folder("kernels", "__pycache__")
        path = folder / f"{name}.py"
        if os.path.lexists(path):
            cache.check_private_file(path)
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(src)
            os.replace(tmp, path)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        cache.check_numba_cache(module, name)
    except OSError:
        return cohort_kernel
    # One compile across processes that need this copy at once (see pkpd.cache).
    kernel = cache.compile_once(module.cohort_kernel, folder / f"{name}.lock")
    _SPECIALISED[n_states] = kernel
    return kernel
