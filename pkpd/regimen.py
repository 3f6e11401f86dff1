"""Dosing regimens: boluses and zero-order infusions, compiled to an event table.

A regimen is a list of doses:

* :class:`Bolus`: an amount at a time, optionally given over a short duration (then it is
  a zero-order infusion of ``amount / duration``);
* :class:`Infusion`: a zero-order infusion given by its rate, or by its total dose over
  its duration.

Loading plus maintenance is a bolus plus an infusion; a rate change is two consecutive
infusions. **Infusions that overlap add up**: the rate at any time is the sum of the rates
of every infusion running then (two lines through one pump and a second pump behave the
same way in a linear model).

Doses may be absolute (``20 mg``, ``10 mg/h``) or per kg of body weight (``0.3 mg/kg``,
``5 ug/kg/min``); per-kg doses are multiplied by the patient's weight when the event table
is built. Times accept any unit (``90 min``, ``4 h``, ``2 day``).

Two equivalent forms
--------------------
One line, pieces separated by ``;``::

    0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h; 0.05 mg/kg/h from 4 h to 48 h

with the pieces

* ``<amount> bolus at <time> [over <duration>]``
* ``<rate> from <time> to <time>``  or  ``<rate> from <time> for <duration>``
* ``<amount> over <duration> from <time>`` (total dose infused at a constant rate)

and a TOML file (``[regimen]`` metadata, ``[[bolus]]`` and ``[[infusion]]`` tables), see
``models/README.md``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import RegimenError, UnitError
from .units import Parsed, parse_quantity

__all__ = ["Bolus", "EventTable", "Infusion", "Regimen", "load_regimen"]


def _fmt_time(h: float) -> str:
    return f"{h:g} h"


@dataclass(frozen=True)
class Bolus:
    """A bolus `amount` at time `at` (h), optionally spread over `duration` (h)."""

    amount: Parsed
    at: float
    duration: float = 0.0

    def text(self) -> str:
        s = f"{self.amount.text} bolus at {_fmt_time(self.at)}"
        return s + (f" over {_fmt_time(self.duration)}" if self.duration else "")


@dataclass(frozen=True)
class Infusion:
    """A zero-order infusion from `start` to `stop` (h), by `rate` or `total` amount."""

    start: float
    stop: float
    rate: Parsed | None = None
    total: Parsed | None = None

    def rate_value(self) -> Parsed:
        """The rate in mg/h (per kg if the dose was per kg)."""
        if self.rate is not None:
            return self.rate
        assert self.total is not None
        return Parsed(
            self.total.value / (self.stop - self.start), self.total.per_kg, "rate", self.total.text
        )

    def text(self) -> str:
        if self.rate is not None:
            return f"{self.rate.text} from {_fmt_time(self.start)} to {_fmt_time(self.stop)}"
        return (
            f"{self.total.text} over {_fmt_time(self.stop - self.start)} from "
            f"{_fmt_time(self.start)}"
        )


@dataclass(frozen=True)
class EventTable:
    """Plain arrays for the kernels.

    Attributes
    ----------
    t : (n_ev,) float64
        Sorted event times (h).
    rate : (n_ev,) float64
        Total infusion rate (mg/h) from ``t[k]`` to ``t[k+1]``; zero after the last stop.
    bolus : (n_ev,) float64
        Bolus amount (mg) at ``t[k]``.
    """

    t: np.ndarray
    rate: np.ndarray
    bolus: np.ndarray

    @property
    def total_dose(self) -> float:
        """Total amount given (mg)."""
        dt = np.diff(self.t)
        return float(self.bolus.sum() + np.sum(self.rate[:-1] * dt))


@dataclass(frozen=True)
class Regimen:
    """A dosing regimen; build it with :meth:`parse`, :func:`load_regimen` or directly."""

    doses: tuple[Bolus | Infusion, ...]
    name: str = ""
    description: str = ""
    source: str = ""
    file: str | None = None
    _text: str | None = field(default=None, compare=False)

    def __post_init__(self):
        if not self.doses:
            raise RegimenError(f"{self._loc()}a regimen needs at least one dose")
        for d in self.doses:
            _check_dose(d, self._loc())

    def _loc(self) -> str:
        return f"{self.file}: " if self.file else ""

    # ---- constructors --------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, name: str = "") -> Regimen:
        """Parse the one-line form (pieces separated by ``;`` or new lines)."""
        if not isinstance(text, str) or not text.strip():
            raise RegimenError(
                "empty regimen: expected e.g. '0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h'"
            )
        doses = []
        for piece in re.split(r"[;\n]", text):
            piece = " ".join(piece.split())
            if piece:
                doses.append(_parse_piece(piece))
        return cls(tuple(doses), name=name, _text=text.strip())

    @classmethod
    def from_dict(cls, data: dict, file: str | None = None) -> Regimen:
        """Build from a parsed TOML document (see ``models/README.md``)."""
        loc = f"{file}: " if file else ""

        def err(key, msg):
            return RegimenError(f"{loc}`{key}`: {msg}")

        for k in data:
            if k not in ("regimen", "bolus", "infusion"):
                raise err(k, "unknown key; expected regimen, bolus, infusion")
        meta = data.get("regimen", {})
        if not isinstance(meta, dict):
            raise err("regimen", "expected a table")
        for k in meta:
            if k not in ("name", "description", "source", "notes"):
                raise err(f"regimen.{k}", "unknown key; expected name, description, source, notes")

        def q(d, key, k, kind):
            try:
                return parse_quantity(
                    d[k], kind, allow_per_kg=kind != "time", file=file, key=f"{key}.{k}"
                )
            except UnitError as exc:
                raise RegimenError(str(exc)) from None

        def time(d, key, k):
            return q(d, key, k, "time").value

        doses: list[Bolus | Infusion] = []
        boluses = data.get("bolus", [])
        infusions = data.get("infusion", [])
        if not isinstance(boluses, list) or not isinstance(infusions, list):
            raise err("bolus", "use arrays of tables: [[bolus]] and [[infusion]]")
        for i, d in enumerate(boluses):
            key = f"bolus[{i}]"
            if not isinstance(d, dict):
                raise err(key, "expected a table")
            for k in d:
                if k not in ("amount", "at", "duration", "note"):
                    raise err(f"{key}.{k}", "unknown key; expected amount, at, duration")
            for k in ("amount", "at"):
                if k not in d:
                    raise err(f"{key}.{k}", "missing")
            dur = time(d, key, "duration") if "duration" in d else 0.0
            doses.append(
                _checked(
                    Bolus(q(d, key, "amount", "amount"), time(d, key, "at"), dur), f"{loc}{key}: "
                )
            )
        for i, d in enumerate(infusions):
            key = f"infusion[{i}]"
            if not isinstance(d, dict):
                raise err(key, "expected a table")
            for k in d:
                if k not in ("rate", "total", "start", "stop", "duration", "note"):
                    raise err(
                        f"{key}.{k}", "unknown key; expected rate or total, start, stop or duration"
                    )
            if ("rate" in d) == ("total" in d):
                raise err(key, "give exactly one of `rate` and `total`")
            if "start" not in d:
                raise err(f"{key}.start", "missing")
            if ("stop" in d) == ("duration" in d):
                raise err(key, "give exactly one of `stop` and `duration`")
            start = time(d, key, "start")
            stop = time(d, key, "stop") if "stop" in d else start + time(d, key, "duration")
            if "rate" in d:
                try:
                    rate = q(d, key, "rate", "rate")
                except RegimenError as exc:
                    try:
                        q(d, key, "rate", "amount")
                    except RegimenError:
                        raise exc from None
                    raise err(
                        f"{key}.rate",
                        f"{d['rate']!r} is an amount, not a rate; for a total dose use `total`",
                    ) from None
                inf = Infusion(start, stop, rate=rate)
            else:
                inf = Infusion(start, stop, total=q(d, key, "total", "amount"))
            doses.append(_checked(inf, f"{loc}{key}: "))
        if not doses:
            raise RegimenError(f"{loc}no [[bolus]] or [[infusion]] tables")
        return cls(
            tuple(doses),
            name=str(meta.get("name", "")),
            description=str(meta.get("description", "")),
            source=str(meta.get("source", "")),
            file=file,
        )

    # ---- views ---------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The regimen in the one-line form."""
        return self._text or "; ".join(d.text() for d in self.doses)

    @property
    def uses_weight(self) -> bool:
        """True if any dose is per kg of body weight."""
        return any(
            (d.amount.per_kg if isinstance(d, Bolus) else d.rate_value().per_kg) for d in self.doses
        )

    @property
    def start_time(self) -> float:
        return min(d.at if isinstance(d, Bolus) else d.start for d in self.doses)

    @property
    def end_time(self) -> float:
        """Time of the last dose event (end of the last infusion or bolus)."""
        return max((d.at + d.duration) if isinstance(d, Bolus) else d.stop for d in self.doses)

    def infusion_ends(self) -> list[float]:
        """Sorted times at which the total infusion rate drops (ends of infusions)."""
        ends = sorted(
            {d.stop for d in self.doses if isinstance(d, Infusion)}
            | {d.at + d.duration for d in self.doses if isinstance(d, Bolus) and d.duration > 0}
        )
        return ends

    def event_table(self, weight: float | None = None) -> EventTable:
        """Compile to sorted event arrays in mg and mg/h for a patient of `weight` kg."""
        if self.uses_weight and (weight is None or not np.isfinite(weight) or weight <= 0):
            raise RegimenError(
                f"{self._loc()}the regimen has per-kg doses: a positive body "
                f"weight is needed, got {weight!r}"
            )
        w = 1.0 if weight is None else float(weight)
        pieces = []  # (start, stop, rate_mg_h)
        boluses = []  # (time, amount_mg)
        for d in self.doses:
            if isinstance(d, Bolus):
                amt = d.amount.scaled(w)
                if d.duration > 0:
                    pieces.append((d.at, d.at + d.duration, amt / d.duration))
                else:
                    boluses.append((d.at, amt))
            else:
                pieces.append((d.start, d.stop, d.rate_value().scaled(w)))
        times = sorted({t for p in pieces for t in p[:2]} | {b[0] for b in boluses})
        t = np.array(times, dtype=float)
        rate = np.zeros_like(t)
        bolus = np.zeros_like(t)
        for s, e, r in pieces:
            rate[(t >= s) & (t < e)] += r
        for tb, a in boluses:
            bolus[np.searchsorted(t, tb)] += a
        return EventTable(t, rate, bolus)


