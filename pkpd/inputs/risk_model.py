"""Risk-model files (``models/risk/<name>.toml``, schema in ``models/README.md``): finding,
reading and validating them into a :class:`RiskModel`, and the model's log-logistic curve.

Calibration, cohort incidences and targets live in :mod:`pkpd.analysis.risk` (which
re-exports these names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from pkpd.errors import RiskError
from pkpd.inputs.files import read_library_file
from pkpd.inputs.reader import Reader

__all__ = [
    "ARM_USES",
    "EXPOSURE_METRICS",
    "CalibrationArm",
    "Exposure",
    "RiskModel",
    "available_risks",
    "load_risk",
    "logistic_probability",
    "risk_dir",
    "risk_from_dict",
]

EXPOSURE_METRICS = ("cmax",)
ARM_USES = ("fit", "holdout", "excluded")


def risk_dir() -> Path:
    """Directory of the shipped risk model files (package ``pkpd.models.risk``)."""
    return Path(str(resources.files("pkpd.models.risk")))


def available_risks() -> list[str]:
    """Names of the shipped risk models."""
    return sorted(p.stem for p in risk_dir().glob("*.toml"))


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class CalibrationArm:
    """One published trial arm: regimen, population, size and event count with sources."""

    trial: str
    arm: str
    use: str
    n: int
    events: int | None
    regimen: str
    population: str
    source: str
    tag: str
    note: str = ""

    @property
    def incidence(self) -> float | None:
        return None if self.events is None else self.events / self.n


@dataclass(frozen=True)
class Exposure:
    metric: str
    output: str
    unit: str
    justification: str
    tag: str


@dataclass
class RiskModel:
    """A loaded risk model; ``fit`` is None until calibrated (then ``draws`` are set)."""

    name: str
    title: str
    endpoint: str
    drug: str
    pk_model: str
    description: str
    exposure: Exposure
    x_ref: float  # ng/mL
    prior_alpha: tuple[float, float]
    prior_gamma: tuple[float, float]
    arms: list[CalibrationArm]
    simulation: dict
    caveats: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    fit: dict | None = None
    file: Path | None = None

    @property
    def draws(self) -> np.ndarray:
        """Posterior draws, shape (n, 2): columns alpha, gamma."""
        if self.fit is None:
            raise RiskError(
                f"risk model {self.name!r} has no [fit] section: run "
                f"`pkpd risk refit {self.name}` (or pkpd.risk.refit) first"
            )
        post = self.fit["posterior"]
        return np.column_stack([np.asarray(post["alpha"], float), np.asarray(post["gamma"])])

    def probability(self, x, alpha: float, gamma: float) -> np.ndarray:
        """Per-patient probability at exposure(s) `x` (ng/mL) for one parameter pair."""
        x = np.asarray(x, float)
        with np.errstate(divide="ignore"):
            u = np.log(x / self.x_ref)
        return logistic_probability(u, alpha, gamma)

    def provenance(self) -> str:
        fit = self.fit or {}
        arms = "; ".join(
            f"{a.trial} {a.arm} ({a.regimen or 'regimen not retrieved'}): "
            f"{'?' if a.events is None else a.events}/{a.n} [{a.use}]"
            for a in self.arms
        )
        return (
            f"{self.name}: {self.title}. logit p = alpha + gamma ln({self.exposure.metric} "
            f"{self.exposure.output} / {self.x_ref:g} ng/mL), PK model {self.pk_model}; "
            f"calibration: {arms}; fitted {fit.get('date', 'never')} (seed "
            f"{fit.get('seed', '?')}, {fit.get('n_virtual', '?')} virtual patients per arm); "
            f"file {self.file}"
        )


# ----------------------------------------------------------------------------- loading


_TOP = {"schema_version", "risk", "exposure", "model", "calibration", "simulation", "fit"}
_RISK_KEYS = {"name", "title", "endpoint", "drug", "pk_model", "description", "caveats", "absent"}
_EXPOSURE_KEYS = {"metric", "output", "unit", "justification", "tag"}
_MODEL_KEYS = {"form", "x_ref", "prior_alpha", "prior_gamma", "note", "source", "tag"}
_ARM_KEYS = {"trial", "arm", "use", "n", "events", "regimen", "population", "source", "tag",
             "note"}  # fmt: skip
_SIM_KEYS = {"until", "every", "n_virtual", "seed", "note"}


def load_risk(name_or_path) -> RiskModel:
    """Load and validate a risk model by shipped name or path to a ``.toml`` file."""
    if isinstance(name_or_path, RiskModel):
        return name_or_path
    path, data = read_library_file(
        name_or_path, risk_dir(), available_risks, "risk model", RiskError
    )
    return risk_from_dict(data, file=path)


def risk_from_dict(data: dict, file=None) -> RiskModel:
    """Validate a parsed risk-model file (see :func:`load_risk`)."""
    r = Reader(file, RiskError)
    r.keys(data, "", _TOP)
    r.schema_version(data)
    risk = r.table(data, "", "risk")
    r.keys(risk, "risk", _RISK_KEYS)
    name = _text(r, risk, "risk", "name")
    r.name_of_file(name, "risk.name")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise r.err("risk.name", f"expected lower_case_with_underscores, got {name!r}")
    exposure = _read_exposure(r, r.table(data, "", "exposure"))
    x_ref, pa, pg = _read_curve(r, r.table(data, "", "model"))
    arms = _read_arms(r, data.get("calibration", []))
    sim = r.table(data, "", "simulation")
    r.keys(sim, "simulation", _SIM_KEYS)
    for k in ("until", "every"):
        _text(r, sim, "simulation", k)
    for k in ("n_virtual", "seed"):
        r.value(sim, "simulation", k, int, "an integer")
    fit = data.get("fit")
    rm = RiskModel(
        name=name,
        title=_text(r, risk, "risk", "title"),
        endpoint=_text(r, risk, "risk", "endpoint"),
        drug=_text(r, risk, "risk", "drug"),
        pk_model=_text(r, risk, "risk", "pk_model"),
        description=_text(r, risk, "risk", "description"),
        exposure=exposure,
        x_ref=x_ref,
        prior_alpha=pa,
        prior_gamma=pg,
        arms=arms,
        simulation=dict(sim),
        caveats=list(r.strings(risk, "risk", "caveats")),
        absent=list(r.strings(risk, "risk", "absent")),
        fit=fit,
        file=Path(file) if file is not None else None,
    )
    if fit is not None:
        d = rm.draws
        if d.ndim != 2 or d.shape[0] < 100 or not np.all(np.isfinite(d)) or np.any(d[:, 1] < 0):
            raise r.err("fit.posterior", "expected >= 100 finite draws, gamma >= 0")
    return rm


def _text(r: Reader, d: dict, key: str, k: str) -> str:
    """A required string (possibly empty, as risk files have always allowed)."""
    return r.value(d, key, k, str, "a string")


def _read_exposure(r: Reader, exp: dict) -> Exposure:
    """``[exposure]``: the metric, its output and unit, why it and its tag."""
    r.keys(exp, "exposure", _EXPOSURE_KEYS)
    metric = r.choice(exp, "exposure", "metric", EXPOSURE_METRICS)
    unit = _text(r, exp, "exposure", "unit")
    if unit != "ng/mL":
        raise r.err("exposure.unit", f"expected 'ng/mL', got {unit!r}")
    output = _text(r, exp, "exposure", "output")
    justification = _text(r, exp, "exposure", "justification")
    prov = r.provenance(exp, "exposure", source=False, note_keys=("note", "justification"))
    return Exposure(metric, output, unit, justification, prov.tag)


def _read_curve(r: Reader, mod: dict) -> tuple[float, tuple[float, float], tuple[float, float]]:
    """``[model]``: the reference exposure (ng/mL) and the prior boxes of alpha and gamma."""
    r.keys(mod, "model", _MODEL_KEYS)
    x_ref = _text(r, mod, "model", "x_ref")
    x_ref = r.quantity(x_ref, "concentration", "model.x_ref", positive=True) * 1000.0
    r.provenance(mod, "model", source=False)
    pa = _box(r, r.value(mod, "model", "prior_alpha", list, "a list"), "model.prior_alpha")
    pg = _box(r, r.value(mod, "model", "prior_gamma", list, "a list"), "model.prior_gamma", True)
    return x_ref, pa, pg


def _box(r: Reader, v, key: str, positive: bool = False) -> tuple[float, float]:
    if (
        not isinstance(v, list)
        or len(v) != 2
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
        or not v[0] < v[1]
        or (positive and v[0] < 0)
    ):
        raise r.err(key, f"expected [low, high] with low < high, got {v!r}")
    return float(v[0]), float(v[1])


def _read_arms(r: Reader, cal) -> list[CalibrationArm]:
    """The ``[[calibration]]`` arms; at least two are used to fit."""
    if not isinstance(cal, list) or not cal:
        raise r.err("calibration", "expected one or more [[calibration]] arms")
    arms = [_read_arm(r, a, f"calibration[{i}]") for i, a in enumerate(cal)]
    if sum(a.use == "fit" for a in arms) < 2:
        raise r.err("calibration", "at least two arms with use = 'fit' are needed")
    return arms


def _read_arm(r: Reader, a, key: str) -> CalibrationArm:
    r.keys(a, key, _ARM_KEYS)
    use = r.choice(a, key, "use", ARM_USES)
    n = r.value(a, key, "n", int, "an integer")
    if n <= 0:
        raise r.err(f"{key}.n", f"must be a positive integer, got {n!r}")
    events = a.get("events")
    if events is not None and (
        not isinstance(events, int) or isinstance(events, bool) or not 0 <= events <= n
    ):
        raise r.err(f"{key}.events", f"expected an integer in [0, {n}], got {events!r}")
    regimen = a.get("regimen", "")
    if use != "excluded" and (events is None or not regimen):
        raise r.err(
            key,
            f"an arm used to {use} needs `events` and a `regimen` "
            "(mark it use = 'excluded' and say why in `note` otherwise)",
        )
    if use == "excluded" and not a.get("note"):
        raise r.err(key, "an excluded arm needs a `note` saying why")
    trial, arm = _text(r, a, key, "trial"), _text(r, a, key, "arm")
    source, tag, note = r.provenance(a, key)
    return CalibrationArm(
        trial, arm, use, n, events, regimen, a.get("population", ""), source, tag, note
    )


# ----------------------------------------------------------------------------- the logistic


def logistic_probability(u, alpha, gamma) -> np.ndarray:
    """``1 / (1 + exp(-(alpha + gamma u)))`` with ``u = ln(X / x_ref)``; ``u = -inf`` gives 0.

    Broadcasts; numerically stable for large ``|alpha + gamma u|``.
    """
    u = np.asarray(u, float)
    with np.errstate(invalid="ignore", over="ignore"):
        z = np.asarray(alpha, float) + np.asarray(gamma, float) * u
    z = np.where(np.isneginf(u) & (np.asarray(gamma) > 0), -np.inf, z)
    out = np.empty(np.shape(z))
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out
