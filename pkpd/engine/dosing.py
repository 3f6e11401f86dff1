"""Dosing sources: what a patient receives, and when, as the per-patient core asks for it.

The per-patient core (:mod:`pkpd.engine.kernels`) advances a patient from one *decision
time* to the next. At each decision time it asks the dosing source what to give; between
two decision times the input is a constant infusion rate. A dosing source is a
namedtuple of plain arrays and scalars with a pair of functions over it, compiled by
numba (no allocation, no exceptions: they can be compiled as CUDA device functions too),
and a per-patient integer *cursor* that the core keeps for it (0 at the start):

``next_decision_time(source, p, cursor) -> t``
    The time (h) of patient `p`'s decision `cursor`, ``inf`` when there is none. Must
    not be earlier than the previous decision time; called any number of times (it has
    no side effect).

``apply(source, p, cursor, t, x, bolus, rate) -> cursor``
    The decision at time `t` (= the last ``next_decision_time``): writes the bolus given
    at `t` into ``bolus[u]`` (an amount, mg, for each input `u`; 0 for none) and the
    infusion rate that holds from `t` until the next decision into ``rate[u]`` (mg/h),
    and returns the advanced cursor. ``x`` is the patient's state at `t` before the
    bolus (the left limit), in the stepper's state layout, read-only: a controller reads
    it (e.g. the effect-site concentration for target-controlled infusion, or a pain
    score for patient-controlled analgesia) and an open-loop table ignores it.
    ``bolus`` and ``rate`` are owned by the core (one slot per input: one today).

The core's convention at a decision time: record the point before the bolus, add the
bolus (``x += b * bolus[u]`` through the input map), record the point after it, switch
to the new rate, then record the special times and the grid point at that time
(right-continuous values); see :mod:`pkpd.engine.record`.

**Adding a dosing source: one place.** A source is a :func:`~collections.namedtuple` class
(its fields: the arrays and scalars the kernels read, rows indexed by patient) and its two
functions, written as plain Python over those fields, registered with :func:`register`.
The cores call the two dispatchers :func:`next_decision_time` and :func:`apply`: in
compiled code numba picks the registered pair by the source's type (an ``overload``,
inlined at the call site, so the compiled loop is what it was with the pair written in
place); with ``NUMBA_DISABLE_JIT`` the dispatchers call the pair as Python. No core, no
solver and no kernel changes: the cohort kernels take the source as one argument and are
compiled per source type. :class:`EventTable` below is the source every regimen is today
(``pkpd/running/cohort.py`` builds it per chunk); ``tests/test_dosing.py`` registers a
controller that reads the state and runs it through both adaptive solvers and the exact
and adaptive cohort kernels against a closed-form solution.

Both cores call the dispatchers: the exact kernel (:func:`pkpd.engine.kernels._event_loop`)
and the adaptive solvers, through their one event boundary
(:func:`pkpd.engine.solvers.segments.event_boundary`), which takes the source and the
patient's row `sp` and logs what each decision gave (bolus, rate) for the metrics that
read the doses afterwards. The adaptive core also needs the decision times *before* the
solve (its output rows include each decision time, for the left limit before a bolus):
:func:`decisions_until` walks them with :func:`next_decision_time`. So, for the adaptive
solvers, a source's decision times may depend on the patient's draws but not on the
state: a controller decides *what* to give from the state, at times known in advance
(candidate demand times, an update grid); a source whose times depend on the state
runs on the exact core only.
"""

from __future__ import annotations

import inspect
from collections import namedtuple
from collections.abc import Callable

import numba
import numpy as np
from numba import types
from numba.extending import overload

from pkpd.engine import _stamp  # noqa: F401  (numba's cache: pkpd/engine/_stamp.py)

__all__ = [
    "EventTable",
    "apply",
    "decisions_until",
    "next_decision_time",
    "one_patient",
    "register",
]

_jit_inline = numba.njit(cache=True, nogil=True, inline="always")

#: The registered sources: namedtuple class -> (next_decision_time, apply), as Python.
_SOURCES: dict[type, tuple[Callable, Callable]] = {}


