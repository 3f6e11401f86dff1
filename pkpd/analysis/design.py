"""Regimen comparison and constrained design over virtual cohorts.

Common random numbers
---------------------
Every regimen (in :func:`compare`) and every grid point (in :func:`design`) is simulated
with the same `seed`. A cohort's random numbers come from
``SeedSequence(seed, spawn_key=(block, purpose))`` with one stream per purpose (covariates,
random effects, event times; see :mod:`pkpd.cohort`), and none of them depends on the doses.
So patient ``i`` has the same covariates and individual parameters under every regimen, and
the same surgical event times wherever the regimens declare the same event distribution
(event times are drawn by inverse CDF from one uniform number per patient and event).
Differences between regimens are then differences of dosing, not of sampling noise. Risk
models are applied with the same `seed` too, so their calibration draws are shared as well.
:func:`compare` checks the covariates and individual parameters after the runs and records
in ``attrs["common_random_numbers"]`` which event times are shared.

Design grid
-----------
:func:`design` fills a one-line regimen template (default
``"{bolus} mg/kg bolus at 0 h; {rate} mg/kg/h from 0 h to {duration}"``) with every
combination of the design values; the result has one dimension per design variable.
``duration`` values are times (``4`` or ``"4 h"``) or times anchored on a regimen event
(``"end_of_surgery"``, ``"end_of_surgery + 1 h"``) whose per-patient distribution comes
from the regimen named by `anchors`.

* **Pareto front** (maximize PTA, minimize risk incidence): a point is on the front unless
  another point is at least as good in both and strictly better in one. Points with the
  same (PTA, risk) do not dominate each other, so ties are all on the front; points with a
  NaN value are not on it.
* **Best schedule under the risk limit**: among the feasible points (risk within the limit
  as decided by :func:`pkpd.analysis.risk.meets_limit`: the 97.5 % quantile (upper end of the
  95 % interval) of the predicted incidence at most `max_risk`), the largest PTA; ties by
  the lower mean total dose (mg/kg over the cohort), then by grid order. With no feasible
  point there is no best schedule and ``attrs["best_message"]`` says why.

Research software for pharmacology and protocol design; not a clinical dosing device.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pkpd.analysis import risk as risk_analysis
from pkpd.analysis import risk_domain
from pkpd.disclaimer import DISCLAIMER
from pkpd.errors import PkpdError
from pkpd.inputs.model import load_model
from pkpd.inputs.regimen import AnchorSpec, Regimen, load_regimen
from pkpd.inputs.units import parse_quantity, range_bounds
from pkpd.running import cohort as cohorts
from pkpd.running import resources
from pkpd.running import tci as tci_pump
from pkpd.running.variables import PCA_SUMMARY
from pkpd.running.warning_log import ATTR as WARNINGS_ATTR
from pkpd.running.warning_log import record_warnings

__all__ = [
    "DEFAULT_TEMPLATE",
    "PERCENTILES",
    "DesignError",
    "cohort_outcomes",
    "compare",
    "design",
    "outcome_cohort_kwargs",
    "pareto_front",
    "parse_target",
    "select_best",
]

#: Percentiles of the per-patient metrics reported by :func:`compare`.
PERCENTILES = (5.0, 50.0, 95.0)
#: Default one-line regimen template of :func:`design` (per-kg doses).
DEFAULT_TEMPLATE = "{bolus} mg/kg bolus at 0 h; {rate} mg/kg/h from 0 h to {duration}"
_VARIABLES = ("bolus", "rate", "duration")
_UNITS = {"bolus": "mg/kg", "rate": "mg/kg/h", "duration": "h"}
#: Extra simulated time after the latest possible end of dosing (h), as simulate_cohort.
_TAIL_H = 24.0


class DesignError(PkpdError, ValueError):
    """A comparison or design request is invalid."""


# ----------------------------------------------------------------------------- targets

_TARGET = re.compile(
    r"^\s*(?P<out>[A-Za-z_]\w*)\s*(?:>=\s*(?P<conc>.+?)|\s+within\s+(?P<range>.+?))"
    r"(?:\s+for\s+(?:(?P<frac>[0-9.]+)\s*%|(?P<dur>[0-9.]+\s*[A-Za-z]+))"
    r"(?:\s+of\s+(?P<win>.+?))?)?\s*$"
)


def parse_target(text) -> dict:
    """A target dict for :func:`pkpd.analysis.risk.pta` from its one-line form.

    ``"OUTPUT >= CONC [for P% | for DURATION [of START..END]]"``, or two-sided
    ``"OUTPUT within LOW..HIGH [for ...]"`` (``at_least`` and ``at_most``), e.g.
    ``"cp >= 50 ng/mL for 50% of end_of_surgery..end_of_surgery + 24 h"``. A dict is
    returned unchanged (after checking it names an output and a level).

    Examples
    --------
    >>> parse_target("cp >= 50 ng/mL for 50% of end_of_surgery..end_of_surgery + 24 h")
    {'output': 'cp', 'at_least': '50 ng/mL', 'for_fraction': 0.5, 'window': ('end_of_surgery', 'end_of_surgery + 24 h')}
    """  # noqa: E501
    if isinstance(text, Mapping):
        t = dict(text)
        if "output" not in t or "at_least" not in t:
            raise DesignError(f"`target` {text!r}: needs at least `output` and `at_least`")
        if "window" in t and t["window"] is not None:
            t["window"] = tuple(t["window"])
        return t
    m = _TARGET.match(str(text))
    if not m:
        raise DesignError(
            f"`target` {text!r}: expected 'OUTPUT >= CONC for P% [of START..END]' (or "
            "'for DURATION'), e.g. "
            "'cp >= 50 ng/mL for 50% of end_of_surgery..end_of_surgery + 24 h'"
        )
    if m["range"] is not None:
        try:
            lo, hi = range_bounds(m["range"].strip(), "target")
        except PkpdError as exc:
            raise DesignError(f"`target` {text!r}: {exc}") from None
        out: dict[str, Any] = {"output": m["out"], "at_least": lo, "at_most": hi}
    else:
        out = {"output": m["out"], "at_least": m["conc"].strip()}
    if m["frac"] is not None:
        frac = float(m["frac"]) / 100.0
        if not 0.0 < frac <= 1.0:
            raise DesignError(f"`target` {text!r}: the percentage must be in (0, 100]")
        out["for_fraction"] = frac
    if m["dur"] is not None:
        out["for_duration"] = m["dur"].strip()
    if m["win"] is not None:
        if ".." not in m["win"]:
            raise DesignError(f"`target` {text!r}: the window must be START..END")
        a, b = m["win"].split("..", 1)
        out["window"] = (a.strip(), b.strip())
    return out


def _target_text(t: dict) -> str:
    s = f"{t['output']} >= {t['at_least']}"
    if t.get("at_most") is not None:
        s = f"{t['output']} within {t['at_least']}..{t['at_most']}"
    if "for_fraction" in t:
        s += f" for {100 * t['for_fraction']:g}%"
    if "for_duration" in t:
        s += f" for {t['for_duration']}"
    if t.get("window"):
        s += f" of {t['window'][0]}..{t['window'][1]}"
    return s


# ----------------------------------------------------------------------------- set-up


def _merge(base: dict, extra: Mapping, who: str) -> dict:
    """Merge simulate_cohort keywords (union of windows, at, thresholds, trajectories)."""
    out = dict(base)
    for k, v in extra.items():
        if k in ("windows", "at"):
            cur = dict(out.get(k) or {})
            for name, val in dict(v).items():
                val = tuple(val) if k == "windows" else val
                if name in cur and tuple(cur[name]) != tuple(val) and k == "windows":
                    raise DesignError(
                        f"{who} needs the window {name!r} = {val!r}, but it is already "
                        f"{cur[name]!r}; rename yours"
                    )
                if name in cur and k == "at" and cur[name] != val:
                    raise DesignError(f"{who} needs `at` {name!r} = {val!r}, already {cur[name]!r}")
                cur[name] = val
            out[k] = cur
        elif k in ("thresholds", "ranges"):
            cur = {o: list(vs) for o, vs in (out.get(k) or {}).items()}
            for o, vs in dict(v).items():
                vs = [vs] if isinstance(vs, str | int | float) else list(vs)
                cur.setdefault(o, [])
                cur[o] += [x for x in vs if x not in cur[o]]
            out[k] = cur
        elif k == "trajectories":
            cur = out.get(k)
            if cur is True or v is True:
                out[k] = True
            else:
                a = [cur] if isinstance(cur, str) else list(cur or [])
                b = [v] if isinstance(v, str) else list(v or [])
                out[k] = a + [x for x in b if x not in a]
        elif k in out and out[k] != v:
            raise DesignError(f"{who} needs `{k}` = {v!r}, but it is set to {out[k]!r}")
        else:
            out[k] = v
    return out


def _fixed_anchors(fixed, source, regs) -> dict[str, float]:
    """`anchor_times` (event -> time) in hours, checked against `source` and the regimens.

    An event fixed here may not also be declared by `source` (one of the two would be
    ignored); it must be one that some regimen uses (else a typo).
    """
    out: dict[str, float] = {}
    if not fixed:
        return out
    src = load_regimen(source) if source is not None else None
    used = set().union(*(r.anchor_names for r in regs))
    for name, v in dict(fixed).items():
        if src is not None and src.anchor_spec(name) is not None:
            raise DesignError(
                f"the event `{name}` is given both a fixed time (`anchor_times`, CLI --anchor) "
                f"and a distribution by {src.name or src.text!r} (`anchors`, CLI "
                "--anchors-from): give one"
            )
        if name not in used:
            raise DesignError(
                f"`anchor_times` (CLI --anchor): no regimen refers to the event `{name}`; "
                f"they use {', '.join(sorted(used)) or 'none'}"
            )
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[name] = float(v)
        else:
            try:
                out[name] = parse_quantity(str(v), "time", key=f"anchor_times.{name}").value
            except PkpdError as exc:
                raise DesignError(f"`anchor_times` (CLI --anchor) {name}={v!r}: {exc}") from None
    return out


def _with_fixed(reg: Regimen, fixed: Mapping[str, float]) -> Regimen:
    """`reg` with the events in `fixed` at one time for every patient (this replaces the
    regimen's own declaration of them, if any)."""
    names = [a for a in fixed if a in reg.anchor_names]
    if not names:
        return reg
    specs = [a for a in reg.anchors if a.name not in fixed]
    specs += [AnchorSpec(a, fixed[a], source="fixed time (anchor_times / --anchor)") for a in names]
    return dataclasses.replace(reg, anchors=tuple(specs))


def _with_anchors(reg: Regimen, source, fixed: Mapping[str, float] | None = None) -> Regimen:
    """`reg` with the events in `fixed` at their fixed times and the event declarations it
    still lacks taken from the regimen `source`."""
    reg = _with_fixed(reg, fixed or {})
    missing = {a for a in reg.anchor_names if reg.anchor_spec(a) is None}
    if not missing:
        return reg
    if source is None:
        raise DesignError(
            f"the regimen {reg.text!r} refers to the event(s) {', '.join(sorted(missing))} but "
            "does not say how they are distributed over patients: pass `anchors` (CLI: "
            "--anchors-from), a regimen file declaring them, e.g. 'lumbar_fusion_esketamine'"
        )
    src = load_regimen(source)
    specs = list(reg.anchors)
    for a in sorted(missing):
        s = src.anchor_spec(a)
        if s is None:
            raise DesignError(
                f"the regimen {src.name or src.text!r} (`anchors`) does not declare the event "
                f"`{a}`; it declares {', '.join(x.name for x in src.anchors) or 'none'}"
            )
        specs.append(s)
    return dataclasses.replace(reg, anchors=tuple(specs))


def _until(regs: Sequence[Regimen]) -> float:
    return max(cohorts._end(r) for r in regs) + _TAIL_H


def _cohort_kwargs(
    regs, *, target, risk_models, windows, thresholds, at, until, every, extra, ranges=None
) -> dict:
    kw: dict[str, Any] = {"until": until, "every": every, "progress": False}
    if ranges:
        kw["ranges"] = dict(ranges)
    if windows:
        kw["windows"] = {k: tuple(v) for k, v in windows.items()}
    if thresholds:
        kw["thresholds"] = dict(thresholds)
    if at is not None:
        kw["at"] = dict(at)
    else:
        # Concentrations at the events every regimen has (a shared coordinate).
        common = set.intersection(*(r.anchor_names for r in regs)) if regs else set()
        kw["at"] = {a: a for a in sorted(common)}
    kw = _merge(kw, extra or {}, "the caller")
    if target is not None:
        need = risk_analysis.required_cohort_kwargs(target)
        kw = _merge(kw, need, f"the target {_target_text(target)}")
    if risk_models:
        for name, rm in risk_models.items():
            kw = _merge(kw, risk_analysis.required_cohort_kwargs(rm), f"the risk model {name!r}")
    if "trajectory_every" not in kw and kw.get("trajectories"):
        kw["trajectory_every"] = every
    return kw


def _load_risks(risks) -> dict:
    if not risks:
        return {}
    if isinstance(risks, str):
        risks = [risks]
    out = {}
    for r in risks:
        rm = risk_analysis.load_risk(r)
        name = str(getattr(rm, "name", None) or r)
        out[name] = rm
    return out


def _dose(reg: Regimen, ds) -> tuple[np.ndarray, np.ndarray]:
    """Total dose per patient (mg, mg/kg) of `reg` with the cohort's weights and events."""
    n = ds.sizes["patient"]
    w = ds["weight"].values.astype(float) if "weight" in ds.coords else np.full(n, np.nan)
    t, rate, bolus = tci_pump.cohort_event_arrays(reg, ds, np.where(np.isfinite(w), w, 1.0))
    mg = bolus.sum(axis=1) + np.sum(rate[:, :-1] * np.diff(t, axis=1), axis=1)
    if "pca_dose" in ds:  # the PCA pump's deliveries, over its whole run
        mg = mg + ds["pca_dose"].values
    if not reg.uses_weight and "weight" not in ds.coords:
        return mg, np.full(n, np.nan)
    if reg.uses_weight and "weight" not in ds.coords:
        raise DesignError("a per-kg regimen needs a population with `weight`")
    return mg, mg / w


def _add_pca_summary(ds, add, coords) -> None:
    """The PCA pump's variables of a regimen's summary (none without a pump), with each
    drug's amount when the reservoir holds several."""
    if "pca_demands" not in ds:
        return
    for name, units, long_name in PCA_SUMMARY:
        add(name, name, (), units, long_name)
    if "pca_dose_at" in ds:
        add("pca_dose_at", "pca_dose_at", ("at",), "mg", "amount the PCA pump delivered by")
    if "pca_drug" in ds.coords:
        coords["pca_drug"] = ("pca_drug", list(ds.pca_drug.values))
        add("pca_drug_dose", "pca_drug_dose", ("pca_drug",), "mg", "amount of each PCA drug")


def _pct(values: np.ndarray, axis=0) -> np.ndarray:
    """5, 50 and 95 % over `axis` ignoring NaN; the percentile axis last."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN
        return np.moveaxis(np.nanpercentile(values, PERCENTILES, axis=axis), 0, -1)


def _run(model, reg, population, n, seed, kw):
    return cohorts.simulate_cohort(model, reg, population, n, seed, **kw)


def _evaluate(ds, target, risk_models, seed, n_draws, reg=None) -> dict:
    """PTA and risk results of one cohort of regimen `reg`: {name: Dataset}."""
    out = {}
    if target is not None:
        out["pta"] = risk_analysis.pta(ds, target)
    for name, rm in risk_models.items():
        out[name] = risk_analysis.apply_risk(ds, rm, n_draws=n_draws, seed=seed, regimen=reg)
    return out


def _scalar(ds, name) -> float:
    return float(np.asarray(ds[name].values)) if name in ds else float("nan")


# ----------------------------------------------------------------------------- compare


def compare(
    model,
    regimens: Sequence,
    population,
    n: int,
    seed: int = 0,
    *,
    target=None,
    risks: Sequence = (),
    windows: Mapping[str, tuple[str, str]] | None = None,
    thresholds: Mapping[str, list] | None = None,
    at: Mapping[str, str] | None = None,
    ranges: Mapping[str, list] | None = None,
    names: Sequence[str] | None = None,
    anchors=None,
    anchor_times: Mapping[str, Any] | None = None,
    until=None,
    every="5 min",
    n_draws: int = 2000,
    bands: bool = True,
    cohort_kwargs: Mapping[str, Any] | None = None,
):
    """Simulate several regimens on the same virtual patients and summarise them side by side.

    Parameters
    ----------
    model : str, Path or ModelSpec
        PK model (as for :func:`pkpd.simulate_cohort`).
    regimens : sequence or dict
        Regimens: shipped names, TOML files, one-line texts or :class:`~pkpd.Regimen`, each
        optionally named ``NAME=REGIMEN``; or a dict ``name -> regimen``.
    population, n, seed
        As for :func:`pkpd.simulate_cohort`; the same `seed` is used for every regimen
        (common random numbers, see the module docstring).
    target : str or dict, optional
        Probability of target attainment (:func:`parse_target`, :func:`pkpd.analysis.risk.pta`).
    risks : sequence of str
        Risk models (:func:`pkpd.analysis.risk.load_risk`); incidence with its interval per regimen.
    windows : dict, optional
        AUC windows ``name -> (start, end)``. Default ``{"0-24 h": ("0 h", "24 h")}`` and,
        when every regimen has the event ``end_of_surgery``, ``postop24`` from it to 24 h
        after it.
    thresholds, at
        Time-above thresholds and named concentration times (as for simulate_cohort);
        `at` defaults to the events every regimen has.
    ranges : dict, optional
        Time within ranges ``output -> ["50..150 ng/mL"]`` (as for simulate_cohort):
        ``time_within`` (regimen, range, percentile) and ``time_within_patient``.
    names : sequence of str, optional
        Regimen labels (default: the regimen's name, else its one-line text). Two different
        regimens under one label are refused.
    anchors : str or Regimen, optional
        A regimen whose ``[anchors]`` declare the events that one-line regimens refer to.
    anchor_times : dict, optional
        ``event -> time`` (``{"end_of_surgery": "3 h"}``, or hours): the event at that time
        for every patient and every regimen using it (replacing a regimen's own
        declaration). An event may not be both here and declared by `anchors`.
    until, every
        Common evaluation grid (default: 24 h after the latest possible end of dosing of
        any regimen, every 5 minutes).
    n_draws : int
        Calibration draws of the risk models.
    bands : bool
        Percentile bands over time per regimen (``band``).
    cohort_kwargs : dict, optional
        Further :func:`pkpd.simulate_cohort` keywords (``chunk_size``, ``threads``, ...).

    Returns
    -------
    xarray.Dataset
        Dimension ``regimen``; ``cmax`` (regimen, output, percentile), ``auc`` (regimen,
        output, window, percentile), ``time_above`` (regimen, threshold, percentile),
        ``c_at`` (regimen, output, at, percentile), ``dose`` / ``dose_per_kg`` (regimen,
        percentile), the per-patient values (``*_patient``, dimension ``patient`` with the
        covariates as coordinates), ``pta`` with ``pta_lo``/``pta_hi`` and
        ``incidence_<risk>`` with ``_lo``/``_hi`` when asked, ``band`` (regimen, quantile,
        band_output, band_time) and the provenance in ``attrs``.
    """
    names, regimens = _named_regimens(regimens, names)
    spec = load_model(model)
    loaded = [load_regimen(r) for r in regimens]
    fixed = _fixed_anchors(anchor_times, anchors, loaded)
    regs = [_with_anchors(r, anchors, fixed) for r in loaded]
    labels = _labels(regs, names)
    tgt = parse_target(target) if target is not None else None
    risk_models = _load_risks(risks)
    kw = _cohort_kwargs(
        regs, target=tgt, risk_models=risk_models, windows=_compare_windows(windows, regs),
        thresholds=thresholds, at=at, until=_until(regs) if until is None else until,
        every=every, extra=dict(cohort_kwargs or {}, bands=bands), ranges=ranges,
    )  # fmt: skip
    _check_compare_memory(spec, regs, population, n, seed, kw, len(risk_models))
    # Every regimen's warnings, counted, in attrs['warnings'] (the block adds no frame).
    with record_warnings() as log:
        run = (spec, population, n, seed, kw)
        parts, first, events = _run_regimens(run, regs, labels, (tgt, risk_models, n_draws))
        out = _comparison(parts, labels, regs, first, events, n)
        out.attrs = _compare_attrs(first, run, regs, labels, tgt, risk_models)
        out.attrs[WARNINGS_ATTR] = log.attr()
    return out


def _named_regimens(regimens, names):
    """`regimens` as a sequence and their `names` (the keys of a dict of regimens); a
    single regimen or none is refused."""
    if isinstance(regimens, Mapping):
        if names is not None:
            raise DesignError("`names`: the regimens are a dict, its keys are their names")
        names, regimens = list(regimens), list(regimens.values())
    if isinstance(regimens, str | Regimen) or not len(regimens):
        raise DesignError("`regimens`: give a list of at least one regimen")
    return names, regimens


def _compare_windows(windows, regs) -> Mapping:
    """`windows`, by default 0-24 h and, when every regimen has the event
    ``end_of_surgery``, ``postop24`` from it to 24 h after it."""
    if windows is not None:
        return windows
    windows = {"0-24 h": ("0 h", "24 h")}
    if all("end_of_surgery" in r.anchor_names for r in regs):
        windows["postop24"] = ("end_of_surgery", "end_of_surgery + 24 h")
    return windows


def _run_regimens(run, regs, labels, evaluation):
    """Run the cohort of every regimen (the same patients: checked) and summarise it;
    returns the summaries, the first cohort and the event times (event -> regimen label
    -> times)."""
    spec, population, n, seed, kw = run
    tgt, risk_models, n_draws = evaluation
    parts = []
    first = None
    events: dict[str, dict[str, np.ndarray]] = {}
    for lab, reg in zip(labels, regs, strict=True):
        ds = _run(spec, reg, population, n, seed, kw)
        _check_crn(first, ds, lab)
        first = ds if first is None else first
        res = _evaluate(ds, tgt, risk_models, seed, n_draws, reg)
        parts.append(_summary(ds, reg, res, risk_models))
        for a in reg.anchor_names:
            events.setdefault(a, {})[lab] = ds[a].values
        del ds
    assert first is not None
    return parts, first, events


def _compare_attrs(first, run, regs, labels, tgt, risk_models) -> dict:
    """A comparison's attributes: the first cohort's provenance, the regimens and what
    was asked (windows, target, risks with their provenance), the common random numbers
    and the assumptions."""
    spec, population, _, seed, kw = run
    attrs = _attrs(first, spec, kind="compare")
    attrs.update(
        {
            "regimens": " | ".join(f"{lab}: {r.text}" for lab, r in zip(labels, regs, strict=True)),
            "windows": _windows_text(kw),
            "percentiles": "5, 50, 95 % over patients (numpy.percentile, linear); failed "
            "patients excluded",
            "common_random_numbers": _crn_text(regs, labels, seed),
            "target": _target_text(tgt) if tgt else "",
            "risks": ", ".join(risk_models),
            "assumptions": _assumptions(first, regs, population),
        }
    )
    for name, rm in risk_models.items():
        attrs.update(_risk_attrs(name, rm))
    return attrs


def outcome_cohort_kwargs(target=None, risks: Sequence = (), base: Mapping | None = None) -> dict:
    """The :func:`pkpd.simulate_cohort` keywords `base` with what `target` and `risks` need.

    A whole-grid target adds its threshold (or range), a windowed target and a ``cmax_awake``
    risk model the stored trajectory of their output (:func:`pkpd.risk.required_cohort_kwargs`);
    thresholds, ranges and trajectories are merged with those of `base`.
    """
    kw = dict(base or {})
    if target is not None:
        tgt = parse_target(target)
        kw = _merge(
            kw, risk_analysis.required_cohort_kwargs(tgt), f"the target {_target_text(tgt)}"
        )
    for name, rm in _load_risks(risks).items():
        kw = _merge(kw, risk_analysis.required_cohort_kwargs(rm), f"the risk model {name!r}")
    return kw


def cohort_outcomes(ds, *, target=None, risks: Sequence = (), seed=None, n_draws: int = 2000,
                    regimen=None, max_risk=None, risk_rule: str = "upper",
                    allow_extrapolation: bool = False):  # fmt: skip
    """Probability of target attainment and side-effect risk of one simulated cohort.

    The same values, computed by the same code, as :func:`compare` reports for each regimen:
    with the same model, regimen, population, seed, patients and grid they are equal.

    Parameters
    ----------
    ds : xarray.Dataset
        A cohort from :func:`pkpd.simulate_cohort` run with the keywords of
        :func:`outcome_cohort_kwargs` (a windowed target or a ``cmax_awake`` risk needs the
        stored trajectory of its output).
    target : str or dict, optional
        PTA target (:func:`parse_target`), e.g. ``"cp >= 50 ng/mL for 50% of 0h..end_of_surgery"``
        or ``"cp within 50..150 ng/mL for 50%"``.
    risks : str or sequence of str
        Risk models (:func:`pkpd.risk.load_risk`).
    seed : int, optional
        Seed of the risk models' calibration draws (default: the cohort's ``attrs["seed"]``, as
        :func:`compare` uses its one seed).
    n_draws : int
        Calibration draws of the risk models.
    regimen : str or Regimen, optional
        The cohort's regimen, to tell whether drug is given while awake (default: the
        one-line regimen in ``ds.attrs["regimen"]``).
    max_risk, risk_rule, allow_extrapolation : optional
        A limit on the incidence of the one risk model, read as :func:`design` reads it
        (:func:`pkpd.risk.limit_verdict`): ``feasible`` (met and certified),
        ``meets_limit_value`` (met, domain aside), ``rule_incidence_<r>`` and the verdict in
        ``attrs["risk_limit_verdict"]``.

    Returns
    -------
    xarray.Dataset
        `ds` with ``pta``, ``pta_lo``, ``pta_hi`` (Wilson 95 %) and ``attained_patient``;
        per risk model ``incidence_<r>`` with ``incidence_<r>_lo``/``_hi`` (95 % interval),
        ``outside_<r>`` and ``above_<r>`` (shares of patients outside and above the
        calibration exposure range), ``extrapolation_<r>`` (why the prediction is outside the
        calibration's validity domain, '' if within) and ``p_<r>_patient``; attrs ``target``,
        ``risks`` and each risk model's provenance (``risk_<r>``...).
    """
    import xarray as xr  # lazy: xarray takes ~0.3 s to import, `pkpd --help` need not wait

    if not isinstance(ds, xr.Dataset) or "patient" not in ds.dims:
        raise DesignError(
            "`ds`: a probability needs a cohort (a Dataset with a `patient` dimension, from "
            f"pkpd.simulate_cohort), got {type(ds).__name__}"
            + (" without one (one patient)" if isinstance(ds, xr.Dataset) else "")
        )
    tgt = parse_target(target) if target is not None else None
    risk_models = _load_risks(risks)
    if tgt is None and not risk_models:
        raise DesignError("give a `target` or at least one risk model in `risks`")
    if max_risk is not None:
        if len(risk_models) != 1:
            raise DesignError(
                f"`max_risk` needs exactly one risk model in `risks`, got {len(risk_models)}"
            )
        _check_max_risk(max_risk, next(iter(risk_models)))
        risk_domain.parse_rule(risk_rule)  # a bad rule fails before the risk is computed
    if seed is None:
        seed = int(ds.attrs.get("seed", 0))
    reg = load_regimen(regimen) if regimen is not None else None
    res = _evaluate(ds, tgt, risk_models, seed, n_draws, reg)
    out = ds.copy()
    for name, (dims, values, attrs) in _outcome_data(res, risk_models).items():
        out[name] = xr.Variable(dims, values, attrs)
    out.attrs["target"] = _target_text(tgt) if tgt else ""
    out.attrs["risks"] = ", ".join(risk_models)
    for name, rm in risk_models.items():
        out.attrs.update(_risk_attrs(name, rm))
    if max_risk is not None:
        _cohort_limit(out, res, risk_models, float(max_risk), risk_rule, allow_extrapolation)
    return out


def _cohort_limit(out, res, risk_models, max_risk, rule, allow) -> None:
    """The verdict of the risk limit on one cohort, stored as :func:`design` stores it."""
    ((name, rm),) = risk_models.items()
    v = risk_analysis.limit_verdict(res[name], rm, max_risk, rule=rule, allow_extrapolation=allow)
    out["feasible"] = ((), bool(v.certified), {
        "long_name": f"{name} incidence within the limit {max_risk:g} and the calibration "
        "domain (pkpd.analysis.risk.meets_limit)"})  # fmt: skip
    out["meets_limit_value"] = ((), bool(v.meets), {
        "long_name": f"{name} incidence within the limit {max_risk:g}, domain aside"})  # fmt: skip
    out[f"rule_incidence_{name}"] = ((), v.value, {
        "units": "1", "long_name": f"{name} incidence under the limit rule"})  # fmt: skip
    out.attrs.update(_rule_attrs(rm, rule, allow))
    out.attrs["max_risk"] = max_risk
    out.attrs["risk_limit_verdict"] = v.explain(max_risk, rule)


def _windows_text(kw) -> str:
    return "; ".join(f"{k}: {a} to {b}" for k, (a, b) in kw.get("windows", {}).items())


def _labels(regs, names) -> list[str]:
    """Regimen labels: `names`, else each regimen's name or text. The same regimen given twice
    is numbered ``#2``...; two different regimens under one name are refused."""
    labels = list(names) if names is not None else [r.name or r.text for r in regs]
    if len(labels) != len(regs):
        raise DesignError(f"`names` has {len(labels)} entries for {len(regs)} regimens")
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):
        j = labels.index(lab)
        if j < i and regs[j] != regs[i]:
            raise DesignError(
                f"two different regimens are both named {lab!r} ({regs[j].text!r} and "
                f"{regs[i].text!r}): give each its own name (NAME=REGIMEN, or `names`)"
            )
        if lab in seen:
            seen[lab] += 1
            labels[i] = f"{lab} #{seen[lab]}"
        else:
            seen[lab] = 1
    return labels


