"""A target-controlled infusion as a regimen states it: the `[tci]` table of a regimen file.

The description only: which model the pump runs, what it targets (plasma or effect site),
the target schedule, the pump's limits. The rates are computed by
:mod:`pkpd.running.tci` (on the exact solution of the pump's model, :mod:`pkpd.engine.tci`).

```toml
[tci]
model = "gepts1995_sufentanil"   # the model the pump runs (its typical patient)
site = "effect"                  # or "plasma"
max_rate = "1200 ug/h"           # the pump's maximum rate (per kg allowed: "20 ug/kg/h")
update = "10 s"                  # update interval (default 10 s)
stop = "end_of_surgery"          # when the pump stops (a time or an anchored event)
syringe = "5 ug/mL"              # optional: report rates in mL/h too

[[tci.target]]
at = "0 h"
concentration = "0.4 ng/mL"      # held until the next target or the stop

[[tci.target]]
at = "end_of_surgery - 30 min"
concentration = "0.2 ng/mL"
```
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from pkpd.errors import RegimenError, UnitError, where
from pkpd.inputs.reader import Reader
from pkpd.inputs.units import Parsed, exact_time_text, parse_quantity, time_ref

__all__ = ["SITES", "TCI", "Target", "parse_tci", "read_tci"]

#: What a pump can target.
SITES = ("plasma", "effect")
#: The default update interval (h): 10 s, as STANPUMP.
DEFAULT_UPDATE = 10.0 / 3600.0
#: Shortest and longest update intervals accepted (h): 1 s and 10 min.
UPDATE_RANGE = (1.0 / 3600.0, 10.0 / 60.0)


@dataclass(frozen=True)
class Target:
    """A target concentration (mg/L) in force from `at` (h, after `at_anchor` if given)."""

    concentration: Parsed
    at: float
    at_anchor: str | None = None

    def text(self) -> str:
        return f"{self.concentration.text} at {exact_time_text(self.at, self.at_anchor)}"


@dataclass(frozen=True)
class TCI:
    """A target-controlled infusion: the pump runs `model`'s typical patient (at each
    patient's covariates) and targets `site` through the `targets`, from the first target's
    time until `stop`, never above `max_rate`, updating every `update` hours."""

    model: str
    site: str
    targets: tuple[Target, ...]
    stop: float
    max_rate: Parsed
    stop_anchor: str | None = None
    update: float = DEFAULT_UPDATE
    syringe: Parsed | None = None

    def __post_init__(self):
        check(self, "")

    @property
    def anchor_names(self) -> set[str]:
        names = {t.at_anchor for t in self.targets} | {self.stop_anchor}
        return {a for a in names if a is not None}

    @property
    def uses_weight(self) -> bool:
        return self.max_rate.per_kg

    def text(self) -> str:
        """The one-line form (:func:`parse_tci` reads it back)."""
        targets = ", ".join(t.text() for t in self.targets)
        s = (
            f"TCI {self.site} {targets} until {exact_time_text(self.stop, self.stop_anchor)} "
            f"using {self.model} max {self.max_rate.text} every {exact_time_text(self.update)}"
        )
        return s + (f" syringe {self.syringe.text}" if self.syringe is not None else "")


_ONE_LINE = re.compile(
    r"^tci\s+(?P<site>\S+)\s+(?P<targets>.+?)\s+until\s+(?P<stop>.+?)\s+using\s+"
    r"(?P<model>\S+)\s+max\s+(?P<max>.+?)(?:\s+every\s+(?P<every>.+?))?"
    r"(?:\s+syringe\s+(?P<syringe>.+?))?$",
    re.IGNORECASE,
)
_TARGET = re.compile(r"^(?P<conc>.+?)\s+at\s+(?P<at>.+)$")
#: The one-line form, for messages.
FORM = (
    "'TCI <plasma|effect> <concentration> at <time>[, <concentration> at <time> ...] until "
    "<time> using <model> max <rate> [every <interval>] [syringe <concentration>]'"
)


def parse_tci(piece: str) -> TCI:
    """The one-line form, e.g. ``TCI effect 0.4 ng/mL at 0 h, 0.2 ng/mL at end_of_surgery -
    30 min until end_of_surgery using gepts1995_sufentanil max 6 mg/h every 10 s``."""
    m = _ONE_LINE.match(piece.strip())
    if m is None:
        raise RegimenError(f"cannot parse {piece!r}: expected {FORM}")
    try:
        targets = []
        for part in m["targets"].split(","):
            t = _TARGET.match(part.strip())
            if t is None:
                raise RegimenError(f"in {piece!r}: target {part.strip()!r}: expected "
                                   "'<concentration> at <time>'")  # fmt: skip
            anchor, at = time_ref(t["at"])
            targets.append(Target(parse_quantity(t["conc"], "concentration"), at, anchor))
        stop_anchor, stop = time_ref(m["stop"])
        max_rate = parse_quantity(m["max"], "rate", allow_per_kg=True)
        update = parse_quantity(m["every"], "time").value if m["every"] else DEFAULT_UPDATE
        syringe = parse_quantity(m["syringe"], "concentration") if m["syringe"] else None
    except UnitError as exc:
        raise RegimenError(f"in {piece!r}: {exc}") from None
    try:
        return TCI(m["model"], m["site"].lower(), tuple(targets), stop, max_rate, stop_anchor,
                   update, syringe)  # fmt: skip
    except RegimenError as exc:
        raise RegimenError(f"in {piece!r}: {exc}") from None


def check(tci: TCI, loc: str) -> None:
    """Refuse settings no pump can run, naming the setting."""
    if tci.site not in SITES:
        raise RegimenError(f"{loc}TCI site {tci.site!r}: expected one of {', '.join(SITES)}")
    if not tci.targets:
        raise RegimenError(f"{loc}a TCI needs at least one target")
    for t in tci.targets:
        if not t.concentration.value >= 0:
            raise RegimenError(
                f"{loc}TCI target {t.concentration.text!r} is negative; expected >= 0"
            )
    same = [t.at for t in tci.targets if t.at_anchor == tci.targets[0].at_anchor]
    if any(b <= a for a, b in itertools.pairwise(same)):
        raise RegimenError(f"{loc}TCI targets must be in time order, got {same} h")
    if tci.stop_anchor == tci.targets[0].at_anchor and tci.stop <= tci.targets[0].at:
        raise RegimenError(
            f"{loc}the TCI stops at {tci.stop:g} h, not after its first target at "
            f"{tci.targets[0].at:g} h"
        )
    if not tci.max_rate.value > 0:
        raise RegimenError(f"{loc}TCI max_rate {tci.max_rate.text!r} must be > 0")
    lo, hi = UPDATE_RANGE
    if not lo <= tci.update <= hi:
        raise RegimenError(
            f"{loc}TCI update interval {tci.update * 3600:g} s: expected 1 s to 10 min"
        )
    if tci.syringe is not None and not tci.syringe.value > 0:
        raise RegimenError(f"{loc}TCI syringe concentration {tci.syringe.text!r} must be > 0")


def read_tci(r: Reader, d, anchors: dict) -> TCI:
    """The ``[tci]`` table of a regimen file (errors name the file and the key)."""
    key = "tci"
    r.keys(d, key, {"model", "site", "max_rate", "update", "stop", "syringe", "target", "note"},
           ("model", "site", "max_rate", "stop", "target"))  # fmt: skip
    model = r.string(d, key, "model")
    site = r.choice(d, key, "site", SITES)
    max_rate = r.parsed(d["max_rate"], "rate", f"{key}.max_rate", allow_per_kg=True)
    update = (
        r.quantity(d["update"], "time", f"{key}.update", positive=True)
        if "update" in d
        else DEFAULT_UPDATE
    )
    syringe = r.parsed(d["syringe"], "concentration", f"{key}.syringe") if "syringe" in d else None
    stop_anchor, stop = r.anchored_time(d["stop"], f"{key}.stop", anchors)
    rows = d["target"]
    if not isinstance(rows, list) or not rows:
        raise r.err(f"{key}.target", "expected one or more [[tci.target]] tables")
    targets = []
    for i, t in enumerate(rows):
        tk = f"{key}.target[{i}]"
        r.keys(t, tk, {"at", "concentration", "note"}, ("at", "concentration"))
        anchor, at = r.anchored_time(t["at"], f"{tk}.at", anchors)
        conc = r.parsed(t["concentration"], "concentration", f"{tk}.concentration")
        targets.append(Target(conc, at, anchor))
    try:
        return TCI(model, site, tuple(targets), stop, max_rate, stop_anchor, update, syringe)
    except RegimenError as exc:
        raise RegimenError(f"{where(r.file, key)}{exc}") from None