def regimens_dir() -> Path:
    """Folder of the shipped regimens (``models/regimens`` in the repository)."""
    from importlib import resources

    return Path(str(resources.files("pkpd.models.regimens")))


def available_regimens() -> list[str]:
    """Names of the shipped regimens."""
    return sorted(p.stem for p in regimens_dir().glob("*.toml"))


def load_regimen(spec: str | Path | Regimen) -> Regimen:
    """A regimen from a shipped name, a TOML path, the one-line form, or a Regimen.

    Examples
    --------
    >>> load_regimen("0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h").uses_weight
    True
    """
    if isinstance(spec, Regimen):
        return spec
    text = str(spec)
    if re.fullmatch(r"[A-Za-z_][\w.-]*", text) and not text.endswith(".toml"):
        shipped = regimens_dir() / f"{text}.toml"
        if shipped.is_file():
            text = str(shipped)
        else:
            raise RegimenError(
                f"unknown regimen {text!r}: expected a one-line regimen, a "
                f".toml path, or one of {', '.join(available_regimens())}"
            )
    if text.endswith(".toml") or _is_file(text):
        path = Path(text)
        if not path.is_file():
            raise RegimenError(f"{path}: regimen file not found")
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise RegimenError(f"{path}: not valid TOML: {exc}") from exc
        return Regimen.from_dict(data, file=str(path))
    return Regimen.parse(text)


