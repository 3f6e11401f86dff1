"""The maximum of an output between two evaluated points of the exact solution.

Cmax and Tmax are the maximum of the continuous solution, not of its samples: between
two consecutive evaluated points (grid points, special times, dose events) the input rate
``r`` is constant and the state follows ``dx/dt = M x + b r`` exactly. A linear output
``c = w . x`` has the derivative ``d = w . (M x + b r)``, a linear output too. Where ``d``
goes from positive at the left end of a step to negative at its right end, the output has
a maximum inside the step; :func:`refine` locates it to machine precision and the
recorder folds ``(t*, c*)`` into Cmax/Tmax like any other point. A step that starts at an
event (a bolus, a rate change) starts with the derivative after the event, so a maximum
just after an event is found the same way.

What is searched, stated precisely: a step is searched when its end derivatives change
sign from ``> 0`` to ``< 0``. A step whose end derivatives have the same sign, but which
holds a maximum and a minimum between them (two sign changes of the derivative inside one
step), is not: on the grids in use (minutes) against the time constants of the models
(tens of minutes and more) that does not occur, and no grid-free test exists for it.

Locating the root. From the state ``x_a`` at the step's left end, the output along the
step is the Taylor series ``c(a + s) = sum_n alpha_n s^n / n!`` with ``alpha_n = w . v_n``,
``v_0 = x_a``, ``v_1 = M x_a + b r``, ``v_n = M v_{n-1}`` (``r`` is constant, so every
derivative of ``x`` beyond the first is ``M`` times the one before). With
``||M||_inf s <= TAYLOR_SPAN`` the terms fall below ``TAIL`` of the leading ones after
at most ``K_MAX`` of them, and the series is evaluated to rounding (no cancellation: the
terms fall monotonically once ``n > ||M|| s``). A step longer than that (a stiff model on
a coarse grid) is cut into sub-steps of the exact propagator (one exponential,
:func:`pkpd.engine.solvers.expm.propagator_into`) and the series is used on the sub-step where
the derivative changes sign. The root of ``d`` is found by Newton's method on the series,
safeguarded by bisection of the bracket ``[0, h]``; ``d`` vanishes at the maximum, so the
error of ``c*`` is quadratic in that of ``t*``.

Everything here takes plain arrays and scalars and allocates nothing.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from pkpd.engine import _stamp  # noqa: F401  (numba's cache: pkpd/engine/_stamp.py)
from pkpd.engine.solvers.expm import propagator_into

#: Largest ``||M||_inf * h`` summed as one Taylor series (longer steps are cut).
TAYLOR_SPAN = 2.0
#: Most terms of the series: ``2^K / K! < 1e-19`` for ``K = 30``.
K_MAX = 40
#: A term bound below this fraction of the leading ones ends the series.
TAIL = 1e-19
#: Most Newton or bisection iterations of one root (bisection alone needs about 60).
MAX_ITER = 100

_jit = numba.njit(cache=True, nogil=True)
_jit_inline = numba.njit(cache=True, nogil=True, inline="always")


@_jit
def norm_inf(M):
    """``||M||_inf``, the largest absolute row sum (bounds ``||M v|| / ||v||``)."""
    best = 0.0
    for i in range(M.shape[0]):
        s = 0.0
        for j in range(M.shape[1]):
            s += abs(M[i, j])
        best = max(best, s)
    return best


@_jit_inline
def deriv(x, rate, D, E, o):
    """Derivative of output `o`: ``D[o] . x + E[o] rate`` (``D = W M``, ``E = W b``)."""
    acc = E[o] * rate
    for j in range(x.shape[0]):
        acc += D[o, j] * x[j]
    return acc


@_jit
def derivative_rows(M, b, W, D, E):
    """Rows of the outputs' derivatives: ``D = W M``, ``E = W b`` (outputs ``c = W x``)."""
    for o in range(W.shape[0]):
        e = 0.0
        for i in range(M.shape[0]):
            e += W[o, i] * b[i]
        E[o] = e
        for j in range(M.shape[1]):
            acc = 0.0
            for i in range(M.shape[0]):
                acc += W[o, i] * M[i, j]
            D[o, j] = acc


