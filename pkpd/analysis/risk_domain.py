"""What a risk model's exposure means for a cohort, where its calibration holds, and the
rules that turn a predicted incidence into a yes/no against a limit.

* :func:`exposure` reads the per-patient exposure of a risk model from a cohort dataset:
  ``cmax`` (the kernel's peak over the whole run) or ``cmax_awake`` (the peak from the event
  the patient wakes up at, ``[exposure] awake_from``, to the end of the run, on the stored
  trajectory of the output). A regimen without that event is taken as given to a patient
  who is awake throughout (an outpatient infusion): the whole run counts.
* :func:`awake_dosing` is the share of patients who receive drug while awake (at or after
  their ``awake_from`` time). The shipped calibration arms gave single boluses before
  emergence only, so any dosing while awake is outside the regimen types the calibration
  saw.
* :func:`domain_reasons` lists why a cohort's prediction extrapolates (exposure above
  the calibration range for more than :data:`OUTSIDE_TOLERANCE` of patients, dosing while
  awake, another PK model); an empty list means the prediction is within the calibration's
  validity domain.
* Rules (:func:`parse_rule`): ``"mean"`` (posterior-mean incidence), ``"upper"`` (the
  97.5 % quantile, the upper end of the 95 % interval: the default) or ``"qNN"`` (the
  NN % quantile, e.g. ``"q90"``). :func:`resolution_floor` is the rule's value for a cohort
  with no drug at all: a limit below it cannot be met by any regimen, because the
  calibration cannot tell the background incidence from zero more precisely.
"""

from __future__ import annotations

import re

import numpy as np

from pkpd.analysis import metrics
from pkpd.errors import MetricsError, RegimenError, RiskError
from pkpd.inputs.regimen import Regimen, load_regimen
from pkpd.inputs.risk_model import RiskModel
from pkpd.running import tci as tci_pump

__all__ = [
    "OUTSIDE_TOLERANCE",
    "RULE_QUANTILES",
    "awake_dosing",
    "domain_reasons",
    "exposure",
    "parse_rule",
    "resolution_floor",
    "rule_text",
]

#: Share of patients allowed above the calibration's exposure range (its 1-99 % range)
#: before a prediction is flagged as an extrapolation. A convention of this package: the
#: calibration range itself excludes 2 % of the calibration arms' own patients.
OUTSIDE_TOLERANCE = 0.05
#: Quantiles of the cohort incidence stored by :func:`pkpd.analysis.risk.apply_risk`.
RULE_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.975)


# ----------------------------------------------------------------------------- exposure


def exposure(ds, risk: RiskModel) -> tuple[np.ndarray, str]:
    """Per-patient exposure (ng/mL, NaN for failed patients) and how it was read."""
    e = risk.exposure
    if "cmax" not in ds:
        raise RiskError("`ds`: no `cmax` variable; expected a dataset from pkpd.simulate_cohort")
    outs = [str(o) for o in ds["output"].values]
    if e.output not in outs:
        raise RiskError(
            f"`ds`: output {e.output!r} needed by risk {risk.name!r} is missing; outputs: "
            f"{', '.join(outs)}"
        )
    da = ds["cmax"].sel(output=e.output)
    if da.attrs.get("units", "ng/mL") != "ng/mL":
        raise RiskError(f"`ds.cmax` units {da.attrs.get('units')!r}, expected 'ng/mL'")
    peak = np.asarray(da.values, float)
    if e.metric == "cmax":
        return peak, f"peak {e.output} over the whole run (kernel Cmax)"
    if e.awake_from not in ds.coords:
        return peak, (
            f"peak {e.output} over the whole run: the regimen has no `{e.awake_from}`, so "
            "the patient is taken as awake throughout"
        )
    if "trajectory" not in ds or e.output not in [str(o) for o in ds["traj_output"].values]:
        raise RiskError(
            f"`ds`: risk {risk.name!r} needs the stored trajectory of {e.output!r} (its "
            f"exposure is the peak after {e.awake_from}): simulate with trajectories="
            f"[{e.output!r}] (pkpd.analysis.risk.required_cohort_kwargs)"
        )
    return awake_peak(ds, e.output, e.awake_from), (
        f"peak {e.output} from {e.awake_from} to the end of the run (stored trajectory, "
        f"{_step_text(ds)} grid, linear between points)"
    )


def awake_peak(ds, output: str, awake, events=None) -> np.ndarray:
    """Peak of `output` from `awake` (an event name or a time) to the end of the stored
    trajectory, per patient (ng/mL)."""
    end = float(ds["time"].values[-1])
    try:
        cm = metrics.cmax(ds, window=(awake, end), outputs=[output], events=events)
    except MetricsError as exc:
        raise RiskError(f"the awake window ({awake} to {end:g} h): {exc}") from None
    return np.asarray(cm.sel(output=output).values, float)


