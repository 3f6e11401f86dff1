"""The recorder: one reduction of evaluated points into a patient's metrics.

Every cohort kernel (the exact one, :mod:`pkpd.engine.kernels`, and the adaptive ones,
:mod:`pkpd.engine.kernels_adaptive`) feeds the points it evaluates, in time order, to the
functions here; nothing else writes the metric arrays. Metrics of patient ``p``
(concentrations in mg/L; the Python layer reports ng/mL):

* ``cmax[p, o]``, ``tmax[p, o]``: maximum over every evaluated point of the grid's span,
  strict ``>`` (a tie keeps the first time). The evaluated points are the grid points,
  the special times, and each dose event twice: just before its bolus (the left limit)
  and just after. Rows after the grid's end (a late special time) do not count. The
  exact kernel also folds the maxima between two evaluated points
  (:mod:`pkpd.engine.peaks`) with :func:`fold_max`, so that its Cmax/Tmax are those of
  the exact solution; the adaptive kernels do it for ``[ode]`` models on the solver's
  solution (:mod:`pkpd.engine.peaks_adaptive`), not for linear models.
* ``t_above[p, j]``: time spent above threshold ``thr_val[j]`` of output ``thr_out[j]``,
  the crossing between two consecutive evaluated points found by linear interpolation.
* ``auc[p, o, w]``: the difference of the cumulative-AUC state between the window's end
  and start (special times of kind :data:`SPECIAL_WINDOW_START` / ``..._END``).
* ``c_at[p, o, a]``: the outputs at anchored times (:data:`SPECIAL_ANCHOR`).
* ``traj[p, j, gi]``: stored rows at every ``store_stride``-th grid point.
* a failed patient: NaN for every metric (:func:`fail`); its status says why.

The event-then-output convention: at a dose event the recorder sees the point before the
bolus, then the point after it; special times and the grid point at that same time are
recorded after the event (right-continuous values).

Summary mode. Rows that cannot change a metric need not be evaluated at all. The rows
are skipped when two conditions hold:

- the stepper can bound every output over those rows below its running maximum
  (:func:`below_max`);
- for every threshold, the rows lie wholly on one side of it (:func:`threshold_side`).
  The time above is then nothing, or the run's whole length (:func:`above_run`).

The exact kernel skips whole blocks of grid points this way. In a skipped block it still
evaluates the rows to be stored (:func:`rows_stored`), unless every row is stored: then
it evaluates and folds them all. The adaptive solvers apply the rule to the rows of one
step, but evaluate every row when a threshold is integrated or a stored row is among
them (:func:`rows_needed`).

Everything here takes plain arrays and scalars and allocates nothing, so that it can be
compiled for a GPU (numba CUDA device functions) as well as for the CPU.
"""

from __future__ import annotations

import numba
import numpy as np

from pkpd.engine import _stamp  # noqa: F401  (numba's cache: pkpd/engine/_stamp.py)

# Kinds of special times (spec_kind[:, s]).
SPECIAL_WINDOW_START = 0
SPECIAL_WINDOW_END = 1
SPECIAL_ANCHOR = 2

#: Sides of a threshold (:func:`threshold_side`).
SIDE_UNKNOWN = 0
SIDE_BELOW = 1
SIDE_ABOVE = 2

#: Relative rounding margin of an output bound in :func:`below_max` (far above that of
#: the evaluated sums).
BOUND_MARGIN = 1e-12

_jit = numba.njit(cache=True, nogil=True)
_jit_inline = numba.njit(cache=True, nogil=True, inline="always")


@_jit
def start(p, t_first, cmax, tmax, t_above):
    """Metrics of patient `p` before its first point: Cmax 0 at `t_first`, no time above."""
    for o in range(cmax.shape[1]):
        cmax[p, o] = 0.0
        tmax[p, o] = t_first
    for j in range(t_above.shape[1]):
        t_above[p, j] = 0.0


@_jit
def fold_point(t, c, t_prev, c_prev, cmax, tmax, thr_out, thr_val, t_above, p):
    """Fold one evaluated point into the running metrics of patient `p` (`c` may hold
    stored state rows after the outputs: Cmax covers the outputs only)."""
    for o in range(cmax.shape[1]):
        if c[o] > cmax[p, o]:
            cmax[p, o] = c[o]
            tmax[p, o] = t
    dt = t - t_prev
    if dt > 0.0:
        for j in range(thr_out.shape[0]):
            o = thr_out[j]
            a = c_prev[o] - thr_val[j]
            b = c[o] - thr_val[j]
            if a >= 0.0 and b >= 0.0:
                t_above[p, j] += dt
            elif a > 0.0 or b > 0.0:
                # One end above: the linear interpolant crosses once.
                t_above[p, j] += dt * (a if a > 0.0 else b) / abs(b - a)


@_jit_inline
def fold_max(t, c, cm, tm):
    """Running maxima ``cm``/``tm`` (one per output, strict ``>``) of the point ``c`` at
    `t` (``c`` may be longer: the outputs come first)."""
    for o in range(cm.shape[0]):
        if c[o] > cm[o]:
            cm[o] = c[o]
            tm[o] = t


