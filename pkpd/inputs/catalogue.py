"""The shipped regimens and risk models as text: one row each for ``pkpd regimens`` and
``pkpd risk``, and every line of ``pkpd regimens show`` / ``pkpd risk show``.

The PD endpoints have theirs in :mod:`pkpd.inputs.pd` (:func:`~pkpd.inputs.pd.list_rows`,
:func:`~pkpd.inputs.pd.describe`); models and populations describe themselves.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np

from pkpd.inputs.regimen import AnchorSpec, available_regimens, load_regimen
from pkpd.inputs.risk_model import RiskModel, available_risks, load_risk

__all__ = ["describe_regimen", "describe_risk", "regimen_rows", "risk_rows"]


# ----------------------------------------------------------------------------- regimens


def _regimen_meta(reg) -> dict:
    """The ``[regimen]`` table of a regimen's file (drug and notes are not kept on the
    :class:`~pkpd.inputs.regimen.Regimen`, which holds what the simulation needs)."""
    if not reg.file:
        return {}
    with open(reg.file, "rb") as fh:
        return tomllib.load(fh).get("regimen", {})


def regimen_rows() -> list[tuple[str, str, str]]:
    """Rows (name, drug, description) of the shipped regimens; drug "not stated" where the
    file has no ``[regimen] drug``."""
    rows = []
    for name in available_regimens():
        reg = load_regimen(name)
        meta = _regimen_meta(reg)
        rows.append((name, str(meta.get("drug", "not stated")), reg.description or reg.text))
    return rows


def _hours(h: float) -> str:
    return f"{h:g} h" if h >= 1 or h == 0 else f"{h * 60:g} min"


def anchor_text(a: AnchorSpec) -> str:
    """An event's time in words: its distribution, truncation and single-patient default."""
    if a.distribution == "fixed":
        s = f"fixed at {_hours(a.default)}"
    elif a.distribution == "lognormal":
        s = f"log-normal, median {_hours(a.params[0])}, geometric SD {a.params[1]:g}"
    elif a.distribution == "normal":
        s = f"normal, mean {_hours(a.params[0])}, SD {_hours(a.params[1])}"
    else:
        s = "uniform"
    if a.distribution != "fixed":
        if np.isfinite(a.low) or np.isfinite(a.high):
            s += f", within {_hours(a.low)}-{_hours(a.high)}"
        s += f" across a cohort; {_hours(a.default)} for one patient"
    if a.tag:
        s += f" [{a.tag}]"
    return s


def describe_regimen(name) -> list[str]:
    """Lines showing one regimen: metadata, the doses in the one-line form (whole and piece
    by piece), its named events with their sources, and how to give an event a time."""
    reg = load_regimen(name)
    meta = _regimen_meta(reg)
    title = reg.name or str(name)
    out = [f"{title}: {reg.description}" if reg.description else title]
    for label, val in (
        ("drug", meta.get("drug", "not stated")),
        ("source", reg.source or "not stated"),
        ("notes", meta.get("notes")),
        ("file", reg.file),
    ):
        if val:
            out.append(f"  {label}: {val}")
    text = reg.text
    out.append("\ndoses (one-line form, usable wherever a regimen is asked for):")
    out.append(f"  {text}")
    pieces = [p.strip() for p in text.split(";")]
    if len(pieces) > 1:
        out += [f"    - {p}" for p in pieces]
    names = sorted(reg.anchor_names)
    if names:
        out.append("\nevents (anchors; give one a time with --anchor NAME=TIME):")
        for n in names:
            spec = reg.anchor_spec(n)
            if spec is None:
                out.append(f"  {n}: no default: its time must be given (--anchor {n}=4h)")
                continue
            out.append(f"  {n}: {anchor_text(spec)}")
            if spec.source:
                out.append(f"    source: {spec.source}")
    else:
        out.append("\nevents: none (every time is fixed)")
    return out


# ----------------------------------------------------------------------------- risk models