def _comparison(parts, labels, regs, first, events, n):
    """The per-regimen summaries along ``regimen``, with the common covariates of `first`
    and the per-patient event times of every regimen (NaN where a regimen has none)."""
    import xarray as xr  # lazy: xarray takes ~0.3 s to import, `pkpd --help` need not wait

    out = xr.concat(parts, dim="regimen", join="outer", coords="minimal", compat="override")
    out = out.assign_coords(regimen=("regimen", labels))
    out["regimen_text"] = ("regimen", [r.text for r in regs])
    covs = [c for c in first.coords if first[c].dims == ("patient",) and c != "patient"]
    covs = [c for c in covs if not c.startswith("event_") and c not in events]
    out = out.assign_coords({c: ("patient", first[c].values, first[c].attrs) for c in covs})
    for a, per in events.items():
        arr = np.full((len(labels), n), np.nan)
        for i, lab in enumerate(labels):
            if lab in per:
                arr[i] = per[lab]
        out[f"event_{a}"] = (
            ("regimen", "patient"),
            arr,
            {"units": "h", "long_name": f"time of event {a} (NaN: the regimen has none)"},
        )
    return out


def compare_memory(spec, regs, population, n, seed, kw, n_risks=0) -> dict[str, int]:
    """Bytes a comparison needs at its peak: its largest cohort run, plus what it holds.

    The regimens run one after another, so their cohort runs do not add up; what does is
    kept for every regimen: the per-patient float64 values of its summary (metrics, doses,
    target attainment, risks) and the event times, twice at the end (the parts and their
    concatenation), and the first cohort's Dataset (the common covariates).
    """
    runs = [
        cohorts.simulate_cohort(spec, r, population, n, seed, estimate_only=True, **kw)
        for r in regs
    ]
    n_out = len(spec.output_names)
    thr = kw.get("thresholds") or {}
    n_thr = sum(1 if isinstance(v, str | int | float) else len(v) for v in thr.values())
    n_win = len(kw.get("windows") or {"total": None})
    rng = kw.get("ranges") or {}
    n_thr += sum(1 if isinstance(v, str) else len(v) for v in rng.values())
    n_values = n_out * (2 + n_win + len(kw.get("at") or {})) + n_thr + 3 + n_risks
    n_events = sum(len(r.anchor_names) for r in regs)
    held = runs[0]["dataset"] + n * 8 * (2 * len(regs) * n_values + n_events)
    largest = max(r["total"] for r in runs)
    return {"largest_run": largest, "held": held, "total": largest + held}


