"""Simulate one patient exactly and return an :class:`xarray.Dataset`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from pkpd._version import __version__
from pkpd.disclaimer import DISCLAIMER
from pkpd.engine import peaks
from pkpd.engine.solvers import registry
from pkpd.engine.solvers.exact import propagate
from pkpd.engine.solvers.expm import expm_work
from pkpd.errors import ModelError, RegimenError, SimulationError
from pkpd.inputs.model import PEAK_ATTRS, ModelSpec, dataset_variables, load_model, output_scales
from pkpd.inputs.pca import further_attrs, further_drugs
from pkpd.inputs.pd import add_pd_variables, augment_model, pd_outputs
from pkpd.inputs.regimen import Bolus, EventTable, Infusion, Regimen, _time_ref, load_regimen
from pkpd.inputs.stereo import check_s_ketamine_model, racemic_attrs, racemic_to_s_ketamine
from pkpd.inputs.units import amount_text
from pkpd.running import pca as pca_pump
from pkpd.running import resources
from pkpd.running import tci as pump
from pkpd.running.cohort import _ranges, _thresholds, run_assumptions, time_within_from_bounds
from pkpd.running.grid import (
    MAX_GRID_POINTS,
    MG_L_TO_NG_ML,
    GridError,
    bolus_jumps,
    record_bolus_limits,
    time_grid,
)
from pkpd.running.variables import single_variable, variable, variable_attrs
from pkpd.running.warning_log import ATTR as WARNINGS_ATTR
from pkpd.running.warning_log import record_warnings

__all__ = [
    "DISCLAIMER",
    "MAX_GRID_POINTS",
    "GridError",
    "Summary",
    "estimate_single_memory",
    "metric_lines",
    "pca_lines",
    "simulate",
    "summarize",
    "time_grid",
]


def _prepare(model, regimen, covariates, eta, anchors=None, seed=0):
    spec = load_model(model)
    reg = load_regimen(regimen).resolve(anchors)
    pump.check(reg, spec)
    demand = pca_pump.check(reg, spec)
    cov = dict(covariates or {})
    if reg.uses_weight and cov.get("weight") is None:
        wcov = spec.covariates.get("weight")
        if wcov is None or wcov.default is None:
            raise RegimenError(
                "the regimen has per-kg doses: pass the weight (covariates={'weight': kg}, "
                "or --weight)"
            )
    need = ("weight",) if reg.uses_weight else ()
    full = spec.covariate_values(cov, stacklevel=4, need=need)
    theta = spec.individual_parameters(full, eta, warn=False)
    if theta.ndim != 1:
        raise ModelError(
            "simulate() takes one patient: covariates must be scalars "
            "(use the cohort API for many patients)"
        )
    weight = full.get("weight")
    if reg.tci is None:
        ev = reg.event_table(weight if reg.uses_weight else None, doses_only=reg.pca is not None)
    else:  # the pump's rates, at this patient's covariates (the pump model's own)
        w = np.array([np.nan if weight is None else float(weight)])
        t, rate, bolus = pump.event_arrays(reg, w, None, {**(covariates or {}), **full})
        ev = EventTable(t[0], rate[0], bolus[0])
    pca = None
    if demand is not None:  # the pump's deliveries, from this patient's demands
        w = np.array([np.nan if weight is None else float(weight)])
        ev_p, pca = pca_pump.single(reg, spec, demand, theta, w, ev, seed)
        ev = EventTable(*ev_p)
    return spec, reg, full, theta, ev, (demand, pca)


METHODS = registry.METHODS


def _check_method(method, rtol, atol):
    """Validate `method` and fill the default tolerances of the adaptive solvers."""
    return registry.check(method, rtol, atol)


def _solve(spec: ModelSpec, theta, ev, t, method="exact", rtol=None, atol=None):
    """Solve a linear model; returns ``(X, C, solver_attrs)``."""
    M, b, C = spec.system(theta)
    t0 = min(0.0, float(ev.t[0]), float(t[0]))
    method = registry.resolve(method, spec).method
    if not registry.SOLVERS[method].adaptive:
        X, status = propagate(M, b, ev.t, ev.rate, ev.bolus, t, t0=t0)
        if status != 0:
            raise SimulationError(registry.failure(method, status))
        return X, C, registry.attrs(method)
    X, status, stats = registry.run_linear(
        method, M, b, ev.t, ev.rate, ev.bolus, t, t0=t0, rtol=rtol, atol=atol
    )
    if status != 0:
        raise SimulationError(registry.failure(method, status))
    return X, C, registry.attrs(method, rtol, atol, stats)


def simulate(
    model,
    regimen,
    covariates: dict | None = None,
    times=None,
    *,
    until=None,
    every="1 min",
    eta=None,
    anchors: dict | None = None,
    method: str = "auto",
    rtol=None,
    atol=None,
    pd=None,
    pd_parameters: dict | None = None,
    racemic: bool = False,
    memory_limit: int | None = None,
    windows: dict[str, tuple[str, str]] | None = None,
    at: dict[str, str] | None = None,
    thresholds: dict[str, list] | None = None,
    ranges: dict[str, list] | None = None,
    seed: int = 0,
):
    """Simulate one patient with the piecewise-exact solver.

    Parameters
    ----------
    model : str, Path or ModelSpec
        Shipped model name, model file path, or a loaded model.
    regimen : str, Path or Regimen
        One-line regimen, TOML path, or a :class:`~pkpd.inputs.regimen.Regimen`.
    covariates : dict, optional
        E.g. ``{"weight": 70, "age": 45, "sex": "female"}``: the model's covariates and
        weight, age, sex, height, bmi (other names are errors). A covariate the model or a
        per-kg dose uses that is missing takes the model's default with a
        :class:`~pkpd.errors.CovariateDefaultWarning` (an error for the weight of a
        paediatric model); impossible values are errors; values outside the studied
        range warn.
    times : array_like, optional
        Sorted output times in hours. Default: a grid from the first dose (or 0) to
        `until` every `every`.
    until, every : str or float
        Grid end (default: 24 h after the last dose event) and step (default 1 min).
    anchors : dict, optional
        Times of the named events the regimen refers to, e.g.
        ``{"end_of_surgery": "3.5 h"}``; default: the regimen file's declared defaults.
    eta : dict, optional
        Random effects (log scale) by parameter name, for a specific virtual patient.
    method : {"exact", "dopri5", "rodas", "auto"}
        Solver. ``"exact"``: piecewise matrix exponential (linear models only).
        ``"dopri5"``: explicit Runge-Kutta 5(4) (raises if it detects stiffness);
        ``"rodas"``: stiff, L-stable Rosenbrock 4(3). ``"auto"``: exact for linear
        models; for ``[ode]`` models Dopri5, or Rodas4 when the model file says
        ``stiff = true`` or Dopri5 detects stiffness. The attrs record the solver and
        its counters (``solver_nfev``, ``solver_nsteps``, ...).
    rtol, atol : float or array, optional
        Tolerances of the adaptive solvers (default 1e-6 and 1e-9 in internal units
        mg, mg/L, mg*h/L), scalars or one value per state of the augmented system.
    pd : list of str, optional
        PD endpoints (``models/pd/*.toml`` names or paths, see :mod:`pkpd.pd`) to evaluate
        on this simulation: each adds its effect site and effect variables.
    pd_parameters : dict, optional
        ``{"endpoint.parameter": value}`` for PD parameters the literature does not give
        (e.g. a sigmoid gamma); recorded as user-supplied in the attrs.
    racemic : bool
        The regimen is in racemic ketamine amounts: an S-ketamine model is driven with its
        S half (x 0.5, :func:`pkpd.inputs.stereo.racemic_to_s_ketamine`); caveats in the attrs.
    memory_limit : int, optional
        Bytes allowed (default: 80 % of the available memory); a longer or finer grid than
        fits (:func:`estimate_single_memory`) is refused before solving.
    windows, at, thresholds : dict, optional
        Metrics as :func:`pkpd.simulate_cohort` defines them (same names, units and
        definitions): AUC over windows ``name -> (start, end)``, values at times
        ``name -> time`` and the time above levels ``output -> [level, ...]``; times may
        refer to the regimen's events (``"end_of_surgery + 1 h"``). Window bounds and
        `at` times are solved exactly (the solution is evaluated there, not
        interpolated); the time above a level takes the crossings between consecutive
        evaluated points (output times, dose events on both sides of a bolus, window
        bounds and `at` times) by linear interpolation, over the output times' span.
        Results: ``auc`` (output, window), ``c_at`` (output, at), ``time_above``
        (threshold), with the coordinates of a cohort's (``window_start``/``window_end``
        and ``at_time`` in h besides).
    ranges : dict, optional
        Time within ranges ``output -> ["50..150 ng/mL", ...]`` as
        :func:`pkpd.simulate_cohort` defines it: ``time_within`` (range), the time above
        the low bound minus the time above the high bound on the same points (exact for
        the linear interpolant: the sets are nested).
    seed : int
        Seed of a PCA pump's demands (of the demand model's typical patient).

    Returns
    -------
    xarray.Dataset
        Dimension ``time`` (h). Data variables: every output (``cp``, ``ce``,
        ``cp_<metabolite>``) in ng/mL, ``auc_<output>`` cumulative AUC in ng*h/mL,
        ``amount_<compartment>`` in mg (effect sites excluded), ``dose_given`` in mg,
        ``eliminated_<analyte>`` in mg. Attributes record the model, its source and
        verification status, the regimen, the covariates and the solver.

    Examples
    --------
    >>> ds = simulate("fanta2015_otto2021", "20 mg over 30 min from 0 h",
    ...               covariates={"weight": 70}, until="4 h")
    >>> float(ds.dose_given[-1])
    20.0
    """
    rtol, atol = _check_method(method, rtol, atol)
    # The run's warnings, counted, in attrs['warnings'] (the block adds no frame).
    with record_warnings() as log:
        model, regimen, bundle = _pd_and_stereo(model, regimen, pd, pd_parameters, racemic)
        spec, reg, full, theta, ev, pca = _prepare(model, regimen, covariates, eta, anchors, seed)
        run = _Run(spec, theta, full, ev, eta, method, rtol, atol, memory_limit)
        ds = _dataset(run, _output_times(reg, times, until, every), reg, regimen, anchors, racemic)
        _add_pumps(ds, reg, {**(covariates or {}), **full}, pca)
        if bundle is not None:
            add_pd_variables(ds, bundle)
        asked = dict(windows=windows, at=at, thresholds=thresholds, ranges=ranges)
        ds = _with_further_drugs(ds, run, (reg, regimen, anchors), bundle, asked, covariates, pca)
        ds.attrs[WARNINGS_ATTR] = log.attr()
    return ds


def _with_further_drugs(ds, run: _Run, regs, bundle, asked, covariates, pca) -> xr.Dataset:
    """The metrics of `asked` (:func:`_add_metrics`) and, for a PCA reservoir with further
    drugs, each drug solved with its own model (typical patient at these covariates) on
    the pump's deliveries (:func:`pkpd.running.pca.replay`): its outputs, cumulative AUCs,
    amounts and metrics join `ds` under its prefix (``s_ketamine_cp``), as in a cohort.
    `regs`: the regimen resolved, as given, and the event times given."""
    reg, regimen, anchors = regs
    drugs = pca_pump.companions(reg.pca, run.spec) if pca[1] is not None else []
    prefixes = [pca_pump.prefix(d.drug) for d in drugs]
    split = {k: pca_pump.split_names(v, prefixes) for k, v in asked.items()}
    own = {k: v[0] if k in ("thresholds", "ranges") else asked[k] for k, v in split.items()}
    _add_metrics(ds, run, regimen, anchors, bundle, own)
    weight = np.array([run.covariates.get("weight", np.nan)], dtype=float)
    for k, (drug, p) in enumerate(zip(drugs, prefixes, strict=True)):
        cspec = pca_pump.further_model(drug)
        full = cspec.covariate_values(dict(covariates or {}), stacklevel=5)
        theta = cspec.individual_parameters(full, None, warn=False)
        (t, rate, bolus), _ = pca_pump.replay(pca[1], drug, reg.pca, weight)
        crun = _Run(cspec, theta, full, EventTable(t[0], rate[0], bolus[0]), None,
                    run.method, run.rtol, run.atol, run.memory_limit)  # fmt: skip
        dc = _dataset(crun, ds.time.values, reg, regimen, anchors, False)
        theirs = {n: v[1][k] if n in ("thresholds", "ranges") else asked[n]
                  for n, v in split.items()}  # fmt: skip
        _add_metrics(dc, crun, regimen, anchors, None, theirs)
        ds = _merge_further_drug(ds, dc, p, cspec.provenance_attrs())
    return ds


#: One patient's metric variables by dimension, and the coordinates holding output names.
_METRIC_DIMS = (
    ("output", ("auc", "c_at"), ()),
    ("threshold", ("time_above",), ("threshold_output",)),
    ("range", ("time_within",), ("range_output",)),
)


def _merge_further_drug(ds: xr.Dataset, dc: xr.Dataset, p: str, provenance) -> xr.Dataset:
    """`ds` with a further drug's one-patient results `dc`: time series renamed with the
    prefix `p` (``cp`` -> ``s_ketamine_cp``, ``auc_cp`` -> ``auc_s_ketamine_cp``,
    ``amount_central`` -> ``amount_s_ketamine_central``), metrics along ``output`` and
    ``threshold``/``range`` after the main model's, its model's `provenance` in attrs."""
    data = {}
    for v in dc.data_vars:
        da = dc[v]
        if da.dims == ("time",):
            head, _, tail = str(v).partition("_")
            if head in ("auc", "amount", "eliminated") and tail:
                name = f"{head}_{p}{tail}"
            elif v == "dose_given":
                name = f"dose_given_{p.rstrip('_')}"
            else:
                name = f"{p}{v}"
            data[name] = da
    merged = ds.assign(data)
    for dim, v, names in _METRIC_DIMS:
        if dim not in dc.coords:
            continue
        dcx = dc[[x for x in v if x in dc]].assign_coords(
            {dim: [p + str(x) for x in dc[dim].values],
             **{c: dc[c].copy(data=[p + str(x) for x in dc[c].values]) for c in names}}
        )  # fmt: skip
        if dim in merged.coords:
            both = xr.concat([merged[[x for x in v if x in merged]], dcx], dim=dim,
                             coords="minimal", compat="override", join="override")  # fmt: skip
            merged = merged.drop_vars(
                [x for x in v if x in merged] + [c for c in merged.coords if dim in merged[c].dims]
            )
            merged = merged.assign(both)
        else:
            merged = merged.assign(dcx)
    merged.attrs.update(further_attrs(p, provenance))
    return merged


def _add_pumps(ds: xr.Dataset, reg: Regimen, covariates: dict, pca) -> None:
    """The TCI pump's rates and the PCA pump's deliveries and pain, if the regimen has them."""
    if reg.tci is not None:
        _add_pump(ds, reg, covariates)
    if pca[1] is not None:
        _add_pca(ds, *pca)


def _add_pump(ds: xr.Dataset, reg: Regimen, covariates: dict) -> None:
    """The TCI pump's rate at each output time: ``pump_rate`` (mg/h) and, when the regimen
    gives the syringe's concentration, ``pump_rate_ml`` (mL/h)."""
    w = np.array([float(covariates.get("weight", np.nan))])
    t_ev, r_ev, _pred = pump.pump_schedule(reg.tci, covariates, w, {})
    times = ds["time"].values
    k = np.searchsorted(t_ev[0], times, side="right") - 1
    rate = np.where(k >= 0, r_ev[0][np.maximum(k, 0)], 0.0)
    ds["pump_rate"] = ("time", rate, {"units": "mg/h", "long_name": "TCI pump rate"})
    if reg.tci.syringe is not None:  # mg/L in the syringe: mL/h = mg/h / (mg/L) * 1000
        ml = rate / reg.tci.syringe.value * 1000.0
        ds["pump_rate_ml"] = ("time", ml, {"units": "mL/h", "long_name": "TCI pump rate",
                                           "syringe": reg.tci.syringe.text})  # fmt: skip


def _add_pca(ds: xr.Dataset, demand, pca) -> None:
    """The PCA pump over time: ``pca_delivered`` (mg, cumulative) and the patient's
    ``pain`` (NRS) under the concentration of the demand model's output; the pump's counts
    in the attributes."""
    times = ds["time"].values
    ds["pca_delivered"] = variable("pca_delivered", pca.delivered(times)[0])
    conc = ds[demand.output].values / MG_L_TO_NG_ML
    pain = demand.pain(times - pca.t_on[0], conc, pca.p0[0], pca.c50[0])
    ds["pain"] = variable("pain", np.where(times >= pca.t_on[0], pain, np.nan))
    ds["pain"].attrs["demand_model"] = demand.name
    given = np.isfinite(pca.delivery_t[0])
    ds["pca_delivery_time"] = variable("pca_delivery_time", pca.delivery_t[0][given])
    ds["pca_delivery_conc"] = variable(
        "pca_delivery_conc", pca.delivery_c[0][given] * MG_L_TO_NG_ML, output=demand.output
    )
    for i, name in enumerate(pca_pump.COUNT_NAMES):
        ds.attrs[f"pca_{name}"] = int(pca.counts[0, i])
    ds.attrs["pca_start_h"] = float(pca.t_on[0])
    ds.attrs["pca_stop_h"] = float(pca.t_off[0])
    ds.attrs["pca_dose_mg"] = float(pca.delivered(pca.t_off)[0, 0])
    ds.attrs["pca_demand_model"] = demand.name
    ds.attrs["pca_demand_assumed"] = ", ".join(demand.assumed) or "none"


@dataclass(frozen=True)
class _Run:
    """One patient's run: the model, its individual parameters and covariates, the dose
    events, the random effects given, the solver with its tolerances and the memory
    allowed (None: 80 % of the available memory)."""

    spec: ModelSpec
    theta: np.ndarray
    covariates: dict
    ev: EventTable
    eta: dict | None
    method: str
    rtol: object
    atol: object
    memory_limit: int | None

    def solve(self, t: np.ndarray) -> tuple[dict, dict]:
        """Dataset variables (with their limits at boluses) and solver attrs at the times
        `t`; a grid that would not fit in the memory allowed is refused before solving."""
        _check_single_memory(self.spec, t.size, self.memory_limit)
        args = (self.ev, t, self.method, self.rtol, self.atol)
        if self.spec.is_linear:
            return _linear_data(self.spec, self.theta, *args)
        return dataset_variables(self.spec, self.theta, self.covariates, *args)


def _dataset(run: _Run, t: np.ndarray, reg: Regimen, regimen, anchors, racemic) -> xr.Dataset:
    """The solution on the output times `t` with the run's attributes: the model's
    provenance, the regimen (`reg` resolved; `regimen` as given, whose event times not in
    `anchors` are assumptions), the covariates, the package, the solver, the random
    effects and the racemic caveats."""
    data, sattrs = run.solve(t)
    ds = xr.Dataset(data, coords={"time": ("time", t, variable_attrs("time"))})
    ds.attrs.update(run.spec.provenance_attrs())
    ds.attrs.update(
        {
            "regimen": reg.text,
            "regimen_name": reg.name,
            "covariates": "; ".join(f"{k}={v}" for k, v in run.covariates.items()),
            "package": f"ketamine-pkpd {__version__}",
            "disclaimer": DISCLAIMER,
        }
    )
    ds.attrs["assumptions"] = run_assumptions(
        ds.attrs, load_regimen(regimen), None, dict(anchors or {})
    )
    ds.attrs.update(sattrs)
    if run.eta is not None:
        ds.attrs["eta"] = "; ".join(f"{k}={v}" for k, v in dict(run.eta).items())
    if racemic:
        ds.attrs.update(racemic_attrs())
    return ds


def _event_time(text, events: dict[str, float], what: str) -> float:
    """A time in h: ``"4 h"``, 2.5, or ``"end_of_surgery + 1 h"`` (an event of the regimen)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    anchor, off = _time_ref(text, key=what)
    if anchor is None:
        return off
    if anchor not in events:
        raise RegimenError(
            f"`{what}` = {text!r} refers to the event `{anchor}`, which the "
            f"regimen does not use ({', '.join(sorted(events)) or 'no events'})"
        )
    return events[anchor] + off


def _add_metrics(ds, run: _Run, regimen, anchors, bundle, asked) -> None:
    """``auc``, ``c_at``, ``time_above`` and ``time_within`` of one patient (see
    :func:`simulate`; `asked` holds its `windows`, `at`, `thresholds` and `ranges`), from a
    second solution on the output times merged with the dose events, the window bounds
    and the `at` times: the points a cohort's kernel evaluates. Nothing when none is
    asked."""
    if not any(asked.values()):
        return
    events = load_regimen(regimen).anchor_times(anchors)
    pd_outs = pd_outputs(bundle) if bundle is not None else []
    win, at_t = _metric_times(asked["windows"], asked["at"], events)
    thr = _thresholds(asked["thresholds"], run.spec, pd_outs)
    rng = _ranges(asked["ranges"], run.spec, pd_outs)
    grid = ds.time.values
    t = _metric_points(grid, run.ev, win, at_t)
    data, _ = run.solve(t)
    outs = list(run.spec.output_names)
    scale, units = output_scales(run.spec)
    c_at, auc = _values_at_and_auc(data, t, outs, win, at_t)
    t_above, t_within = _level_times(data, t, outs, scale, thr, rng, grid[-1])
    # PD variables after the model outputs, as in a cohort.
    if pd_outs:
        c_at, auc, units = _with_pd_outputs(c_at, auc, units, outs, pd_outs)
    u = units[0] if len(set(units)) == 1 else "see output_units"
    coords: dict = {}
    metrics: dict = {}
    if win or at_t:  # the dimension of `auc` and `c_at` only
        coords["output"] = ("output", [*outs, *(po.name for po in pd_outs)])
        if u == "see output_units":
            coords["output_units"] = single_variable("output_units", list(units))
    for c, d in (
        _window_metric(win, auc),
        _at_metric(at_t, c_at, u),
        _threshold_metric(thr, t_above),
        _range_metric(rng, t_within),
    ):
        coords.update(c)
        metrics.update(d)
    ds.coords.update(coords)
    ds.update(metrics)


def _metric_times(windows, at, events: dict[str, float]):
    """The windows ``name -> (start, end)`` and the `at` times ``name -> time`` in h (times
    may refer to the regimen's `events`); a window that is not a pair or ends before it
    starts is refused."""
    win = {}
    for name, bounds in dict(windows or {}).items():
        try:
            a, b = bounds
        except (TypeError, ValueError):
            raise RegimenError(f"`windows.{name}`: expected (start, end), got {bounds!r}") from None
        ta = _event_time(a, events, "window start")
        tb = _event_time(b, events, "window end")
        if tb < ta:
            raise RegimenError(f"window {name!r} ends before it starts ({tb:g} h < {ta:g} h)")
        win[name] = (ta, tb)
    at_t = {name: _event_time(v, events, "at") for name, v in dict(at or {}).items()}
    return win, at_t


def _metric_points(grid: np.ndarray, ev: EventTable, win: dict, at_t: dict) -> np.ndarray:
    """The output times `grid` merged with the dose events within them, the window bounds
    and the `at` times."""
    special = np.array([*(x for w in win.values() for x in w), *at_t.values()], dtype=float)
    return np.union1d(np.union1d(grid, ev.t[(ev.t >= grid[0]) & (ev.t <= grid[-1])]), special)


def _values_at_and_auc(data: dict, t: np.ndarray, outs: list, win: dict, at_t: dict):
    """The outputs at the `at` times (output, at) and their AUC over each window (output,
    window: the difference of the cumulative AUC at its bounds; NaN without one)."""
    idx = {k: int(np.searchsorted(t, v)) for k, v in at_t.items()}
    c_at = np.array([[data[o][1][idx[k]] for k in at_t] for o in outs]).reshape(len(outs), -1)
    auc = np.full((len(outs), len(win)), np.nan)
    for i, o in enumerate(outs):
        if f"auc_{o}" in data:
            cum = data[f"auc_{o}"][1]
            for w, (ta, tb) in enumerate(win.values()):
                auc[i, w] = cum[np.searchsorted(t, tb)] - cum[np.searchsorted(t, ta)]
    return c_at, auc


def _level_times(data: dict, t: np.ndarray, outs: list, scale, thr, rng, t_end: float):
    """``time_above`` (threshold) and ``time_within`` (range): the time above every level
    (the thresholds, then both bounds of every range), as the cohort kernel's columns, a
    range's time being that above its low bound minus that above its high bound."""
    t_above = np.array(
        [
            _time_above(
                t, data[x.recorded_output], x.value * scale[outs.index(x.recorded_output)], t_end
            )
            for x in [*thr, *(b for r in rng for b in (r.low, r.high))]
        ]
    )
    return t_above[: len(thr)], time_within_from_bounds(t_above[len(thr) :])


def _with_pd_outputs(c_at, auc, units: list, outs: list, pd_outs: list):
    """`c_at`, `auc` and `units` with the PD variables after the model outputs, as in a
    cohort: values at times from the outputs there; AUC for concentrations (the driving
    output's x its factor, NaN otherwise)."""
    pc = [po.value(*(c_at[outs.index(o)] for o, _, _ in po.terms)) for po in pd_outs]
    c_at = np.concatenate([c_at, np.broadcast_to(np.array(pc), (len(pc), c_at.shape[1]))])
    pa = np.full((len(pd_outs), auc.shape[1]), np.nan)
    for j, po in enumerate(pd_outs):
        if po.concentration:
            pa[j] = auc[outs.index(po.terms[0][0])] * po.terms[0][1]
    auc = np.concatenate([auc, pa])
    return c_at, auc, [*units, *(po.units for po in pd_outs)]


def _window_metric(win: dict, auc) -> tuple[dict, dict]:
    """Coordinates and data variable of the AUC windows (none without windows)."""
    if not win:
        return {}, {}
    coords = {
        "window": ("window", list(win)),
        "window_start": (
            "window",
            [w[0] for w in win.values()],
            {"units": "h", "long_name": "start of each window"},
        ),
        "window_end": (
            "window",
            [w[1] for w in win.values()],
            {"units": "h", "long_name": "end of each window"},
        ),
    }
    return coords, {"auc": single_variable("auc", auc)}


def _at_metric(at_t: dict, c_at, units: str) -> tuple[dict, dict]:
    """Coordinates and data variable of the values at named times (none without them)."""
    if not at_t:
        return {}, {}
    coords = {
        "at": ("at", list(at_t)),
        "at_time": (
            "at",
            list(at_t.values()),
            {"units": "h", "long_name": "time of each named time"},
        ),
    }
    return coords, {"c_at": single_variable("c_at", c_at, units=units)}


def _threshold_metric(thr: list, t_above) -> tuple[dict, dict]:
    """Coordinates and data variable of the times above thresholds (none without them)."""
    if not thr:
        return {}, {}
    tu = [x.units for x in thr]
    coords = {
        "threshold": ("threshold", [x.label for x in thr]),
        "threshold_output": single_variable("threshold_output", [x.output for x in thr]),
        "threshold_level": single_variable(
            "threshold_level", np.array([x.level for x in thr], dtype=float),
            units=tu[0] if len(set(tu)) == 1 else "see threshold_units",
        ),
        "threshold_units": single_variable("threshold_units", tu),
    }  # fmt: skip
    return coords, {"time_above": single_variable("time_above", t_above)}


def _range_metric(rng: list, t_within) -> tuple[dict, dict]:
    """Coordinates and data variable of the times within ranges (none without them)."""
    if not rng:
        return {}, {}
    ru = [r.low.units for r in rng]
    coords = {
        "range": ("range", [r.label for r in rng]),
        "range_output": single_variable("range_output", [r.output for r in rng]),
    }
    for side in ("low", "high"):
        coords[f"range_{side}"] = single_variable(
            f"range_{side}", np.array([getattr(r, side).level for r in rng], dtype=float),
            units=ru[0] if len(set(ru)) == 1 else "see range_units",
        )  # fmt: skip
    coords["range_units"] = single_variable("range_units", ru)
    return coords, {"time_within": single_variable("time_within", t_within)}


def pca_lines(ds) -> list[str]:
    """What the PCA pump of :func:`simulate` did, as text lines (none without a pump)."""
    if "pca_demands" not in ds.attrs:
        return []
    a = ds.attrs
    t = ds.time.values
    pain = ds["pain"].values
    on = np.isfinite(pain)
    course = (f"; pain (NRS) {pain[on][0]:.3g} at {t[on][0]:g} h, {pain[on][-1]:.3g} at "
              f"{t[on][-1]:g} h" if on.any() else "")  # fmt: skip
    n_assumed = len([x for x in a["pca_demand_assumed"].split(", ") if x and x != "none"])
    return [
        f"PCA pump {a['pca_start_h']:g}-{a['pca_stop_h']:g} h: {a['pca_demands']} demands, "
        f"{a['pca_deliveries']} delivered; refused {a['pca_refused_lockout']} in lockout, "
        f"{a['pca_refused_limit']} at a limit, {a['pca_refused_empty']} with the reservoir "
        "empty",
        f"PCA delivered {amount_text(a['pca_dose_mg'])} over its run (boluses and "
        f"background){course}",
        *_further_amounts(ds),
        f"demand model {a['pca_demand_model']}: {n_assumed} assumed values (not calibrated "
        "against observed PCA use)",
    ]


def _further_amounts(ds) -> list[str]:
    """The amounts of a PCA reservoir's further drugs over the run (one line, or none)."""
    parts = []
    for p, drug, _ in further_drugs(ds.attrs):
        given = ds.get(f"dose_given_{p.rstrip('_')}")
        if given is not None:
            parts.append(f"{drug} {amount_text(float(given[-1]))}")
    if not parts:
        return []
    return [
        f"PCA also delivered {', '.join(parts)} by {float(ds.time[-1]):g} h; the demand "
        "follows the main drug alone (no cited interaction)"
    ]


def metric_lines(ds) -> list[str]:
    """The metrics of :func:`simulate` (``time_above``, ``time_within``, ``auc``, ``c_at``)
    as text lines."""
    out = []
    if "time_above" in ds:
        for label, v in zip(ds.threshold.values, ds.time_above.values, strict=True):
            out.append(f"  time above {label}: {v:.4g} h")
    if "time_within" in ds:
        for label, v in zip(ds["range"].values, ds.time_within.values, strict=True):
            out.append(f"  time {label}: {v:.4g} h")
    units = (
        [str(u) for u in ds.output_units.values]
        if "output_units" in ds.coords
        else [ds.c_at.attrs.get("units", "") if "c_at" in ds else ""] * ds.sizes.get("output", 0)
    )
    if "auc" in ds:
        for w in range(ds.sizes["window"]):
            vals = ", ".join(
                f"{o} {a:.5g}"
                for o, a in zip(ds.output.values, ds.auc.values[:, w], strict=True)
                if np.isfinite(a)
            )
            out.append(
                f"  AUC {ds.window.values[w]} ({ds.window_start.values[w]:g}-"
                f"{ds.window_end.values[w]:g} h): {vals} ng*h/mL"
            )
    if "c_at" in ds:
        for j in range(ds.sizes["at"]):
            vals = ", ".join(
                f"{o} {c:.4g} {u}".rstrip()
                for o, c, u in zip(ds.output.values, ds.c_at.values[:, j], units, strict=True)
            )
            out.append(f"  at {ds['at'].values[j]} ({ds.at_time.values[j]:g} h): {vals}")
    return out


def _time_above(t, var, level: float, t_end: float) -> float:
    """Time (h) with output `var` (a dataset variable triple) above `level`, the crossing
    between consecutive points found by linear interpolation: :func:`pkpd.engine.record.fold_point`
    on the same points (the left and right limits at each bolus, points up to `t_end`)."""
    c = np.array(var[1], dtype=float)
    attrs = var[2]
    tt = t
    if "bolus_times" in attrs:
        j = np.searchsorted(t, attrs["bolus_times"])
        c[j] = attrs["post_bolus"]
        tt = np.insert(t, j, t[j])
        c = np.insert(c, j, attrs["pre_bolus"])
    keep = tt <= t_end
    tt, c = tt[keep], c[keep]
    a, b, dt = c[:-1] - level, c[1:] - level, np.diff(tt)
    both = (a >= 0.0) & (b >= 0.0)
    one = ~both & ((a > 0.0) | (b > 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        part = dt * np.where(a > 0.0, a, b) / np.abs(b - a)
    return float(np.sum(np.where(dt > 0.0, np.where(both, dt, np.where(one, part, 0.0)), 0.0)))


def _output_times(reg: Regimen, times, until, every) -> np.ndarray:
    """The output times: `times` as given (checked), or the grid to `until` every `every`."""
    if times is None:
        start = min(0.0, reg.start_time)
        return time_grid(start, until if until is not None else reg.end_time + 24.0, every)
    t = np.asarray(times, dtype=float).ravel()
    if t.size == 0 or not np.all(np.isfinite(t)) or np.any(np.diff(t) < 0):
        raise ValueError("`times` must be a non-empty sorted array of finite hours")
    return t


def _linear_data(spec: ModelSpec, theta, ev, t, method, rtol, atol) -> tuple[dict, dict]:
    """Dataset variables (with their limits at boluses) and solver attrs of a linear model."""
    X, C, sattrs = _solve(spec, theta, ev, t, method, rtol, atol)
    data = _linear_variables(spec, X, C)
    jump = bolus_jumps(spec, theta[None, :])[0]  # ng/mL per mg, (n_out,)
    names = [o.name for o in spec.outputs]
    conc = np.stack([data[o][1] for o in names], axis=1)

    def shifted(idx, dose):
        return conc[idx] + dose[:, None] * jump[None, :]

    record_bolus_limits(data, names, t, ev, shifted)
    if not registry.SOLVERS[registry.resolve(method, spec).method].adaptive:
        _record_peaks(spec, theta, ev, t, data, names)
    return data, sattrs


def _record_peaks(spec: ModelSpec, theta, ev, t, data, names) -> None:
    """:data:`PEAK_ATTRS` on each output: the maximum of the exact solution over the
    output times, the dose events (just before and after each bolus) and between them
    (:func:`pkpd.engine.peaks.trajectory_peaks`), as the cohort kernel records Cmax/Tmax."""
    M, b, C = spec.system(theta)
    N = M.shape[0]
    W = np.zeros((C.shape[0], N))
    W[:, : C.shape[1]] = C * MG_L_TO_NG_ML
    t0 = min(0.0, float(ev.t[0]), float(t[0]))
    cmax, tmax = np.zeros(len(names)), np.zeros(len(names))
    work = (np.zeros((N + 1, N + 1)), np.zeros((N + 1, N + 1)), *expm_work(N + 1))
    f64 = np.ascontiguousarray
    status = peaks.trajectory_peaks(
        f64(M, dtype=float), f64(b, dtype=float), W, f64(ev.t, dtype=float),
        f64(ev.rate, dtype=float), f64(ev.bolus, dtype=float), t0, f64(t, dtype=float),
        cmax, tmax, work,
    )  # fmt: skip
    if status != 0:
        raise SimulationError(registry.failure("exact", status))
    for i, o in enumerate(names):
        data[o][2].update({PEAK_ATTRS[0]: float(cmax[i]), PEAK_ATTRS[1]: float(tmax[i])})


def estimate_single_memory(spec: ModelSpec, n_points: int) -> int:
    """Bytes one patient's simulation adds at its peak, for `n_points` output times.

    The Dataset holds one float64 value per time point for each variable (outputs, AUCs,
    amounts or states, dose given, eliminated amounts) besides the solver's state array
    (views of it are kept, the scaled outputs are copies); solver temporaries add about a
    half (measured: 1.2-1.4 times the Dataset, see ``tests/test_resources.py``).
    """
    if spec.is_linear:
        n_vars = spec.n_states + len(spec.outputs)  # augmented state + scaled outputs
    else:
        ode = spec.ode
        n_vars = ode.n_aug + 2 * len(ode.outputs)  # augmented state, outputs and copies
    return int(n_points * 8 * (n_vars + 1) * 1.5)


def _check_single_memory(spec: ModelSpec, n_points: int, memory_limit: int | None) -> None:
    if memory_limit is None:
        memory_limit = int(0.8 * resources.available_memory())
    need = estimate_single_memory(spec, n_points)
    if need > memory_limit:
        raise GridError(
            f"one patient on {n_points:,} output times needs about {need / 1e9:.2f} GB but "
            f"{memory_limit / 1e9:.2f} GB are available: choose a larger `every` or an "
            "earlier `until`"
        )


def _pd_and_stereo(model, regimen, pd, pd_parameters, racemic):
    """Racemic-dose conversion and PD augmentation (issue 4), kept apart from the solver.

    Returns the (possibly augmented) model, the (possibly halved) regimen and the PD
    bundle (or None).
    """
    bundle = None
    if racemic:
        model = load_model(model)
        check_s_ketamine_model(model)
        regimen = racemic_to_s_ketamine(regimen)
    if pd:
        names = [pd] if isinstance(pd, str) else list(pd)
        # stacklevel: warn -> augment_model -> _pd_and_stereo -> simulate -> caller
        bundle = augment_model(model, names, pd_parameters, stacklevel=3)
        model = bundle.model
    elif pd_parameters:
        raise ValueError("`pd_parameters` given without `pd` endpoints")
    return model, regimen, bundle


@dataclass(frozen=True)
class Summary:
    """Exposure summary of one simulated patient (concentrations in ng/mL)."""

    cmax: dict[str, float]
    tmax: dict[str, float]
    auc: dict[str, float]
    at_infusion_end: list[tuple[float, dict[str, float]]]
    until: float
    dose_given: float
    at_bolus: dict[str, bool] = field(default_factory=dict)
    #: Times of `at_infusion_end` where another infusion keeps running: a rate change.
    rate_changes: tuple[float, ...] = ()

    def lines(self) -> list[str]:
        out = [f"total dose given: {amount_text(self.dose_given)} over 0-{self.until:g} h"]
        for k in self.cmax:
            out.append(
                f"{k:>16}: Cmax {self.cmax[k]:.4g} ng/mL at {self.tmax[k]:.4g} h; "
                f"AUC(0-{self.until:g} h) {self.auc[k]:.5g} ng*h/mL"
            )
            if self.at_bolus.get(k):
                out.append(
                    f"{'':>16}  note: this Cmax is the instantaneous-bolus mixing peak "
                    "(dose / V1), which no sample measures; give boluses over their injection "
                    "time (--bolus-over 1min, or '... bolus at 0 h over 1 min')"
                )
        for t_end, vals in self.at_infusion_end:
            s = ", ".join(f"{k} {v:.4g}" for k, v in vals.items())
            what = "rate change" if t_end in self.rate_changes else "end of infusion"
            out.append(f"  {what} at {t_end:g} h: {s} ng/mL")
        return out


def summarize(ds, regimen) -> Summary:
    """Cmax, Tmax, AUC and concentrations at the end of each infusion.

    Cmax/Tmax are those of the solution where the dataset carries them
    (:data:`PEAK_ATTRS`: maxima between output times included, the same as the cohort
    kernel's; the exact solution of a linear model, the solver's for an ``[ode]`` model);
    otherwise (a linear model under an adaptive solver) over the dataset's time points,
    which :func:`pkpd.cli` merges with every dose event so that peaks at the end of an
    infusion or at a bolus are exact.
    """
    reg = load_regimen(regimen) if not isinstance(regimen, Regimen) else regimen
    outs = [
        v for v in ds.data_vars if ds[v].dims == ("time",) and ds[v].attrs.get("units") == "ng/mL"
    ]
    t = ds.time.values
    cmax, tmax, auc = {}, {}, {}
    for o in outs:
        y = ds[o].values
        i = int(np.argmax(y))
        cmax[o], tmax[o] = float(y[i]), float(t[i])
        if PEAK_ATTRS[0] in ds[o].attrs and ds[o].attrs[PEAK_ATTRS[0]] >= cmax[o]:
            cmax[o] = float(ds[o].attrs[PEAK_ATTRS[0]])
            tmax[o] = float(ds[o].attrs[PEAK_ATTRS[1]])
        auc[o] = float(ds[f"auc_{o}"].values[-1] - ds[f"auc_{o}"].values[0])
    # Tmax at an instantaneous bolus: the output jumped there (a continuous output cannot
    # peak exactly at a bolus, which only raises its derivative).
    bolus_t = [
        d.at for d in reg.doses if isinstance(d, Bolus) and not d.duration and d.at_anchor is None
    ]
    at_bolus = {
        o: any(abs(tmax[o] - tb) <= 1e-9 * max(1.0, abs(tb)) for tb in bolus_t) for o in outs
    }
    ends = []
    for te in reg.infusion_ends():
        hit = np.nonzero(np.abs(t - te) <= 1e-9 * max(1.0, abs(te)))[0]
        if hit.size:
            ends.append((te, {o: float(ds[o].values[hit[0]]) for o in outs}))
    # An infusion that stops while another runs on (0.125 then 0.02 mg/kg/h at the end of
    # surgery) is a change of rate, not the end of the infusion.
    spans = [
        (d.start, d.stop) if isinstance(d, Infusion) else (d.at, d.at + d.duration)
        for d in reg.resolve().doses
        if isinstance(d, Infusion) or d.duration > 0
    ]
    changes = tuple(te for te, _ in ends if any(a <= te < b for a, b in spans))
    return Summary(
        cmax, tmax, auc, ends, float(t[-1]), float(ds.dose_given.values[-1]), at_bolus, changes
    )


def _linear_variables(spec: ModelSpec, X, C) -> dict:
    """Dataset variables of a linear model from its augmented trajectory `X`."""
    n = spec.n_comp
    conc = X[:, :n] @ C.T * MG_L_TO_NG_ML
    data = {}
    for i, o in enumerate(spec.outputs):
        note = (
            {"note": "in parent-drug mass equivalents"}
            if spec.analytes[o.analyte]["molar_mass"] == spec.molar_mass()
            and o.analyte != spec.parent
            else {}
        )
        extra = {"compartment": o.compartment, **note}
        data[o.name] = variable("{output}", conc[:, i], extra, long_name=o.long_name)
    for i, o in enumerate(spec.outputs):
        auc = X[:, n + 1 + len(spec.analyte_names) + i] * MG_L_TO_NG_ML
        data[f"auc_{o.name}"] = variable("auc_{output}", auc, output=o.name)
    for j, c in enumerate(spec.compartments.values()):
        if c.type == "effect":
            continue
        data[f"amount_{c.name}"] = variable(
            "amount_{compartment}", X[:, j], compartment=c.name, analyte=c.analyte
        )
    data["dose_given"] = variable("dose_given", X[:, n])
    for a_i, a in enumerate(spec.analyte_names):
        data[f"eliminated_{a}"] = variable("eliminated_{analyte}", X[:, n + 1 + a_i], analyte=a)
    return data
