"""A patient-controlled analgesia (PCA) pump as a regimen states it: the `[pca]` table.

The description only: the reservoir's recipe, the pump's settings, when it runs and which
demand model (:mod:`pkpd.inputs.demand`) says when the patient presses. The deliveries are
computed per patient by :mod:`pkpd.running.pca` (the closed loop of
:mod:`pkpd.engine.pca`).

```toml
[pca]
demand = "spine_fusion_oxycodone_demand"   # models/demand/<name>.toml
start = "end_of_surgery"          # a time or an anchored event
stop = "end_of_surgery + 24 h"
volume = "100 mL"                 # the reservoir (needed when a drug is given as an amount)
bolus = "1 mL"                    # the demand bolus
lockout = "8 min"
background = "0 mL/h"             # optional continuous infusion (default none)

[[pca.drug]]
drug = "oxycodone"
concentration = "1 mg/mL"         # or amount = "100 mg" (per kg allowed, with max = ...)

[[pca.drug]]                      # a further drug of the same reservoir
drug = "S-ketamine"
concentration = "0.5 mg/mL"
model = "fanta2015_otto2021"      # its PK model (needed for every drug but the patients')

[[pca.limit]]                     # optional: at most `volume` delivered in any `per` window
volume = "10 mL"
per = "1 h"
```

Volumes are stored in litres, times in hours, as every quantity of the package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pkpd.errors import RegimenError, UnitError, where
from pkpd.inputs.reader import Reader
from pkpd.inputs.units import Parsed, exact_time_text, parse_quantity, time_ref

__all__ = [
    "FURTHER_ATTR",
    "PCA",
    "Limit",
    "ReservoirDrug",
    "further_attrs",
    "further_drugs",
    "parse_pca",
    "prefix",
    "read_pca",
    "split_names",
]

#: Shortest lockout accepted (h): a pump with no lockout has no safety interval.
MIN_LOCKOUT = 1.0 / 60.0


def _ml(litres: float) -> str:
    return f"{litres * 1000.0:.10g} mL"


@dataclass(frozen=True)
class ReservoirDrug:
    """One drug of the reservoir: an amount in the reservoir's volume (per kg allowed, at
    most `max_amount`), or a concentration."""

    drug: str
    amount: Parsed | None = None
    concentration: Parsed | None = None
    max_amount: Parsed | None = None
    #: The drug's PK model (a shipped name or a file), for a drug other than the one the
    #: patients are simulated with (:mod:`pkpd.running.pca`: companion drugs).
    model: str | None = None

    def text(self) -> str:
        q = self.concentration if self.concentration is not None else self.amount
        cap = f" max {self.max_amount.text}" if self.max_amount is not None else ""
        model = f" model {self.model}" if self.model is not None else ""
        return f"{self.drug} {q.text}{cap}{model}"

    def concentration_for(self, weight: float, volume: float | None) -> float:
        """mg/L in the reservoir for a patient of `weight` kg."""
        if self.concentration is not None:
            return self.concentration.value
        amt = self.amount.scaled(weight)
        if self.max_amount is not None:
            amt = min(amt, self.max_amount.value)
        return amt / volume


@dataclass(frozen=True)
class Limit:
    """At most `volume` (L) delivered, boluses and background, in any window of `per` h."""

    volume: float
    per: float

    def text(self) -> str:
        return f"limit {_ml(self.volume)} per {exact_time_text(self.per)}"


@dataclass(frozen=True)
class PCA:
    """A PCA pump: `bolus` (L) on demand, not within `lockout` (h) of the last delivery,
    `background` (L/h) continuously, within the `limits`, from `start` to `stop` (h, after
    their anchors if given), while the reservoir (`volume` L, ``None``: never runs out)
    lasts; the patient's demands follow the demand model `demand`."""

    demand: str
    drugs: tuple[ReservoirDrug, ...]
    bolus: float
    lockout: float
    start: float
    stop: float
    start_anchor: str | None = None
    stop_anchor: str | None = None
    volume: float | None = None
    background: float = 0.0
    limits: tuple[Limit, ...] = ()

    def __post_init__(self):
        check(self, "")

    @property
    def anchor_names(self) -> set[str]:
        return {a for a in (self.start_anchor, self.stop_anchor) if a is not None}

    @property
    def uses_weight(self) -> bool:
        return any(d.amount is not None and d.amount.per_kg for d in self.drugs)

    def drug_for(self, name: str) -> ReservoirDrug | None:
        """The reservoir's entry for drug `name` (case-insensitive), if any."""
        key = name.strip().lower()
        return next((d for d in self.drugs if d.drug.strip().lower() == key), None)

    def text(self) -> str:
        """The one-line form (:func:`parse_pca` reads it back)."""
        parts = ["PCA", ", ".join(d.text() for d in self.drugs)]
        if self.volume is not None:
            parts.append(f"in {_ml(self.volume)}")
        parts += [f"bolus {_ml(self.bolus)}", f"lockout {exact_time_text(self.lockout)}"]
        if self.background > 0:
            parts.append(f"background {_ml(self.background)}/h")
        parts += [lim.text() for lim in self.limits]
        parts += [
            f"from {exact_time_text(self.start, self.start_anchor)}",
            f"until {exact_time_text(self.stop, self.stop_anchor)}",
            f"demand {self.demand}",
        ]
        return " ".join(parts)


