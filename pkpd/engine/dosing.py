"""Dosing sources: what a patient receives, and when, as the per-patient core asks for it.

The per-patient core (:mod:`pkpd.engine.kernels`) advances a patient from one *decision
time* to the next. At each decision time it asks the dosing source what to give; between
two decision times the input is a constant infusion rate. A dosing source is a pair of
numba functions over plain arrays and scalars (no allocation, no exceptions: they can be
compiled as CUDA device functions too) and a per-patient integer *cursor* that the core
keeps for it (0 at the start):

``next_decision_time(source, p, cursor) -> t``
    The time (h) of patient `p`'s next decision, ``inf`` when there is none. Must not be
    earlier than the previous decision time; called any number of times (it has no
    side effect).

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

A controller is the same two functions over its own arrays (its decision times, e.g. a
lockout grid, and its parameters and per-patient memory as rows indexed by `p`); the core
needs no change. The event table below is today's only source.

The adaptive solvers still read one patient's event table directly, in their one shared
event boundary (:func:`pkpd.engine.solvers.segments.event_boundary`); a controller there
needs that function to call these two, and the solver protocol to carry the source and
`p` (see ``pkpd/engine/README.md``).
"""

from __future__ import annotations

import numba
import numpy as np

_jit_inline = numba.njit(cache=True, nogil=True, inline="always")


@_jit_inline
def next_decision_time(source, p, cursor):
    """Event table ``source = (ev_t, ev_rate, ev_bolus)`` (n, K): the time of event
    `cursor` of patient `p`, ``inf`` past the last one."""
    ev_t = source[0]
    if cursor < ev_t.shape[1]:
        return ev_t[p, cursor]
    return np.inf


@_jit_inline
def apply(source, p, cursor, t, x, bolus, rate):
    """Event table: event `cursor`'s bolus and the rate that holds until the next event
    (one input); the state is not read. Returns the next cursor."""
    bolus[0] = source[2][p, cursor]
    rate[0] = source[1][p, cursor]
    return cursor + 1
