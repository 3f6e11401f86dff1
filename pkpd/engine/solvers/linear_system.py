"""Fill the state-space form of a linear compartment model from individual parameters.

One compiled function serves every linear model: the model's structure arrives as small
integer/float tables (built once by :mod:`pkpd.model`), the individual parameters as a
vector ``theta`` in internal units (h, mg, L). Nothing here imports xarray, formats a
string or raises.

Augmented state layout (``N = n_comp + 1 + n_analytes + n_outputs``)::

    x[0:n_comp]                       compartment states: amounts in mg, except effect
                                      sites, whose state is a concentration in mg/L
    x[n_comp]                         cumulative amount given (mg)
    x[n_comp+1 : n_comp+1+n_analytes] cumulative amount that left each analyte's mass
                                      compartments (eliminated or converted), in mg of
                                      that analyte
    x[n_comp+1+n_analytes : N]        cumulative AUC of each output (mg*h/L)

The accumulators make the system matrix singular (zero columns); the exact solver handles
that through the Van Loan augmented exponential, so cumulative dose, eliminated amount and
AUC are exact, not quadrature.

Flow kinds (``flows_i[:, 2]``)
------------------------------
0  rate constant     k = scale * theta[param]
1  clearance         k = scale * theta[param] / V_from
2  mean transit time k = scale / theta[param]   (scale = number of transit steps n)

Effect-site kinds (``effects_i[:, 3]``)
--------------------------------------
0  ke0 given as a rate constant   ke0 = theta[param]
2  ke0 given as a half-life       ke0 = ln 2 / theta[param]
"""

from __future__ import annotations

import numba

from pkpd.engine import _stamp  # noqa: F401  (numba's cache: pkpd/engine/_stamp.py)

FLOW_RATE_CONSTANT = 0
FLOW_CLEARANCE = 1
FLOW_TRANSIT = 2
KE0_RATE = 0
KE0_HALF_LIFE = 2

LN2 = 0.6931471805599453


@numba.njit(cache=True, nogil=True)
def fill_system(
    theta,
    comps_i,
    flows_i,
    flows_f,
    effects_i,
    outputs_i,
    dose_comp,
    n_analytes,
    M,
    b,
    C,
):
    """Fill the augmented system matrix, input map and output map in place.

    Parameters
    ----------
    theta : (n_par,) float64
        Individual parameters in internal units.
    comps_i : (n_comp, 3) int64
        Per compartment: volume parameter index (-1 if none), analyte index, is-effect flag.
    flows_i : (n_flow, 5) int64
        Per flow: from, to (-1 = out of the body), kind, parameter index, fraction
        parameter index (-1 = use ``flows_f[:, 1]``).
    flows_f : (n_flow, 3) float64
        Per flow: scale, constant fraction, molar-mass ratio (to/from) applied to the
        amount arriving.
    effects_i : (n_eff, 4) int64
        Per effect site: compartment, linked compartment, parameter index, ke0 kind.
    outputs_i : (n_out, 2) int64
        Per output: compartment index, flag (1: state already a concentration).
    dose_comp : int
        Compartment receiving boluses and infusions.
    n_analytes : int
        Number of analytes (parent and metabolites).
    M : (N, N) float64
        Output: system matrix, ``dx/dt = M x + b * rate``.
    b : (N,) float64
        Output: input map for a unit rate (also the jump of a unit bolus).
    C : (n_out, n_comp) float64
        Output: concentration outputs in mg/L, ``c = C x[:n_comp]``.
    """
    n_comp = comps_i.shape[0]
    N = M.shape[0]
    for i in range(N):
        b[i] = 0.0
        for j in range(N):
            M[i, j] = 0.0
    for o in range(C.shape[0]):
        for j in range(n_comp):
            C[o, j] = 0.0

    for f in range(flows_i.shape[0]):
        src = flows_i[f, 0]
        dst = flows_i[f, 1]
        kind = flows_i[f, 2]
        p = flows_i[f, 3]
        scale = flows_f[f, 0]
        if kind == FLOW_RATE_CONSTANT:
            k = scale * theta[p]
        elif kind == FLOW_CLEARANCE:
            k = scale * theta[p] / theta[comps_i[src, 0]]
        else:
            k = scale / theta[p]
        M[src, src] -= k
        if dst >= 0:
            fp = flows_i[f, 4]
            frac = theta[fp] if fp >= 0 else flows_f[f, 1]
            M[dst, src] += k * frac * flows_f[f, 2]

    for e in range(effects_i.shape[0]):
        ec = effects_i[e, 0]
        link = effects_i[e, 1]
        p = effects_i[e, 2]
        if effects_i[e, 3] == KE0_HALF_LIFE:
            ke0 = LN2 / theta[p]
        else:
            ke0 = theta[p]
        # dCe/dt = ke0 * (A_link / V_link - Ce): linear in the amounts.
        M[ec, link] += ke0 / theta[comps_i[link, 0]]
        M[ec, ec] -= ke0

    # Cumulative amount leaving each analyte: minus the column sums of the analyte's own
    # mass rows. Derived from M itself so it stays right for any flow structure.
    for j in range(n_comp):
        if comps_i[j, 2] == 1:
            continue
        a = comps_i[j, 1]
        s = 0.0
        for i in range(n_comp):
            if comps_i[i, 2] == 0 and comps_i[i, 1] == a:
                s += M[i, j]
        M[n_comp + 1 + a, j] = -s

    for o in range(outputs_i.shape[0]):
        c = outputs_i[o, 0]
        if outputs_i[o, 1] == 1:
            C[o, c] = 1.0
        else:
            C[o, c] = 1.0 / theta[comps_i[c, 0]]
        for j in range(n_comp):
            M[n_comp + 1 + n_analytes + o, j] = C[o, j]

    b[dose_comp] = 1.0
    b[n_comp] = 1.0
