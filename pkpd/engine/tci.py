"""Target-controlled infusion: the pump's rates, on the exact solution of the pump's model.

A TCI pump (the STANPUMP family) runs a pharmacokinetic model of a typical patient and, every
update interval ``dt``, sets the infusion rate that brings the model's predicted concentration
to the target. The pump never measures the patient: its rates depend only on its own model,
the targets and its limits. They are therefore computed here once per distinct pump model
(usually once per cohort, or once per patient when the pump model has covariates) and
given to each virtual patient, who responds with their own parameters.

Plasma targeting (Jacobs 1990): the rate over ``[t, t + dt)`` that puts the predicted plasma
concentration on target at ``t + dt``,

    r = (C_T - c . Phi x) / (c . Gam),    clipped to [0, r_max],

with ``x(t + dt) = Phi x(t) + Gam r`` the exact one-interval propagation (``Phi = exp(M dt)``,
``Gam = int_0^dt exp(M s) b ds``) and ``c`` the row that reads the concentration.

Effect-site targeting (Shafer and Gregg 1992): the largest rate over the next interval whose
effect-site concentration, followed ahead with the pump stopped, never exceeds the target,

    r = min over s in (t, t + H] of (C_T - c . x_free(s)) / u(s - t),   clipped to [0, r_max],

where ``x_free`` is the state with no further drug and ``u`` the effect-site concentration
after a unit-rate infusion over ``[0, dt)`` (positive for every ``s > 0``). The minimum is
reached at the time of peak effect, where the concentration then equals the target: a
loading rate at the pump's maximum until the drug on board will carry the effect site to
its target, a pause while it gets there, then the rate that holds it. The search runs on a
sub-grid of ``dt / n_sub`` up to a horizon ``H`` past the unit response's peak (chosen by
:func:`horizon`); between sub-grid points the overshoot is of second order in the sub-step.

Every function here is plain numba over arrays (no allocation in the update loop).

References
----------
Jacobs JR. Algorithm for optimal linear model-based control with application to
pharmacokinetic model-driven drug delivery. IEEE Trans Biomed Eng 1990;37:107-109.
doi:10.1109/10.43622.
Shafer SL, Gregg KM. Algorithms to rapidly achieve and maintain stable drug concentrations at
the site of drug effect with a computer-controlled infusion pump. J Pharmacokinet Biopharm
1992;20:147-169. doi:10.1007/BF01070999.
"""

from __future__ import annotations

import numba
import numpy as np

from pkpd.engine import _stamp  # noqa: F401  (numba's cache: pkpd/engine/_stamp.py)
from pkpd.engine.kernels import _propagate

__all__ = ["free_rows", "horizon", "tci_rates", "unit_response"]

_jit = numba.njit(cache=True, nogil=True)


@_jit
def unit_response(Phi_h, Gam_h, c, n_sub, n_max):
    """``u[m]``: the concentration read by `c` at ``m`` sub-steps after the start of a
    unit-rate (1 mg/h) infusion lasting `n_sub` sub-steps, from an empty system;
    ``m = 0..n_max``."""
    n = Phi_h.shape[0]
    x = np.zeros(n)
    y = np.empty(n)
    u = np.zeros(n_max + 1)
    for m in range(1, n_max + 1):
        for i in range(n):
            s = 0.0
            for j in range(n):
                s += Phi_h[i, j] * x[j]
            y[i] = s + (Gam_h[i] if m <= n_sub else 0.0)
        v = 0.0
        for i in range(n):
            x[i] = y[i]
            v += c[i] * x[i]
        u[m] = v
    return u


@_jit
def free_rows(Phi_h, c, n):
    """``W[m] = c Phi_h^m`` for ``m = 0..n``: the row that reads the concentration `m`
    sub-steps ahead with no further drug (the effect-site rule's look-ahead, N flops per
    point instead of a matrix-vector product)."""
    W = np.empty((n + 1, c.shape[0]))
    W[0] = c
    for m in range(1, n + 1):
        for j in range(c.shape[0]):
            s = 0.0
            for i in range(c.shape[0]):
                s += W[m - 1, i] * Phi_h[i, j]
            W[m, j] = s
    return W


def horizon(u: np.ndarray) -> int:
    """Sub-steps searched ahead by the effect-site rule: four times the time to the peak of
    the unit response `u` (at least the end of the infusion that produced it), within
    ``u``'s length. Raises ValueError when `u` has not peaked within its length."""
    peak = int(np.argmax(u))
    if peak >= u.size - 1:
        raise ValueError("the unit response has not peaked within the searched time")
    return int(min(u.size - 1, max(4 * peak, 2)))


@_jit
def tci_rates(Phi, Gam, W, u, effect, targets, max_rate, rates, predicted):
    """The pump's rates for one pump model, one update per entry of `targets`.

    Parameters
    ----------
    Phi, Gam : (N, N), (N,)
        Exact propagation of the pump model over one update interval under a unit rate.
    W : (H + 1, N)
        :func:`free_rows`: ``W[0]`` reads the targeted concentration (mg/L) from the state,
        ``W[m]`` the same `m` sub-steps ahead with no further drug (``H`` is the searched
        horizon, effect-site rule; the plasma rule reads ``W[0]`` only).
    u : (H + 1,)
        :func:`unit_response` of the targeted concentration (effect-site rule).
    effect : bool
        Effect-site rule (else plasma).
    targets : (n_up,) float64
        Target (mg/L) in force over each update interval.
    max_rate : float
        The pump's maximum rate (mg/h).
    rates : (n_up,) float64
        Output: the rate (mg/h) over each interval.
    predicted : (n_up + 1,) float64
        Output: the pump's own prediction of the targeted concentration at each update
        time and at the end of the last interval.
    """
    n = Phi.shape[0]
    c = W[0]
    x = np.zeros(n)
    y = np.zeros(n)
    cg = 0.0
    for i in range(n):
        cg += c[i] * Gam[i]
    predicted[0] = 0.0
    for k in range(targets.shape[0]):
        T = targets[k]
        if effect:
            best = np.inf
            for m in range(1, u.shape[0]):
                v = 0.0
                for i in range(n):
                    v += W[m, i] * x[i]
                if u[m] > 0.0:
                    r = (T - v) / u[m]
                    if r < best:
                        best = r
            r = best
        else:
            v = 0.0
            for i in range(n):
                s = 0.0
                for j in range(n):
                    s += Phi[i, j] * x[j]
                v += c[i] * s
            r = (T - v) / cg
        if not r > 0.0:  # also NaN: no drug rather than an undefined rate
            r = 0.0
        if r > max_rate:
            r = max_rate
        rates[k] = r
        _propagate(Phi, Gam, r, x, y, n)
        v = 0.0
        for i in range(n):
            v += c[i] * x[i]
        predicted[k + 1] = v