@_jit_inline
def fold_run(vals, first, stride, count, times, t_first, m, tm):
    """Running maximum ``(m, tm)`` over a run of `count` points: value
    ``vals[first + i * stride]`` at time ``times[t_first + i]``; strict ``>``."""
    for i in range(count):
        v = vals[first + i * stride]
        if v > m:
            m = v
            tm = times[t_first + i]
    return m, tm


@_jit_inline
def rows_stored(n_store, next_store, last):
    """Whether the next stored grid point `next_store` is among the rows up to grid index
    `last` (they must then be evaluated whatever their values)."""
    return n_store > 0 and next_store <= last


@_jit_inline
def rows_needed(n_thr, n_store, next_store, last):
    """Whether rows up to grid index `last` must be evaluated whatever their values, for a
    stepper that does not bound them against the thresholds (the adaptive solvers): a
    threshold is integrated, or a stored row is among them."""
    return n_thr > 0 or rows_stored(n_store, next_store, last)


@_jit_inline
def threshold_side(c_first, lo, hi, bound_abs, level):
    """Which side of `level` a run of points lies on, for the time above it
    (:func:`fold_point`): the run's first point `c_first` (already folded), then points
    bounded by ``lo <= c <= hi`` (sums of terms of absolute sum `bound_abs`, rounding
    included as in :func:`below_max`).

    :data:`SIDE_BELOW`: `c_first` at or below the level and the others strictly below, so
    that no segment of the run adds time above; :data:`SIDE_ABOVE`: `c_first` at or above
    and the others strictly above, so that every segment adds its whole length
    (:func:`above_run`); else :data:`SIDE_UNKNOWN` (the points must be folded one by one).
    A NaN anywhere gives :data:`SIDE_UNKNOWN`."""
    margin = BOUND_MARGIN * bound_abs
    if c_first <= level and hi + margin < level:
        return SIDE_BELOW
    if c_first >= level and lo - margin > level:
        return SIDE_ABOVE
    return SIDE_UNKNOWN


@_jit_inline
def above_run(p, j, times, first, count, t_prev, t_above):
    """The time above threshold `j` of patient `p` over a run of `count` points at
    ``times[first:first + count]``, after a point at `t_prev`, that lies wholly above it
    (:data:`SIDE_ABOVE`): each segment adds its length, one after the other, exactly as
    :func:`fold_point` adds them (so the sum is rounded the same way)."""
    for i in range(count):
        t = times[first + i]
        dt = t - t_prev
        if dt > 0.0:
            t_above[p, j] += dt
        t_prev = t


@_jit_inline
def below_max(bound, bound_abs, m):
    """Whether an output bounded by `bound` (a sum of terms of absolute sum `bound_abs`)
    stays below its running maximum `m`, rounding included."""
    return bound + BOUND_MARGIN * bound_abs < m


@_jit_inline
def special(kind, slot, p, row, auc_index, conc, auc_start, auc, c_at):
    """Record special time of `kind` and `slot` of patient `p`: ``row[auc_index[o]]`` is
    the cumulative AUC of output `o` (NaN if ``auc_index[o] < 0``), ``conc`` the outputs."""
    n_out = auc_start.shape[0]
    if kind == SPECIAL_WINDOW_START:
        for o in range(n_out):
            ai = auc_index[o]
            auc_start[o, slot] = row[ai] if ai >= 0 else np.nan
    elif kind == SPECIAL_WINDOW_END:
        for o in range(n_out):
            ai = auc_index[o]
            auc[p, o, slot] = (row[ai] if ai >= 0 else np.nan) - auc_start[o, slot]
    elif kind == SPECIAL_ANCHOR:
        for o in range(n_out):
            c_at[p, o, slot] = conc[o]


@_jit_inline
def store(traj, p, gi, row, first, store_out, store_scale):
    """Stored grid point `gi` of patient `p`: ``row[first + store_out[j]] * store_scale[j]``
    (`first` locates the point in a buffer of several points without taking a slice,
    which would cost a reference count per stored point)."""
    for j in range(store_out.shape[0]):
        traj[p, j, gi] = row[first + store_out[j]] * store_scale[j]


@_jit_inline
def store_block(traj, p, gi, cblk, c, kk, n_inner, n_rows, store_out, store_scale):
    """:func:`store` of point `kk` of a block: inner point ``kk < n_inner`` from the
    block buffer ``cblk`` (``n_rows`` values per point), else the block's last point
    ``c``. The choice is made per value: choosing the buffer once per point and calling
    :func:`store` with it made storing every state of every point (the float64 kernel
    benchmark) 1.9 times slower (780 vs 420 ms)."""
    for j in range(store_out.shape[0]):
        if kk < n_inner:
            v = cblk[kk * n_rows + store_out[j]]
        else:
            v = c[store_out[j]]
        traj[p, j, gi] = v * store_scale[j]


@_jit
def fail(p, cmax, tmax, auc, c_at, t_above):
    """NaN metrics for failed patient `p` (its status says why)."""
    for o in range(cmax.shape[1]):
        cmax[p, o] = np.nan
        tmax[p, o] = np.nan
        for w in range(auc.shape[2]):
            auc[p, o, w] = np.nan
        for a in range(c_at.shape[2]):
            c_at[p, o, a] = np.nan
    for j in range(t_above.shape[1]):
        t_above[p, j] = np.nan