def _check_compare_memory(spec, regs, population, n, seed, kw, n_risks) -> None:
    limit = kw.get("memory_limit") or int(0.8 * resources.available_memory())
    mem = compare_memory(spec, regs, population, n, seed, kw, n_risks)
    if mem["total"] <= limit:
        return
    fit = cohorts.largest_fitting(
        lambda k: compare_memory(spec, regs, population, k, seed, kw, n_risks), limit, n
    )
    raise DesignError(
        f"comparing {len(regs)} regimens on {n:,} patients needs about "
        f"{mem['total'] / 1e9:.2f} GB (the largest cohort run {mem['largest_run'] / 1e9:.2f} "
        f"GB, results held for every regimen {mem['held'] / 1e9:.2f} GB) but "
        f"{limit / 1e9:.2f} GB are available: compare at most about {fit:,} patients, or "
        "fewer regimens at a time"
    )


def _check_crn(first, ds, label) -> None:
    """Covariates and individual parameters must be identical across regimens (CRN)."""
    if first is None:
        return
    names = [c for c in first.coords if first[c].dims == ("patient",)]
    names += [v for v in first.data_vars if v.startswith("param_")]
    for c in names:
        if c in ds and not np.array_equal(first[c].values, ds[c].values):
            raise DesignError(
                f"common random numbers broken: `{c}` differs for regimen {label!r} (a bug: "
                "the cohort draws should not depend on the regimen)"
            )