def check(pca: PCA, loc: str) -> None:
    """Refuse settings no pump can run, naming the setting."""
    if not pca.drugs:
        raise RegimenError(f"{loc}a PCA reservoir needs at least one drug")
    for d in pca.drugs:
        if (d.amount is None) == (d.concentration is None):
            raise RegimenError(
                f"{loc}PCA drug {d.drug!r}: give exactly one of an amount or a concentration"
            )
        q = d.amount if d.amount is not None else d.concentration
        if not q.value > 0:
            raise RegimenError(f"{loc}PCA drug {d.drug!r}: {q.text!r} must be > 0")
        if d.amount is not None and pca.volume is None:
            raise RegimenError(
                f"{loc}PCA drug {d.drug!r} is given as an amount ({d.amount.text}): the "
                "reservoir's volume is needed to make it a concentration"
            )
        if d.max_amount is not None and (d.amount is None or not d.amount.per_kg):
            raise RegimenError(
                f"{loc}PCA drug {d.drug!r}: a maximum applies to a per-kg amount only"
            )
    names = [d.drug.strip().lower() for d in pca.drugs]
    if len(set(names)) != len(names):
        raise RegimenError(f"{loc}PCA drugs named twice: {[d.drug for d in pca.drugs]}")
    if not pca.bolus > 0:
        raise RegimenError(f"{loc}PCA bolus {_ml(pca.bolus)} must be > 0")
    if not pca.lockout >= MIN_LOCKOUT:
        raise RegimenError(
            f"{loc}PCA lockout {pca.lockout * 60:g} min: expected at least 1 min (a pump "
            "without a lockout interval would deliver every press)"
        )
    if pca.background < 0:
        raise RegimenError(f"{loc}PCA background {_ml(pca.background)}/h must be >= 0")
    if pca.volume is not None and not pca.volume >= pca.bolus:
        raise RegimenError(
            f"{loc}PCA reservoir {_ml(pca.volume)} holds less than one bolus ({_ml(pca.bolus)})"
        )
    for lim in pca.limits:
        if not lim.per > 0:
            raise RegimenError(f"{loc}PCA limit window {lim.per:g} h must be > 0")
        if lim.volume < pca.bolus:
            raise RegimenError(
                f"{loc}PCA limit {_ml(lim.volume)} per {exact_time_text(lim.per)} is less than "
                f"one bolus ({_ml(pca.bolus)}): no demand could ever be delivered"
            )
        if pca.background * lim.per > lim.volume - pca.bolus:
            raise RegimenError(
                f"{loc}PCA limit {_ml(lim.volume)} per {exact_time_text(lim.per)}: the "
                f"background alone ({_ml(pca.background)}/h) leaves no room for a bolus"
            )
    if pca.start_anchor == pca.stop_anchor and pca.stop <= pca.start:
        raise RegimenError(
            f"{loc}the PCA stops at {exact_time_text(pca.stop, pca.stop_anchor)}, not after "
            f"it starts ({exact_time_text(pca.start, pca.start_anchor)})"
        )


def prefix(drug: str) -> str:
    """The prefix of a further drug's outputs and parameters in results:
    ``"S-ketamine"`` -> ``"s_ketamine_"``."""
    return re.sub(r"[^0-9a-z]+", "_", drug.strip().lower()).strip("_") + "_"


