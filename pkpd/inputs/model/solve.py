"""Models at run time: solving an ``[ode]`` model for one patient and its dataset
variables, the inputs of its generated cohort kernels, the unit of each output, and the
left and right limits of the outputs at bolus times (for linear models too).
"""

from __future__ import annotations

import numpy as np

from pkpd.engine import dosing
from pkpd.engine.solvers import N_STATS, Status
from pkpd.engine.solvers import registry as reg
from pkpd.errors import ModelError, SimulationError
from pkpd.inputs.units import MG_L_TO_NG_ML

__all__ = [
    "PEAK_ATTRS",
    "bolus_on_grid",
    "cohort_inputs",
    "dataset_variables",
    "first_dose_time",
    "ode_peaks",
    "output_scales",
    "record_bolus_limits",
    "solve",
]


def solve(spec, theta, covariates, ev, t, method, rtol, atol, max_steps=None):
    """Solve an ``[ode]`` model for one patient.

    Returns ``(Y, outputs, solver_attrs)``: the augmented state ``(n_t, n_aug)``, the
    outputs ``(n_t, n_out)`` in internal units, and dataset attributes naming the solver
    and its counters. `method` ``"auto"`` is Dopri5, or Rodas4 when the file says
    ``stiff = true`` or Dopri5 detects stiffness.
    """
    chosen, auto_stiff, note = reg.resolve(method, spec)
    ode = spec.ode
    p = ode.parameter_vector(theta, covariates, first_dose_time(ev.t, ev.rate, ev.bolus))
    y0 = ode.initial_state(p)
    b = ode.bolus_map()
    t0 = min(0.0, float(ev.t[0]) if ev.t.size else 0.0, float(t[0]))
    kw = {"t0": t0, "rtol": rtol, "atol": atol}
    if max_steps is not None:
        kw["max_steps"] = max_steps
    Y, status, stats = reg.run(chosen, ode.kernels(), p, b, y0, ev.t, ev.rate, ev.bolus, t, **kw)
    if status == Status.STIFF and auto_stiff:
        first = stats
        chosen = reg.STIFF_FALLBACK
        Y, status, stats = reg.run(
            chosen, ode.kernels(), p, b, y0, ev.t, ev.rate, ev.bolus, t, **kw
        )
        note = (
            f"auto: Dopri5 detected stiffness after {first['nsteps']} steps "
            f"({first['nfev']} evaluations); solved again with {reg.SOLVERS[chosen].method}"
        )
    if status != Status.OK:
        raise SimulationError(f"{spec.file or spec.name}: {reg.failure(chosen, status)}")
    O = ode.evaluate_outputs(t, Y, p)
    bad = ~np.isfinite(O)
    if bad.any():
        r, j = (int(i[0]) for i in np.nonzero(bad))
        raise SimulationError(
            f"{spec.file or spec.name}: output `{ode.outputs[j].name}` = "
            f"{ode.outputs[j].text!r} is {O[r, j]} at t = {t[r]:g} h "
            f"(status {Status.OUTPUT_NONFINITE:d}): {Status.OUTPUT_NONFINITE.message}"
        )
    return Y, O, reg.attrs(chosen, rtol, atol, stats, note)


#: Attributes of each output of one patient: Cmax (in the output's unit) and Tmax (h) of
#: the solution over the simulated span, maxima between output times included (the exact
#: solution of a linear model; for an ``[ode]`` model the solver's, to its tolerances).
PEAK_ATTRS = ("cmax_exact", "tmax_exact")


def ode_peaks(spec, theta, covariates, ev, t, method, rtol, atol):
    """Cmax and Tmax (internal units, h) of each output of one patient of an ``[ode]``
    model over the output times `t`, maxima between them included: the generated cohort
    kernel of `method` run for this one patient, so the values are those a cohort reports
    (:mod:`pkpd.engine.peaks_adaptive`). Raises SimulationError if the solve fails."""
    evs = tuple(np.ascontiguousarray(a, dtype=float)[None, :] for a in (ev.t, ev.rate, ev.bolus))
    P, B, Y0, auc_index, kernels = cohort_inputs(spec, theta[None, :], covariates, evs)
    N = Y0.shape[1]
    n_out = len(spec.ode.outputs)
    t = np.ascontiguousarray(t, dtype=float)
    t0 = min(0.0, float(ev.t[0]) if ev.t.size else 0.0, float(t[0]))
    cmax, tmax = np.empty((1, n_out)), np.empty((1, n_out))
    status = np.zeros(1, dtype=np.int64)
    empty_i = np.zeros((1, 0), dtype=np.int64)
    traj = np.zeros((1, 0, 0), dtype=np.float32)[:, :0]
    kernels[method](
        P, B, Y0, t0, t, dosing.EventTable(*evs), np.zeros((1, 0)), empty_i, empty_i.copy(),
        reg.tolerance(rtol, N, "rtol"), reg.tolerance(atol, N, "atol"), np.inf,
        reg.DEFAULT_MAX_STEPS, reg.DEFAULT_NSTIFF, auc_index, np.zeros(0, dtype=np.int64),
        np.zeros(0), np.zeros(0, dtype=np.int64), 1, cmax, tmax, np.zeros((1, n_out, 0)),
        np.zeros((1, 0)), np.zeros((1, n_out, 0)), traj, status,
        np.zeros((1, N_STATS), dtype=np.int64),
    )  # fmt: skip
    if status[0] != Status.OK:
        raise SimulationError(f"{spec.file or spec.name}: {reg.failure(method, int(status[0]))}")
    return cmax[0], tmax[0]