def _crn_text(regs, labels, seed) -> str:
    parts = [
        f"seed {seed} for every regimen: identical covariates and individual parameters "
        "(checked after the runs)"
    ]
    names = sorted(set().union(*(r.anchor_names for r in regs)))
    for a in names:
        have = [(lab, r.anchor_spec(a)) for lab, r in zip(labels, regs, strict=True)]
        have = [(lab, s) for lab, s in have if s is not None]
        sets = {tuple(sorted(r.anchor_names)) for r in regs if a in r.anchor_names}
        same = len({s for _, s in have}) == 1 and len(sets) == 1
        parts.append(
            f"event {a}: "
            + (
                f"same per-patient times in {len(have)} regimen(s)"
                if same
                else "distributions or event sets differ between regimens: times are not shared"
            )
        )
    return "; ".join(parts)


def _summary(ds, reg: Regimen, res: dict, risk_models) -> Any:
    """The per-regimen part of the comparison dataset (no regimen dimension yet)."""
    import xarray as xr  # lazy: xarray takes ~0.3 s to import, `pkpd --help` need not wait

    ok = ds.status.values == 0
    data: dict[str, Any] = {}
    coords: dict[str, Any] = {
        "percentile": ("percentile", list(PERCENTILES), {"units": "%"}),
        "output": ("output", list(ds.output.values)),
        "patient": ("patient", ds.patient.values),
    }

    def add(name, var, dims, units, long_name):
        v = ds[var].values.astype(float).copy()
        v[~ok] = np.nan
        data[name] = (
            (*dims, "percentile"),
            _pct(v, axis=0),
            {"units": units, "long_name": long_name},
        )
        data[f"{name}_patient"] = (
            ("patient", *dims),
            v,
            {"units": units, "long_name": f"{long_name}, per patient (NaN: failed)"},
        )

    add("cmax", "cmax", ("output",), "ng/mL", "maximum concentration")
    add("tmax", "tmax", ("output",), "h", "time of maximum concentration")
    coords["window"] = ("window", list(ds.window.values))
    add("auc", "auc", ("output", "window"), "ng*h/mL", "area under the curve")
    if "time_above" in ds:
        coords["threshold"] = ("threshold", list(ds.threshold.values))
        add("time_above", "time_above", ("threshold",), "h", "time above threshold")
    if "time_within" in ds:
        coords["range"] = ("range", list(ds["range"].values))
        add("time_within", "time_within", ("range",), "h", "time within range")
    if "c_at" in ds:
        coords["at"] = ("at", list(ds["at"].values))
        add("c_at", "c_at", ("output", "at"), "ng/mL", "concentration at named times")
    _add_pca_summary(ds, add, coords)
    mg, mgkg = _dose(reg, ds)
    for name, v, u in (("dose", mg, "mg"), ("dose_per_kg", mgkg, "mg/kg")):
        data[name] = (("percentile",), _pct(v), {"units": u, "long_name": "total dose given"})
        data[f"{name}_patient"] = (("patient",), v, {"units": u, "long_name": "total dose given"})
    data["n_failed"] = ((), int((~ok).sum()), {"long_name": "patients whose solver failed"})
    data.update(_outcome_data(res, risk_models))
    if "band" in ds:
        coords["quantile"] = ("quantile", ds["quantile"].values)
        coords["band_output"] = ("band_output", ds.band_output.values)
        coords["band_time"] = ("band_time", ds.band_time.values, {"units": "h"})
        data["band"] = (
            ("quantile", "band_output", "band_time"),
            ds.band.values,
            dict(ds.band.attrs),
        )
    return xr.Dataset(data, coords=coords)