#: Result attributes of a further drug's model: ``companion_<prefix><provenance key>``
#: (``companion_s_ketamine_model``, ``companion_s_ketamine_model_citation``, ...).
FURTHER_ATTR = "companion_"


def further_attrs(drug_prefix: str, provenance: dict) -> dict:
    """A further drug's model provenance (``model``, ``model_title``, ...) as result
    attributes under its prefix."""
    return {f"{FURTHER_ATTR}{drug_prefix}{k}": v for k, v in provenance.items()}


def further_drugs(attrs) -> list[tuple[str, str, str]]:
    """``(prefix, drug, model)`` of each further drug a result's attributes record
    (:func:`further_attrs`), in their order."""
    out = []
    for k, v in attrs.items():
        if k.startswith(FURTHER_ATTR) and k.endswith("_model"):
            p = k[len(FURTHER_ATTR) : -len("model")]
            out.append((p, str(attrs.get(f"{k}_drug", p)), str(v)))
    return out


def split_names(value, prefixes: list[str]):
    """Split the outputs named in `value` (a dict ``output -> ...``, a list of outputs, a
    name, True or None) between the main model and the further drugs (names starting with
    one of `prefixes`, which is removed). Returns ``(main, [drug 1, ...])``."""
    if not prefixes or value is None or isinstance(value, bool):
        return value, [value] * len(prefixes)
    if isinstance(value, str):
        value = [value]

    def owner(name) -> int:
        return next((i for i, p in enumerate(prefixes) if str(name).startswith(p)), -1)

    if isinstance(value, dict):
        main = {k: v for k, v in value.items() if owner(k) < 0}
        drugs = [{k[len(p) :]: v for k, v in value.items() if owner(k) == i}
                 for i, p in enumerate(prefixes)]  # fmt: skip
    else:
        main = [k for k in value if owner(k) < 0]
        drugs = [[k[len(p) :] for k in value if owner(k) == i] for i, p in enumerate(prefixes)]
    return main, drugs


_ONE_LINE = re.compile(
    r"^pca\s+(?P<drugs>.+?)(?:\s+in\s+(?P<volume>\S+\s*\S+))?\s+bolus\s+(?P<bolus>\S+\s*mL)\s+"
    r"lockout\s+(?P<lockout>.+?)(?:\s+background\s+(?P<bg>\S+\s*mL/h))?"
    r"(?P<limits>(?:\s+limit\s+\S+\s*mL\s+per\s+.+?)*)\s+from\s+(?P<start>.+?)\s+until\s+"
    r"(?P<stop>.+?)\s+demand\s+(?P<demand>\S+)$",
    re.IGNORECASE,
)
_DRUG = re.compile(r"^(?P<drug>.+?)\s+(?P<q>[-+.\d][^\s]*\s*\S+)(?:\s+max\s+(?P<max>.+))?$")
_MODEL = re.compile(r"\s+model\s+(?P<model>\S+)$", re.IGNORECASE)
_LIMIT = re.compile(r"limit\s+(?P<v>\S+\s*mL)\s+per\s+(?P<per>.+?)(?=\s+limit\s+|$)", re.I)
#: The one-line form, for messages.
FORM = (
    "'PCA <drug> <concentration or amount> [max <amount>] [model <model>][, <drug> ...] "
    "[in <volume>] bolus "
    "<volume> lockout <time> [background <volume>/h] [limit <volume> per <time> ...] from "
    "<time> until <time> demand <demand model>'"
)


def _drug(piece: str, text: str) -> ReservoirDrug:
    piece = piece.strip()
    mm = _MODEL.search(piece)
    model = mm["model"] if mm else None
    piece = piece[: mm.start()] if mm else piece
    m = _DRUG.match(piece)
    if m is None:
        raise RegimenError(f"in {text!r}: drug {piece.strip()!r}: expected '<drug> <quantity>'")
    q = m["q"]
    cap = parse_quantity(m["max"], "amount") if m["max"] else None
    try:
        conc = parse_quantity(q, "concentration")
        return ReservoirDrug(m["drug"], concentration=conc, max_amount=cap, model=model)
    except UnitError:
        return ReservoirDrug(m["drug"], amount=parse_quantity(q, "amount", allow_per_kg=True),
                             max_amount=cap, model=model)  # fmt: skip