# ----------------------------------------------------------------------------- parsing


def _is_file(text: str) -> bool:
    """True if `text` names an existing file (a one-line regimen can be too long a name)."""
    if "\n" in text or ";" in text:
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


_BOLUS = re.compile(r"^(?P<amt>.+?)\s+bolus\s+at\s+(?P<at>.+?)(?:\s+over\s+(?P<dur>.+))?$", re.I)
_RATE = re.compile(
    r"^(?P<rate>.+?)\s+from\s+(?P<start>.+?)\s+(?:(?P<to>to|until)|for)\s+"
    r"(?P<end>.+)$",
    re.I,
)
_TOTAL = re.compile(
    r"^(?P<amt>.+?)\s+over\s+(?P<dur>.+?)\s+(?:from|at|starting)\s+"
    r"(?P<start>.+)$",
    re.I,
)

_FORMS = (
    "'<amount> bolus at <time> [over <duration>]', '<rate> from <time> to <time>', "
    "'<rate> from <time> for <duration>' or '<amount> over <duration> from <time>'"
)


def _q(text: str, kind: str, piece: str) -> Parsed:
    try:
        return parse_quantity(text, kind, allow_per_kg=kind != "time")
    except UnitError as exc:
        raise RegimenError(f"in {piece!r}: {exc}") from None