def _outcome_data(res: dict, risk_models) -> dict[str, Any]:
    """The PTA and risk variables of one cohort (no regimen dimension) from :func:`_evaluate`:
    ``pta``/``pta_lo``/``pta_hi`` and ``attained_patient``; per risk model ``incidence_<r>``
    with ``_lo``/``_hi``, the shares ``outside_<r>``/``above_<r>`` of patients outside and
    above the calibration exposure range, ``extrapolation_<r>`` (why the prediction is
    outside the calibration's domain, '' if within) and ``p_<r>_patient``."""
    data: dict[str, Any] = {}
    if "pta" in res:
        p = res["pta"]
        for k in ("pta", "pta_lo", "pta_hi"):
            if k in p:
                data[k] = ((), _scalar(p, k), {"units": "1", "long_name": _LONG[k]})
        if "attained" in p:
            data["attained_patient"] = (
                ("patient",),
                np.asarray(p["attained"].values, dtype=bool),
                {"long_name": "target attained"},
            )
    for name in risk_models:
        r = res[name]
        for suf in ("", "_lo", "_hi"):
            k = f"incidence_{name}{suf}"
            data[k] = (
                (),
                _scalar(r, k),
                {"units": "1", "long_name": f"predicted incidence of {name}{_SUF[suf]}"},
            )
        inc = r[f"incidence_{name}"]
        data[f"outside_{name}"] = (
            (),
            float(inc.attrs.get("fraction_outside_calibration_exposure", np.nan)),
            {"units": "1", "long_name": f"share of patients outside the {name} calibration "
             "exposure range"},
        )  # fmt: skip
        data[f"above_{name}"] = (
            (),
            float(inc.attrs.get("fraction_above_calibration_exposure", np.nan)),
            {"units": "1", "long_name": f"share of patients above the {name} calibration "
             "exposure range"},
        )  # fmt: skip
        data[f"extrapolation_{name}"] = (
            (),
            str(inc.attrs.get("extrapolation", "")),
            {"long_name": f"why the {name} prediction is outside its calibration domain "
             "('' if within)"},
        )  # fmt: skip
        if f"p_{name}" in r:
            data[f"p_{name}_patient"] = (
                ("patient",),
                np.asarray(r[f"p_{name}"].values, dtype=float),
                {"units": "1", "long_name": f"probability of {name} per patient"},
            )
    return data


_LONG = {
    "pta": "probability of target attainment",
    "pta_lo": "probability of target attainment, lower bound",
    "pta_hi": "probability of target attainment, upper bound",
}
_SUF = {"": "", "_lo": ", lower bound", "_hi": ", upper bound"}


def _attrs(ds, spec, kind: str) -> dict:
    keep = {
        k: v
        for k, v in ds.attrs.items()
        if k not in ("regimen", "elapsed_s", "patients_per_second", "n_failed", "windows")
    }
    keep["kind"] = kind
    keep["disclaimer"] = DISCLAIMER
    return keep


def _assumptions(ds, regs, population=None, events_of: str | None = None) -> str:
    """The run's assumed or illustrative inputs; `events_of` names where the events come
    from when that is not the regimen itself (a design's --anchors-from regimen)."""
    parts = []
    assumed = ds.attrs.get("model_assumed_parameters")
    if assumed and str(assumed).strip().lower() != "none":
        parts.append(f"model values assumed (not literature): {assumed}")
    for r in regs:
        for a in r.anchors:
            if a.tag or a.source:
                parts.append(
                    f"event {a.name} of {events_of or r.name or r.text}: {a.source} [{a.tag}]"
                )
    if isinstance(population, str) and not population.endswith(".csv"):
        population = cohorts.load_population(population)
    if hasattr(population, "assumed_values"):
        parts += population.assumed_values()
    return "; ".join(dict.fromkeys(parts))


def _risk_attrs(name, rm) -> dict:
    """Provenance of a risk model for the result's attrs (whatever the model exposes)."""
    out = {}
    prov = getattr(rm, "provenance", None)
    if callable(prov):
        out[f"risk_{name}"] = str(prov())
    for k in ("description", "caveats", "absent"):
        v = getattr(rm, k, None)
        if isinstance(v, list | tuple):
            v = " | ".join(map(str, v))
        if isinstance(v, str) and v:
            out[f"risk_{name}_{k}"] = v
    return out


# ----------------------------------------------------------------------------- design


def _values(name: str, values) -> list:
    if values is None:
        return []
    if isinstance(values, str | int | float):
        values = [values]
    vals = list(values)
    if not vals:
        raise DesignError(f"`{name}`: give at least one value")
    if name == "duration":
        return vals
    out = []
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            raise DesignError(f"`{name}`: expected numbers in {_UNITS[name]}, got {v!r}")
        if not (np.isfinite(v) and v >= 0):
            raise DesignError(f"`{name}`: values must be finite and >= 0, got {v!r}")
        out.append(float(v))
    if len(set(out)) != len(out):
        raise DesignError(f"`{name}`: repeated values in {out}")
    return out


def _duration_text(v) -> str:
    if isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool):
        if not (np.isfinite(v) and v > 0):
            raise DesignError(f"`duration`: values must be > 0 h, got {v!r}")
        return f"{float(v):g} h"
    return " ".join(str(v).split())


