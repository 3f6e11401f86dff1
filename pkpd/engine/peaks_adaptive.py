"""The maximum of an output between evaluated points of an adaptive (``[ode]``) solution.

The exact kernel locates a maximum between two points from the derivative of the exact
solution (:mod:`pkpd.engine.peaks`). An ``[ode]`` model has no such closed form and its
outputs are arbitrary expressions of the state, so the maximum is located on the solution
itself, by the same solver at the same tolerances:

1. *Candidates.* The evaluated points of the grid's span in time order (grid points,
   special times, each bolus twice: just before and just after) are scanned for discrete
   local maxima of each output: a point at least as high as its neighbours and higher
   than one of them (two points at one time, a bolus, are not neighbours). A maximum of
   the continuous solution strictly inside a step makes one of the step's two ends such a
   point, so its bracket (from the previous point to the next) holds it.
2. *Selection.* Each candidate gets the vertex of the parabola through it and its
   neighbours as an estimate; the :data:`MAX_REFINE` highest estimates are refined, and
   only those whose point plus four times the estimated overshoot reaches the running
   Cmax (a candidate that cannot reach Cmax cannot change it). A one-sided candidate (an
   end of the grid's span, or a point beside a bolus: an output that only rises to the
   end, or falls after a bolus) is refined only where the parabola through it and the two
   points on its side peaks inside its step. The bound on the number of
   candidates keeps solver noise on a plateau (values equal to tolerance) from costing a
   refinement per point.
3. *Zoom.* From the recorded state at the bracket's left end, the solver is run again
   over the bracket with the input that holds there (the rate at the left end and every
   dose event strictly inside), evaluating :data:`ZOOM_POINTS` equally spaced points; the
   highest of them and its neighbours make the next bracket, :data:`ZOOM_ROUNDS` times
   (each round narrows the bracket 32-fold: a 2-min bracket ends near 0.1 ms). Every point
   evaluated on the way is folded, so Cmax never decreases and is attained by a point of
   the solution.

The result is the maximum of the solution to the solver's tolerance (the values between
points are those of fresh integrations, not interpolants), independent of the output grid.
A maximum inside a step whose ends both rise or both fall (a maximum and a minimum inside
one step) is not searched, as in the exact kernel.

Plain arrays and scalars; the work arrays are allocated once per patient.
"""

from __future__ import annotations

import numba
import numpy as np

from pkpd.engine import _stamp  # noqa: F401  (numba's cache: pkpd/engine/_stamp.py)
from pkpd.engine.dosing import EventTable
from pkpd.engine.solvers import N_STATS, STATUS_OK

#: Candidate maxima refined per output and patient (highest estimates first).
MAX_REFINE = 4
#: Points evaluated per zoom round (the bracket narrows by ZOOM_POINTS / 2 each round).
ZOOM_POINTS = 64
#: Zoom rounds: (2 / ZOOM_POINTS)^ZOOM_ROUNDS = 1e-6 of the first bracket.
ZOOM_ROUNDS = 4

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_jit_inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")


@_jit
def _rate_at(ev_t, ev_rate, t):
    """The infusion rate holding just after `t` (the last event at or before `t`)."""
    u = 0.0
    for k in range(ev_t.shape[0]):
        if ev_t[k] <= t:
            u = ev_rate[k]
        else:
            break
    return u


@_jit
def _bracket_events(ev_t, ev_rate, ev_bolus, a, c, bt, br, bb):
    """Events of a re-integration over ``[a, c]`` into ``bt, br, bb``: a start event at
    `a` with the rate that holds there (no bolus: the state at `a` is taken after it),
    then every event strictly inside, then padding that never occurs (time ``inf``)."""
    bt[0] = a
    br[0] = _rate_at(ev_t, ev_rate, a)
    bb[0] = 0.0
    n = 1
    for k in range(ev_t.shape[0]):
        if a < ev_t[k] < c:
            bt[n] = ev_t[k]
            br[n] = ev_rate[k]
            bb[n] = ev_bolus[k]
            n += 1
    for k in range(n, bt.shape[0]):
        bt[k] = np.inf
        br[k] = 0.0
        bb[k] = 0.0