def parse_pca(piece: str) -> PCA:
    """The one-line form, e.g. ``PCA oxycodone 1 mg/mL bolus 1 mL lockout 8 min from
    end_of_surgery until end_of_surgery + 24 h demand spine_fusion_oxycodone_demand``."""
    text = piece.strip()
    m = _ONE_LINE.match(text)
    if m is None:
        raise RegimenError(f"cannot parse {piece!r}: expected {FORM}")
    try:
        drugs = tuple(_drug(p, text) for p in m["drugs"].split(","))
        volume = parse_quantity(m["volume"], "volume").value if m["volume"] else None
        limits = tuple(
            Limit(parse_quantity(lm["v"], "volume").value, parse_quantity(lm["per"], "time").value)
            for lm in _LIMIT.finditer(m["limits"] or "")
        )
        bg = parse_quantity(m["bg"], "volume_rate").value if m["bg"] else 0.0
        start_anchor, start = time_ref(m["start"])
        stop_anchor, stop = time_ref(m["stop"])
        bolus = parse_quantity(m["bolus"], "volume").value
        lockout = parse_quantity(m["lockout"], "time").value
    except UnitError as exc:
        raise RegimenError(f"in {piece!r}: {exc}") from None
    try:
        return PCA(m["demand"], drugs, bolus, lockout, start, stop, start_anchor, stop_anchor,
                   volume, bg, limits)  # fmt: skip
    except RegimenError as exc:
        raise RegimenError(f"in {piece!r}: {exc}") from None


def read_pca(r: Reader, d, anchors: dict) -> PCA:
    """The ``[pca]`` table of a regimen file (errors name the file and the key)."""
    key = "pca"
    r.keys(d, key, {"demand", "start", "stop", "volume", "bolus", "lockout", "background",
                    "drug", "limit", "note"},
           ("demand", "start", "stop", "bolus", "lockout", "drug"))  # fmt: skip
    demand = r.string(d, key, "demand")
    start_anchor, start = r.anchored_time(d["start"], f"{key}.start", anchors)
    stop_anchor, stop = r.anchored_time(d["stop"], f"{key}.stop", anchors)
    volume = r.quantity(d["volume"], "volume", f"{key}.volume", positive=True) if "volume" in d \
        else None  # fmt: skip
    bolus = r.quantity(d["bolus"], "volume", f"{key}.bolus", positive=True)
    lockout = r.quantity(d["lockout"], "time", f"{key}.lockout")
    bg = r.quantity(d["background"], "volume_rate", f"{key}.background") if "background" in d \
        else 0.0  # fmt: skip
    rows = d["drug"]
    if not isinstance(rows, list) or not rows:
        raise r.err(f"{key}.drug", "expected one or more [[pca.drug]] tables")
    drugs = []
    for i, t in enumerate(rows):
        tk = f"{key}.drug[{i}]"
        r.keys(t, tk, {"drug", "amount", "concentration", "max", "model", "note"}, ("drug",))
        r.exactly_one(t, tk, ("amount", "concentration"))
        amount = r.parsed(t["amount"], "amount", f"{tk}.amount", allow_per_kg=True) \
            if "amount" in t else None  # fmt: skip
        conc = r.parsed(t["concentration"], "concentration", f"{tk}.concentration") \
            if "concentration" in t else None  # fmt: skip
        cap = r.parsed(t["max"], "amount", f"{tk}.max") if "max" in t else None
        model = r.string(t, tk, "model") if "model" in t else None
        drugs.append(ReservoirDrug(r.string(t, tk, "drug"), amount, conc, cap, model))
    limits = []
    for i, t in enumerate(d.get("limit", [])):
        tk = f"{key}.limit[{i}]"
        r.keys(t, tk, {"volume", "per", "note"}, ("volume", "per"))
        limits.append(Limit(r.quantity(t["volume"], "volume", f"{tk}.volume", positive=True),
                            r.quantity(t["per"], "time", f"{tk}.per", positive=True)))  # fmt: skip
    try:
        return PCA(demand, tuple(drugs), bolus, lockout, start, stop, start_anchor, stop_anchor,
                   volume, bg, tuple(limits))  # fmt: skip
    except RegimenError as exc:
        raise RegimenError(f"{where(r.file, key)}{exc}") from None