def design(
    model,
    population,
    n: int,
    seed: int = 0,
    *,
    bolus: Sequence[float] | None = None,
    rate: Sequence[float] | None = None,
    duration: Sequence | None = None,
    template: str | None = None,
    variables: Mapping[str, Sequence[str]] | None = None,
    anchors=None,
    anchor_times: Mapping[str, Any] | None = None,
    target=None,
    risk=None,
    max_risk: float | None = None,
    windows: Mapping[str, tuple[str, str]] | None = None,
    until=None,
    every="5 min",
    n_draws: int = 2000,
    progress=None,
    cohort_kwargs: Mapping[str, Any] | None = None,
    risk_rule: str = "upper",
    allow_extrapolation: bool = False,
):
    """Sweep a regimen template over a grid of doses and durations on one virtual cohort.

    Parameters
    ----------
    model, population, n, seed
        As for :func:`pkpd.simulate_cohort`; the same `seed` at every grid point (common
        random numbers, see the module docstring).
    bolus : sequence of float, optional
        Bolus doses (mg/kg), placeholder ``{bolus}``.
    rate : sequence of float, optional
        Infusion rates (mg/kg/h), placeholder ``{rate}``.
    duration : sequence, optional
        Infusion ends: hours (``4``), times (``"4 h"``) or event-anchored times
        (``"end_of_surgery"``, ``"end_of_surgery + 2 h"``), placeholder ``{duration}``.
        Default ``["end_of_surgery"]`` when `anchors` declares it.
    template : str, optional
        One-line regimen with placeholders (default :data:`DEFAULT_TEMPLATE`).
    variables : dict of str to list of str, optional
        Further design variables, filled into the template as written: ``{"lockout":
        ["5 min", "8 min", "15 min"]}`` for a ``{lockout}`` placeholder (PCA settings, TCI
        targets, any part of a one-line regimen); each is a dimension of the result with
        its texts as coordinates.
    anchors : str or Regimen, optional
        Regimen whose ``[anchors]`` declare the events the template refers to.
    anchor_times : dict, optional
        ``event -> time``: the event at that time for every patient (as for :func:`compare`).
    target : str or dict, optional
        Target for the probability of target attainment (:func:`parse_target`).
    risk : str, optional
        Risk model (:func:`pkpd.analysis.risk.load_risk`).
    max_risk : float, optional
        Limit on the risk incidence (fraction) for the best schedule.
    risk_rule : str
        How the limit is read (:func:`pkpd.analysis.risk.meets_limit`): ``"upper"`` (the
        97.5 % quantile, the upper end of the 95 % interval; default), ``"mean"`` or a
        quantile ``"q90"``.
    allow_extrapolation : bool
        Let points whose risk prediction lies outside the calibration's validity domain
        count as feasible (they are flagged either way: ``extrapolation_<risk>``).
    windows, until, every, n_draws, cohort_kwargs
        As for :func:`compare`; `until` is common to the whole grid.
    progress : bool, optional
        One line per grid point on stderr (default: when stderr is a terminal).

    Returns
    -------
    xarray.Dataset
        One dimension per design variable; ``regimen`` (the one-line text of each point),
        ``total_dose`` (mean mg/kg over the cohort), ``cmax_median`` (..., output),
        ``auc_median`` (..., output, window), ``pta``/``pta_lo``/``pta_hi`` (with a target),
        ``incidence_<risk>`` with its bounds and ``feasible`` (with a risk), ``pareto``
        (with both), and the best schedule in ``attrs`` (``best_regimen``, ``best_message``,
        ...).
    """
    tpl = template or DEFAULT_TEMPLATE
    dims, grid_vals, texts = _design_variables(tpl, bolus, rate, duration, anchors, variables)
    spec = load_model(model)
    shape = tuple(len(grid_vals[k]) for k in dims)
    points = list(itertools.product(*(range(s) for s in shape)))
    regs = _grid_regimens(tpl, dims, texts, points, anchors, anchor_times)
    tgt = parse_target(target) if target is not None else None
    risk_models = _load_risks([risk] if risk else [])
    rname = next(iter(risk_models), None)
    _check_max_risk(max_risk, rname)
    limit_rule = (risk_rule, allow_extrapolation)
    if rname:
        risk_domain.parse_rule(risk_rule)  # a bad rule fails before the runs
    kw = _grid_cohort_kwargs(regs, tgt, risk_models, windows, until, every, cohort_kwargs)
    # Every grid point's warnings, counted, in attrs['warnings'] (the block adds no frame).
    with record_warnings() as log:
        first, res_arr = _sweep(
            (spec, population, n, seed, kw), regs, points, shape, (tgt, risk_models, n_draws),
            (rname, max_risk, limit_rule), progress,
        )  # fmt: skip
        assert first is not None
        gds = _grid_dataset(dims, grid_vals, texts, first, regs, points, res_arr)
        _add_targets_and_risk(gds, dims, res_arr, tgt, rname, max_risk)
        gds.attrs = _attrs(first, spec, kind="design")
        gds.attrs.update(_design_attrs(tpl, dims, anchors, kw, seed, tgt, rname, max_risk))
        gds.attrs["assumptions"] = _grid_assumptions(first, regs, population, anchors)
        if rname:
            gds.attrs.update(_risk_attrs(rname, risk_models[rname]))
            gds.attrs.update(_rule_attrs(risk_models[rname], risk_rule, allow_extrapolation))
        gds.attrs.update(select_best(gds, max_risk=max_risk))
        gds.attrs[WARNINGS_ATTR] = log.attr()
    return gds


def _grid_cohort_kwargs(regs, tgt, risk_models, windows, until, every, cohort_kwargs) -> dict:
    """The :func:`pkpd.simulate_cohort` keywords of every grid point (`regs`: point ->
    regimen): `windows` (default 0-24 h), the common `until` (default: 24 h after the latest
    end of dosing of the grid), no bands, and what the target and the risk model need."""
    regs = list(regs.values())
    return _cohort_kwargs(
        regs,
        target=tgt,
        risk_models=risk_models,
        windows={"0-24 h": ("0 h", "24 h")} if windows is None else windows,
        thresholds=None,
        at=None,
        until=_until(regs) if until is None else until,
        every=every,
        extra=dict(cohort_kwargs or {}, bands=False),
    )


def _grid_assumptions(first, regs, population, anchors) -> str:
    """A design's assumptions: those of its first grid point, whose events are those of
    the --anchors-from regimen (`anchors`), not of the point."""
    events_of = anchors if isinstance(anchors, str) else getattr(anchors, "name", None)
    return _assumptions(first, list(regs.values())[:1], population, events_of=events_of)


def _sweep(run, regs, points, shape, evaluation, limit, progress):
    """Run the cohort of every grid point (the same patients: checked) and record its
    results; returns the first cohort and the result arrays."""
    spec, population, n, seed, kw = run
    tgt, risk_models, n_draws = evaluation
    rname, max_risk, limit_rule = limit
    show = progress if progress is not None else sys.stderr.isatty()
    first = None
    res_arr: dict[str, np.ndarray] = {}
    for k_pt, idx in enumerate(points):
        reg = regs[idx]
        ds = _run(spec, reg, population, n, seed, kw)
        _check_crn(first, ds, reg.text)
        if first is None:
            first = ds
            res_arr = _grid_arrays(ds, shape, rname)
        res = _evaluate(ds, tgt, risk_models, seed, n_draws, reg)
        _record_point(res_arr, idx, ds, reg, res, rname)
        if rname and max_risk is not None:
            _record_limit(res_arr, idx, res[rname], risk_models[rname], max_risk, limit_rule)
        if show:
            sys.stderr.write(f"\rgrid point {k_pt + 1}/{len(points)}")
            sys.stderr.flush()
        del ds
    if show:
        sys.stderr.write("\n")
    return first, res_arr


def _record_limit(res_arr, idx, res, rm, max_risk, limit_rule) -> None:
    """Whether grid point `idx` meets the risk limit, under the rule, and is certified."""
    rule, allow = limit_rule
    verdict = risk_analysis.limit_verdict(
        res, rm, float(max_risk), rule=rule, allow_extrapolation=allow
    )
    res_arr["feasible"][idx] = verdict.certified
    res_arr["meets_value"][idx] = verdict.meets
    res_arr["rule_value"][idx] = verdict.value


def _rule_attrs(rm, rule, allow_extrapolation) -> dict:
    """How the risk limit was read: the rule, its floor, whether extrapolation counts."""
    return {
        "risk_rule": str(rule),
        "risk_rule_text": risk_domain.rule_text(rule),
        "risk_rule_floor": risk_domain.resolution_floor(rm, rule),
        "allow_extrapolation": int(bool(allow_extrapolation)),
    }


def _design_attrs(tpl, dims, anchors, kw, seed, tgt, rname, max_risk) -> dict:
    """What a design grid was asked for, as attributes."""
    return {
        "template": tpl,
        "design_variables": ", ".join(f"{k} [{_UNITS.get(k, 'as written')}]" for k in dims),
        "anchors": str(getattr(load_regimen(anchors), "name", "") or anchors)
        if anchors is not None
        else "",
        "windows": _windows_text(kw),
        "common_random_numbers": f"seed {seed} at every grid point: identical covariates, "
        "individual parameters and event times (checked after the runs)",
        "target": _target_text(tgt) if tgt else "",
        "risk": rname or "",
        "max_risk": float(max_risk) if max_risk is not None else "",
    }