@_jit
def _vertex(x0, x1, x2, y0, y1, y2):
    """``(t, c)`` of the vertex of the parabola through three points, ``(nan, nan)``
    where it is not concave."""
    f01 = (y1 - y0) / (x1 - x0)
    f12 = (y2 - y1) / (x2 - x1)
    a = (f12 - f01) / (x2 - x0)
    if not a < 0.0:
        return np.nan, np.nan
    xs = 0.5 * (x0 + x1) - f01 / (2.0 * a)
    return xs, y0 + f01 * (xs - x0) + a * (xs - x0) * (xs - x1)


@_jit
def _estimate(ts, vs, j, has_l, has_r):
    """Parabolic estimate of the maximum near point `j`; ``-inf`` for a one-sided point
    (an end of the span, or beside a bolus) where the parabola through it and the two
    points on its side does not peak inside the step between them."""
    v = vs[j]
    if has_l and has_r:
        _t, c = _vertex(ts[j - 1], ts[j], ts[j + 1], vs[j - 1], vs[j], vs[j + 1])
        return max(c, v) if c == c else v
    n = ts.shape[0]
    if has_l:  # the points j - 2, j - 1, j (when they are one smooth run)
        if j < 2 or not ts[j - 2] < ts[j - 1]:
            return v
        t, c = _vertex(ts[j - 2], ts[j - 1], ts[j], vs[j - 2], vs[j - 1], v)
        return max(c, v) if ts[j - 1] < t < ts[j] else -np.inf
    if j + 2 >= n or not ts[j + 1] < ts[j + 2]:
        return v
    t, c = _vertex(ts[j], ts[j + 1], ts[j + 2], v, vs[j + 1], vs[j + 2])
    return max(c, v) if ts[j] < t < ts[j + 1] else -np.inf


@_jit
def candidates(ts, vs, cm, est, order):
    """Discrete local maxima of ``vs`` at times ``ts`` (equal times: a jump) worth refining
    against the running maximum `cm`; writes their indices into ``order`` by decreasing
    estimate (``est`` scratch) and returns how many (at most :data:`MAX_REFINE`)."""
    n = ts.shape[0]
    m = 0
    for j in range(n):
        has_l = j > 0 and ts[j - 1] < ts[j]
        has_r = j + 1 < n and ts[j + 1] > ts[j]
        if not (has_l or has_r):
            continue
        v = vs[j]
        if (has_l and not v >= vs[j - 1]) or (has_r and not v >= vs[j + 1]):
            continue
        if not ((has_l and v > vs[j - 1]) or (has_r and v > vs[j + 1])):
            continue
        e = _estimate(ts, vs, j, has_l, has_r)
        if e == -np.inf or (v + 4.0 * (e - v) < cm and e < cm):
            continue
        # Insertion into the best MAX_REFINE so far.
        pos = min(m, MAX_REFINE)
        while pos > 0 and est[pos - 1] < e:
            if pos < MAX_REFINE:
                est[pos] = est[pos - 1]
                order[pos] = order[pos - 1]
            pos -= 1
        if pos < MAX_REFINE:
            est[pos] = e
            order[pos] = j
            m = min(m + 1, MAX_REFINE)
    return m