def _parse_piece(piece: str) -> Bolus | Infusion:
    m = _BOLUS.match(piece)
    if m:
        dur = _q(m["dur"], "time", piece).value if m["dur"] else 0.0
        return _checked(
            Bolus(_q(m["amt"], "amount", piece), _q(m["at"], "time", piece).value, dur),
            f"in {piece!r}: ",
        )
    m = _TOTAL.match(piece)
    if m:
        start = _q(m["start"], "time", piece).value
        dur = _q(m["dur"], "time", piece).value
        return _checked(
            Infusion(start, start + dur, total=_q(m["amt"], "amount", piece)), f"in {piece!r}: "
        )
    m = _RATE.match(piece)
    if m:
        start = _q(m["start"], "time", piece).value
        end = _q(m["end"], "time", piece).value
        stop = end if m["to"] else start + end
        try:
            rate = parse_quantity(m["rate"], "rate", allow_per_kg=True)
        except UnitError as exc:
            try:
                parse_quantity(m["rate"], "amount", allow_per_kg=True)
            except UnitError:
                raise RegimenError(f"in {piece!r}: {exc}") from None
            raise RegimenError(
                f"in {piece!r}: {m['rate']!r} is an amount, not a rate; for a total dose "
                f"write '{m['rate']} over <duration> from <time>'"
            ) from None
        return _checked(Infusion(start, stop, rate=rate), f"in {piece!r}: ")
    raise RegimenError(f"cannot parse {piece!r}: expected {_FORMS}")


def _check_dose(d, loc: str) -> None:
    if isinstance(d, Bolus):
        if d.amount.value < 0:
            raise RegimenError(f"{loc}bolus amount {d.amount.text!r} is negative")
        if d.duration < 0:
            raise RegimenError(f"{loc}bolus duration {d.duration:g} h is negative")
        if not np.isfinite(d.at):
            raise RegimenError(f"{loc}bolus time is not finite")
    else:
        q = d.rate if d.rate is not None else d.total
        if q.value < 0:
            raise RegimenError(
                f"{loc}infusion {'rate' if d.rate else 'total dose'} {q.text!r} is negative"
            )
        if not (np.isfinite(d.start) and np.isfinite(d.stop)):
            raise RegimenError(f"{loc}infusion times must be finite")
        if d.stop <= d.start:
            raise RegimenError(
                f"{loc}infusion stops at {d.stop:g} h, not after its start at {d.start:g} h"
            )


def _checked(d, loc):
    _check_dose(d, loc)
    return d