def _check_max_risk(max_risk, rname) -> None:
    if max_risk is not None:
        if rname is None:
            raise DesignError("`max_risk` needs a `risk` model")
        if not (0.0 <= float(max_risk) <= 1.0):
            raise DesignError(f"`max_risk` must be a fraction in [0, 1], got {max_risk!r}")


def _text_variables(tpl, variables) -> dict[str, list[str]]:
    """The template's further variables (`variables`: name -> texts), checked."""
    out = {}
    for name, values in (variables or {}).items():
        if not re.fullmatch(r"[A-Za-z_]\w*", str(name)) or name in _VARIABLES:
            raise DesignError(
                f"design variable {name!r}: expected a name (letters, digits, _) other than "
                f"{', '.join(_VARIABLES)}"
            )
        vals = [values] if isinstance(values, str) else [str(v).strip() for v in values]
        if not vals or not all(vals):
            raise DesignError(f"`{name}`: give at least one value, none empty")
        if len(set(vals)) != len(vals):
            raise DesignError(f"`{name}`: repeated values in {vals}")
        if "{" + name + "}" not in tpl:
            raise DesignError(f"`{name}` values given but the template has no {{{name}}}: {tpl!r}")
        out[name] = vals
    return out


def _design_variables(tpl, bolus, rate, duration, anchors, variables=None):
    """The design variables the template uses (the grid's dimensions), their values and
    the texts that fill the template's placeholders."""
    grid_vals = {
        k: _values(k, v) for k, v in (("bolus", bolus), ("rate", rate), ("duration", duration))
    }
    extra = _text_variables(tpl, variables)
    used = [k for k in _VARIABLES if "{" + k + "}" in tpl]
    for k in _VARIABLES:
        if grid_vals[k] and k not in used:
            raise DesignError(f"`{k}` values given but the template has no {{{k}}}: {tpl!r}")
    if "duration" in used and not grid_vals["duration"]:
        src = load_regimen(anchors) if anchors is not None else None
        if src is not None and src.anchor_spec("end_of_surgery") is not None:
            grid_vals["duration"] = ["end_of_surgery"]
        else:
            raise DesignError(
                "`duration`: give infusion ends (e.g. [4] h or ['end_of_surgery'] with "
                "anchors='lumbar_fusion_esketamine'; CLI --duration 4h,end_of_surgery)"
            )
    for k in used:
        if not grid_vals[k]:
            raise DesignError(f"the template uses {{{k}}}: give `{k}` values")
    dims = [*used, *extra]
    if not dims:
        raise DesignError(
            f"the template {tpl!r} has none of {{bolus}}, {{rate}}, {{duration}} and no "
            "further variables were given"
        )
    texts = {
        k: [_duration_text(v) if k == "duration" else f"{v:g}" for v in grid_vals[k]] for k in used
    }
    for k, vals in extra.items():
        grid_vals[k] = texts[k] = vals
    if "duration" in dims and len(set(texts["duration"])) != len(texts["duration"]):
        raise DesignError(f"`duration`: repeated values in {texts['duration']}")
    return dims, grid_vals, texts


def _grid_regimens(tpl, dims, texts, points, anchors, anchor_times=None) -> dict:
    """The regimen of every grid point (index tuple -> Regimen), events fixed by
    `anchor_times` or declared by `anchors`."""
    regs = {}
    for idx in points:
        text = tpl.format(**{k: texts[k][i] for k, i in zip(dims, idx, strict=True)})
        try:
            regs[idx] = load_regimen(text)
        except PkpdError as exc:
            raise DesignError(f"grid point {text!r}: {exc}") from None
    fixed = _fixed_anchors(anchor_times, anchors, list(regs.values()))
    return {idx: _with_anchors(reg, anchors, fixed) for idx, reg in regs.items()}


def _grid_arrays(ds, shape, rname) -> dict[str, np.ndarray]:
    """The result arrays of a grid (NaN until filled), shaped from the first cohort `ds`."""
    outs, nwin = len(ds.output.values), len(ds.window.values)
    arr = {
        "cmax_median": np.full((*shape, outs), np.nan),
        "auc_median": np.full((*shape, outs, nwin), np.nan),
    }
    for name in ("total_dose", "n_failed", "pta", "pta_lo", "pta_hi"):
        arr[name] = np.full(shape, np.nan)
    for suf in ("", "_lo", "_hi"):
        if rname:
            arr[f"incidence_{rname}{suf}"] = np.full(shape, np.nan)
    if "pca_demands" in ds:
        for name, *_ in PCA_SUMMARY:
            arr[f"{name}_median"] = np.full(shape, np.nan)
    if "pca_drug" in ds.coords:
        arr["pca_drug_dose_median"] = np.full((*shape, ds.sizes["pca_drug"]), np.nan)
    arr["feasible"] = np.zeros(shape, dtype=bool)
    arr["meets_value"] = np.zeros(shape, dtype=bool)
    arr["rule_value"] = np.full(shape, np.nan)
    if rname:
        arr[f"extrapolation_{rname}"] = np.full(shape, "", dtype=object)
    return arr


def _record_point(res_arr, idx, ds, reg, res, rname) -> None:
    """Medians, mean dose, failures, PTA and risk of the cohort `ds` at grid point `idx`."""
    ok = ds.status.values == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res_arr["cmax_median"][idx] = np.nanmedian(
            np.where(ok[:, None], ds.cmax.values, np.nan), axis=0
        )
        res_arr["auc_median"][idx] = np.nanmedian(
            np.where(ok[:, None, None], ds.auc.values, np.nan), axis=0
        )
        res_arr["total_dose"][idx] = float(np.nanmean(_dose(reg, ds)[1]))
    res_arr["n_failed"][idx] = int((~ok).sum())
    for name, *_ in PCA_SUMMARY if "pca_demands" in ds else ():
        if f"{name}_median" in res_arr:  # a grid that mixes PCA and other regimens: NaN
            res_arr[f"{name}_median"][idx] = float(np.median(ds[name].values[ok]))
    if "pca_drug_dose_median" in res_arr and "pca_drug" in ds.coords:
        res_arr["pca_drug_dose_median"][idx] = np.median(ds.pca_drug_dose.values[ok], axis=0)
    if "pta" in res:
        for k in ("pta", "pta_lo", "pta_hi"):
            res_arr[k][idx] = _scalar(res["pta"], k)
    if rname:
        for suf in ("", "_lo", "_hi"):
            res_arr[f"incidence_{rname}{suf}"][idx] = _scalar(res[rname], f"incidence_{rname}{suf}")
        inc = res[rname][f"incidence_{rname}"]
        res_arr[f"extrapolation_{rname}"][idx] = str(inc.attrs.get("extrapolation", ""))


def _grid_dataset(dims, grid_vals, texts, first, regs, points, res_arr):
    """The design grid's Dataset: coordinates, regimens, doses and exposure medians."""
    import xarray as xr  # lazy: xarray takes ~0.3 s to import, `pkpd --help` need not wait

    shape = res_arr["total_dose"].shape
    coords: dict[str, Any] = {}
    for k in dims:
        if k == "duration":
            vals = grid_vals[k]
            numeric = all(
                isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
                for v in vals
            )
            coords[k] = (
                k,
                [float(v) for v in vals] if numeric else texts[k],
                {"units": "h" if numeric else ""},
            )
        else:
            coords[k] = (k, grid_vals[k], {"units": _UNITS.get(k, "")})
    coords["output"] = ("output", list(first.output.values))
    coords["window"] = ("window", list(first.window.values))
    gds = xr.Dataset(coords=coords)
    gds["regimen"] = (
        tuple(dims),
        np.array([regs[i].text for i in points], dtype=object).reshape(shape),
    )
    gds["total_dose"] = (
        tuple(dims),
        res_arr["total_dose"],
        {"units": "mg/kg", "long_name": "mean total dose over the cohort"},
    )
    gds["n_failed"] = (
        tuple(dims),
        res_arr["n_failed"].astype(np.int64),
        {"long_name": "failed patients"},
    )
    gds["cmax_median"] = (
        (*dims, "output"),
        res_arr["cmax_median"],
        {"units": "ng/mL", "long_name": "median Cmax"},
    )
    gds["auc_median"] = (
        (*dims, "output", "window"),
        res_arr["auc_median"],
        {"units": "ng*h/mL", "long_name": "median AUC"},
    )
    for name, units, long_name in PCA_SUMMARY:
        if f"{name}_median" in res_arr:
            attrs = {"units": units, "long_name": f"median {long_name}"}
            gds[f"{name}_median"] = (tuple(dims), res_arr[f"{name}_median"], attrs)
    if "pca_drug_dose_median" in res_arr:
        gds.coords["pca_drug"] = ("pca_drug", list(first.pca_drug.values))
        attrs = {"units": "mg", "long_name": "median amount of each PCA drug (whole run)"}
        gds["pca_drug_dose_median"] = ((*dims, "pca_drug"), res_arr["pca_drug_dose_median"], attrs)
    return gds