def dataset_variables(spec, theta, covariates, ev, t, method, rtol, atol):
    """Dataset variables and solver attributes of one patient of an ``[ode]`` model.

    Outputs (concentrations in ng/mL, others in their declared unit), ``auc_<output>`` of
    each concentration output in ng*h/mL, every state as ``state_<name>`` and
    ``dose_given`` in mg.
    """
    ode = spec.ode
    Y, O, attrs = solve(spec, theta, covariates, ev, t, method, rtol, atol)
    data = {}
    for j, o in enumerate(ode.outputs):
        scale = MG_L_TO_NG_ML if o.concentration else 1.0
        data[o.name] = ("time", O[:, j] * scale, {"units": o.unit, "long_name": o.long_name})
    for j, o in enumerate(ode.auc_outputs()):
        data[f"auc_{o.name}"] = (
            "time",
            Y[:, ode.n_states + 1 + j] * MG_L_TO_NG_ML,
            {"units": "ng*h/mL", "long_name": f"cumulative AUC of {o.name} from the start"},
        )
    for i, st in enumerate(ode.states):
        data[f"state_{st.name}"] = (
            "time",
            Y[:, i],
            {"units": st.unit, "long_name": st.description},
        )
    data["dose_given"] = (
        "time",
        Y[:, ode.n_states],
        {"units": "mg", "long_name": "cumulative amount administered"},
    )
    p = ode.parameter_vector(theta, covariates, first_dose_time(ev.t, ev.rate, ev.bolus))
    bmap = ode.bolus_map()
    scale = np.array([MG_L_TO_NG_ML if o.concentration else 1.0 for o in ode.outputs])

    def shifted(idx, dose):
        Ys = Y[idx] + dose[:, None] * bmap[None, :]
        return ode.evaluate_outputs(t[idx], Ys, p) * scale[None, :]

    record_bolus_limits(data, [o.name for o in ode.outputs], t, ev, shifted)
    cmax, tmax = ode_peaks(spec, theta, covariates, ev, t, attrs["solver_method"], rtol, atol)
    for j, o in enumerate(ode.outputs):
        data[o.name][2].update(
            {PEAK_ATTRS[0]: float(cmax[j] * scale[j]), PEAK_ATTRS[1]: float(tmax[j])}
        )
    return data, attrs


def first_dose_time(ev_t, ev_rate, ev_bolus):
    """Time (h) of the first dose of each patient: the first event with a bolus or an
    infusion running from it (any amount above zero), ``inf`` where there is none.

    Parameters
    ----------
    ev_t, ev_rate, ev_bolus : (..., K) float64
        Event tables as :class:`~pkpd.inputs.regimen.EventTable` (one patient) or
        :meth:`~pkpd.inputs.regimen.Regimen.event_arrays` (a chunk) give them: sorted
        times, the total infusion rate from each time on and the bolus there.

    Returns
    -------
    float or (...,) float64
        What ``tafd`` counts from (:data:`pkpd.inputs.model.expressions.TAFD`).
    """
    ev_t = np.asarray(ev_t, dtype=float)
    dose = (np.asarray(ev_rate) > 0.0) | (np.asarray(ev_bolus) > 0.0)
    first = np.where(dose, ev_t, np.inf).min(axis=-1, initial=np.inf)
    return float(first) if first.ndim == 0 else first


