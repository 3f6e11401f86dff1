"""Rodas4: a stiffly accurate, L-stable Rosenbrock method of order 4(3), numba-compiled.

The method ``RODAS`` of Hairer & Wanner (*Solving Ordinary Differential Equations II*,
2nd ed., Springer 1996, Sec. IV.7, doi:10.1007/978-3-642-05221-7; Fortran ``rodas.f``,
``METH = 1``): six stages, each one linear solve with the same matrix
``W = I / (gamma h) - J``; the embedded solution of order 3 gives the error estimate; the
last two stages are evaluated at ``t + h`` (stiffly accurate, so ``R(inf) = 0``: L-stable);
a 3rd-order continuous extension from the stage values (dense output), and Hairer's
predictive (Gustafsson) step-size controller.

The coefficients are given in Hairer's transformed variables (``A`` multiplies the
stage increments in the arguments, ``C`` enters the right-hand sides, ``gamma_i`` the
time derivative); the original Rosenbrock coefficients ``alpha``, ``gamma``, ``b`` are
recovered in :func:`rosenbrock_coefficients`, on which the tests check the order
conditions. Hairer prints them as 16-digit decimals (they come from solving the order
conditions numerically), so they are given here as printed, not as fractions.

Problem form and event conventions are those of :mod:`pkpd.engine.solvers.dopri5`. The
Jacobian ``df/dy`` is either exact, ``jac(t, y, u, p, J)`` (``jac_mode = 0``; the system
matrix for linear models), or by forward differences (``jac_mode = 1``, Hairer's
increments ``sqrt(eps * max(1e-5, |y_j|))``). It is evaluated once per accepted step and
reused when a step is rejected. ``df/dt`` is by a forward difference unless the
right-hand side is autonomous (``autonomous = 1``; it then is zero).

Kernels allocate nothing in the step loop (workspace from :func:`workspace`), never
raise, and return a status of :data:`pkpd.engine.solvers.STATUS_MESSAGES`.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from pkpd.engine import _stamp  # noqa: F401  (numba's cache: pkpd/engine/_stamp.py)
from pkpd.engine.dosing import one_patient

from . import (
    STAT_NFEV,
    STAT_NJEV,
    STAT_NLU,
    STAT_NREJECTED,
    STAT_NSTEPS,
    STATUS_BAD_TIMES,
    STATUS_MAX_STEPS,
    STATUS_NONFINITE,
    STATUS_OK,
    STATUS_STEP_UNDERFLOW,
)
from .finite import all_finite, vector_finite
from .linear_rhs import linear_jac, linear_rhs
from .segments import (
    N_COEF,
    after_step,
    check_times,
    event_boundary,
    first_output_in,
    fixed_steps,
    initial_step,
    map_rows,
    no_fold,
    no_log,
    record_step,
    step_to_try,
)

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
# See dopri5.py: kernels taking the right-hand side as an argument are inlined into
# their (cached) caller.
_jit_inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")

# ----------------------------------------------------------------------------- tableau
# rodas.f (Hairer & Wanner), METH = 1, transformed coefficients as printed there.
GAMMA = 0.25
#: Stage abscissae c_i (c5 = c6 = 1: stiffly accurate).
C = np.array([0.0, 0.386, 0.21, 0.63, 1.0, 1.0])
#: gamma_i = sum_j gamma_ij (coefficients of h * df/dt in the stage right-hand sides).
D = np.array([0.25, -0.1043, 0.1035, -0.3620000000000023e-01, 0.0, 0.0])
#: Transformed A (stage arguments y + sum_j A_ij k_j); row 6 = row 5 plus k5.
A = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [1.544, 0.0, 0.0, 0.0, 0.0],
        [0.9466785280815826, 0.2557011698983284, 0.0, 0.0, 0.0],
        [3.314825187068521, 2.896124015972201, 0.9986419139977817, 0.0, 0.0],
        [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950, 0.0],
        [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950, 1.0],
    ]
)
#: Transformed C (stage right-hand sides f + sum_j C_ij k_j / h).
CC = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [-5.6688, 0.0, 0.0, 0.0, 0.0],
        [-2.430093356833875, -0.2063599157091915, 0.0, 0.0, 0.0],
        [-0.1073529058151375, -9.594562251023355, -20.47028614809616, 0.0, 0.0],
        [7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160, 0.0],
        [
            8.083246795921522,
            -7.981132988064893,
            -31.52159432874371,
            16.31930543123136,
            -6.058818238834054,
        ],
    ]
)
#: Weights of the stage increments in the solution (m_i) and in the embedded one.
M_SOL = np.array([*A[4, :4], 1.0, 1.0])
M_EMB = np.array([*A[4, :4], 1.0, 0.0])
#: Dense output: y(t + s h) = (1-s) y0 + s (y1 + (1-s) (H0 . k + s H1 . k)).
H_DENSE = np.array(
    [
        [
            10.12623508344586,
            -7.487995877610167,
            -34.80091861555747,
            -7.992771707568823,
            1.025137723295662,
        ],
        [
            -0.6762803392801253,
            6.087714651680015,
            16.43084320892478,
            24.76722511418386,
            -6.594389125716872,
        ],
    ]
)
ORDER = 4
ERROR_ORDER = 3

_A = tuple(tuple(float(v) for v in row) for row in A)
_CC = tuple(tuple(float(v) for v in row) for row in CC)
_C = tuple(float(v) for v in C)
_D = tuple(float(v) for v in D)
_H = tuple(tuple(float(v) for v in row) for row in H_DENSE)

# ------------------------------------------------------------------ step-size control
# Hairer's predictive controller for RODAS (Gustafsson 1994, Hairer-Wanner II (IV.8.21)):
#   factor = SAFETY * err^(-1/4), and after the first step also
#   factor_pred = (h / h_old) * SAFETY * (err_old / err^2)^(1/4),
# the smaller of the two. It anticipates the error trend, which avoids the repeated
# rejections the plain controller shows on stiff problems.
SAFETY = 0.9
MIN_FACTOR = 0.2  # rodas.f FAC1 = 5: shrink at most 5x per step
MAX_FACTOR = 6.0  # rodas.f FAC2 = 1/6: grow at most 6x per step
ERR_OLD_MIN = 1e-2  # floor of the previous error in the predictive term
#: Step reduction when the iteration matrix is singular.
SINGULAR_FACTOR = 0.25

_EPS = 2.220446049250313e-16

_Y, _YNEW, _YTMP, _F0, _FNEW, _FX, _K1 = 0, 1, 2, 3, 4, 5, 6  # k1..k6 at rows 6..11
# The continuous extension's rows y_new - y_old, cont3, cont4 (consecutive: mapped at once).
_DIFF, _CONT3, _CONT4, _TMP = 12, 13, 14, 15
N_WORK = 16


def rosenbrock_coefficients():
    """Original Rosenbrock coefficients ``(alpha, gamma, b, b_hat)`` of Rodas4.

    Hairer's transformed form uses ``A = alpha Gamma^-1``, ``C = diag(1/gamma) -
    Gamma^-1`` and ``m = b Gamma^-1`` (Hairer-Wanner II, (IV.7.3)); inverting gives the
    coefficients the order conditions are written in.
    """
    s = 6
    Cfull = np.zeros((s, s))
    Cfull[:, :5] = CC
    Ginv = np.eye(s) / GAMMA - Cfull
    Gamma = np.linalg.inv(Ginv)
    Afull = np.zeros((s, s))
    Afull[:, :5] = A
    alpha = Afull @ Gamma
    b = M_SOL @ Gamma
    b_hat = M_EMB @ Gamma
    return alpha, Gamma, b, b_hat


def workspace(n: int):
    """Work arrays of :func:`rodas_solve`: ``(work (N_WORK, n), mats (2, n, n), ipiv (n,))``."""
    return np.zeros((N_WORK, n)), np.zeros((2, n, n)), np.zeros(n, dtype=np.int64)


@_jit
def rodas_factor(err, err_old, h, h_old, first, rejected):
    """Step-size factor ``h_new / h`` of the predictive controller."""
    if err == 0.0:
        fac = MAX_FACTOR
    else:
        fac = SAFETY * err ** (-1.0 / ORDER)
    fac = max(MIN_FACTOR, min(MAX_FACTOR, fac))
    if err <= 1.0:
        if not first:
            if err == 0.0:
                pred = MAX_FACTOR
            else:
                pred = (h / h_old) * SAFETY * (err_old / (err * err)) ** (1.0 / ORDER)
            pred = max(MIN_FACTOR, min(MAX_FACTOR, pred))
            fac = min(fac, pred)
        if rejected:
            fac = min(fac, 1.0)
    return fac


@_jit
def lu_factor(a, piv):
    """LU factorisation with partial pivoting in place; False if a pivot is zero/NaN."""
    n = a.shape[0]
    for k in range(n):
        p = k
        pmax = abs(a[k, k])
        for i in range(k + 1, n):
            v = abs(a[i, k])
            if v > pmax:
                pmax = v
                p = i
        piv[k] = p
        if not (pmax > 0.0) or not math.isfinite(pmax):
            return False
        if p != k:
            for j in range(n):
                t = a[k, j]
                a[k, j] = a[p, j]
                a[p, j] = t
        akk = a[k, k]
        for i in range(k + 1, n):
            lik = a[i, k] / akk
            a[i, k] = lik
            if lik != 0.0:
                for j in range(k + 1, n):
                    a[i, j] -= lik * a[k, j]
    return True


@_jit
def lu_solve(a, piv, x):
    """Solve ``A x = rhs`` in place with the factors of :func:`lu_factor`."""
    n = a.shape[0]
    for k in range(n):
        p = piv[k]
        if p != k:
            t = x[k]
            x[k] = x[p]
            x[p] = t
    for i in range(n):
        s = x[i]
        for j in range(i):
            s -= a[i, j] * x[j]
        x[i] = s
    for i in range(n - 1, -1, -1):
        s = x[i]
        for j in range(i + 1, n):
            s -= a[i, j] * x[j]
        x[i] = s / a[i, i]


@_jit_inline
def _jacobian(rhs, jac, t, y, u, p, f0, jac_mode, autonomous, J, fx, tmp, stats):
    """Fill ``J = df/dy`` (exact or forward differences) and ``fx = df/dt``."""
    n = y.shape[0]
    stats[STAT_NJEV] += 1
    if jac_mode == 0:
        jac(t, y, u, p, J)
    else:
        for j in range(n):
            ysafe = y[j]
            delt = math.sqrt(_EPS * max(1e-5, abs(ysafe)))
            y[j] = ysafe + delt
            rhs(t, y, u, p, tmp)
            y[j] = ysafe
            for i in range(n):
                J[i, j] = (tmp[i] - f0[i]) / delt
        stats[STAT_NFEV] += n
    if autonomous:
        for i in range(n):
            fx[i] = 0.0
    else:
        delt = math.sqrt(_EPS * max(1e-5, abs(t)))
        rhs(t + delt, y, u, p, tmp)
        stats[STAT_NFEV] += 1
        for i in range(n):
            fx[i] = (tmp[i] - f0[i]) / delt


@_jit
def _coeffs(work, R, mapped):
    """The 3rd-order continuous extension of rodas.f (``CONT``), ``(1-s) y_old + s (y_new
    + (1-s) (cont3 + s cont4))``, through the recording map into `mapped`, in the shared
    basis of :mod:`pkpd.engine.solvers.segments`: rows ``y_old, y_new - y_old, cont3,
    cont4`` and a zero last row. Whether it is finite."""
    n = work.shape[1]
    for j in range(n):
        c3 = 0.0
        c4 = 0.0
        for m in range(5):
            c3 += _H[0][m] * work[_K1 + m, j]
            c4 += _H[1][m] * work[_K1 + m, j]
        work[_DIFF, j] = work[_YNEW, j] - work[_Y, j]
        work[_CONT3, j] = c3
        work[_CONT4, j] = c4
    map_rows(R, work, _Y, 1, mapped, 0)
    map_rows(R, work, _DIFF, 3, mapped, 1)
    for j in range(mapped.shape[1]):
        mapped[N_COEF - 1, j] = 0.0
    return all_finite(mapped)


@_jit
def _factor_w(J, W, ipiv, h):
    """``W = I / (gamma h) - J``, LU-factorised in place (once for the six stages);
    False when it is singular."""
    n = J.shape[0]
    fac_w = 1.0 / (GAMMA * h)
    for r in range(n):
        for c in range(n):
            W[r, c] = -J[r, c]
        W[r, r] += fac_w
    return lu_factor(W, ipiv)


@_jit_inline
def _stage_arg(dst, y, a, k1, k2, k3, k4):
    """``dst = y + a[0] k1 + a[1] k2 + a[2] k3 + a[3] k4``: a stage's argument (`a` a row
    of the transformed A), summed left to right from ``y`` with the zero terms left out,
    as rodas.f writes each stage. Called with a constant row, which LLVM folds in."""
    for j in range(dst.shape[0]):
        acc = y[j] + a[0] * k1[j]
        if a[1] != 0.0:
            acc += a[1] * k2[j]
        if a[2] != 0.0:
            acc += a[2] * k3[j]
        if a[3] != 0.0:
            acc += a[3] * k4[j]
        dst[j] = acc


@_jit
def _increment(k, f, fx, hd, c, k1, k2, k3, k4, k5, h):
    """The right-hand side of a stage's linear system, ``k = f + hd df/dt + (c[0] k1 + ... +
    c[4] k5) / h`` (``hd = h d_s``, `c` a row of the transformed C), the terms with a zero
    coefficient left out, as rodas.f writes each stage; ``W^-1 k`` is the increment."""
    for j in range(k.shape[0]):
        v = f[j]
        if hd != 0.0:
            v = v + hd * fx[j]
        if c[0] != 0.0:
            acc = c[0] * k1[j]
            if c[1] != 0.0:
                acc += c[1] * k2[j]
            if c[2] != 0.0:
                acc += c[2] * k3[j]
            if c[3] != 0.0:
                acc += c[3] * k4[j]
            if c[4] != 0.0:
                acc += c[4] * k5[j]
            v = v + acc / h
        k[j] = v


@_jit
def _error_norm(work, rtol, atol):
    """``y_new = ytmp + k6`` (ytmp the embedded solution) and ``(err, finite)``: the
    scaled RMS norm of the error estimate k6 (``inf`` when y_new is not finite)."""
    n = work.shape[1]
    err = 0.0
    finite = True
    for j in range(n):
        work[_YNEW, j] = work[_YTMP, j] + work[_K1 + 5, j]
        sk = atol[j] + rtol[j] * max(abs(work[_Y, j]), abs(work[_YNEW, j]))
        err += (work[_K1 + 5, j] / sk) ** 2
        if not math.isfinite(work[_YNEW, j]):
            finite = False
    if not finite:
        return math.inf, False
    return math.sqrt(err / n), True


@_jit
def _accept(work):
    """``y = y_new`` after an accepted step."""
    for j in range(work.shape[1]):
        work[_Y, j] = work[_YNEW, j]


@_jit_inline
def rodas_solve(
    rhs,
    jac,
    p,
    b,
    y0,
    t0,
    ev_t,
    ev_rate,
    ev_bolus,
    t_out,
    rtol,
    atol,
    h_fixed,
    hmax,
    max_steps,
    jac_mode,
    autonomous,
    out,
    work,
    mats,
    ipiv,
    stats,
):
    """:func:`rodas_solve_mapped` recording the whole state at each output time (the
    cached wrappers call :func:`rodas_solve_mapped` directly: see
    :func:`pkpd.engine.solvers.dopri5.dopri5_solve`)."""
    return rodas_solve_mapped(
        rhs, jac, p, b, y0, t0, one_patient(ev_t, ev_rate, ev_bolus), 0, t_out, rtol, atol,
        h_fixed, hmax, max_steps, jac_mode, autonomous, np.zeros((0, 0)), out, no_log(),
        no_fold(), work, mats, ipiv, stats,
    )  # fmt: skip


@_jit_inline
def rodas_solve_mapped(
    rhs,
    jac,
    p,
    b,
    y0,
    t0,
    source,
    sp,
    t_out,
    rtol,
    atol,
    h_fixed,
    hmax,
    max_steps,
    jac_mode,
    autonomous,
    R,
    out,
    log,
    fold,
    work,
    mats,
    ipiv,
    stats,
):
    """Integrate ``dy/dt = rhs(t, y, u, p)`` with Rodas4 through a dosing source.

    The arguments are the adaptive solvers' protocol, documented once in
    :mod:`pkpd.engine.solvers.segments` (the summary-mode skip included: Rodas4's
    continuous extension is handed over in the shared basis), plus

    jac : numba function ``jac(t, y, u, p, J)``
        Exact Jacobian, used when ``jac_mode == 0`` (any function of that signature
        otherwise, it is not called).
    jac_mode : int
        0 exact Jacobian, 1 forward differences.
    autonomous : int
        1 when ``rhs`` does not depend on ``t`` (then ``df/dt = 0``).
    work, mats, ipiv
        Work arrays from :func:`workspace`.

    Returns
    -------
    status : int
        A key of :data:`pkpd.engine.solvers.STATUS_MESSAGES`.
    """
    if not check_times(t_out, t0):
        return STATUS_BAD_TIMES
    y = work[_Y]
    for j in range(y0.shape[0]):
        y[j] = y0[j]
    # The step's continuous extension through the recording map (copied when R is empty).
    mapped = np.zeros((N_COEF, out.shape[1]))
    dose = np.zeros((2, 1))  # the dosing source's bolus and rate (one input)
    bolus, rate = dose[0], dose[1]
    t = t0
    u = 0.0
    k = 0
    i = 0
    nx = 0  # the next row of `need` (fold) not yet passed
    nsteps = 0  # steps attempted, accepted or rejected (for max_steps)
    n_out = t_out.shape[0]
    while i < n_out:
        k, i, u, t_end, st = event_boundary(
            t, y, b, source, sp, t_out, R, out, log, fold, k, i, u, (bolus, rate)
        )
        if st != STATUS_OK:
            return st
        if i == n_out:
            break
        st, i, nx, nsteps = _segment(
            rhs, jac, p, u, t, t_end, rtol, atol, h_fixed, hmax, max_steps, jac_mode,
            autonomous, R, t_out, out, fold, mapped, work, mats, ipiv, stats, i, nx, nsteps,
        )  # fmt: skip
        if st != STATUS_OK:
            return st
        t = t_end
    return STATUS_OK


@_jit_inline
def _segment(
    rhs, jac, p, u, t, t_end, rtol, atol, h_fixed, hmax, max_steps, jac_mode, autonomous, R,
    t_out, out, fold, mapped, work, mats, ipiv, stats, i, nx, nsteps,
):  # fmt: skip
    """Integrate the smooth segment ``[t, t_end]`` (constant rate `u`) from the state in
    ``work[_Y]``, recording the outputs inside it: :func:`pkpd.engine.solvers.dopri5._segment`
    for Rodas4. Returns ``(status, i, nx, nsteps)``."""
    y = work[_Y]
    ytmp = work[_YTMP]
    f0 = work[_F0]
    fnew = work[_FNEW]
    fx = work[_FX]
    k1 = work[_K1]
    k2 = work[_K1 + 1]
    k3 = work[_K1 + 2]
    k4 = work[_K1 + 3]
    k5 = work[_K1 + 4]
    k6 = work[_K1 + 5]
    tmp = work[_TMP]
    J = mats[0]
    W = mats[1]
    rhs(t, y, u, p, f0)
    stats[STAT_NFEV] += 1
    if not (vector_finite(f0) and vector_finite(y)):
        return STATUS_NONFINITE, i, nx, nsteps
    span = t_end - t
    n_fixed = fixed_steps(span, h_fixed)
    if n_fixed > 0:
        h = span / n_fixed
    else:
        h = initial_step(rhs, t, y, f0, u, p, rtol, atol, ORDER, min(hmax, span), ytmp, tmp, stats)
    t_start = t
    j_fixed = 0
    fac = 1.0
    err_old = ERR_OLD_MIN
    h_old = h
    first = True
    rejected = False
    need_jac = True
    while t < t_end:
        if nsteps >= max_steps:
            return STATUS_MAX_STEPS, i, nx, nsteps
        h, last, ok = step_to_try(t, h, t_end, n_fixed, j_fixed)
        if not ok:
            return STATUS_STEP_UNDERFLOW, i, nx, nsteps
        nsteps += 1
        if need_jac:
            _jacobian(rhs, jac, t, y, u, p, f0, jac_mode, autonomous, J, fx, tmp, stats)
            need_jac = False
        stats[STAT_NLU] += 1
        if not _factor_w(J, W, ipiv, h):
            stats[STAT_NREJECTED] += 1
            rejected = True
            h *= SINGULAR_FACTOR
            continue
        t_new = t_end if last else t + h
        # Six stages, each one solve with W; the last two at t + h.
        _increment(k1, f0, fx, h * _D[0], _CC[0], k1, k2, k3, k4, k5, h)
        lu_solve(W, ipiv, k1)
        _stage_arg(ytmp, y, _A[1], k1, k2, k3, k4)
        rhs(t + _C[1] * h, ytmp, u, p, fnew)
        _increment(k2, fnew, fx, h * _D[1], _CC[1], k1, k2, k3, k4, k5, h)
        lu_solve(W, ipiv, k2)
        _stage_arg(ytmp, y, _A[2], k1, k2, k3, k4)
        rhs(t + _C[2] * h, ytmp, u, p, fnew)
        _increment(k3, fnew, fx, h * _D[2], _CC[2], k1, k2, k3, k4, k5, h)
        lu_solve(W, ipiv, k3)
        _stage_arg(ytmp, y, _A[3], k1, k2, k3, k4)
        rhs(t + _C[3] * h, ytmp, u, p, fnew)
        _increment(k4, fnew, fx, h * _D[3], _CC[3], k1, k2, k3, k4, k5, h)
        lu_solve(W, ipiv, k4)
        _stage_arg(ytmp, y, _A[4], k1, k2, k3, k4)
        rhs(t_new, ytmp, u, p, fnew)
        _increment(k5, fnew, fx, h * _D[4], _CC[4], k1, k2, k3, k4, k5, h)
        lu_solve(W, ipiv, k5)
        # The embedded solution ytmp + k5 is the last stage's argument; k6 the error.
        for j in range(y.shape[0]):
            ytmp[j] += k5[j]
        rhs(t_new, ytmp, u, p, fnew)
        _increment(k6, fnew, fx, h * _D[5], _CC[5], k1, k2, k3, k4, k5, h)
        lu_solve(W, ipiv, k6)
        stats[STAT_NFEV] += 5
        err, finite = _error_norm(work, rtol, atol)  # and y_new = ytmp + k6
        if n_fixed > 0 and not finite:
            return STATUS_NONFINITE, i, nx, nsteps
        if n_fixed > 0 or err <= 1.0:  # accepted (fixed steps always are)
            stats[STAT_NSTEPS] += 1
            if first_output_in(t_out, i, t_new, t_end):
                if not _coeffs(work, R, mapped):
                    return STATUS_NONFINITE, i, nx, nsteps
                i, nx = record_step(t, h, t_new, t_end, t_out, i, mapped, out, fold, nx)
            if n_fixed == 0:
                fac = rodas_factor(err, err_old, h, h_old, first, rejected)
                first = False
                rejected = False
                err_old = max(err, ERR_OLD_MIN)
                h_old = h
            _accept(work)
            t, h, j_fixed = after_step(t_start, t_new, t_end, h, fac, hmax, last, n_fixed, j_fixed)
            if not last:
                rhs(t, y, u, p, f0)
                stats[STAT_NFEV] += 1
                need_jac = True
        else:
            stats[STAT_NREJECTED] += 1
            rejected = True
            if finite:
                h *= rodas_factor(err, err_old, h, h_old, first, True)
            else:
                h *= MIN_FACTOR
    return STATUS_OK, i, nx, nsteps


@_jit
def solve_linear_rodas_into(
    p,
    b,
    y0,
    t0,
    ev_t,
    ev_rate,
    ev_bolus,
    t_out,
    rtol,
    atol,
    h_fixed,
    hmax,
    max_steps,
    out,
    work,
    mats,
    ipiv,
    stats,
):
    """:func:`rodas_solve` for a linear model ``dy/dt = M y + b u``, exact Jacobian ``M``.

    ``p`` is :func:`pkpd.engine.solvers.linear_rhs.pack` ``(M, b)``. Cached on disk.
    """
    # rodas_solve_mapped directly (one level of inlining less: see dopri5.py).
    return rodas_solve_mapped(
        linear_rhs, linear_jac, p, b, y0, t0, one_patient(ev_t, ev_rate, ev_bolus), 0, t_out,
        rtol, atol, h_fixed, hmax, max_steps, 0, 1, np.zeros((0, 0)), out, no_log(),
        no_fold(), work, mats, ipiv, stats,
    )  # fmt: skip


@_jit
def no_jac(t, y, u, p, J):
    """Placeholder Jacobian for ``jac_mode = 1`` (finite differences): never called."""
    J[0, 0] = math.nan


@_jit_inline
def rodas_state_patient(
    rhs, autonomous, pp, b, y0, t0, source, sp, t_out, rtol, atol, hmax, max_steps, nstiff,
    out, log, fold, stats,
):  # fmt: skip
    """Adaptive Rodas4 with a finite-difference Jacobian, recording the whole state, with
    its workspace: :func:`pkpd.engine.solvers.dopri5.dopri5_state_patient` for Rodas4
    (`nstiff` is ignored; `autonomous` as in :func:`rodas_solve_mapped`)."""
    n = y0.shape[0]
    work = np.zeros((N_WORK, n))
    mats = np.zeros((2, n, n))
    ipiv = np.zeros(n, dtype=np.int64)
    return rodas_solve_mapped(
        rhs, no_jac, pp, b, y0, t0, source, sp, t_out, rtol, atol, 0.0, hmax, max_steps, 1,
        autonomous, np.zeros((0, 0)), out, log, fold, work, mats, ipiv, stats,
    )  # fmt: skip