@_jit_inline
def _poly(a, K, s):
    """``c(s) = sum a_n s^n``, ``d(s) = c'(s)``, ``d'(s) = c''(s)`` (Horner)."""
    c = a[K]
    d = 0.0
    dd = 0.0
    for n in range(K - 1, -1, -1):
        dd = dd * s + 2.0 * d
        d = d * s + c
        c = c * s + a[n]
    return c, d, dd


@_jit
def _series(xa, rate, M, b, w, span, mnorm, v, a):
    """Scaled Taylor coefficients ``a_n = alpha_n / n!`` of output row `w` from the state
    `xa` over ``|s| <= span``; returns the last index K. ``v`` is (2, N) scratch."""
    N = xa.shape[0]
    c0 = 0.0
    for j in range(N):
        c0 += w[j] * xa[j]
    a[0] = c0
    c1 = 0.0
    for i in range(N):
        acc = b[i] * rate
        for j in range(N):
            acc += M[i, j] * xa[j]
        v[0, i] = acc
        c1 += w[i] * acc
    a[1] = c1
    fac = mnorm * span
    bound = fac  # bound of (||M|| span)^n / n!, relative to the first terms
    K = 1
    cur = 0
    while K < K_MAX and (K < 3 or bound > TAIL):
        K += 1
        nxt = 1 - cur
        acc_w = 0.0
        for i in range(N):
            acc = 0.0
            for j in range(N):
                acc += M[i, j] * v[cur, j]
            v[nxt, i] = acc
            acc_w += w[i] * acc
        cur = nxt
        bound *= fac / K
        a[K] = acc_w
    f = 1.0
    for n in range(2, K + 1):
        f *= n
        a[n] /= f
    return K


@_jit
def _taylor_peak(xa, ta, h, rate, M, b, w, mnorm, v, a):
    """Maximum of ``w . x`` on the step ``[ta, ta + h]`` from its left-end state `xa`,
    given a derivative ``> 0`` at the left end: ``(t*, c*)``. If the series' derivative
    does not change sign on the step (rounding at a maximum on an end), the larger end."""
    K = _series(xa, rate, M, b, w, h, mnorm, v, a)
    c_lo, d_lo, _dd = _poly(a, K, 0.0)
    c_hi, d_hi, _dd = _poly(a, K, h)
    if not d_lo > 0.0 or not d_hi < 0.0:
        if c_hi > c_lo:
            return ta + h, c_hi
        return ta, c_lo
    lo = 0.0
    hi = h
    # Start from the secant root of the derivative.
    s = h * d_lo / (d_lo - d_hi)
    for _ in range(MAX_ITER):
        _c, d, dd = _poly(a, K, s)
        if d > 0.0:
            lo = s
        elif d < 0.0:
            hi = s
        else:
            break
        sn = s - d / dd if dd < 0.0 else -1.0
        if not (lo < sn < hi):
            sn = 0.5 * (lo + hi)
        if abs(sn - s) <= 2e-16 * h or hi - lo <= 4e-16 * h:
            s = sn
            break
        s = sn
    c, _d, _dd = _poly(a, K, s)
    return ta + s, c


@_jit
def refine(xa, ta, h, rate, M, b, w, mnorm, scratch):
    """Maximum ``(t*, c*)`` of the output ``c = w . x`` on the step ``[ta, ta + h]`` of
    ``dx/dt = M x + b rate`` from its left-end state `xa`, whose derivative is ``> 0`` at
    the left end and ``< 0`` at the right end (see the module docstring).

    ``scratch = (v, a, xs, Maug, Eaug, ework, epiv)``: (2, N), (K_MAX + 1,), (2, N),
    the exponential's (N + 1, N + 1) input and output and its work arrays.
    """
    v, a, xs, Maug, Eaug, ework, epiv = scratch
    N = xa.shape[0]
    if mnorm * h <= TAYLOR_SPAN:
        return _taylor_peak(xa, ta, h, rate, M, b, w, mnorm, v, a)
    # A stiff step: sub-steps of the exact propagator, then the series on the sub-step
    # where the derivative changes sign.
    m = math.ceil(mnorm * h / TAYLOR_SPAN)
    dl = h / m
    if propagator_into(M, b, dl, Maug, Eaug, ework, epiv) != 0:
        return ta, -math.inf
    for j in range(N):
        xs[0, j] = xa[j]
    cur = 0
    for k in range(m):
        nxt = 1 - cur
        dn = 0.0
        for i in range(N):
            acc = Eaug[i, N] * rate
            for j in range(N):
                acc += Eaug[i, j] * xs[cur, j]
            xs[nxt, i] = acc
        for i in range(N):
            acc = b[i] * rate
            for j in range(N):
                acc += M[i, j] * xs[nxt, j]
            dn += w[i] * acc
        if not dn > 0.0 or k == m - 1:
            return _taylor_peak(xs[cur], ta + k * dl, dl, rate, M, b, w, mnorm, v, a)
        cur = nxt
    return ta, -math.inf  # not reached (m >= 1)