def cohort_inputs(spec, theta: np.ndarray, covariates: dict, ev=None):
    """Inputs of the generated cohort kernels for a chunk of patients.

    `ev` is the chunk's event arrays ``(t, rate, bolus)``, each ``(n, K)``; a model whose
    equations use ``tafd`` needs it (each patient's first dose time ends its parameter
    vector).

    Returns ``(P, B, Y0, auc_index, kernels)``: per-patient parameter vectors
    ``[theta, covariates(, first dose time)]``, the bolus map, initial states, the state
    holding each output's AUC (-1 for outputs that are not concentrations) and
    ``{"dopri5": ..., "rodas": ...}``.
    """
    ode = spec.ode
    n = theta.shape[0]
    cols = [np.asarray(theta, dtype=float)]
    for c in ode.covariate_names:
        v = covariates.get(c)
        if v is None:
            raise ModelError(
                f"{ode.file}: covariate `{c}` is used in [ode] and has no default: pass it"
            )
        cols.append(np.broadcast_to(np.asarray(v, dtype=float), (n,))[:, None])
    if ode.uses_tafd:
        if ev is None:
            raise ModelError(
                f"{ode.file}: the equations use `tafd` (time after the first dose): the "
                "event arrays are required"
            )
        first = np.broadcast_to(first_dose_time(*ev), (n,))
        cols.append(np.asarray(first, dtype=float)[:, None])
    P = np.ascontiguousarray(np.concatenate(cols, axis=1))
    m = ode.module()
    Y0 = np.zeros((n, ode.n_aug))
    for i in range(n):
        m.initial_into(P[i], Y0[i])
    if not np.all(np.isfinite(Y0)):
        bad = int(np.nonzero(~np.all(np.isfinite(Y0), axis=1))[0][0])
        raise SimulationError(f"{ode.file}: non-finite initial state for patient {bad}")
    auc_index = np.full(len(ode.outputs), -1, dtype=np.int64)
    j = 0
    for k, o in enumerate(ode.outputs):
        if o.concentration:
            auc_index[k] = ode.n_states + 1 + j
            j += 1
    kernels = {name: getattr(m, info.ode_cohort) for name, info in reg.ADAPTIVE.items()}
    return P, ode.bolus_map(), Y0, auc_index, kernels


def output_scales(spec) -> tuple[np.ndarray, list[str]]:
    """Factor from internal units and the unit of each output of a model: ng/mL for
    concentrations (mg/L x 1000), the declared unit for other [ode] outputs."""
    if spec.ode is None:
        n = len(spec.output_names)
        return np.full(n, 1000.0), ["ng/mL"] * n
    outs = spec.ode.outputs
    return (
        np.array([1000.0 if o.concentration else 1.0 for o in outs]),
        [o.unit for o in outs],
    )


def bolus_on_grid(t, ev_t, ev_bolus):
    """Where the boluses lie on the output grid `t`, within its rounding.

    Parameters
    ----------
    t : (n_t,) float64
        Sorted output times (h).
    ev_t, ev_bolus : (..., K) float64
        Event times (h) and bolus amounts (mg).

    Returns
    -------
    idx : (..., K) int64
        Grid index of each bolus, -1 for events that are no bolus or lie off the grid.
    included, pending : (..., K) float64
        For each event on the grid, the total bolus (mg) at that grid point that the stored,
        right-continuous value includes (boluses at or before the grid time), and the total
        that it does not include yet (boluses a rounding error after it).
    """
    ev_t = np.asarray(ev_t, dtype=float)
    ev_bolus = np.asarray(ev_bolus, dtype=float)
    # The nearest grid point of each event.
    j = np.clip(np.searchsorted(t, ev_t), 0, t.size - 1)
    jm = np.maximum(j - 1, 0)
    j = np.where(np.abs(t[jm] - ev_t) < np.abs(t[j] - ev_t), jm, j)
    tol = 1e-9 * np.maximum(1.0, np.abs(t[j]))
    with np.errstate(invalid="ignore"):
        on = (ev_bolus != 0.0) & (np.abs(t[j] - ev_t) <= tol)
    idx = np.where(on, j, -1)
    inc = np.where(on & (ev_t <= t[j]), ev_bolus, 0.0)
    pend = np.where(on & (ev_t > t[j]), ev_bolus, 0.0)
    same = (idx[..., :, None] == idx[..., None, :]) & on[..., None, :]
    return idx, (same * inc[..., None, :]).sum(-1), (same * pend[..., None, :]).sum(-1)


def record_bolus_limits(data, names, t, ev, shifted):
    """Attributes :data:`pkpd.analysis.metrics.BOLUS_ATTRS` on each output of `data`.

    `shifted(idx, dose)` gives the outputs (ng/mL, ``(len(idx), n_out)``) at grid points
    `idx` after adding `dose` mg of bolus to the stored state (negative: taking it away).
    The stored value at a bolus time is the right limit (unless the bolus lies a rounding
    error after the grid point); :mod:`pkpd.metrics` needs the left limit too.
    """
    idx, inc, pend = bolus_on_grid(t, ev.t, ev.bolus)
    idx, first = np.unique(idx, return_index=True)
    keep = idx >= 0
    idx, first = idx[keep], first[keep]
    if idx.size == 0:
        return
    left = shifted(idx, -inc[first])
    right = shifted(idx, pend[first])
    for i, o in enumerate(names):
        data[o][2].update(
            {"bolus_times": t[idx].copy(), "pre_bolus": left[:, i], "post_bolus": right[:, i]}
        )
