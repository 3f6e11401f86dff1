"""Patient-controlled analgesia (PCA): each patient's demands and the pump's deliveries.

A PCA pump gives a fixed bolus when the patient presses its button, unless the pump is in
its lockout interval after the last delivery, an hourly (or 4-hourly) limit would be
exceeded, or the reservoir cannot supply it; it may also run a background infusion. The
patient presses when in pain: demand is a point process whose intensity (hazard, 1/h)
rises with the patient's pain, and the pain falls with the analgesic concentration the
patient has on board. The loop is closed: every delivery lowers the pain and so the next
demand. This module runs that loop for every patient of a chunk, in parallel, with the
patient's own parameters and exact propagation between decision times.

The demand process is simulated exactly by *thinning* (Lewis and Shedler 1979): candidate
times form a homogeneous Poisson process of rate ``lam_p`` (patient `p`'s largest possible
hazard, at their highest pain with no drug); a candidate at time `t` is a demand with
probability ``hazard(pain(t)) / lam_p``. The candidates' exponential gaps and acceptance
uniforms are drawn before the run from the cohort's seed (one stream per patient, see
:mod:`pkpd.running.pca`), so the demand stream of a patient is reproducible and common to
regimens compared side by side: what changes between them is only how each regimen's
concentrations accept or reject the same candidates.

Between decision times (the patient's other doses, candidate times, the pump starting,
stopping or running dry) the input is constant and the state advances by the exact
propagator (:func:`pkpd.engine.solvers.expm.propagator_into`). The deliveries come out as
times; :mod:`pkpd.running.pca` turns them into event-table rows, so the metrics kernel
replays exactly the doses this loop gave, with every stepper, metric and band.

Model of one patient (parameters from a demand-model file, :mod:`pkpd.inputs.demand`)::

    base(t)  = floor + (p0 - floor) exp(-k (t - t_on))          pain without drug (NRS)
    pain(t)  = base(t) (1 - emax C^g / (c50^g + C^g))
    hazard   = h_max pain^n / (p50^n + pain^n)                   demands per hour

with `C` the concentration of the model output named by the demand model (mg/L).

Reference: Lewis PAW, Shedler GS. Simulation of nonhomogeneous Poisson processes by
thinning. Naval Research Logistics Quarterly 1979;26:403-413. doi:10.1002/nav.3800260304.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from pkpd.engine import _stamp  # noqa: F401  (numba's cache: pkpd/engine/_stamp.py)
from pkpd.engine.solvers.expm import N_WORK, propagator_into
from pkpd.engine.solvers.linear_system import fill_system

__all__ = [
    "COUNT_NAMES",
    "PCA_EXPM_FAILED",
    "PCA_OK",
    "PCA_STREAM_SHORT",
    "base_pain",
    "hazard",
    "pain",
    "pca_kernel",
]

#: Per-patient status of :func:`pca_kernel`.
PCA_OK = 0
#: The candidate stream ended before the pump stopped (too few candidates were drawn).
PCA_STREAM_SHORT = 1
#: A matrix exponential failed (non-finite parameters).
PCA_EXPM_FAILED = 2

#: Columns of the per-patient counts.
COUNT_NAMES = ("demands", "deliveries", "refused_lockout", "refused_limit", "refused_empty")

_jit = numba.njit(cache=True, nogil=True)


@_jit
def base_pain(t, t_on, p0, floor, k):
    """Pain without drug (NRS) at `t` (h); `p0` at the pump's start `t_on`."""
    return floor + (p0 - floor) * math.exp(-k * max(t - t_on, 0.0))


@_jit
def pain(base, c, relief):
    """Pain under concentration `c` (mg/L): ``relief = (emax, c50, gamma)``."""
    if c < 0.0:
        c = 0.0
    g = relief[2]
    cg = c**g
    return base * (1.0 - relief[0] * cg / (relief[1] ** g + cg))


@_jit
def hazard(pn, hz):
    """Demand hazard (1/h) at pain `pn`: ``hz = (h_max, p50, n)``."""
    if pn <= 0.0:
        return 0.0
    q = pn ** hz[2]
    return hz[0] * q / (hz[1] ** hz[2] + q)


@_jit
def _within_limits(out_t, p, nb, t, lim_w, lim_a, bol, bg, t_on, t_bg_end):
    """Whether a bolus at `t` keeps every limit: the amount delivered in ``(t - w, t]``
    (boluses and background) plus the bolus stays within the limit's amount."""
    for li in range(lim_w.shape[0]):
        w = lim_w[li]
        s = bol
        j = nb - 1
        while j >= 0 and out_t[p, j] > t - w:
            s += bol
            j -= 1
        lo = max(t - w, t_on)
        hi = min(t, t_bg_end)
        if hi > lo:
            s += bg * (hi - lo)
        if s > lim_a[li] * (1.0 + 1e-12):
            return False
    return True