def _metric_text(risk: RiskModel) -> str:
    e = risk.exposure
    s = f"{e.metric} {e.output} ({e.unit})"
    return f"{s} from {e.awake_from}" if e.metric == "cmax_awake" and e.awake_from else s


def _domain_text(risk: RiskModel) -> str:
    """The calibration's validity domain in one line: PK model and exposure range."""
    fit = risk.fit or {}
    rng = fit.get("exposure_range_ng_ml")
    expo = (
        f"{risk.exposure.metric} {rng[0]:.3g}-{rng[1]:.3g} ng/mL"
        if rng is not None
        else "not fitted (pkpd risk refit)"
    )
    return f"PK {risk.pk_model}, {expo}"


def _verification(risk: RiskModel) -> str:
    """Counts of the verification tags of the exposure choice, the background prior and the
    calibration arms, e.g. ``"4 derived, 2 paper, 3 assumed"``."""
    tags = [risk.exposure.tag]
    if risk.background is not None:
        tags.append(risk.background.tag)
    for a in risk.arms:
        tags.append(a.tag)
        if a.emergence is not None and a.emergence.tag:
            tags.append(a.emergence.tag)
    counts: dict[str, int] = {}
    for t in tags:
        counts[t or "untagged"] = counts.get(t or "untagged", 0) + 1
    return ", ".join(f"{n} {t}" for t, n in counts.items())


def risk_rows() -> list[tuple[str, str, str, str]]:
    """Rows (name, metric, calibration domain, verification) of the shipped risk models."""
    rows = []
    for name in available_risks():
        risk = load_risk(name)
        rows.append((name, _metric_text(risk), _domain_text(risk), _verification(risk)))
    return rows


def describe_risk(name) -> list[str]:
    """Lines showing one risk model: endpoint, curve, exposure, calibration arms with their
    sources and tags, the fitted domain and curve, caveats and effects not modelled."""
    risk = load_risk(name)
    out = [f"{risk.name}: {risk.title}"]
    for label, val in (
        ("endpoint", risk.endpoint),
        ("drug", risk.drug),
        ("PK model", risk.pk_model),
        ("curve", risk.form),
        ("exposure", f"{_metric_text(risk)} [{risk.exposure.tag}]"),
        ("calibration domain", _domain_text(risk)),
        ("verification", _verification(risk)),
        ("file", str(risk.file) if isinstance(risk.file, Path | str) else None),
    ):
        if val:
            out.append(f"  {label}: {val}")
    out.append(f"\n{risk.description}")
    if risk.background is not None:
        b = risk.background
        out.append(
            f"\nbackground incidence p0: Beta({b.a:g}, {b.b:g}), mean {100 * b.mean:.1f}% "
            f"[{b.tag}] {b.source}"
        )
    out.append("\ncalibration arms:")
    for a in risk.arms:
        events = "?" if a.events is None else a.events
        out.append(
            f"  {a.trial} {a.arm} [{a.use}, {a.tag}]: {events}/{a.n}, "
            f"regimen {a.regimen or 'not retrieved'}"
            + (f", population {a.population}" if a.population else "")
        )
        out.append(f"    source: {a.source}")
        if a.emergence is not None:
            out.append(f"    emergence: {anchor_text(a.emergence)}")
    fit = risk.fit
    if fit:
        out.append(
            f"\nfit: {fit.get('date', '?')}, seed {fit.get('seed', '?')}, "
            f"{fit.get('n_virtual', '?')} virtual patients per arm"
        )
        summ = fit.get("summary", {})
        c50 = summ.get("c50_ng_ml", {})
        if c50:
            out.append(
                f"  c50 (ng/mL): median {c50['q500']:.4g}, 95% [{c50['q025']:.4g}, "
                f"{c50['q975']:.4g}]"
            )
    else:
        out.append(f"\nfit: none (run `pkpd risk refit {risk.name}`)")
    if risk.caveats:
        out.append("\ncaveats:")
        out += [f"  - {c}" for c in risk.caveats]
    if risk.absent:
        out.append("\nnot modelled:")
        out += [f"  - {c}" for c in risk.absent]
    return out