@_jit
def _fold_step(xa, ta, x, t, rate, M, b, W, D, E, dprev, mnorm, scratch, cmax, tmax):
    """Fold the step ``[ta, t]`` (left-end state `xa`, right-end state `x`) into
    ``cmax, tmax``: the right end's outputs and any maximum inside the step; ``dprev``
    (the derivatives at the left end) becomes those at the right end."""
    for o in range(W.shape[0]):
        c = 0.0
        for j in range(x.shape[0]):
            c += W[o, j] * x[j]
        d = deriv(x, rate, D, E, o)
        if dprev[o] > 0.0 and d < 0.0 and t > ta:
            ts, cs = refine(xa, ta, t - ta, rate, M, b, W[o], mnorm, scratch)
            if cs > cmax[o]:
                cmax[o] = cs
                tmax[o] = ts
        if c > cmax[o]:
            cmax[o] = c
            tmax[o] = t
        dprev[o] = d


@_jit
def trajectory_peaks(M, b, W, ev_t, ev_rate, ev_bolus, t0, t_out, cmax, tmax, work):
    """Cmax and Tmax of the outputs ``c = W x`` of one patient, as the cohort kernel
    records them: the maximum over the evaluated points (the output times `t_out`, each
    dose event just before and just after its bolus) and over the maxima between them
    (:func:`refine`), up to ``t_out[-1]``; Cmax starts at 0 at ``t_out[0]``.

    ``dx/dt = M x + b u`` from ``x = 0`` at `t0` with the event table ``ev_*`` (see
    :func:`pkpd.engine.solvers.exact.propagate_into`). ``work = (Maug, Eaug, ework, epiv)``
    (from :func:`pkpd.engine.solvers.expm.expm_work` for size N + 1). Returns a status
    (0 or a solver status code).
    """
    Maug, Eaug, ework, epiv = work
    N = M.shape[0]
    n_out = W.shape[0]
    n_ev = ev_t.shape[0]
    x = np.zeros(N)
    xa = np.zeros(N)
    D = np.zeros((n_out, N))
    E = np.zeros(n_out)
    derivative_rows(M, b, W, D, E)
    dprev = np.zeros(n_out)
    mnorm = norm_inf(M)
    scratch = (np.zeros((2, N)), np.zeros(K_MAX + 1), np.zeros((2, N)), Maug, Eaug, ework, epiv)
    t_last = t_out[t_out.shape[0] - 1]
    for o in range(n_out):
        cmax[o] = 0.0
        tmax[o] = t_out[0]
    t = t0
    rate = 0.0
    k = 0
    i = 0
    while i < t_out.shape[0] or (k < n_ev and ev_t[k] <= t_last):
        is_event = k < n_ev and (i >= t_out.shape[0] or ev_t[k] <= t_out[i])
        target = ev_t[k] if is_event else t_out[i]
        if target > t:
            for j in range(N):
                xa[j] = x[j]
            if propagator_into(M, b, target - t, Maug, Eaug, ework, epiv) != 0:
                return 1
            for ii in range(N):
                acc = Eaug[ii, N] * rate
                for j in range(N):
                    acc += Eaug[ii, j] * xa[j]
                x[ii] = acc
        if target <= t_last:
            _fold_step(xa, t, x, target, rate, M, b, W, D, E, dprev, mnorm, scratch, cmax,
                       tmax)  # fmt: skip
        t = target
        if is_event:
            for j in range(N):
                x[j] += b[j] * ev_bolus[k]
            rate = ev_rate[k]
            k += 1
            for o in range(n_out):
                c = 0.0
                for j in range(N):
                    c += W[o, j] * x[j]
                if target <= t_last and c > cmax[o]:
                    cmax[o] = c
                    tmax[o] = target
                dprev[o] = deriv(x, rate, D, E, o)
        else:
            i += 1
    return 0
