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

from pkpd.errors import RegimenError, RiskError
from pkpd.inputs.files import read_library_file
from pkpd.inputs.reader import Reader
from pkpd.inputs.regimen import AnchorSpec, anchor_from_dict

__all__ = [
    "ARM_USES",
    "EXPOSURE_METRICS",
    "Background",
    "CalibrationArm",
    "Exposure",
    "RiskModel",
    "available_risks",
    "load_risk",
    "logistic_probability",
    "risk_dir",
    "risk_from_dict",
]

# cmax: the peak over the whole simulation; cmax_awake: the peak while the patient is awake,
# from the event named by ``[exposure] awake_from`` (e.g. end_of_surgery) to the end.
EXPOSURE_METRICS = ("cmax", "cmax_awake")
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
    emergence: AnchorSpec | None = None  # time the arm's patients wake up (cmax_awake)

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
    awake_from: str = ""  # the event from which the patient is awake (cmax_awake)


@dataclass(frozen=True)
class Background:
    """Beta(a, b) prior of the incidence without the drug (``[model.background]``)."""

    a: float
    b: float
    source: str
    tag: str
    note: str = ""

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)


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
    background: Background | None = None

    @property
    def draws(self) -> np.ndarray:
        """Posterior draws, shape (n, 3): columns alpha, gamma and the background
        incidence p0 (zero for a model without ``[model.background]``)."""
        if self.fit is None:
            raise RiskError(
                f"risk model {self.name!r} has no [fit] section: run "
                f"`pkpd risk refit {self.name}` (or pkpd.risk.refit) first"
            )
        post = self.fit["posterior"]
        a = np.asarray(post["alpha"], float)
        p0 = np.asarray(post.get("background", np.zeros(a.size)), float)
        return np.column_stack([a, np.asarray(post["gamma"], float), p0])

    def probability(self, x, alpha: float, gamma: float, p0: float = 0.0) -> np.ndarray:
        """Per-patient probability at exposure(s) `x` (ng/mL) for one parameter set:
        ``p0 + (1 - p0) logistic(alpha + gamma ln(x / x_ref))``."""
        x = np.asarray(x, float)
        with np.errstate(divide="ignore"):
            u = np.log(x / self.x_ref)
        return p0 + (1.0 - p0) * logistic_probability(u, alpha, gamma)

    @property
    def form(self) -> str:
        """The curve in words, as stored in attrs."""
        x = f"{self.exposure.metric} {self.exposure.output}"
        if self.exposure.metric == "cmax_awake":
            x += f" from {self.exposure.awake_from}"
        curve = f"logistic(alpha + gamma ln({x} / {self.x_ref:g} ng/mL))"
        return f"p = p0 + (1 - p0) {curve}" if self.background else f"p = {curve}"

    def provenance(self) -> str:
        fit = self.fit or {}
        arms = "; ".join(
            f"{a.trial} {a.arm} ({a.regimen or 'regimen not retrieved'}): "
            f"{'?' if a.events is None else a.events}/{a.n} [{a.use}]"
            for a in self.arms
        )
        return (
            f"{self.name}: {self.title}. {self.form}, PK model {self.pk_model}; "
            f"calibration: {arms}; fitted {fit.get('date', 'never')} (seed "
            f"{fit.get('seed', '?')}, {fit.get('n_virtual', '?')} virtual patients per arm); "
            f"file {self.file}"
        )


# ----------------------------------------------------------------------------- loading


_TOP = {"schema_version", "risk", "exposure", "model", "calibration", "simulation", "fit"}
_RISK_KEYS = {"name", "title", "endpoint", "drug", "pk_model", "description", "caveats", "absent"}
_EXPOSURE_KEYS = {"metric", "output", "unit", "justification", "tag", "awake_from"}
_MODEL_KEYS = {"form", "x_ref", "prior_alpha", "prior_gamma", "note", "source", "tag",
               "background"}  # fmt: skip
_BACKGROUND_KEYS = {"prior", "a", "b", "source", "tag", "note"}
_ARM_KEYS = {"trial", "arm", "use", "n", "events", "regimen", "population", "source", "tag",
             "note", "emergence"}  # fmt: skip
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
    x_ref, pa, pg, background = _read_curve(r, r.table(data, "", "model"))
    arms = _read_arms(r, data.get("calibration", []), file)
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
        background=background,
    )
    if exposure.metric == "cmax_awake":
        for i, a in enumerate(arms):
            if a.use != "excluded" and a.emergence is None:
                raise r.err(
                    f"calibration[{i}].emergence",
                    "missing: an arm used with the exposure 'cmax_awake' needs the time its "
                    "patients wake up (an [anchors.*]-style table with its source)",
                )
    if fit is not None:
        _check_fit(r, rm)
    return rm