@_jit
def _refusal(out_t, p, nb, t, lockout, dry, left, bol, lim_w, lim_a, bg, t_on, t_bg_end):
    """Why the pump refuses a demand at `t`, as a column of the counts: 2 in lockout (since
    the last delivery), 4 reservoir empty (`left` mg in it), 3 a limit; 0: it delivers."""
    if nb > 0 and t - out_t[p, nb - 1] < lockout:
        return 2
    if dry or left < bol * (1.0 - 1e-12):
        return 4
    if not _within_limits(out_t, p, nb, t, lim_w, lim_a, bol, bg, t_on, t_bg_end):
        return 3
    return 0


@numba.njit(cache=True, parallel=True)
def pca_kernel(
    theta,
    comps_i,
    flows_i,
    flows_f,
    effects_i,
    outputs_i,
    dose_comp,
    n_analytes,
    out_index,
    ev_t,
    ev_rate,
    ev_bolus,
    t_on,
    t_off,
    bol,
    bg,
    reservoir,
    lockout,
    lim_w,
    lim_a,
    pain_par,
    relief,
    hz,
    lam,
    gaps,
    accept_u,
    out_t,
    out_c,
    dem_t,
    counts,
    t_empty,
    status,
):
    """Run every patient's PCA loop; fill the outputs in place.

    Parameters
    ----------
    theta : (n, n_par) float64
        Individual parameters (internal units); model tables as for
        :func:`pkpd.engine.solvers.linear_system.fill_system`.
    out_index : int
        The output whose concentration relieves pain.
    ev_t, ev_rate, ev_bolus : (n, K) float64
        The patient's other doses of the same drug (event table: time h, rate mg/h from
        then on, bolus mg).
    t_on, t_off : (n,) float64
        When the pump starts and stops (h).
    bol, bg, reservoir : (n,) float64
        Demand bolus (mg), background rate (mg/h), drug in the reservoir (mg; ``inf``:
        no limit).
    lockout : float
        Lockout interval (h) after each delivery.
    lim_w : (L,) float64, lim_a : (n, L) float64
        Limits: at most ``lim_a[p, l]`` mg delivered (boluses and background) in any window
        of ``lim_w[l]`` hours.
    pain_par : (n, 3) float64
        Per patient ``(p0, floor, k)`` of the pain course (NRS, NRS, 1/h).
    relief : (n, 3) float64, hz : (3,) float64
        Per patient ``(emax, c50 mg/L, gamma)`` of the relief, and the hazard
        ``(h_max 1/h, p50, n)``.
    lam : (n,) float64
        Each patient's thinning rate (1/h): the hazard at their highest pain, no drug.
    gaps, accept_u : (n, Kc) float64
        Standard exponential gaps between candidates and their acceptance uniforms.
    out_t, out_c : (n, Kb) float64
        Output: delivery times (h), ``inf`` after the last, and the concentration (mg/L)
        just before each delivery.
    dem_t : (n, Kc) float64
        Output: demand times (h) (delivered or not), ``inf`` after the last.
    counts : (n, 5) int64
        Output: demands, deliveries, refused in lockout, refused by a limit, refused for
        an empty reservoir (:data:`COUNT_NAMES`).
    t_empty : (n,) float64
        Output: when the reservoir could first not supply the pump (h), ``inf`` if never.
    status : (n,) int64
        Output: :data:`PCA_OK`, :data:`PCA_STREAM_SHORT` or :data:`PCA_EXPM_FAILED`.
    """
    n_comp = comps_i.shape[0]
    n_out = outputs_i.shape[0]
    N = n_comp + 1 + n_analytes + n_out
    for p in numba.prange(theta.shape[0]):
        M = np.zeros((N, N))
        b = np.zeros(N)
        C = np.zeros((n_out, n_comp))
        fill_system(
            theta[p], comps_i, flows_i, flows_f, effects_i, outputs_i, dose_comp, n_analytes,
            M, b, C,
        )  # fmt: skip
        # The compartments alone: the accumulators do not feed back.
        Mc = np.ascontiguousarray(M[:n_comp, :n_comp])
        bc = np.ascontiguousarray(b[:n_comp])
        crow = np.ascontiguousarray(C[out_index])
        status[p] = _patient(
            np.uint64(p), Mc, bc, crow, ev_t, ev_rate, ev_bolus, t_on, t_off, bol, bg,
            reservoir, lockout, lim_w, lim_a, pain_par, relief, hz, lam, gaps,
            accept_u, out_t, out_c, dem_t, counts, t_empty,
        )  # fmt: skip


