"""A regimen's target-controlled infusion as per-patient event tables.

The pump of a `[tci]` regimen (:class:`pkpd.inputs.tci.TCI`) runs the typical patient of its
own model, at each virtual patient's covariates (no random effects: a pump knows the
patient's weight and age, not their clearance), and sets a new rate every update interval
(:mod:`pkpd.engine.tci`). Each patient then receives those rates through their own
parameters, so a cohort shows how the pump's model performs across a population
(:func:`pkpd.analysis.tci_performance.performance`).

:func:`event_arrays` is the event table of any regimen, with or without a pump: the
regimen's own doses plus the pump's rates. Patients whose pump model, start, stop and
targets coincide (a pump model without covariates, fixed event times) share one computation.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import scipy.linalg

from pkpd.engine.tci import free_rows, horizon, tci_rates, unit_response
from pkpd.errors import RegimenError
from pkpd.inputs.model import ModelSpec, load_model
from pkpd.inputs.regimen import Regimen
from pkpd.inputs.tci import TCI

__all__ = [
    "N_SUB",
    "check",
    "event_arrays",
    "event_bytes",
    "merge",
    "pump_output",
    "pump_schedule",
]

#: Sub-steps of an update interval on which the effect-site rule looks ahead.
N_SUB = 4
#: The longest time (h) over which the effect-site rule looks for the unit response's peak.
_PEAK_SEARCH_H = 6.0


def pump_output(spec: ModelSpec, site: str) -> int:
    """Index of the output the pump targets: the parent drug's concentration in the dosing
    compartment (plasma) or in the effect site linked to it (effect)."""
    if not spec.is_linear:
        raise RegimenError(
            f"model {spec.name!r}: a TCI pump runs a linear model (the exact solution); "
            "this is an [ode] model"
        )
    comps = list(spec.compartments)
    dose = comps[spec.dose_index]
    for i, o in enumerate(spec.outputs):
        c = spec.compartments[o.compartment]
        if o.analyte != spec.parent:
            continue
        if site == "plasma" and o.compartment == dose:
            return i
        if site == "effect" and c.type == "effect" and c.link == dose:
            return i
    what = "effect site linked to its dosing compartment" if site == "effect" else "plasma output"
    raise RegimenError(f"model {spec.name!r} has no {what}: a {site} TCI cannot run it")


def check(regimen: Regimen, spec: ModelSpec) -> None:
    """Refuse a pump that cannot run with `spec`'s patients: a pump model that is not
    linear or lacks the targeted site, or that models another drug."""
    if regimen.tci is None:
        return
    pump = load_model(regimen.tci.model)
    pump_output(pump, regimen.tci.site)
    if pump.drug.strip().lower() != spec.drug.strip().lower():
        raise RegimenError(
            f"{regimen.file or regimen.name or 'the regimen'}: its TCI pump runs "
            f"{pump.name!r} ({pump.drug}) but the patients are simulated with {spec.name!r} "
            f"({spec.drug}): a pump delivers the drug of its own model"
        )


def _propagators(spec: ModelSpec, theta: np.ndarray, out: int, dt: float, effect: bool):
    """``(Phi, Gam, W, u)`` of the pump model at parameters `theta` (compartments
    only: the accumulators do not feed back)."""
    M, b, C = spec.system(theta)
    nc = spec.n_comp
    A = np.zeros((nc + 1, nc + 1))
    A[:nc, :nc] = M[:nc, :nc]
    A[:nc, nc] = b[:nc]
    c = np.ascontiguousarray(C[out, :nc])
    if not effect:
        E = scipy.linalg.expm(A * dt)
        Phi, Gam = np.ascontiguousarray(E[:nc, :nc]), np.ascontiguousarray(E[:nc, nc])
        return Phi, Gam, c.reshape(1, -1), np.zeros(1)
    # The sub-step's exponential, squared up to the interval (N_SUB = 4: twice).
    Eh = scipy.linalg.expm(A * (dt / N_SUB))
    E = np.linalg.matrix_power(Eh, N_SUB)
    Phi, Gam = np.ascontiguousarray(E[:nc, :nc]), np.ascontiguousarray(E[:nc, nc])
    Phi_h, Gam_h = np.ascontiguousarray(Eh[:nc, :nc]), np.ascontiguousarray(Eh[:nc, nc])
    u = unit_response(Phi_h, Gam_h, c, N_SUB, math.ceil(_PEAK_SEARCH_H / (dt / N_SUB)))
    try:
        n_hor = horizon(u)
    except ValueError:
        raise RegimenError(
            f"model {spec.name!r}: the effect site does not peak within {_PEAK_SEARCH_H:g} h "
            "of an infusion; effect-site TCI needs a faster effect site (ke0)"
        ) from None
    return Phi, Gam, free_rows(Phi_h, c, n_hor), u[: n_hor + 1]


def _times(tci: TCI, anchors: dict, n: int):
    """Per-patient start, stop and target times (h) and target concentrations (mg/L)."""

    def at(anchor, off):
        if anchor is None:
            return np.full(n, float(off))
        return np.broadcast_to(np.asarray(anchors[anchor], dtype=float), (n,)) + off

    tt = np.stack([at(t.at_anchor, t.at) for t in tci.targets], axis=1)
    tc = np.array([t.concentration.value for t in tci.targets])
    stop = at(tci.stop_anchor, tci.stop)
    if np.any(np.diff(tt, axis=1) <= 0):
        bad = int(np.nonzero(np.any(np.diff(tt, axis=1) <= 0, axis=1))[0][0])
        raise RegimenError(
            f"TCI targets out of time order for patient index {bad} once the event times are "
            f"drawn: {tt[bad].tolist()} h"
        )
    if np.any(stop <= tt[:, 0]):
        bad = int(np.nonzero(stop <= tt[:, 0])[0][0])
        raise RegimenError(
            f"the TCI stops at {stop[bad]:g} h for patient index {bad}, not after its first "
            f"target at {tt[bad, 0]:g} h"
        )
    return tt[:, 0], stop, tt, tc


def pump_schedule(tci: TCI, covariates: dict, weight: np.ndarray, anchors: dict | None = None):
    """The pump's rates for `n` patients.

    Returns
    -------
    t, rate : (n, K) float64
        Update times (h), then the stop (rate 0), padded with the stop; the rate (mg/h)
        from each time to the next.
    predicted : (n, K) float64
        The pump's own prediction of the targeted concentration (mg/L) at each time.
    """
    weight = np.asarray(weight, dtype=float)
    n = weight.shape[0]
    spec = load_model(tci.model)
    out = pump_output(spec, tci.site)
    effect = tci.site == "effect"
    cov = {k: v for k, v in (covariates or {}).items() if k in spec.covariates}
    theta = np.atleast_2d(spec.individual_parameters(cov, None, warn=False))
    theta = np.broadcast_to(theta, (n, theta.shape[1]))
    max_rate = tci.max_rate.value * (weight if tci.max_rate.per_kg else np.ones(n))
    if tci.max_rate.per_kg and not np.all(np.isfinite(max_rate) & (max_rate > 0)):
        raise RegimenError("the TCI max_rate is per kg: every patient needs a positive weight")
    start, stop, tt, tc = _times(tci, anchors or {}, n)
    dt = tci.update
    n_up = np.maximum(1, np.ceil((stop - start) / dt - 1e-9).astype(np.int64))
    K = int(n_up.max()) + 1
    t = np.empty((n, K))
    rate = np.zeros((n, K))
    pred = np.zeros((n, K))
    systems: dict[bytes, tuple] = {}
    done: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    for p in range(n):
        m = int(n_up[p])
        tp = start[p] + dt * np.arange(m)
        # The target in force at each update: the last one started at or before it.
        idx = np.searchsorted(tt[p], tp + 1e-12 * dt, side="right") - 1
        targets = tc[np.maximum(idx, 0)]
        key = (theta[p].tobytes(), targets.tobytes(), float(max_rate[p]))
        if key not in done:
            tkey = theta[p].tobytes()
            if tkey not in systems:
                systems[tkey] = _propagators(spec, theta[p], out, dt, effect)
            Phi, Gam, W, u = systems[tkey]
            r, pr = np.empty(m), np.empty(m + 1)
            tci_rates(Phi, Gam, W, u, effect, targets, float(max_rate[p]), r, pr)
            done[key] = (r, pr)
        r, pr = done[key]
        t[p, :m] = tp
        t[p, m:] = stop[p]
        rate[p, :m] = r
        pred[p, : m + 1] = pr
        pred[p, m + 1 :] = pr[-1]
    return t, rate, pred


@numba.njit(cache=True, parallel=True)
def merge(t1, r1, b1, t2, r2, b2, t, r, b):
    """Per row, the union of two event tables (rates add, boluses kept)."""
    for p in numba.prange(t1.shape[0]):
        i = j = k = 0
        ra = rb = 0.0
        K1, K2 = t1.shape[1], t2.shape[1]
        while i < K1 or j < K2:
            if j >= K2 or (i < K1 and t1[p, i] <= t2[p, j]):
                t[p, k], ra, b[p, k] = t1[p, i], r1[p, i], b1[p, i]
                i += 1
            else:
                t[p, k], rb, b[p, k] = t2[p, j], r2[p, j], b2[p, j]
                j += 1
            r[p, k] = ra + rb
            k += 1


def event_bytes(regimen: Regimen) -> int:
    """Bytes per patient of the pump's event tables in a chunk (for the memory estimate):
    the pump's rows, its predictions and the merged table, three float64 arrays each,
    with the declared event times and a margin of half for times that vary."""
    if regimen.tci is None:
        return 0
    try:
        tci = regimen.resolve().tci
    except RegimenError:  # an event without a default: the cohort draws it
        tci = None
    if tci is None:
        return 0
    rows = (tci.stop - tci.targets[0].at) / tci.update + 2
    return int(1.5 * 3 * 3 * 8 * max(rows, 2))


def cohort_event_arrays(regimen: Regimen, ds, weight):
    """The event tables of a simulated cohort's patients, rebuilt from its dataset `ds`
    (their event times and covariates are its coordinates): the doses and a TCI pump's
    rates as :func:`event_arrays` gives them. A PCA pump's deliveries are not in them:
    its per-patient amounts are the dataset's ``pca_dose`` and ``pca_dose_at``."""
    anchors = {a: ds[a].values.astype(float) for a in regimen.anchor_names if a in ds.coords}
    cov = {k: ds[k].values for k in ds.coords if ds[k].dims == ("patient",)}
    return event_arrays(regimen, weight, anchors, cov)


def event_arrays(regimen: Regimen, weight, anchors=None, covariates=None):
    """The regimen's per-patient event tables ``(t, rate, bolus)``, each ``(n, K)``: its
    doses (:meth:`~pkpd.inputs.regimen.Regimen.event_arrays`) and the rates of its TCI
    pump, if it has one (computed at the patients' `covariates`)."""
    doses = regimen.event_arrays(weight, anchors, doses_only=True)
    if regimen.tci is None:
        return doses
    given = dict(anchors or {})
    if regimen.tci.anchor_names - set(given):  # the declared defaults (or a clear error)
        given = {**regimen.anchor_times(), **given}
    t2, r2, _pred = pump_schedule(regimen.tci, covariates, weight, given)
    if doses[0].shape[1] == 0:  # the pump alone
        return t2, r2, np.zeros_like(t2)
    t1, r1, b1 = (np.ascontiguousarray(a, dtype=float) for a in doses)
    n, K = t2.shape[0], t1.shape[1] + t2.shape[1]
    t, r, b = np.empty((n, K)), np.empty((n, K)), np.empty((n, K))
    merge(t1, r1, b1, t2, r2, np.zeros((n, t2.shape[1])), t, r, b)
    return t, r, b
