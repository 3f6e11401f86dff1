"""Step-size controllers of the adaptive solvers, separate from the steppers.

A controller turns the scaled error norm of a step attempt (accepted when ``err <= 1``)
into the factor ``h_new / h``. The driver (:func:`pkpd.engine.solvers.adaptive.adaptive_solve`)
keeps the controller state as a tuple ``(err_old, h_old, first, rejected)``: the last
accepted error norm (0 before the first accepted step of a segment; each controller
floors it at its own ``ERR_OLD_MIN``), the last accepted step size (the initial step at the
start of a segment), whether no step of the segment has been accepted yet, and whether
the previous attempt was rejected. Each controller is a pair of functions::

    accept(err, h, state) -> (factor, state)          # after an accepted step
    reject(err, finite, h, state) -> (factor, state)  # after a rejected one

``finite`` is false when the attempt produced a non-finite value: every controller then
shrinks the step by its ``MIN_FACTOR``.
"""

from __future__ import annotations

import numba

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")

# --------------------------------------------------------------------------- PI controller
# PI controller of dopri5.f (Hairer-Wanner II, Sec. IV.2, and Gustafsson 1991):
#   factor = SAFETY * err_n^(-PI_ALPHA) * err_{n-1}^(PI_BETA)
# with PI_ALPHA = 1/5 - 0.75 * PI_BETA. PI_BETA = 0.04 is Hairer's default: a small
# integral-of-the-past term that damps step-size oscillation without slowing growth.
PI_SAFETY = 0.9
#: Smallest step-size factor per step (Hairer's FAC1): a rejection shrinks h at most 5x.
PI_MIN_FACTOR = 0.2
#: Largest step-size factor per step (Hairer's FAC2).
PI_MAX_FACTOR = 10.0
PI_BETA = 0.04
PI_ALPHA = 0.2 - 0.75 * PI_BETA
#: Floor of the previous error in the PI term (dopri5.f: FACOLD = MAX(ERR, 1e-4)).
PI_ERR_OLD_MIN = 1e-4


@_jit
def pi_factor(err, err_old, rejected):
    """Step-size factor ``h_new / h`` of the PI controller (dopri5.f), from error norms.

    `err` is the current scaled error norm (the step is accepted when ``err <= 1``),
    `err_old` the last accepted one (floored at ``PI_ERR_OLD_MIN``), `rejected` whether
    the previous attempt was rejected (then the step may not grow).
    """
    if err > 1.0:
        # Rejection: the I part alone, never below PI_MIN_FACTOR.
        return max(PI_MIN_FACTOR, PI_SAFETY * err ** (-PI_ALPHA))
    if err == 0.0:
        fac = PI_MAX_FACTOR
    else:
        fac = PI_SAFETY * err ** (-PI_ALPHA) * err_old**PI_BETA
    fac = max(PI_MIN_FACTOR, min(PI_MAX_FACTOR, fac))
    if rejected:
        fac = min(fac, 1.0)
    return fac


@_jit
def pi_accept(err, h, state):
    """The PI controller after an accepted step (see the module docstring)."""
    err_old, _h_old, _first, rejected = state
    fac = pi_factor(err, max(err_old, PI_ERR_OLD_MIN), rejected)
    return fac, (max(err, PI_ERR_OLD_MIN), h, False, False)


@_jit
def pi_reject(err, finite, h, state):
    """The PI controller after a rejected step (see the module docstring)."""
    err_old, h_old, first, _rejected = state
    if finite:
        fac = pi_factor(err, max(err_old, PI_ERR_OLD_MIN), True)
    else:
        fac = PI_MIN_FACTOR
    return fac, (err_old, h_old, first, True)


# ------------------------------------------------------------------- predictive controller
# Hairer's predictive controller for RODAS (Gustafsson 1994, Hairer-Wanner II (IV.8.21)):
#   factor = SAFETY * err^(-1/ORDER), and after the first step also
#   factor_pred = (h / h_old) * SAFETY * (err_old / err^2)^(1/ORDER),
# the smaller of the two. It anticipates the error trend, which avoids the repeated
# rejections the plain controller shows on stiff problems.
PRED_ORDER = 4  # the order of Rodas4, whose controller this is
PRED_SAFETY = 0.9
PRED_MIN_FACTOR = 0.2  # rodas.f FAC1 = 5: shrink at most 5x per step
PRED_MAX_FACTOR = 6.0  # rodas.f FAC2 = 1/6: grow at most 6x per step
PRED_ERR_OLD_MIN = 1e-2  # floor of the previous error in the predictive term


@_jit
def predictive_factor(err, err_old, h, h_old, first, rejected):
    """Step-size factor ``h_new / h`` of the predictive controller."""
    if err == 0.0:
        fac = PRED_MAX_FACTOR
    else:
        fac = PRED_SAFETY * err ** (-1.0 / PRED_ORDER)
    fac = max(PRED_MIN_FACTOR, min(PRED_MAX_FACTOR, fac))
    if err <= 1.0:
        if not first:
            if err == 0.0:
                pred = PRED_MAX_FACTOR
            else:
                pred = (h / h_old) * PRED_SAFETY * (err_old / (err * err)) ** (1.0 / PRED_ORDER)
            pred = max(PRED_MIN_FACTOR, min(PRED_MAX_FACTOR, pred))
            fac = min(fac, pred)
        if rejected:
            fac = min(fac, 1.0)
    return fac


@_jit
def predictive_accept(err, h, state):
    """The predictive controller after an accepted step (see the module docstring)."""
    err_old, h_old, first, rejected = state
    fac = predictive_factor(err, max(err_old, PRED_ERR_OLD_MIN), h, h_old, first, rejected)
    return fac, (max(err, PRED_ERR_OLD_MIN), h, False, False)


@_jit
def predictive_reject(err, finite, h, state):
    """The predictive controller after a rejected step (see the module docstring)."""
    err_old, h_old, first, _rejected = state
    if finite:
        fac = predictive_factor(err, max(err_old, PRED_ERR_OLD_MIN), h, h_old, first, True)
    else:
        fac = PRED_MIN_FACTOR
    return fac, (err_old, h_old, first, True)