def _step_text(ds) -> str:
    t = ds["time"].values
    return f"{(t[1] - t[0]) * 60:g}-min" if t.size > 1 else "one-point"


# ----------------------------------------------------------------------------- regimen type


def regimen_of(ds, regimen=None) -> Regimen | None:
    """The cohort's regimen: `regimen` if given, else its one-line text in the attrs."""
    if regimen is not None:
        return load_regimen(regimen)
    text = ds.attrs.get("regimen")
    if not text:
        return None
    try:
        return load_regimen(str(text))
    except RegimenError:
        return None


def awake_dosing(ds, regimen: Regimen, awake_from: str) -> float:
    """Share of patients given any drug at or after their `awake_from` time.

    Without that event in the regimen the patient is awake throughout, so any dose counts.
    Uses the cohort's own weights and event times (the coordinates of `ds`).
    """
    n = ds.sizes["patient"]
    w = ds["weight"].values.astype(float) if "weight" in ds.coords else np.ones(n)
    w = np.where(np.isfinite(w) & (w > 0), w, 1.0)
    anchors = {a: ds[a].values.astype(float) for a in regimen.anchor_names if a in ds.coords}
    t, rate, bolus = tci_pump.cohort_event_arrays(regimen, ds, w)
    if awake_from in regimen.anchor_names:
        awake = anchors.get(awake_from)
        if awake is None:
            spec = regimen.anchor_spec(awake_from)
            awake = np.full(n, spec.default if spec is not None else 0.0)
    else:
        awake = np.zeros(n)
    a = awake[:, None]
    given = np.sum(np.where(t >= a, bolus, 0.0), axis=1)
    seg = np.clip(t[:, 1:], a, None) - np.clip(t[:, :-1], a, None)
    given += np.sum(rate[:, :-1] * seg, axis=1)
    if "pca_dose" in ds:  # a PCA pump that delivered anything counts as dosing while awake
        given += ds["pca_dose"].values  # (conservative when the pump starts before waking)
    return float(np.mean(given > 0))


# ----------------------------------------------------------------------------- validity


def domain_reasons(
    risk: RiskModel,
    above: float,
    awake_share: float | None,
    model: str,
    has_awake_event: bool = True,
) -> list[str]:
    """Why a cohort's prediction lies outside the calibration's validity domain ([] if not).

    `above` is the share of patients whose exposure exceeds the calibration range. Exposures
    below it are not an extrapolation: the curve is monotone and anchored at X = 0 by the
    background term, so there it lies between p0 and its value at the range's low end.
    """
    reasons = []
    fit = risk.fit or {}
    lo, hi = fit.get("exposure_range_ng_ml", [np.nan, np.nan])
    if above > OUTSIDE_TOLERANCE:
        reasons.append(
            f"{100 * above:.1f}% of patients have an exposure above the calibration range "
            f"{lo:.3g}-{hi:.3g} ng/mL (tolerance {100 * OUTSIDE_TOLERANCE:g}%)"
        )
    if risk.exposure.metric == "cmax_awake":
        if awake_share is None:
            reasons.append(
                "the regimen is unknown (pass `regimen=`), so dosing while awake cannot be "
                "ruled out"
            )
        elif awake_share > 0:
            when = (
                f"at or after {risk.exposure.awake_from}"
                if has_awake_event
                else f"the regimen has no {risk.exposure.awake_from}, so the patient is taken "
                "as awake throughout"
            )
            reasons.append(
                f"{100 * awake_share:.1f}% of patients receive drug while awake ({when}); the "
                "calibration arms gave single boluses before emergence only"
            )
    if model != risk.pk_model:
        reasons.append(f"simulated with PK model {model!r}, calibrated with {risk.pk_model!r}")
    return reasons


# ----------------------------------------------------------------------------- rules


def parse_rule(rule) -> float | None:
    """A limit rule: None for ``"mean"``, else the quantile (``"upper"`` = 0.975, ``"q90"``)."""
    if rule == "mean":
        return None
    if rule == "upper":
        return 0.975
    m = re.fullmatch(r"q(\d+(?:\.\d+)?)", str(rule))
    if m and 0 < float(m.group(1)) < 100:
        return float(m.group(1)) / 100.0
    raise RiskError(
        f"`rule`: expected 'mean', 'upper' (the 97.5% quantile) or 'qNN' (the NN% quantile of "
        f"the predicted incidence, e.g. 'q90'), got {rule!r}"
    )


def rule_text(rule) -> str:
    q = parse_rule(rule)
    if q is None:
        return "posterior-mean incidence"
    return f"{100 * q:g}% quantile of the predicted incidence" + (
        " (upper end of the 95% interval)" if rule == "upper" else ""
    )


def resolution_floor(risk: RiskModel, rule) -> float:
    """The rule's incidence with no drug at all: the lowest limit a regimen can meet."""
    p0 = risk.draws[:, 2]
    q = parse_rule(rule)
    return float(np.mean(p0) if q is None else np.quantile(p0, q))