def next_decision_time(source, p, cursor):
    """The time (h) of decision `cursor` of patient `p` of `source`, ``inf`` when there is
    none: the registered function of the source's class (see the module docstring)."""
    return _SOURCES[type(source)][0](source, p, cursor)


def apply(source, p, cursor, t, x, bolus, rate):
    """Decision `cursor` of patient `p` at time `t`, state `x` (before the bolus): writes
    ``bolus[0]``, ``rate[0]`` and returns the next cursor, through the registered function
    of the source's class (see the module docstring)."""
    return _SOURCES[type(source)][1](source, p, cursor, t, x, bolus, rate)


def register(cls: type, next_time: Callable, apply_fn: Callable) -> None:
    """Make instances of the namedtuple class `cls` dosing sources: `next_time` and
    `apply_fn` (plain Python functions of the signatures of :func:`next_decision_time`
    and :func:`apply`, within what numba compiles) become what the cores call for them.

    Raises TypeError for a class that is not a namedtuple or is registered already, and
    for functions whose parameters are not those of the dispatchers (numba's overloads
    need the same names).
    """
    if not (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")):
        raise TypeError(f"a dosing source must be a namedtuple class, got {cls!r}")
    if cls in _SOURCES:
        raise TypeError(f"the dosing source {cls.__name__} is registered already")
    for fn, dispatcher in ((next_time, next_decision_time), (apply_fn, apply)):
        want = list(inspect.signature(dispatcher).parameters)
        got = list(inspect.signature(fn).parameters)
        if got != want:
            raise TypeError(
                f"dosing source {cls.__name__}: {fn.__name__} takes ({', '.join(got)}); "
                f"expected ({', '.join(want)}), as {dispatcher.__name__}"
            )
    _SOURCES[cls] = (next_time, apply_fn)

    def is_cls(source):
        return isinstance(source, types.BaseNamedTuple) and source.instance_class is cls

    @overload(next_decision_time, inline="always")
    def _next(source, p, cursor):
        return next_time if is_cls(source) else None

    @overload(apply, inline="always")
    def _apply(source, p, cursor, t, x, bolus, rate):
        return apply_fn if is_cls(source) else None


# ------------------------------------------------------------------ the event table

#: A regimen's doses for a chunk of patients (:meth:`pkpd.inputs.regimen.Regimen.event_arrays`;
#: one row per patient of what :class:`pkpd.inputs.regimen.EventTable` holds for one): ``t`` (n, K)
#: sorted event times (h), ``rate`` (n, K) the total rate (mg/h) from each event on,
#: ``bolus`` (n, K) the bolus (mg) at each event; one row per patient.
EventTable = namedtuple("EventTable", ["t", "rate", "bolus"])


def _table_next(source, p, cursor):
    """Event table: the time of event `cursor` of patient `p`, ``inf`` past the last one."""
    if cursor < source.t.shape[1]:
        return source.t[p, cursor]
    return np.inf


def _table_apply(source, p, cursor, t, x, bolus, rate):
    """Event table: event `cursor`'s bolus and the rate that holds until the next event
    (one input); the state is not read. Returns the next cursor."""
    bolus[0] = source.bolus[p, cursor]
    rate[0] = source.rate[p, cursor]
    return cursor + 1


register(EventTable, _table_next, _table_apply)


@_jit_inline
def decisions_until(source, p, t_last):
    """How many of patient `p`'s decisions fall at or before `t_last` (the cursor values
    ``0 .. count - 1``); their times come from :func:`next_decision_time` alone."""
    k = 0
    while next_decision_time(source, p, k) <= t_last:
        k += 1
    return k


@_jit_inline
def one_patient(ev_t, ev_rate, ev_bolus):
    """The event-table source of one patient's 1-D table ``(ev_t, ev_rate, ev_bolus)``,
    as row 0 of a one-row table (views, no copy): what the single-patient solver entry
    points pass to the solver protocol."""
    return EventTable(ev_t.reshape((1, ev_t.shape[0])), ev_rate.reshape((1, ev_rate.shape[0])),
                      ev_bolus.reshape((1, ev_bolus.shape[0])))  # fmt: skip