def _add_targets_and_risk(gds, dims, res_arr, tgt, rname, max_risk) -> None:
    """PTA, risk incidence, feasibility and the Pareto front, as far as they were asked."""
    if tgt is not None:
        for k in ("pta", "pta_lo", "pta_hi"):
            gds[k] = (tuple(dims), res_arr[k], {"units": "1", "long_name": _LONG[k]})
    if rname:
        for suf in ("", "_lo", "_hi"):
            k = f"incidence_{rname}{suf}"
            gds[k] = (
                tuple(dims),
                res_arr[k],
                {"units": "1", "long_name": f"predicted incidence of {rname}{_SUF[suf]}"},
            )
        gds[f"extrapolation_{rname}"] = (
            tuple(dims),
            res_arr[f"extrapolation_{rname}"].astype(str),
            {"long_name": f"why the {rname} prediction is outside its calibration domain "
             "('' if within)"},
        )  # fmt: skip
        if max_risk is not None:
            gds["feasible"] = (
                tuple(dims),
                res_arr["feasible"],
                {
                    "long_name": f"{rname} incidence within the limit {max_risk:g} and the "
                    "calibration domain (pkpd.analysis.risk.meets_limit)"
                },
            )
            gds["meets_limit_value"] = (
                tuple(dims),
                res_arr["meets_value"],
                {"long_name": f"{rname} incidence within the limit {max_risk:g}, domain aside"},
            )
            gds[f"rule_incidence_{rname}"] = (
                tuple(dims),
                res_arr["rule_value"],
                {"units": "1", "long_name": f"{rname} incidence under the limit rule"},
            )
    if tgt is not None and rname:
        gds["pareto"] = (
            tuple(dims),
            pareto_front(res_arr["pta"], res_arr[f"incidence_{rname}"]),
            {"long_name": "on the Pareto front (maximize PTA, minimize risk incidence)"},
        )


# ----------------------------------------------------------------------------- optimisation


def _nothing_feasible(gds, rname, inc, max_risk) -> str:
    """Why no grid point qualifies: the lowest incidence, the rule, the points that meet
    the limit only outside the calibration's domain, and a limit below resolution."""
    lowest = ""
    if inc is not None and np.isfinite(inc).any():
        j = int(np.nanargmin(inc))
        lowest = (
            f"; the lowest predicted {rname} incidence on the grid is "
            f"{float(np.ravel(inc)[j]):.3g} ({np.ravel(gds.regimen.values)[j]})"
        )
    limit = f"{rname} incidence <= {float(max_risk):g}" if max_risk is not None else "the limit"
    if "feasible" in gds:
        limit += f" ({gds.attrs.get('risk_rule_text') or 'the 97.5 % quantile of its incidence'}"
        limit += ", within the calibration's domain)"
    msg = f"no schedule on the grid satisfies {limit}{lowest}"
    if "meets_limit_value" in gds:
        n_out = int(np.sum(np.asarray(gds.meets_limit_value.values) & ~gds.feasible.values))
        if n_out:
            msg += (
                f"; {n_out} point(s) meet the limit only outside the calibration's domain "
                "(see extrapolation_" + rname + "; allow them with --allow-extrapolation)"
            )
    floor = gds.attrs.get("risk_rule_floor")
    if max_risk is not None and floor not in (None, "") and float(max_risk) < float(floor):
        msg += (
            f"; the limit {float(max_risk):g} is below what the calibration can resolve: the "
            f"same rule gives {float(floor):.3g} with no drug at all (the background incidence "
            "and its uncertainty)"
        )
    return msg


def pareto_front(pta, risk) -> np.ndarray:
    """Boolean mask of the Pareto-optimal points (maximize `pta`, minimize `risk`).

    A point is dominated if another point has ``pta >= `` and ``risk <= `` its own with at
    least one strict; equal points do not dominate each other (ties stay on the front).
    NaN in either value: not on the front. Any shape; the result has the same shape.

    Examples
    --------
    >>> pareto_front([0.5, 0.7, 0.7, 0.6], [0.1, 0.2, 0.2, 0.3]).tolist()
    [True, True, True, False]
    """
    p = np.asarray(pta, dtype=float)
    r = np.asarray(risk, dtype=float)
    if p.shape != r.shape:
        raise DesignError(f"`pta` and `risk` differ in shape: {p.shape} vs {r.shape}")
    pf, rf = p.ravel(), r.ravel()
    good = np.isfinite(pf) & np.isfinite(rf)
    out = np.zeros(pf.shape, dtype=bool)
    gi = np.nonzero(good)[0]
    pg, rg = pf[gi], rf[gi]
    front = np.ones(gi.size, dtype=bool)
    step = 1024  # rows at a time: bounds the (rows, points) comparison arrays
    for s in range(0, gi.size, step):
        pi, ri = pg[s : s + step, None], rg[s : s + step, None]
        ge = (pg[None, :] >= pi) & (rg[None, :] <= ri)
        strict = (pg[None, :] > pi) | (rg[None, :] < ri)
        front[s : s + step] = ~np.any(ge & strict, axis=1)
    out[gi] = front
    return out.reshape(p.shape)


def select_best(gds, max_risk: float | None = None) -> dict:
    """The best schedule of a design grid, as attributes (see the module docstring).

    Feasible points: ``gds.feasible`` if present, else ``incidence <= max_risk`` (or every
    point without a risk model or limit). Among them, the largest ``pta``; ties by the lower
    ``total_dose``, then grid order. Returns ``best_*`` attributes; ``best_regimen`` is
    ``""`` and ``best_message`` explains when nothing qualifies.
    """
    if "pta" not in gds:
        return {
            "best_regimen": "",
            "best_message": "no target given: no best schedule (PTA needed)",
        }
    dims = list(gds.pta.dims)
    pta = np.asarray(gds.pta.values, dtype=float)
    dose = np.asarray(gds.total_dose.values, dtype=float)
    rname = str(gds.attrs.get("risk") or "")
    inc = gds[f"incidence_{rname}"].values if rname and f"incidence_{rname}" in gds else None
    if "feasible" in gds:
        feasible = np.asarray(gds.feasible.values, dtype=bool)
    elif max_risk is not None and inc is not None:
        feasible = np.asarray(inc, dtype=float) <= float(max_risk)
    else:
        feasible = np.ones(pta.shape, dtype=bool)
    feasible = feasible & np.isfinite(pta)
    if not feasible.any():
        return {"best_regimen": "", "best_message": _nothing_feasible(gds, rname, inc, max_risk)}
    flat = np.nonzero(feasible.ravel())[0]
    # lexsort: last key first -> max PTA, then min dose, then grid order.
    order = np.lexsort((flat, np.nan_to_num(dose.ravel()[flat], nan=np.inf), -pta.ravel()[flat]))
    j = int(flat[order[0]])
    idx = np.unravel_index(j, pta.shape)
    out = {
        "best_regimen": str(np.ravel(gds.regimen.values)[j]),
        "best_pta": float(pta.ravel()[j]),
        "best_total_dose": float(dose.ravel()[j]),
        "best_index": ",".join(str(int(i)) for i in idx),
    }
    for d, i in zip(dims, idx, strict=True):
        v = gds[d].values[i]
        out[f"best_{d}"] = v.item() if hasattr(v, "item") else str(v)
    if inc is not None:
        out["best_incidence"] = float(np.ravel(inc)[j])
    cond = (
        f" subject to {rname} incidence <= {float(max_risk):g}"
        + (f" ({gds.attrs['risk_rule_text']})" if gds.attrs.get("risk_rule_text") else "")
        if max_risk is not None and rname
        else ""
    )
    out["best_message"] = (
        f"best: {out['best_regimen']} (PTA {out['best_pta']:.3f}"
        + (f", {rname} {out['best_incidence']:.3f}" if inc is not None else "")
        + f", mean total {out['best_total_dose']:.3g} mg/kg): max PTA{cond}, ties by lower dose"
    )
    why = f"extrapolation_{rname}"
    if rname and why in gds and str(np.ravel(gds[why].values)[j]):
        out["best_extrapolation"] = str(np.ravel(gds[why].values)[j])
        out["best_message"] += (
            f". WARNING: its {rname} prediction is outside the calibration's domain ("
            f"{out['best_extrapolation']}), counted only because extrapolation was allowed"
        )
    if out["best_pta"] == 0.0 and np.nanmax(pta) > 0.0:
        # Formally the best, but no feasible schedule reaches the target in any patient.
        out["best_message"] = (
            "no schedule that meets the limit attains the target in any patient (PTA 0 at "
            "every feasible point); " + out["best_message"]
        )
    return out
