"""Piecewise-exact solution of a linear system with piecewise-constant input.

Between two consecutive discontinuities (a bolus, an infusion starting or stopping) the
input rate is constant, so over a step of length h

    x(t + h) = Phi(h) x(t) + g(h) * rate,
    Phi(h) = expm(M h),   g(h) = integral_0^h expm(M s) b ds.

Both come from one exponential of the Van Loan augmented matrix (Van Loan 1978,
doi:10.1109/TAC.1978.1101743)::

    expm([[M h, b h],        [[Phi(h), g(h)],
          [0,   0  ]])   =    [0,      1   ]]

which needs no inverse of M, so singular systems (accumulator states for AUC, dose given
and amount eliminated; compartments without elimination) are fine.

The state is propagated step by step through the merged, sorted set of event times and
requested output times. Steps of equal length (a uniform output grid) reuse the
exponential from a small cache, so a 48 h profile at 1-min resolution costs a handful of
matrix exponentials, not thousands. Two step lengths are treated as equal when they differ
by less than a few units in the last place of the current time, i.e. by less than the
rounding error already present in the time values themselves.

Kernels take only arrays and scalars, never raise, and report an integer status
(see :data:`pkpd.engine.solvers.STATUS_MESSAGES`).
"""

from __future__ import annotations

import numba
import numpy as np

from pkpd.engine import _stamp  # noqa: F401  (numba's cache: pkpd/engine/_stamp.py)

from . import STATUS_BAD_TIMES, STATUS_NONFINITE, STATUS_OK
from .expm import expm_work, propagator_into

# Number of cached step lengths: a uniform grid broken by events needs the grid step plus
# the two partial steps on either side of each event.
_CACHE = 4
_EPS = 2.220446049250313e-16


def workspace(N: int):
    """Allocate the work arrays of :func:`propagate_into` for an augmented size `N`.

    Returns a tuple ``(Maug, Eaug, cache_h, cache_phi, cache_g, xtmp, ework, epiv)``.
    """
    ework, epiv = expm_work(N + 1)
    return (
        np.zeros((N + 1, N + 1)),
        np.zeros((N + 1, N + 1)),
        np.full(_CACHE, -1.0),
        np.zeros((_CACHE, N, N)),
        np.zeros((_CACHE, N)),
        np.zeros(N),
        ework,
        epiv,
    )


@numba.njit(cache=True, nogil=True)
def _step(
    x, h, rate, M, b, t_scale, Maug, Eaug, cache_h, cache_phi, cache_g, xtmp, ework, epiv, counter
):
    """Advance `x` in place by `h` at constant input `rate`; return a status code."""
    N = x.shape[0]
    if h <= 0.0:
        return STATUS_OK
    tol = 16.0 * _EPS * max(1.0, t_scale)
    slot = -1
    for c in range(cache_h.shape[0]):
        if cache_h[c] >= 0.0 and abs(cache_h[c] - h) <= tol:
            slot = c
            break
    if slot < 0:
        slot = counter[0] % cache_h.shape[0]
        counter[0] += 1
        if propagator_into(M, b, h, Maug, Eaug, ework, epiv) != 0:
            return STATUS_NONFINITE
        for i in range(N):
            for j in range(N):
                cache_phi[slot, i, j] = Eaug[i, j]
            cache_g[slot, i] = Eaug[i, N]
        cache_h[slot] = h
    for i in range(N):
        s = cache_g[slot, i] * rate
        for j in range(N):
            s += cache_phi[slot, i, j] * x[j]
        xtmp[i] = s
    for i in range(N):
        x[i] = xtmp[i]
    return STATUS_OK


