"""The adaptive driver shared by the Runge-Kutta and Rosenbrock solvers, numba-compiled.

One loop integrates ``dy/dt = rhs(t, y, u, p)`` through an event table onto a time grid
for every adaptive method: the smooth segments between events (each restarted with a
fresh first step), the events themselves (bolus jumps, new rates), the outputs written at
the segment ends and by the method's dense output inside steps, the running maxima
(Cmax/Tmax) folded as rows are written, and the summary-mode skip of the rows of a step
that provably cannot raise a maximum. What differs between methods comes in as functions:

a *stepper* (:mod:`pkpd.engine.solvers.dopri5`, :mod:`pkpd.engine.solvers.rosenbrock`),
whose workspace ``ws`` is a tuple of arrays with the state in ``ws[0][0]`` and whose
options ``opts`` and counters ``aux`` (a tuple of two ints, ``(0, 0)`` at the start) are
passed through untouched::

    begin(rhs, jac, ws, t, u, p, tol, hmax, adaptive, opts, stats) -> (finite, h0)
        f(t, y) at the start of a segment; h0 the first step when `adaptive`
    attempt(rhs, jac, ws, t, h, t_new, u, p, tol, fresh, opts, stats)
        -> (err, finite, shrink)
        one step from (t, y) to t_new = t + h into the stepper's own rows: the scaled
        error norm and whether the new values are finite, or ``shrink > 0`` when the
        step could not be attempted (a singular iteration matrix: retry with h * shrink);
        `fresh` is true on the first attempt from a (t, y)
    accepted(ws, h, opts, aux, stats) -> (status, aux)
        after acceptance, before the dense output (Dopri5's stiffness test)
    dense_prepare(ws, h, R, cm, may_skip) -> (finite, skip)
        the step's continuous extension carried through the recording map `R`; `skip`
        when `may_skip` and a bound shows that no value of the step reaches ``cm``
    dense_eval(ws, t_r, t, h, inv_h, out, r) -> finite
        the continuous extension at ``t_r`` into ``out[r]``
    advance(rhs, ws, t, u, p, last, stats)
        take the accepted values as the state at `t`

and a step-size *controller* (:mod:`pkpd.engine.solvers.controller`), the pair
``control_accept, control_reject``. The functions are inlined (numba IR) into the
method's entry point, so every call is a direct call of a compile-time constant: one
machine-code loop per method, as fast as a hand-written one, and cached on disk.

Problem form and event conventions are those of :mod:`pkpd.engine.solvers.exact`: the
rate before the first event is zero, and an event at an output time is applied before
that output is recorded. Nothing allocates in the step loop, nothing raises: a status of
:data:`pkpd.engine.solvers.STATUS_MESSAGES` is returned and the counters ``stats``
(layout ``pkpd.engine.solvers.STAT_*``) are incremented.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import (
    STAT_NFEV,
    STAT_NREJECTED,
    STAT_NSTEPS,
    STATUS_BAD_TIMES,
    STATUS_MAX_STEPS,
    STATUS_NONFINITE,
    STATUS_OK,
    STATUS_STEP_UNDERFLOW,
)

# error_model="numpy": a division by zero gives inf/NaN (caught by the status checks)
# instead of raising; raising paths would also keep the kernels out of the disk cache.
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
# Kernels that take the right-hand side (or a stepper function) as an argument are
# inlined (numba IR) into their caller: a dispatcher passed to a separately compiled
# function becomes a run-time address, which numba refuses to cache. Inlined, it is a
# compile-time constant.
_jit_inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")

_EPS = 2.220446049250313e-16


@_jit
def no_jac(t, y, u, p, J):
    """Placeholder Jacobian for a stepper that takes none (or finite differences): never
    called."""
    J[0, 0] = math.nan


@_jit_inline
def initial_step(rhs, t, y, f0, u, p, rtol, atol, order, hmax, y1, f1, stats):
    """Hairer's ``HINIT``: a first step from the sizes of ``y``, ``f`` and ``f'``.

    `f0` must hold ``rhs(t, y)``; `y1` and `f1` are scratch rows. One extra evaluation.
    """
    n = y.shape[0]
    dnf = 0.0
    dny = 0.0
    for i in range(n):
        sk = atol[i] + rtol[i] * abs(y[i])
        dnf += (f0[i] / sk) ** 2
        dny += (y[i] / sk) ** 2
    if dnf <= 1e-10 or dny <= 1e-10:
        h = 1e-6
    else:
        h = math.sqrt(dny / dnf) * 0.01
    h = min(h, hmax)
    for i in range(n):
        y1[i] = y[i] + h * f0[i]
    rhs(t + h, y1, u, p, f1)
    stats[STAT_NFEV] += 1
    der2 = 0.0
    for i in range(n):
        sk = atol[i] + rtol[i] * abs(y[i])
        der2 += ((f1[i] - f0[i]) / sk) ** 2
    der2 = math.sqrt(der2) / h
    der12 = max(abs(der2), math.sqrt(dnf))
    if der12 <= 1e-15:
        h1 = max(1e-6, abs(h) * 1e-3)
    else:
        h1 = (0.01 / der12) ** (1.0 / order)
    h = min(100.0 * h, h1, hmax)
    if not (h > 0.0):  # NaN from a non-finite derivative
        h = 1e-6
    return h


@_jit
def map_rows(R, work, first, n_rows, mapped):
    """``mapped[k] = R @ work[first + k]`` for ``k < n_rows``: coefficient rows of a
    continuous extension carried to the recorded quantities (the extension is linear in
    them, so mapping once per step replaces mapping at every output time)."""
    n = work.shape[1]
    for k in range(n_rows):
        for r in range(R.shape[0]):
            acc = 0.0
            for j in range(n):
                acc += R[r, j] * work[first + k, j]
            mapped[k, r] = acc


@_jit
def record(R, y, out_row):
    """``out_row = y`` when `R` is empty (record the state), else ``R @ y``."""
    if R.shape[0] == 0:
        for j in range(y.shape[0]):
            out_row[j] = y[j]
    else:
        for r in range(R.shape[0]):
            acc = 0.0
            for j in range(y.shape[0]):
                acc += R[r, j] * y[j]
            out_row[r] = acc


@_jit
def _check_times(t_out, t0):
    n = t_out.shape[0]
    for i in range(n):
        v = t_out[i]
        if not (v >= t0) or (i > 0 and v < t_out[i - 1]) or not math.isfinite(v):
            return False
    return True


@_jit_inline
def fold_max(t, rows, i, cm, tm):
    """Running maxima of the first ``cm.shape[0]`` recorded columns of ``rows[i]``:
    ``cm[o] = rows[i, o]`` and ``tm[o] = t`` where ``rows[i, o] > cm[o]`` (strict: a tie
    keeps the earlier time)."""
    for o in range(cm.shape[0]):
        v = rows[i, o]
        if v > cm[o]:
            cm[o] = v
            tm[o] = t


@_jit
def no_fold():
    """The `fold` argument that folds no column and skips no row (what the
    state-recording solvers pass)."""
    return np.zeros(0), np.zeros(0), 0.0, 0.0, False, np.zeros(0, dtype=np.int64)


@_jit_inline
def event_boundary(t, y, b, ev_t, ev_rate, ev_bolus, t_out, R, out, pre, fold, k, i, u):
    """At time `t`, between smooth segments: apply every event due (bolus jump ``b *
    bolus``, new rate), then record every output due (events first: the convention of
    :mod:`pkpd.engine.solvers.exact`).

    Returns ``(k, i, u, t_end, status)``: the next event and output indices, the rate, the
    end of the next smooth segment (the next event or the last output time) and
    ``STATUS_NONFINITE`` if a recorded state is not finite, else ``STATUS_OK``. What is
    recorded is the state, or ``R @ y`` for a non-empty recording map `R` (see
    :func:`dopri5_solve_mapped`); with a non-empty `pre`, ``pre[k]`` receives what is
    recorded just before event `k` is applied (the left limit at a bolus), and the
    running maxima of `fold` take the pre-bolus values of boluses in ``[lo, hi]`` and
    the recorded rows up to ``hi``. Shared by Dopri5 and Rodas4.
    """
    cm, tm, lo, hi, _skip, _need = fold
    n = y.shape[0]
    n_ev = ev_t.shape[0]
    n_out = t_out.shape[0]
    while k < n_ev and ev_t[k] <= t:
        if pre.shape[0] > 0:
            record(R, y, pre[k])
            if ev_bolus[k] != 0.0 and lo <= ev_t[k] <= hi:
                fold_max(ev_t[k], pre, k, cm, tm)
        if ev_bolus[k] != 0.0:
            for j in range(n):
                y[j] += b[j] * ev_bolus[k]
        u = ev_rate[k]
        k += 1
    while i < n_out and t_out[i] <= t:
        for j in range(n):
            if not math.isfinite(y[j]):
                return k, i, u, t, STATUS_NONFINITE
        record(R, y, out[i])
        if t_out[i] <= hi:
            fold_max(t_out[i], out, i, cm, tm)
        i += 1
    t_end = t_out[n_out - 1]
    if k < n_ev and ev_t[k] < t_end:
        t_end = ev_t[k]
    return k, i, u, t_end, STATUS_OK


@_jit_inline
def _dense_outputs(dense_prepare, dense_eval, ws, t, h, t_new, t_end, t_out, R, out, fold, i, nx):
    """The outputs strictly inside ``(t, t_new]`` that come before the segment end (an
    output at `t_end` is written after any event there, by :func:`adaptive_solve`), from
    the accepted step's dense output; in summary mode (``fold`` with ``skip``) only the
    rows listed in ``need`` when the step cannot raise a running maximum.

    Returns ``(status, i, nx)``: the next output row and the next row of ``need`` not yet
    passed.
    """
    cm, tm, _lo, hi, may_skip, need = fold
    n_fold = cm.shape[0]
    may_skip = may_skip and n_fold > 0
    n_need = need.shape[0]
    n_out = t_out.shape[0]
    dense_ready = False
    skip = False
    inv_h = 0.0
    while i < n_out and t_out[i] <= t_new and t_out[i] < t_end:
        if not dense_ready:
            finite, skip = dense_prepare(ws, h, R, cm, may_skip)
            if not finite:
                return STATUS_NONFINITE, i, nx
            dense_ready = True
            inv_h = 1.0 / h
        if skip:
            # No value of this step reaches a running maximum: find the step's last row
            # by bisection and write only the rows asked for.
            a = i  # in the step
            z = n_out  # past the step (or the end)
            while z - a > 1:
                mid = (a + z) // 2
                if t_out[mid] <= t_new and t_out[mid] < t_end:
                    a = mid
                else:
                    z = mid
            while nx < n_need and need[nx] < i:
                nx += 1
            while nx < n_need and need[nx] < z:
                r = need[nx]
                dense_eval(ws, t_out[r], t, h, inv_h, out, r)
                nx += 1
            i = z
        else:
            if not dense_eval(ws, t_out[i], t, h, inv_h, out, i):
                return STATUS_NONFINITE, i, nx
            if n_fold > 0 and t_out[i] <= hi:
                fold_max(t_out[i], out, i, cm, tm)
            i += 1
    return STATUS_OK, i, nx


@_jit_inline
def _segment(
    begin, attempt, accepted, advance, dense_prepare, dense_eval, control_accept,
    control_reject, rhs, jac, p, u, t, t_end, t_out, tol, limits, opts, R, out, fold, ws,
    stats, counters,
):  # fmt: skip
    """Integrate the smooth segment ``[t, t_end]`` (no event inside), writing the outputs
    inside it. ``counters = (i, nx, nsteps_total, aux)``: the next output row, the next
    row of ``need`` not yet passed, the steps attempted so far and the stepper's
    counters. Returns ``(status, t, counters)``."""
    i, nx, nsteps_total, aux = counters
    h_fixed, hmax, max_steps = limits
    span = t_end - t
    finite, h = begin(rhs, jac, ws, t, u, p, tol, min(hmax, span), not (h_fixed > 0.0), opts, stats)
    if not finite:
        return STATUS_NONFINITE, t, (i, nx, nsteps_total, aux)
    n_fixed = 0
    if h_fixed > 0.0:
        # Fixed-step mode: no error control, equal steps no longer than h_fixed.
        n_fixed = max(1, math.ceil(span / h_fixed - 1e-9))
        h = span / n_fixed
    t_start = t
    j_fixed = 0
    control = (0.0, h, True, False)  # see pkpd.engine.solvers.controller
    fresh = True
    while t < t_end:
        if nsteps_total >= max_steps:
            return STATUS_MAX_STEPS, t, (i, nx, nsteps_total, aux)
        last = False
        if n_fixed > 0:
            last = j_fixed == n_fixed - 1
        elif t + 1.01 * h >= t_end:
            h = t_end - t
            last = True
        if 0.1 * abs(h) <= abs(t) * _EPS or h <= 0.0:
            return STATUS_STEP_UNDERFLOW, t, (i, nx, nsteps_total, aux)
        nsteps_total += 1
        t_new = t_end if last else t + h
        err, finite, shrink = attempt(rhs, jac, ws, t, h, t_new, u, p, tol, fresh, opts, stats)
        fresh = False
        if shrink > 0.0:
            stats[STAT_NREJECTED] += 1
            control = (control[0], control[1], control[2], True)
            h *= shrink
            continue
        if n_fixed > 0:
            if not finite:
                return STATUS_NONFINITE, t, (i, nx, nsteps_total, aux)
            accept = True
        else:
            accept = err <= 1.0
        if not accept:
            stats[STAT_NREJECTED] += 1
            fac, control = control_reject(err, finite, h, control)
            h = h * fac
            continue
        stats[STAT_NSTEPS] += 1
        st, aux = accepted(ws, h, opts, aux, stats)
        if st == STATUS_OK:
            st, i, nx = _dense_outputs(
                dense_prepare, dense_eval, ws, t, h, t_new, t_end, t_out, R, out, fold, i, nx
            )
        if st != STATUS_OK:
            return st, t, (i, nx, nsteps_total, aux)
        fac = 1.0
        if n_fixed == 0:
            fac, control = control_accept(err, h, control)
        if last:
            t = t_end
        elif n_fixed > 0:
            j_fixed += 1
            t = t_start + j_fixed * h
        else:
            t = t_new
            h = min(h * fac, hmax)
        advance(rhs, ws, t, u, p, last, stats)
        fresh = True
    return STATUS_OK, t, (i, nx, nsteps_total, aux)


@_jit_inline
def adaptive_solve(
    begin, attempt, accepted, advance, dense_prepare, dense_eval, control_accept,
    control_reject, rhs, jac, p, b, y0, t0, ev, t_out, tol, limits, opts, R, out, pre, fold,
    ws, stats,
):  # fmt: skip
    """Integrate ``dy/dt = rhs(t, y, u, p)`` through an event table onto a time grid with
    the given stepper and controller (see the module docstring).

    ``ev = (ev_t, ev_rate, ev_bolus)``, ``tol = (rtol, atol)``, ``limits = (h_fixed,
    hmax, max_steps)``; the other arguments are those of
    :func:`pkpd.engine.solvers.dopri5.dopri5_solve_mapped`, which documents them.
    """
    ev_t, ev_rate, ev_bolus = ev
    n_out = t_out.shape[0]
    if not _check_times(t_out, t0):
        return STATUS_BAD_TIMES
    y = ws[0][0]
    for j in range(y0.shape[0]):
        y[j] = y0[j]
    t = t0
    u = 0.0
    k = 0
    counters = (0, 0, 0, (0, 0))  # see _segment
    while counters[0] < n_out:
        # Events due now (bolus jump, new rate), then the outputs at the current time.
        k, i, u, t_end, st = event_boundary(
            t, y, b, ev_t, ev_rate, ev_bolus, t_out, R, out, pre, fold, k, counters[0], u
        )
        if st != STATUS_OK:
            return st
        counters = (i, counters[1], counters[2], counters[3])
        if i == n_out:
            break
        st, t, counters = _segment(
            begin, attempt, accepted, advance, dense_prepare, dense_eval, control_accept,
            control_reject, rhs, jac, p, u, t, t_end, t_out, tol, limits, opts, R, out, fold,
            ws, stats, counters,
        )  # fmt: skip
        if st != STATUS_OK:
            return st
    return STATUS_OK
