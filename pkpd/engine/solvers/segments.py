"""What the adaptive steppers share: event boundaries, first steps, and recording a step.

An adaptive solver (:mod:`~pkpd.engine.solvers.dopri5`, :mod:`~pkpd.engine.solvers.rosenbrock`)
integrates a patient as a chain of *smooth segments* between event times. It owns its step
loop (stages, error estimate, step-size controller); everything around the loop is here,
written once:

- :func:`event_boundary`: at a segment boundary, apply the events due (bolus jump, new
  rate) and record the outputs due, events first (the convention of
  :mod:`pkpd.engine.solvers.exact`);
- :func:`initial_step`: Hairer's first step of a segment;
- :func:`record_step`: after an accepted step, write the output rows inside it from the
  step's continuous extension, fold the running maxima and, in summary mode, skip the rows
  no metric reads when a bound shows that the step cannot raise a maximum.

The continuous extension of every stepper is handed over as :data:`N_COEF` coefficient
rows in one basis (Dopri5's, Hairer's ``CONTD5``)::

    y(t + theta h) = r1 + theta (r2 + (1 - theta) (r3 + theta (r4 + (1 - theta) r5)))

Dopri5's 4th-order extension fills all five rows; Rodas4's 3rd-order one, ``(1-s) y_old +
s (y_new + (1-s) (cont3 + s cont4))``, is ``r1 = y_old, r2 = y_new - y_old, r3 = cont3,
r4 = cont4, r5 = 0``. The rows are carried through the recording map `R` once per step
(the extension is linear in them), so each output time costs ``5 n_rec`` operations.

The solver protocol
-------------------
The adaptive solvers (``dopri5_solve_mapped``, ``rodas_solve_mapped``) take these
arguments, in this order, between their own (Dopri5's `nstiff`; Rodas4's Jacobian
arguments) and their work arrays:

rhs : numba function ``rhs(t, y, u, p, dy)``
    Right-hand side, written into `dy`; `u` is the total infusion rate (mg/h).
p : (n_p,) float64
    Parameters passed to `rhs`.
b : (N,) float64
    Bolus map: a bolus of ``a`` mg adds ``a * b`` to the state.
y0 : (N,) float64
    State at `t0`.
t0 : float
    Start time (h); the infusion rate is zero until the first event.
source, sp
    Dosing source (:mod:`pkpd.engine.dosing`, any registered one) and the patient's row
    in it: today ``dosing.EventTable(t, rate, bolus)``, (n, n_ev) float64 each (one row
    per patient of :class:`pkpd.inputs.regimen.EventTable`: sorted times (h), total rate
    (mg/h) from each event on, bolus (mg) at each event).
    :func:`pkpd.engine.dosing.one_patient` makes one patient's 1-D table a source (row 0).
t_out : (n_out,) float64
    Non-decreasing output times (h), all ``>= t0``.
rtol, atol : (N,) float64
    Relative and absolute tolerances per state.
h_fixed : float
    ``> 0``: fixed-step mode (no error control; each interval between events is cut into
    equal steps no longer than `h_fixed`). ``0``: adaptive.
hmax : float
    Largest step (h); ``inf`` for none.
max_steps : int
    Largest number of steps (accepted + rejected) before returning ``STATUS_MAX_STEPS``.
R : (n_rec, N) float64
    Recording map: ``R @ y`` is recorded instead of the state (``(0, 0)``: the state
    itself). A cohort needs a few linear functionals of the state (concentrations, AUCs),
    and the continuous extension is linear in its coefficients, so they are mapped once per
    step and each output time costs ``5 n_rec`` operations instead of ``5 N``.
out : (n_out, N) or (n_out, n_rec) float64
    Output: the state (or ``R @ y``) at each output time (dense output between steps).
log : tuple ``(pre, given)``
    What the solver logs at each decision `k` of the source, up to the last output time
    (`n_dec` decisions: :func:`pkpd.engine.dosing.decisions_until`); :func:`no_log` logs
    nothing. ``pre`` (n_dec, n_rec) float64 or (0, 0): what is recorded just before the
    decision is applied (the left limit at a bolus). ``given`` (2, n_dec) float64 or
    (2, 0): what it gave, ``given[0]`` the bolus (mg) and ``given[1]`` the rate (mg/h)
    that holds from it on. The metrics that read the doses after the solve (the left
    limits before boluses, the brackets of :mod:`pkpd.engine.peaks_adaptive`) read this
    log, not the source, so a controller's decisions are seen as they were made.
fold : tuple ``(cm, tm, lo, hi, skip, need)``
    Running maxima of the first ``n_fold = cm.shape[0]`` recorded columns (``cm``, ``tm``:
    (n_fold,) float64, updated in place; strict ``>``, so a tie keeps the earlier time) over
    the recorded rows at times ``<= hi`` and the pre-bolus values of boluses in ``[lo, hi]``
    (which needs a non-empty `pre`). With ``skip`` true, the rows inside a step are left
    unwritten, except the rows listed in ``need`` (sorted int64 row indices), when a bound
    on the step's continuous extension (rounding included) shows that no value of the step
    can raise any running maximum: the maxima are then exactly those of every row written
    out. A cohort in summary mode needs only a few rows (window ends, anchored times) and
    the maxima, and past the peaks most steps are skipped. :func:`no_fold` folds nothing and
    skips nothing.
stats : (N_STATS,) int64
    Counters, incremented (``pkpd.engine.solvers.STAT_*``).

They return a status, a key of :data:`pkpd.engine.solvers.STATUS_MESSAGES`, and never
raise; they allocate nothing in the step loop.

Numba costs that shaped these functions (measured; see ``pkpd/engine/README.md``): the
per-step work that does not call the right-hand side is in separately compiled functions
(``_jit``, which LLVM may inline) or small IR-inlined functions over the work array or
over rows bound once per call: a row view created for an IR-inlined function at every
step costs reference counting that numba does not prune.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from pkpd.engine import (
    _stamp,  # noqa: F401  (numba's cache: pkpd/engine/_stamp.py)
    dosing,
)

from . import STAT_NFEV, STATUS_NONFINITE, STATUS_OK

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_jit_inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")

_EPS = 2.220446049250313e-16

#: Rows of a step's continuous extension in the shared basis.
N_COEF = 5

#: Rounding margin of :func:`dense_bound`, in units of the coefficients' absolute sum
#: (the nested evaluation of :func:`dense` errs by at most about 10 ulps of that sum).
_BOUND_ULPS = 32.0 * _EPS


@_jit
def check_times(t_out, t0):
    """Whether the output times are finite, sorted and not before `t0`."""
    n = t_out.shape[0]
    for i in range(n):
        v = t_out[i]
        if not (v >= t0) or (i > 0 and v < t_out[i - 1]) or not math.isfinite(v):
            return False
    return True


@_jit
def map_rows(R, work, first, n_rows, mapped, dest):
    """``mapped[dest + k] = R @ work[first + k]`` for ``k < n_rows`` (a copy when `R` is
    empty): coefficient rows of a continuous extension carried to the recorded
    quantities."""
    n = work.shape[1]
    for k in range(n_rows):
        if R.shape[0] == 0:
            for j in range(n):
                mapped[dest + k, j] = work[first + k, j]
            continue
        for r in range(R.shape[0]):
            acc = 0.0
            for j in range(n):
                acc += R[r, j] * work[first + k, j]
            mapped[dest + k, r] = acc


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


@_jit_inline
def dense(mapped, theta, out, i):
    """Evaluate the continuous extension at ``theta = (t - t_old) / h`` into ``out[i]``,
    from the coefficient rows ``mapped[0:5]``. Inlined, and indexed by row instead of
    taking a row view: it runs at every output time, where a call, or the reference
    counting of a view, costs more than the evaluation."""
    th1 = 1.0 - theta
    for j in range(out.shape[1]):
        out[i, j] = mapped[0, j] + theta * (
            mapped[1, j] + th1 * (mapped[2, j] + theta * (mapped[3, j] + th1 * mapped[4, j]))
        )


@_jit_inline
def dense_bound(mapped, o):
    """An upper bound, rounding included, on what :func:`dense` evaluates for column `o`
    at any ``theta`` in [0, 1]. The extension is ``r1 + theta r2 + theta (1-theta) r3 +
    theta^2 (1-theta) r4 + theta^2 (1-theta)^2 r5``, whose basis functions are non-negative
    on [0, 1] with maxima 1, 1/4, 4/27 and 1/16."""
    m0 = mapped[0, o]
    m1 = mapped[1, o]
    m2 = mapped[2, o]
    m3 = mapped[3, o]
    m4 = mapped[4, o]
    ub = m0 + max(m1, 0.0) + 0.25 * max(m2, 0.0) + (4.0 / 27.0) * max(m3, 0.0)
    ub += 0.0625 * max(m4, 0.0)
    return ub + _BOUND_ULPS * (abs(m0) + abs(m1) + abs(m2) + abs(m3) + abs(m4))


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


@_jit
def no_log():
    """The ``log = (pre, given)`` argument that records nothing before the decisions and
    logs none (what the single-patient entry points pass)."""
    return np.zeros((0, 0)), np.zeros((2, 0))


@_jit_inline
def event_boundary(t, y, b, source, sp, t_out, R, out, log, fold, k, i, u, dose):
    """At time `t`, between smooth segments: apply every decision of the dosing source
    due (bolus jump ``b * bolus``, new rate), then record every output due (decisions
    first: the convention of :mod:`pkpd.engine.solvers.exact`).

    The decisions are those of the dosing source `source` for its patient row `sp`
    (:mod:`pkpd.engine.dosing`: ``next_decision_time`` and ``apply``, cursor `k`); `dose`
    ``= (bolus, rate)`` are the source's one-slot output buffers. Returns ``(k, i, u,
    t_end, status)``: the cursor, the next output index, the rate, the end of the next
    smooth segment (the next decision or the last output time) and ``STATUS_NONFINITE``
    if a recorded state is not finite, else ``STATUS_OK``. What is recorded is the state,
    or ``R @ y`` for a non-empty recording map `R` (see
    :func:`pkpd.engine.solvers.dopri5.dopri5_solve_mapped`). ``log = (pre, given)``: with
    a non-empty `pre`, ``pre[k]`` receives what is recorded just before decision `k` is
    applied (the left limit at a bolus), and the running maxima of `fold` take the
    pre-bolus values of boluses in ``[lo, hi]`` and the recorded rows up to ``hi``; with
    a non-empty `given`, ``given[:, k] = (bolus, rate)`` of decision `k`.
    """
    cm, tm, lo, hi, _skip, _need = fold
    pre, given = log
    bolus, rate = dose
    n = y.shape[0]
    n_out = t_out.shape[0]
    t_dec = dosing.next_decision_time(source, sp, k)
    while t_dec <= t:
        if pre.shape[0] > 0:
            record(R, y, pre[k])
        k_next = dosing.apply(source, sp, k, t_dec, y, bolus, rate)
        if pre.shape[0] > 0 and bolus[0] != 0.0 and lo <= t_dec <= hi:
            fold_max(t_dec, pre, k, cm, tm)
        if given.shape[1] > 0:
            given[0, k] = bolus[0]
            given[1, k] = rate[0]
        if bolus[0] != 0.0:
            for j in range(n):
                y[j] += b[j] * bolus[0]
        u = rate[0]
        k = k_next
        t_dec = dosing.next_decision_time(source, sp, k)
    while i < n_out and t_out[i] <= t:
        for j in range(n):
            if not math.isfinite(y[j]):
                return k, i, u, t, STATUS_NONFINITE
        record(R, y, out[i])
        if t_out[i] <= hi:
            fold_max(t_out[i], out, i, cm, tm)
        i += 1
    t_end = t_out[n_out - 1]
    if t_dec < t_end:
        t_end = t_dec
    return k, i, u, t_end, STATUS_OK


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
def first_output_in(t_out, i, t_new, t_end):
    """Whether output `i` lies in the step ending at `t_new` and before the segment end
    (an output at `t_end` is written after any event there, by :func:`event_boundary`)."""
    return i < t_out.shape[0] and t_out[i] <= t_new and t_out[i] < t_end


@_jit
def record_step(t, h, t_new, t_end, t_out, i, mapped, out, fold, nx):
    """Write the output rows of an accepted step ``[t, t_new]`` (those before `t_end`),
    from the step's coefficient rows `mapped` (:data:`N_COEF` rows in the shared basis,
    already through the recording map), and fold them into the running maxima of `fold`
    (``(cm, tm, lo, hi, skip, need)``, see
    :func:`pkpd.engine.solvers.dopri5.dopri5_solve_mapped`).

    With ``skip`` (and maxima to fold), when :func:`dense_bound` shows that no value of the
    step reaches a running maximum, only the rows listed in ``need`` are written: the
    maxima are then exactly those of every row written out. `nx` is the next entry of
    ``need`` not yet passed. Returns ``(i, nx)``: the first output after the step, and
    the advanced `nx`.
    """
    cm, tm, _lo, hi, may_skip, need = fold
    n_fold = cm.shape[0]
    n_out = t_out.shape[0]
    inv_h = 1.0 / h
    if may_skip and n_fold > 0:
        skip = True
        for o in range(n_fold):
            if not (dense_bound(mapped, o) < cm[o]):
                skip = False
                break
        if skip:
            # Find the step's last row by bisection and write only the rows asked for.
            a = i  # in the step
            z = n_out  # past the step (or the end)
            while z - a > 1:
                mid = (a + z) // 2
                if t_out[mid] <= t_new and t_out[mid] < t_end:
                    a = mid
                else:
                    z = mid
            n_need = need.shape[0]
            while nx < n_need and need[nx] < i:
                nx += 1
            while nx < n_need and need[nx] < z:
                r = need[nx]
                dense(mapped, min((t_out[r] - t) * inv_h, 1.0), out, r)
                nx += 1
            return z, nx
    while i < n_out and t_out[i] <= t_new and t_out[i] < t_end:
        dense(mapped, min((t_out[i] - t) * inv_h, 1.0), out, i)
        if n_fold > 0 and t_out[i] <= hi:
            fold_max(t_out[i], out, i, cm, tm)
        i += 1
    return i, nx


# ------------------------------------------------------------------ the step loop's control
# Scalar functions shared by the steppers' loops (no array: nothing to reference-count).


@_jit
def fixed_steps(span, h_fixed):
    """The number of equal steps that cut a segment of length `span` into steps no longer
    than `h_fixed` (fixed-step mode, ``h_fixed > 0``); 0 in adaptive mode."""
    if h_fixed > 0.0:
        return max(1, math.ceil(span / h_fixed - 1e-9))
    return 0


@_jit
def step_to_try(t, h, t_end, n_fixed, j_fixed):
    """The step to attempt from `t`: ``(h, last, ok)``. An adaptive step that would end
    within 1 % of `t_end` is stretched or cut to end there (`last`); a fixed step is the
    segment's `j_fixed`-th of `n_fixed`. ``ok`` is False when the step is below the
    rounding of `t` (step size underflow)."""
    last = False
    if n_fixed > 0:
        last = j_fixed == n_fixed - 1
    elif t + 1.01 * h >= t_end:
        h = t_end - t
        last = True
    return h, last, not (0.1 * abs(h) <= abs(t) * _EPS or h <= 0.0)


@_jit
def after_step(t_start, t_new, t_end, h, fac, hmax, last, n_fixed, j_fixed):
    """Time and step size after an accepted step: ``(t, h, j_fixed)``. Fixed steps are
    placed at ``t_start + j h`` (no accumulated rounding); an adaptive step grows or
    shrinks by the controller's factor `fac`, at most to `hmax`."""
    if last:
        return t_end, h, j_fixed
    if n_fixed > 0:
        return t_start + (j_fixed + 1) * h, h, j_fixed + 1
    return t_new, min(h * fac, hmax), j_fixed