@numba.njit(cache=True, nogil=True)
def propagate_into(
    M,
    b,
    ev_t,
    ev_rate,
    ev_bolus,
    t_out,
    x0,
    t0,
    X,
    Maug,
    Eaug,
    cache_h,
    cache_phi,
    cache_g,
    xtmp,
    ework,
    epiv,
):
    """Exact trajectory of ``dx/dt = M x + b u(t)`` with boluses, on a sorted time grid.

    Parameters
    ----------
    M : (N, N) float64
        System matrix (per hour).
    b : (N,) float64
        Input map: state increments per mg of bolus and per mg/h of infusion.
    ev_t : (n_ev,) float64
        Sorted event times (h): every bolus time and every change of total rate.
    ev_rate : (n_ev,) float64
        Total infusion rate (mg/h) from ``ev_t[k]`` until ``ev_t[k+1]`` (the last one
        holds to the end).
    ev_bolus : (n_ev,) float64
        Bolus amount (mg) given at ``ev_t[k]``.
    t_out : (n_out,) float64
        Non-decreasing output times (h), all ``>= t0``.
    x0 : (N,) float64
        State at ``t0``; the rate before the first event is zero.
    t0 : float
        Start time (h).
    X : (n_out, N) float64
        Output: the state at each output time. A bolus at an output time is included
        (right-continuous convention).
    Maug, Eaug, cache_h, cache_phi, cache_g, xtmp, ework, epiv
        Work arrays from :func:`workspace`; `cache_h` must be reset to -1 when `M` or
        `b` change (``workspace`` does that; :func:`reset_cache` too).

    Returns
    -------
    status : int
        0 success, 1 non-finite state or exponential, 2 output times unsorted or
        before `t0`.
    """
    N = M.shape[0]
    n_ev = ev_t.shape[0]
    x = xtmp.copy()  # one allocation per call (per patient), none per step
    for i in range(N):
        x[i] = x0[i]
    counter = np.zeros(1, dtype=np.int64)
    t = t0
    rate = 0.0
    k = 0  # next event
    i = 0  # next output
    while i < t_out.shape[0]:
        to = t_out[i]
        if to < t or to != to:
            return STATUS_BAD_TIMES
        # Advance to whichever comes first; an event at an output time is applied
        # before the output is recorded (right-continuous convention).
        is_event = k < n_ev and ev_t[k] <= to
        target = ev_t[k] if is_event else to
        if target > t:
            st = _step(
                x,
                target - t,
                rate,
                M,
                b,
                abs(target),
                Maug,
                Eaug,
                cache_h,
                cache_phi,
                cache_g,
                xtmp,
                ework,
                epiv,
                counter,
            )
            if st != 0:
                return st
            t = target
        if is_event:
            if ev_bolus[k] != 0.0:
                for j in range(N):
                    x[j] += b[j] * ev_bolus[k]
            rate = ev_rate[k]
            k += 1
        else:
            for j in range(N):
                v = x[j]
                if not np.isfinite(v):
                    return STATUS_NONFINITE
                X[i, j] = v
            i += 1
    return STATUS_OK


@numba.njit(cache=True, nogil=True)
def reset_cache(cache_h):
    """Invalidate the exponential cache (call when the system matrix changes)."""
    for c in range(cache_h.shape[0]):
        cache_h[c] = -1.0


def propagate(M, b, ev_t, ev_rate, ev_bolus, t_out, x0=None, t0=0.0):
    """Convenience wrapper of :func:`propagate_into` that allocates everything.

    Returns ``(X, status)`` with ``X`` of shape ``(len(t_out), N)``.
    """
    M = np.ascontiguousarray(M, dtype=np.float64)
    N = M.shape[0]
    b = np.ascontiguousarray(b, dtype=np.float64)
    x0 = np.zeros(N) if x0 is None else np.ascontiguousarray(x0, dtype=np.float64)
    t_out = np.ascontiguousarray(t_out, dtype=np.float64)
    X = np.zeros((t_out.shape[0], N))
    ws = workspace(N)
    status = propagate_into(
        M,
        b,
        np.ascontiguousarray(ev_t, dtype=np.float64),
        np.ascontiguousarray(ev_rate, dtype=np.float64),
        np.ascontiguousarray(ev_bolus, dtype=np.float64),
        t_out,
        x0,
        float(t0),
        X,
        *ws,
    )
    return X, int(status)
