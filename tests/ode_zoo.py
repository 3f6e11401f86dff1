"""Test problems for the adaptive solvers, compiled once and cached on disk.

One right-hand side serves every problem (``p[0]`` selects it), so the solvers are
compiled for it once; the wrappers refer to it as a global, so numba's disk cache holds
them between test runs (a function receiving a dispatcher as an argument is not cached).

Problems (``p[0]``):

0. Robertson's chemical kinetics (Hairer-Wanner II, Sec. IV.1), stiff.
1. ``y' = y^2``: blows up at ``t = 1 / y0``.
2. ``y' = log(y)``: NaN for ``y < 0``.
3. Van der Pol, ``y1' = y2``, ``y2' = mu ((1 - y1^2) y2 - y1)`` with ``mu = p[1]``.
4. One-compartment Michaelis-Menten elimination with infusion ``u``:
   ``A' = u - Vmax (A/V) / (Km + A/V)``, ``p = [4, V, Vmax, Km]``.
"""

from __future__ import annotations

import math

import numba

from pkpd.engine.solvers.dopri5 import dopri5_solve
from pkpd.engine.solvers.rosenbrock import no_jac, rodas_solve

ROBERTSON = 0.0
BLOWUP = 1.0
LOG = 2.0
VAN_DER_POL = 3.0
MM = 4.0


@numba.njit(cache=True, error_model="numpy")
def zoo_rhs(t, y, u, p, dy):
    k = p[0]
    if k == 0.0:
        dy[0] = -0.04 * y[0] + 1e4 * y[1] * y[2]
        dy[2] = 3e7 * y[1] * y[1]
        dy[1] = -dy[0] - dy[2]
    elif k == 1.0:
        dy[0] = y[0] * y[0]
    elif k == 2.0:
        # NaN below zero, as numba's error_model="numpy" gives (and also without JIT).
        dy[0] = math.log(y[0]) if y[0] > 0.0 else math.nan
    elif k == 3.0:
        dy[0] = y[1]
        dy[1] = p[1] * ((1.0 - y[0] * y[0]) * y[1] - y[0])
    else:
        c = y[0] / p[1]
        dy[0] = u - p[2] * c / (p[3] + c)


@numba.njit(cache=True, error_model="numpy")
def zoo_dopri5_into(
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
    nstiff,
    out,
    work,
    stats,
):
    return dopri5_solve(
        zoo_rhs,
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
        nstiff,
        out,
        work,
        stats,
    )


@numba.njit(cache=True, error_model="numpy")
def zoo_rodas_into(
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
    return rodas_solve(
        zoo_rhs,
        no_jac,
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
        1,
        1,
        out,
        work,
        mats,
        ipiv,
        stats,
    )


KERNELS = (zoo_dopri5_into, zoo_rodas_into)