@_jit_inline
def zoom(solve_patient, outputs_into, pp, b, ev, a, c, ya, o, lim, work):
    """Maximum of output `o` over ``[a, c]`` from the state `ya` at `a`: ``(c*, t*)``, or
    ``(-inf, a)`` when a re-integration fails. ``ev = (t, rate, bolus)``: the doses the
    patient's solve gave (its decision times and log, :mod:`pkpd.engine.solvers.segments`),
    replayed as a one-row event table over the bracket; ``lim = (rtol, atol, hmax,
    max_steps, nstiff)``; ``work = (bt, br, bb, tz, Yz, Oz, y0, log, stats)``."""
    ev_t, ev_rate, ev_bolus = ev
    rtol, atol, hmax, max_steps, nstiff = lim
    bt, br, bb, tz, Yz, Oz, y0, log, stats = work
    fold = (np.zeros(0), np.zeros(0), 0.0, 0.0, False, np.zeros(0, dtype=np.int64))
    N = ya.shape[0]
    for i in range(N):
        y0[i] = ya[i]
    best = -np.inf
    t_best = a
    for _round in range(ZOOM_ROUNDS):
        if not c > a:
            break
        _bracket_events(ev_t, ev_rate, ev_bolus, a, c, bt[0], br[0], bb[0])
        for i in range(ZOOM_POINTS):
            tz[i] = a + (c - a) * (i + 1) / ZOOM_POINTS
        tz[ZOOM_POINTS - 1] = c
        st = solve_patient(
            pp, b, y0, a, EventTable(bt, br, bb), 0, tz, rtol, atol, hmax, max_steps, nstiff,
            Yz, log, fold, stats,
        )  # fmt: skip
        if st != STATUS_OK:
            return -np.inf, a
        outputs_into(tz, Yz, pp, Oz)
        # This round's highest point (folded into the overall best) centres the next
        # bracket; the points beside it (or the bracket's ends) bound it.
        i_top = 0
        for i in range(ZOOM_POINTS):
            v = Oz[i, o]
            if v > best:
                best = v
                t_best = tz[i]
            if v > Oz[i_top, o]:
                i_top = i
        if i_top > 0:
            for j in range(N):
                y0[j] = Yz[i_top - 1, j]
            a = tz[i_top - 1]
        if i_top + 1 < ZOOM_POINTS:
            c = tz[i_top + 1]
    return best, t_best


@_jit
def refine_work(n_events, n_states, n_out):
    """Work arrays of :func:`zoom` (see its docstring)."""
    K = n_events + 1
    return (
        np.empty((1, K)), np.empty((1, K)), np.empty((1, K)), np.empty(ZOOM_POINTS),
        np.empty((ZOOM_POINTS, n_states)), np.empty((ZOOM_POINTS, n_out)),
        np.empty(n_states), (np.zeros((0, n_states)), np.zeros((2, 0))),
        np.zeros(N_STATS, dtype=np.int64),
    )  # fmt: skip


@_jit
def point_sequence(times, t_pre, pre_row, r_end):
    """The evaluated points of the grid's span in time order: ``(ts, src)`` with
    ``src[j] >= 0`` the output row, ``src[j] = -1 - e`` the left limit `e` before a bolus
    (just before its row)."""
    n_pre = pre_row.shape[0]
    n = r_end
    for e in range(n_pre):
        if pre_row[e] < r_end:
            n += 1
    ts = np.empty(n)
    src = np.empty(n, dtype=np.int64)
    j = 0
    e = 0
    for r in range(r_end):
        while e < n_pre and pre_row[e] == r:
            ts[j] = t_pre[e]
            src[j] = -1 - e
            j += 1
            e += 1
        ts[j] = times[r]
        src[j] = r
        j += 1
    return ts, src


@_jit_inline
def refine_patient(solve_patient, outputs_into, pp, b, ev, seq, rows, lim, cm, tm):
    """Fold the maxima between evaluated points of every output into ``cm``/``tm``
    (strict ``>``). ``seq = (ts, src)`` from :func:`point_sequence`; ``rows = (Y, O,
    Y_pre, O_pre)`` the recorded states and outputs of the rows and of the left limits;
    ``ev`` and ``lim`` as in :func:`zoom`."""
    ts, src = seq
    Y, O, Y_pre, O_pre = rows
    n = ts.shape[0]
    n_out = cm.shape[0]
    if n < 2:
        return
    work = refine_work(ev[0].shape[0], Y.shape[1], n_out)
    vs = np.empty(n)
    est = np.empty(MAX_REFINE)
    order = np.empty(MAX_REFINE, dtype=np.int64)
    for o in range(n_out):
        for j in range(n):
            s = src[j]
            vs[j] = O[s, o] if s >= 0 else O_pre[-1 - s, o]
        m = candidates(ts, vs, cm[o], est, order)
        for i in range(m):
            j = order[i]
            # The bracket: from the previous point (taken after a bolus there) to the next.
            jl = j - 1 if j > 0 and ts[j - 1] < ts[j] else j
            jr = j + 1 if j + 1 < n and ts[j + 1] > ts[j] else j
            s = src[jl]
            ya = Y[s] if s >= 0 else Y_pre[-1 - s]
            v, t = zoom(solve_patient, outputs_into, pp, b, ev, ts[jl], ts[jr], ya, o, lim, work)
            if v > cm[o]:
                cm[o] = v
                tm[o] = t