def _check_fit(r: Reader, rm: RiskModel) -> None:
    """The stored posterior: >= 100 finite draws, gamma >= 0, p0 in [0, 1), and a
    background column exactly when the model has a background term."""
    post = rm.fit.get("posterior", {}) if isinstance(rm.fit, dict) else {}
    if not isinstance(post, dict) or "alpha" not in post or "gamma" not in post:
        raise r.err("fit.posterior", "expected `alpha` and `gamma` lists of draws")
    if ("background" in post) != (rm.background is not None):
        raise r.err(
            "fit.posterior.background",
            "present without [model.background] or missing with it: refit the model",
        )
    try:
        d = rm.draws
    except (TypeError, ValueError) as exc:
        raise r.err("fit.posterior", f"expected lists of numbers of equal length ({exc})") from None
    if (
        d.ndim != 2
        or d.shape[0] < 100
        or not np.all(np.isfinite(d))
        or np.any(d[:, 1] < 0)
        or np.any((d[:, 2] < 0) | (d[:, 2] >= 1))
    ):
        raise r.err("fit.posterior", "expected >= 100 finite draws, gamma >= 0, 0 <= p0 < 1")


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
    awake = exp.get("awake_from", "")
    if metric == "cmax_awake" and (not isinstance(awake, str) or not awake.isidentifier()):
        raise r.err(
            "exposure.awake_from",
            f"expected the name of the event the patient wakes up at (e.g. 'end_of_surgery'), "
            f"got {awake!r}",
        )
    if metric != "cmax_awake" and awake:
        raise r.err("exposure.awake_from", f"only for the metric 'cmax_awake', not {metric!r}")
    return Exposure(metric, output, unit, justification, prov.tag, awake)


def _read_curve(r: Reader, mod: dict):
    """``[model]``: the reference exposure (ng/mL), the prior boxes of alpha and gamma and
    the background incidence's prior (None without ``[model.background]``)."""
    r.keys(mod, "model", _MODEL_KEYS)
    x_ref = _text(r, mod, "model", "x_ref")
    x_ref = r.quantity(x_ref, "concentration", "model.x_ref", positive=True) * 1000.0
    r.provenance(mod, "model", source=False)
    pa = _box(r, r.value(mod, "model", "prior_alpha", list, "a list"), "model.prior_alpha")
    pg = _box(r, r.value(mod, "model", "prior_gamma", list, "a list"), "model.prior_gamma", True)
    bg = r.table(mod, "model", "background", required=False)
    background = None
    if bg is not None:
        r.keys(bg, "model.background", _BACKGROUND_KEYS, required=("prior", "a", "b"))
        r.choice(bg, "model.background", "prior", ("beta",))
        ab = []
        for k in ("a", "b"):
            v = bg[k]
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise r.err(f"model.background.{k}", f"expected a number > 0, got {v!r}")
            ab.append(float(v))
        source, tag, note = r.provenance(bg, "model.background")
        background = Background(ab[0], ab[1], source, tag, note)
    return x_ref, pa, pg, background


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


def _read_arms(r: Reader, cal, file=None) -> list[CalibrationArm]:
    """The ``[[calibration]]`` arms; at least two are used to fit."""
    if not isinstance(cal, list) or not cal:
        raise r.err("calibration", "expected one or more [[calibration]] arms")
    arms = [_read_arm(r, a, f"calibration[{i}]", file) for i, a in enumerate(cal)]
    if sum(a.use == "fit" for a in arms) < 2:
        raise r.err("calibration", "at least two arms with use = 'fit' are needed")
    return arms


def _read_arm(r: Reader, a, key: str, file=None) -> CalibrationArm:
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
    em = r.table(a, key, "emergence", required=False)
    emergence = None
    if em is not None:
        try:
            emergence = anchor_from_dict("emergence", em, str(file) if file else None)
        except RegimenError as exc:  # it names `anchors.emergence`: say which arm
            raise r.err(f"{key}.emergence", str(exc)) from None
    return CalibrationArm(
        trial, arm, use, n, events, regimen, a.get("population", ""), source, tag, note, emergence
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
    # 1 / (1 + exp(-z)) for z >= 0 and exp(z) / (1 + exp(z)) below (NaN stays NaN), with
    # e = exp(-|z|) computed once in place: the same operations on the same values as
    # evaluating each branch on its own subset, without the masked copies.
    e = np.array(np.abs(z), dtype=float)  # an array also for a scalar z (0-d)
    np.negative(e, out=e)
    np.exp(e, out=e)
    out = np.where(z >= 0, 1.0, e)
    e += 1.0
    np.divide(out, e, out=out)
    return out