@_jit
def _patient(p, M, b, crow, ev_t, ev_rate, ev_bolus, t_on, t_off, bol, bg, reservoir, lockout,
             lim_w, lim_a, pain_par, relief, hz, lam, gaps, accept_u, out_t, out_c,
             dem_t, counts, t_empty):  # fmt: skip
    """One patient's loop (see :func:`pca_kernel`); returns the status."""
    n = M.shape[0]
    Maug = np.zeros((n + 1, n + 1))
    Eaug = np.zeros((n + 1, n + 1))
    ework = np.zeros((N_WORK, n + 1, n + 1))
    epiv = np.zeros(n + 1, dtype=np.int64)
    x = np.zeros(n)
    xt = np.zeros(n)
    for j in range(out_t.shape[1]):
        out_t[p, j] = np.inf
        out_c[p, j] = np.nan
    for j in range(dem_t.shape[1]):
        dem_t[p, j] = np.inf
    for j in range(counts.shape[1]):
        counts[p, j] = 0
    t_empty[p] = np.inf
    K = ev_t.shape[1]
    Kc = gaps.shape[1]
    on, off = t_on[p], t_off[p]
    p0, floor, kk = pain_par[p, 0], pain_par[p, 1], pain_par[p, 2]
    lam_p = lam[p]
    i = 0  # next base event
    k = 0  # next candidate
    tc = np.inf
    if lam_p > 0.0 and Kc > 0:
        tc = on + gaps[p, 0] / lam_p
    t = on
    if K > 0 and ev_t[p, 0] < t:
        t = ev_t[p, 0]
    base_rate = 0.0
    started = False
    stopped = False
    dry = False
    t_bg_end = off  # when the background stops: the stop, or when it runs the reservoir dry
    given = 0.0  # mg of demand boluses delivered
    nb = 0
    nd = 0
    while True:
        tb = ev_t[p, i] if i < K else np.inf
        ts = np.inf  # the pump's next switch: start, stop, background running dry
        if not started:
            ts = on
        elif not stopped:
            ts = off
            if not dry and bg[p] > 0.0:
                t_dry = on + (reservoir[p] - given) / bg[p]
                if t_dry < ts:
                    ts = t_dry
        tcc = tc if (started and not stopped) else np.inf
        tau = min(tb, ts, tcc)
        if tau == np.inf:
            break
        h = tau - t
        if h > 0.0:
            rate = base_rate + (bg[p] if started and not stopped and not dry else 0.0)
            if propagator_into(M, b, h, Maug, Eaug, ework, epiv) != 0:
                return PCA_EXPM_FAILED
            for r in range(n):
                acc = Eaug[r, n] * rate
                for c in range(n):
                    acc += Eaug[r, c] * x[c]
                xt[r] = acc
            for r in range(n):
                x[r] = xt[r]
            t = tau
        if tb == tau:  # the patient's other doses
            for r in range(n):
                x[r] += b[r] * ev_bolus[p, i]
            base_rate = ev_rate[p, i]
            i += 1
            continue
        if ts == tau:
            if not started:
                started = True
            elif tau >= off:
                stopped = True
            else:  # the background ran the reservoir dry
                dry = True
                t_bg_end = tau
                if t_empty[p] == np.inf:
                    t_empty[p] = tau
            continue
        # A candidate: a demand if the patient's pain makes it one.
        conc = 0.0
        for r in range(n):
            conc += crow[r] * x[r]
        pn = pain(base_pain(tau, on, p0, floor, kk), conc, relief[p])
        if accept_u[p, k] * lam_p < hazard(pn, hz):
            dem_t[p, nd] = tau
            nd += 1
            counts[p, 0] += 1
            left = reservoir[p] - given - bg[p] * (min(tau, t_bg_end) - on)
            why = _refusal(out_t, p, nb, tau, lockout, dry, left, bol[p], lim_w, lim_a[p],
                           bg[p], on, t_bg_end)  # fmt: skip
            if why > 0:
                counts[p, why] += 1
                if why == 4 and t_empty[p] == np.inf:
                    t_empty[p] = tau
            else:
                out_t[p, nb] = tau
                out_c[p, nb] = conc
                nb += 1
                counts[p, 1] += 1
                given += bol[p]
                for r in range(n):
                    x[r] += b[r] * bol[p]
        k += 1
        if k < Kc:
            tc = tau + gaps[p, k] / lam_p
        elif tau < off:  # the next candidate may fall before the stop: too few were drawn
            return PCA_STREAM_SHORT
        else:
            tc = np.inf
    for r in range(n):
        if not math.isfinite(x[r]):
            return PCA_EXPM_FAILED
    return PCA_OK
