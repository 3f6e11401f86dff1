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
* ``<amount> bolus every <interval> from <time> (to <time> | until <time> | for <span> |
  times <n>) [over <duration>]``: repeated boluses, the first at the start time, then
  one every interval; ``to``/``until`` and ``for`` end the series before its end time
  (exclusive: ``every 2 h from 0 h to 8 h`` gives 0, 2, 4 and 6 h, as ``times 4``); an
  end that is not on the grid keeps the last bolus before it; an interval longer than
  the span gives one bolus. The end must be written on the same event as the start
  (``from end_of_surgery for 48 h``, ``to end_of_surgery + 48 h``), so that every
  patient gets the same number of boluses. The series is written out as its plain
  boluses (:class:`BolusSeries`).
* ``<rate> from <time> to <time>``  or  ``<rate> from <time> for <duration>``
* ``<amount> over <duration> from <time>`` (total dose infused at a constant rate)

Example: ``0.02 mg/kg bolus every 2 h from end_of_surgery for 48 h`` (24 boluses).

and a TOML file (``[regimen]`` metadata, ``[[bolus]]`` and ``[[infusion]]`` tables; a
``[[bolus]]`` repeats with ``every`` and exactly one of ``until``, ``for`` or ``count``),
see ``models/README.md``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pkpd.errors import RegimenError, UnitError, where
from pkpd.inputs.pca import PCA, parse_pca, read_pca
from pkpd.inputs.reader import Reader
from pkpd.inputs.tci import TCI, Target, parse_tci, read_tci
from pkpd.inputs.units import Parsed, parse_quantity
from pkpd.inputs.units import exact_time_text as _exact_time
from pkpd.inputs.units import time_ref as _time_ref

__all__ = [
    "AnchorSpec",
    "Bolus",
    "BolusSeries",
    "EventTable",
    "Infusion",
    "Regimen",
    "anchor_from_dict",
    "load_regimen",
    "with_bolus_duration",
]


def _fmt_time(h: float, anchor: str | None = None) -> str:
    if anchor is None:
        return f"{h:g} h"
    if h == 0:
        return anchor
    return f"{anchor} {'+' if h > 0 else '-'} {abs(h):g} h"


@dataclass(frozen=True)
class Bolus:
    """A bolus `amount` at time `at` (h), optionally spread over `duration` (h)."""

    amount: Parsed
    at: float
    duration: float = 0.0
    at_anchor: str | None = None  # if set, `at` is an offset from this named event

    def text(self) -> str:
        s = f"{self.amount.text} bolus at {_fmt_time(self.at, self.at_anchor)}"
        if not self.duration:
            return s
        # An injection time reads in minutes (it is parsed back to the same hours).
        over = f"{self.duration * 60:g} min" if self.duration < 1 else _fmt_time(self.duration)
        return f"{s} over {over}"


#: Two bolus times closer than this fraction of the interval count as the same time (the
#: end of a series is exclusive: a bolus that would fall at it, to rounding, is not given).
_SERIES_RTOL = 1e-9


@dataclass(frozen=True)
class BolusSeries:
    """Boluses of `amount` every `every` h from `start`: until `stop` (exclusive), for a
    span (stop = start + span, same event) or `count` times. Expands to plain boluses."""

    amount: Parsed
    start: float
    every: float
    start_anchor: str | None = None
    stop: float | None = None  # exclusive end (offset from `stop_anchor`)
    stop_anchor: str | None = None
    count: int | None = None
    duration: float = 0.0
    form: str = "to"  # how it was written: "to", "for" or "times"

    def n(self) -> int:
        """Number of boluses."""
        if self.count is not None:
            return self.count
        span = (self.stop - self.start) / self.every
        return max(1, int(np.ceil(span - _SERIES_RTOL)))

    def boluses(self) -> tuple[Bolus, ...]:
        return tuple(
            Bolus(self.amount, self.start + k * self.every, self.duration, self.start_anchor)
            for k in range(self.n())
        )

    def text(self) -> str:
        s = (
            f"{self.amount.text} bolus every {_exact_time(self.every)} from "
            f"{_exact_time(self.start, self.start_anchor)}"
        )
        if self.form == "times":
            s += f" times {self.count}"
        elif self.form == "for":
            s += f" for {_exact_time(self.stop - self.start)}"
        else:
            s += f" to {_exact_time(self.stop, self.stop_anchor)}"
        return s + (f" over {_exact_time(self.duration)}" if self.duration else "")


def _series(amount, start, sa, every, end, form, duration, loc) -> BolusSeries:
    """A checked :class:`BolusSeries`; `end` is (anchor, stop), a span in h, or a count."""
    if not (np.isfinite(every) and every > 0):
        raise RegimenError(f"{loc}the interval `every` must be a positive time, got {every:g} h")
    stop = ea = count = None
    if form == "times":
        count = end
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise RegimenError(f"{loc}the count must be a whole number >= 1, got {end!r}")
    elif form == "for":
        if not end > 0:
            raise RegimenError(f"{loc}the span must be positive, got {end:g} h")
        stop, ea = start + end, sa
    else:
        ea, stop = end
        if ea != sa:
            raise RegimenError(
                f"{loc}a series from {_fmt_time(start, sa)} to {_fmt_time(stop, ea)} would "
                "give a different number of boluses to each patient: write its end on the "
                "same event as its start (e.g. 'for 48 h' or 'to <event> + 48 h') or use "
                "'times <n>'"
            )
        if not stop > start:
            raise RegimenError(
                f"{loc}the series ends at {_fmt_time(stop, ea)}, not after its start at "
                f"{_fmt_time(start, sa)}"
            )
    return BolusSeries(amount, start, every, sa, stop, ea, count, duration, form)


@dataclass(frozen=True)
class Infusion:
    """A zero-order infusion from `start` to `stop` (h), by `rate` or `total` amount."""

    start: float
    stop: float
    rate: Parsed | None = None
    total: Parsed | None = None
    start_anchor: str | None = None  # if set, start/stop are offsets from named events
    stop_anchor: str | None = None

    def rate_value(self) -> Parsed:
        """The rate in mg/h (per kg if the dose was per kg)."""
        if self.rate is not None:
            return self.rate
        assert self.total is not None
        if self.start_anchor != self.stop_anchor:
            raise RegimenError(
                f"a total dose ({self.total.text}) needs a fixed duration, but its start "
                "and stop are anchored on different events"
            )
        return Parsed(
            self.total.value / (self.stop - self.start), self.total.per_kg, "rate", self.total.text
        )

    def text(self) -> str:
        start = _fmt_time(self.start, self.start_anchor)
        if self.rate is not None:
            return f"{self.rate.text} from {start} to {_fmt_time(self.stop, self.stop_anchor)}"
        return (
            f"{self.total.text} over {_fmt_time(self.stop - self.start)} from "
            f"{_fmt_time(self.start, self.start_anchor)}"
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
class AnchorSpec:
    """A named event whose time may differ between patients (e.g. end of surgery).

    ``distribution`` is ``"fixed"`` (always `default`), ``"normal"`` (``mean``, ``sd``),
    ``"lognormal"`` (``median``, geometric SD ``gsd``) or ``"uniform"`` (over `range`);
    draws are truncated to `range` exactly, by inverse-CDF sampling of one uniform number per
    patient (so truncation never changes how many random numbers are consumed).
    """

    name: str
    default: float | None = None
    distribution: str = "fixed"
    params: tuple[float, ...] = ()
    low: float = -np.inf
    high: float = np.inf
    source: str = ""
    tag: str = ""

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` event times (h); consumes exactly one ``rng.random(n)`` unless fixed."""
        from scipy import stats

        if self.distribution == "fixed":
            return np.full(n, float(self.default))
        u = rng.random(n)
        if self.distribution == "uniform":
            return self.low + u * (self.high - self.low)
        if self.distribution == "normal":
            mean, sd = self.params
            dist, lo, hi = stats.norm(mean, sd), self.low, self.high
        else:  # lognormal: log T ~ N(log median, log gsd)
            median, gsd = self.params
            dist = stats.norm(np.log(median), np.log(gsd))
            lo = np.log(self.low) if self.low > 0 else -np.inf
            hi = np.log(self.high) if np.isfinite(self.high) else np.inf
        clo, chi = dist.cdf(lo), dist.cdf(hi)
        x = dist.ppf(clo + u * (chi - clo))
        return np.exp(x) if self.distribution == "lognormal" else x


_ANCHOR_KEYS = {"default", "distribution", "mean", "sd", "median", "gsd", "range", "source", "tag",
                "note"}  # fmt: skip


def _read_anchor(name: str, d: dict, file: str | None) -> AnchorSpec:
    r = Reader(file, RegimenError)
    key = f"anchors.{name}"
    r.keys(d, key, _ANCHOR_KEYS)

    def t(k, v=None):
        return r.quantity(d[k] if v is None else v, "time", f"{key}.{k}")

    dist = d.get("distribution", "fixed")
    default = t("default") if "default" in d else None
    lo, hi = -np.inf, np.inf
    if "range" in d:
        rng = d["range"]
        lo, hi = (t("range", v) for v in r.pair(rng, f"{key}.range", "[low, high] times"))
        if not lo < hi:
            raise r.err(f"{key}.range", f"low must be below high, got {rng!r}")
    params: tuple[float, ...] = ()
    if dist == "fixed":
        if default is None:
            raise r.err(f"{key}.default", "missing (a fixed anchor needs its time)")
    elif dist == "normal":
        params = (t("mean"), t("sd"))
        if not params[1] > 0:
            raise r.err(f"{key}.sd", f"must be > 0, got {d['sd']!r}")
    elif dist == "lognormal":
        gsd = d.get("gsd")
        if isinstance(gsd, bool) or not isinstance(gsd, int | float) or not gsd > 1:
            raise r.err(f"{key}.gsd", f"expected a geometric SD > 1 (a plain number), got {gsd!r}")
        params = (t("median"), float(gsd))
        if not params[0] > 0:
            raise r.err(f"{key}.median", f"must be > 0, got {d['median']!r}")
    elif dist == "uniform":
        if not np.isfinite(lo) or not np.isfinite(hi):
            raise r.err(f"{key}.range", "a uniform distribution needs a finite `range`")
    else:
        raise r.err(
            f"{key}.distribution", f"{dist!r}; expected fixed, normal, lognormal or uniform"
        )
    if dist != "fixed" and "source" not in d:
        raise r.err(
            f"{key}.source", "missing: say where the distribution comes from (or 'illustrative')"
        )
    if default is None and dist != "fixed":
        # A single patient without an explicit value gets the distribution's centre.
        default = params[0] if params else (lo + hi) / 2
    return AnchorSpec(
        name, default, dist, params, lo, hi, str(d.get("source", "")), str(d.get("tag", ""))
    )


def anchor_from_dict(name: str, d: dict, file: str | None = None) -> AnchorSpec:
    """An :class:`AnchorSpec` from a table in the ``[anchors.<name>]`` schema (also used by
    the calibration arms of risk models for their time of emergence)."""
    return _read_anchor(name, d, file)


#: Words one of which a regimen file's `[regimen] drug` must contain: the ketamines, then
#: the other drugs of the model library (the opioids given with S-ketamine after surgery).
REGIMEN_DRUGS = ("racemic", "s-ketamine", "esketamine", "sufentanil", "oxycodone")


@dataclass(frozen=True)
class Regimen:
    """A dosing regimen; build it with :meth:`parse`, :func:`load_regimen` or directly."""

    doses: tuple[Bolus | Infusion, ...]
    name: str = ""
    description: str = ""
    source: str = ""
    file: str | None = None
    anchors: tuple[AnchorSpec, ...] = ()
    #: A target-controlled infusion (its rates come from :mod:`pkpd.running.tci`).
    tci: TCI | None = None
    #: A patient-controlled analgesia pump (its deliveries come from :mod:`pkpd.running.pca`).
    pca: PCA | None = None
    _text: str | None = field(default=None, compare=False)
    #: The doses as written (a repeated bolus as one :class:`BolusSeries`), for :attr:`text`.
    _pieces: tuple | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not self.doses and self.tci is None and self.pca is None:
            raise RegimenError(f"{self._loc()}a regimen needs at least one dose")
        for d in self.doses:
            _check_dose(d, self._loc())
        declared = {a.name for a in self.anchors}
        unused = declared - self.anchor_names
        if unused:
            raise RegimenError(
                f"{self._loc()}`anchors.{sorted(unused)[0]}` is declared but no "
                "dose uses it (a typo?)"
            )

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
        pieces = []
        tci = pca = None
        for piece in re.split(r"[;\n]", text):
            piece = " ".join(piece.split())
            if not piece:
                continue
            if piece.lower().startswith("tci "):
                if tci is not None:
                    raise RegimenError(f"in {text.strip()!r}: one TCI pump per regimen")
                tci = parse_tci(piece)
            elif piece.lower().startswith("pca "):
                if pca is not None:
                    raise RegimenError(f"in {text.strip()!r}: one PCA pump per regimen")
                pca = parse_pca(piece)
            else:
                pieces.append(_parse_piece(piece))
        return cls(_expand(pieces), name=name, tci=tci, pca=pca, _text=text.strip(),
                   _pieces=tuple(pieces))  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict, file: str | None = None) -> Regimen:
        """Build from a parsed TOML document (see ``models/README.md``)."""
        r = Reader(file, RegimenError)
        r.keys(data, "", {"regimen", "bolus", "infusion", "anchors", "tci", "pca"})
        anchors_tab = data.get("anchors", {})
        if not isinstance(anchors_tab, dict):
            raise r.err("anchors", "expected a table of [anchors.<name>] tables")
        anchor_specs = tuple(_read_anchor(n, v, file) for n, v in anchors_tab.items())
        meta = r.table(data, "", "regimen", required=False) or {}
        r.keys(meta, "regimen", {"name", "description", "drug", "source", "notes"})
        drug = meta.get("drug")
        if drug is not None and (
            not isinstance(drug, str) or not any(k in drug.lower() for k in REGIMEN_DRUGS)
        ):
            # Shown by `pkpd regimens`; the doses are amounts of this drug.
            raise r.err(
                "regimen.drug",
                f"{drug!r}; expected a text naming 'S-ketamine', 'racemic ketamine' or a drug "
                f"of the model library ({', '.join(REGIMEN_DRUGS[3:])})",
            )
        boluses = data.get("bolus", [])
        infusions = data.get("infusion", [])
        if not isinstance(boluses, list) or not isinstance(infusions, list):
            raise r.err("bolus", "use arrays of tables: [[bolus]] and [[infusion]]")
        pieces: list = [
            _read_bolus(r, d, f"bolus[{i}]", anchors_tab) for i, d in enumerate(boluses)
        ]
        pieces += [
            _read_infusion(r, d, f"infusion[{i}]", anchors_tab) for i, d in enumerate(infusions)
        ]
        doses = _expand(pieces)
        tci = read_tci(r, data["tci"], anchors_tab) if "tci" in data else None
        pca = read_pca(r, data["pca"], anchors_tab) if "pca" in data else None
        if not doses and tci is None and pca is None:
            raise RegimenError(
                f"{where(file, None)}no [[bolus]], [[infusion]], [tci] or [pca] tables"
            )
        return cls(
            tuple(doses),
            name=str(meta.get("name", "")),
            description=str(meta.get("description", "")),
            source=str(meta.get("source", "")),
            file=file,
            anchors=anchor_specs,
            tci=tci,
            pca=pca,
            _pieces=tuple(pieces),
        )

    # ---- views ---------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The regimen in the one-line form."""
        if self._text:
            return self._text
        if self._pieces is not None and _expand(self._pieces) == self.doses:
            pieces = [d.text() for d in self._pieces]
        else:
            pieces = [d.text() for d in self.doses]
        pumps = [x.text() for x in (self.tci, self.pca) if x is not None]
        return "; ".join(pieces + pumps)

    @property
    def anchor_names(self) -> set[str]:
        """Names of the events (anchors) the doses refer to."""
        names = set()
        for d in self.doses:
            if isinstance(d, Bolus):
                names.add(d.at_anchor)
            else:
                names |= {d.start_anchor, d.stop_anchor}
        for pump in (self.tci, self.pca):
            if pump is not None:
                names |= pump.anchor_names
        return names - {None}

    def anchor_spec(self, name: str) -> AnchorSpec | None:
        return next((a for a in self.anchors if a.name == name), None)

    def assumed_events(self, given=()) -> list[str]:
        """One line per event the doses use whose declared time is tagged ``assumed`` or
        ``illustrative`` (or says so in its source); events named in `given` (times the
        caller fixed) are not the file's assumption and are left out."""
        out = []
        label = self.name or self.text
        for a in self.anchors:
            if a.name in given or a.name not in self.anchor_names:
                continue
            words = f"{a.tag} {a.source}".lower()
            if "illustrative" in words or "assumed" in words:
                tag = f" [{a.tag}]" if a.tag else ""
                out.append(f"event {a.name} of {label}: {a.source}{tag}")
        return out

    def anchor_times(self, anchors: dict[str, float] | None = None) -> dict[str, float]:
        """Time (h) of each named event the doses refer to, as :meth:`resolve` uses them:
        from `anchors` (hours or strings with units), else the anchor's declared default."""
        names = self.anchor_names
        vals: dict[str, float] = {}
        given = dict(anchors or {})
        for n in sorted(names):
            if n in given:
                v = given.pop(n)
                vals[n] = (
                    v
                    if isinstance(v, int | float)
                    else parse_quantity(v, "time", key=f"anchors.{n}").value
                )
            elif (spec := self.anchor_spec(n)) is not None and spec.default is not None:
                vals[n] = spec.default
            else:
                raise RegimenError(
                    f"{self._loc()}the regimen refers to the event `{n}` but its time is not "
                    f"known: pass anchors={{'{n}': ...}} (CLI: --anchor {n}=4h) or declare "
                    f"[anchors.{n}] with a default in the regimen file"
                )
        if given:
            raise RegimenError(
                f"{self._loc()}unknown event(s) {sorted(given)}: the regimen "
                f"uses {sorted(names) or 'none'}"
            )
        return vals

    def resolve(self, anchors: dict[str, float] | None = None) -> Regimen:
        """The regimen with every named event replaced by its time (h).

        Values come from `anchors` (hours or strings with units), else from the anchor's
        declared default. A stop that falls at or before its start is an error.
        """
        names = self.anchor_names
        if not names:
            return self
        vals = self.anchor_times(anchors)

        def at(anchor, off):
            return off if anchor is None else vals[anchor] + off

        doses = []
        for d in self.doses:
            if isinstance(d, Bolus):
                doses.append(Bolus(d.amount, at(d.at_anchor, d.at), d.duration))
            else:
                r = d.rate_value() if d.total is not None else None
                start, stop = at(d.start_anchor, d.start), at(d.stop_anchor, d.stop)
                try:
                    doses.append(
                        Infusion(start, stop, rate=d.rate if r is None else None, total=d.total)
                    )
                    _check_dose(doses[-1], self._loc())
                except RegimenError as exc:
                    raise RegimenError(f"{exc} (with {vals})") from None
        tci = self.tci
        if tci is not None:
            targets = tuple(Target(t.concentration, at(t.at_anchor, t.at)) for t in tci.targets)
            try:
                tci = replace(tci, targets=targets, stop=at(tci.stop_anchor, tci.stop),
                              stop_anchor=None)  # fmt: skip
            except RegimenError as exc:
                raise RegimenError(f"{self._loc()}{exc} (with {vals})") from None
        pca = self.pca
        if pca is not None:
            try:
                pca = replace(pca, start=at(pca.start_anchor, pca.start), start_anchor=None,
                              stop=at(pca.stop_anchor, pca.stop), stop_anchor=None)  # fmt: skip
            except RegimenError as exc:
                raise RegimenError(f"{self._loc()}{exc} (with {vals})") from None
        when = ", ".join(f"{k} = {v:g} h" for k, v in vals.items())
        return Regimen(
            tuple(doses),
            self.name,
            self.description,
            self.source,
            self.file,
            (),
            tci=tci,
            pca=pca,
            _text=f"{self.text} [{when}]",
        )

    @property
    def uses_weight(self) -> bool:
        """True if any dose is per kg of body weight."""
        return any(
            (d.amount.per_kg if isinstance(d, Bolus) else d.rate_value().per_kg) for d in self.doses
        ) or any(x is not None and x.uses_weight for x in (self.tci, self.pca))

    @property
    def start_time(self) -> float:
        """Time of the first dose (named events at their default times)."""
        r = self.resolve()
        tci = [r.tci.targets[0].at] if r.tci else []
        pca = [r.pca.start] if r.pca else []
        return min([d.at if isinstance(d, Bolus) else d.start for d in r.doses] + tci + pca)

    @property
    def end_time(self) -> float:
        """Time of the last dose event (end of the last infusion or bolus)."""
        r = self.resolve()
        pumps = [x.stop for x in (r.tci, r.pca) if x is not None]
        return max(
            [(d.at + d.duration) if isinstance(d, Bolus) else d.stop for d in r.doses] + pumps
        )

    def infusion_ends(self) -> list[float]:
        """Sorted times at which an infusion ends (named events at their default times)."""
        r = self.resolve()
        ends = sorted(
            {d.stop for d in r.doses if isinstance(d, Infusion)}
            | {d.at + d.duration for d in r.doses if isinstance(d, Bolus) and d.duration > 0}
        )
        return ends

    def event_table(
        self,
        weight: float | None = None,
        anchors: dict[str, float] | None = None,
        doses_only: bool = False,
    ) -> EventTable:
        """Compile to sorted event arrays in mg and mg/h for a patient of `weight` kg.

        Named events take their times from `anchors` (or their declared defaults). A
        regimen with a [tci] pump is refused unless `doses_only` (the pump's rates come
        from :func:`pkpd.running.tci.event_arrays`, which adds them to these).
        """
        self._no_pump(doses_only)
        if self.anchor_names or anchors:
            return self.resolve(anchors).event_table(weight, doses_only=True)
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

    def _no_pump(self, doses_only: bool) -> None:
        if self.tci is not None and not doses_only:
            raise RegimenError(
                f"{self._loc()}the regimen has a [tci] pump, whose rates depend on the pump's "
                "model and each patient's covariates: its event table comes from "
                "pkpd.running.tci.event_arrays (simulate and simulate_cohort use it)"
            )
        if self.pca is not None and not doses_only:
            raise RegimenError(
                f"{self._loc()}the regimen has a [pca] pump, whose deliveries depend on each "
                "patient's demands and concentrations: its event rows come from "
                "pkpd.running.pca.run (simulate and simulate_cohort use it)"
            )

    def event_arrays(
        self,
        weight: np.ndarray,
        anchors: dict[str, np.ndarray] | None = None,
        doses_only: bool = False,
    ):
        """Per-patient event tables as rectangular arrays, vectorised over patients.

        A regimen with a [tci] pump is refused unless `doses_only` (see :meth:`event_table`).

        Parameters
        ----------
        weight : (n,) float64
            Body weights (kg); used for per-kg doses.
        anchors : dict of (n,) float64, optional
            Per-patient times (h) of the named events; missing ones take the default.

        Returns
        -------
        t, rate, bolus : (n, K) float64
            For each patient, K sorted breakpoints (some may coincide), the total infusion
            rate (mg/h) from each breakpoint to the next, and the bolus (mg) given there
            (on the first of coinciding breakpoints only). K is the same for all patients.
        """
        self._no_pump(doses_only)
        w = np.asarray(weight, dtype=float)
        n = w.shape[0]
        if self.uses_weight and (not np.all(np.isfinite(w)) or np.any(w <= 0)):
            raise RegimenError(
                f"{self._loc()}the regimen has per-kg doses: every weight must be positive"
            )
        vals = {}
        for name in self.anchor_names:
            if anchors is not None and name in anchors:
                vals[name] = np.broadcast_to(np.asarray(anchors[name], dtype=float), (n,))
            else:
                spec = self.anchor_spec(name)
                if spec is None or spec.default is None:
                    raise RegimenError(f"{self._loc()}no time for the event `{name}`")
                vals[name] = np.full(n, spec.default)

        def at(anchor, off):
            return np.full(n, off) if anchor is None else vals[anchor] + off

        starts, stops, rates, bt, ba = [], [], [], [], []
        for d in self.doses:
            if isinstance(d, Bolus):
                amt = d.amount.value * (w if d.amount.per_kg else 1.0)
                t0 = at(d.at_anchor, d.at)
                if d.duration > 0:
                    starts.append(t0)
                    stops.append(t0 + d.duration)
                    rates.append(np.broadcast_to(amt / d.duration, (n,)))
                else:
                    bt.append(t0)
                    ba.append(np.broadcast_to(amt, (n,)))
            else:
                r = d.rate_value()
                starts.append(at(d.start_anchor, d.start))
                stops.append(at(d.stop_anchor, d.stop))
                rates.append(np.broadcast_to(r.value * (w if r.per_kg else 1.0), (n,)))
        S = np.stack(starts, axis=1) if starts else np.zeros((n, 0))
        E = np.stack(stops, axis=1) if stops else np.zeros((n, 0))
        R = np.stack(rates, axis=1) if rates else np.zeros((n, 0))
        BT = np.stack(bt, axis=1) if bt else np.zeros((n, 0))
        BA = np.stack(ba, axis=1) if ba else np.zeros((n, 0))
        bad = np.nonzero(np.any(E <= S, axis=1))[0]
        if bad.size:
            raise RegimenError(
                f"{self._loc()}for {bad.size} patient(s) (first: index {bad[0]}) an infusion "
                "stops at or before it starts once the event times are drawn"
            )
        t = np.sort(np.concatenate([S, E, BT], axis=1), axis=1)
        active = (S[:, None, :] <= t[:, :, None]) & (t[:, :, None] < E[:, None, :])
        rate = np.einsum("nkp,np->nk", active, R)
        first = np.ones_like(t, dtype=bool)
        first[:, 1:] = t[:, 1:] != t[:, :-1]
        bolus = np.einsum("nkb,nb->nk", (t[:, :, None] == BT[:, None, :]), BA) * first
        return t, rate, bolus


def with_bolus_duration(regimen, hours: float) -> Regimen:
    """The regimen with every instantaneous bolus given over `hours` instead.

    A bolus in the published models is instantaneous (the NONMEM convention the parameters
    were estimated with), so the central concentration jumps to dose / V1 at the bolus: a
    mixing artefact no sample measures. Giving the bolus over its injection time (about
    0.5-1 min clinically) makes the simulated peak the one a fast sampler would see. Boluses
    already written with ``over`` keep their own duration; nothing else changes.

    Examples
    --------
    >>> with_bolus_duration("0.5 mg/kg bolus at 0 h", 1 / 60).text
    '0.5 mg/kg bolus at 0 h over 1 min'
    """
    reg = load_regimen(regimen)
    if isinstance(hours, bool) or not isinstance(hours, int | float) or not hours > 0:
        raise RegimenError(f"the bolus duration must be a positive number of hours, got {hours!r}")
    doses = tuple(
        replace(d, duration=float(hours)) if isinstance(d, Bolus) and d.duration == 0 else d
        for d in reg.doses
    )
    return replace(reg, doses=doses, _text=None)


def regimens_dir() -> Path:
    """Folder of the shipped regimens (``models/regimens`` in the repository)."""
    from importlib import resources

    return Path(str(resources.files("pkpd.models.regimens")))


def available_regimens() -> list[str]:
    """Names of the shipped regimens."""
    return sorted(p.stem for p in regimens_dir().glob("*.toml"))


def load_regimen(spec: str | Path | Regimen) -> Regimen:
    """A regimen from a shipped name, a TOML path, the one-line form, or a Regimen.

    Any of these may be preceded by ``NAME=`` (:data:`NAME_RULE`): the regimen is then
    called NAME (its label in comparisons; its text keeps the doses).

    Examples
    --------
    >>> load_regimen("0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h").uses_weight
    True
    >>> load_regimen("low=0.1 mg/kg bolus at 0 h").name
    'low'
    """
    if isinstance(spec, Regimen):
        return spec
    text = str(spec)
    if "=" in text and not _is_file(text):
        return _named(text)
    if re.fullmatch(r"[A-Za-z_][\w.-]*", text) and not text.endswith(".toml"):
        shipped = regimens_dir() / f"{text}.toml"
        if shipped.is_file():
            text = str(shipped)
        else:
            from pkpd.inputs.files import did_you_mean

            names = available_regimens()
            raise RegimenError(
                f"unknown regimen {text!r}{did_you_mean(text, names)}: expected a one-line "
                f"regimen, a .toml path, or one of {', '.join(names)}"
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

#: A regimen name (``NAME=REGIMEN``): a letter, then letters, digits, ``_``, ``-`` or ``.``.
NAME_RULE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


def _named(text: str) -> Regimen:
    """``NAME=REGIMEN``: the regimen (one-line, shipped name or file) under the name NAME.

    ``=`` appears nowhere else in a regimen, so any ``=`` starts a name.
    """
    name, _, rest = text.partition("=")
    name = name.strip()
    if not NAME_RULE.fullmatch(name):
        raise RegimenError(
            f"regimen name {name!r} (before '=' in {text!r}): a name is a letter followed by "
            "letters, digits, '_', '-' or '.', e.g. 'low=0.1 mg/kg bolus at 0 h'"
        )
    if "=" in rest:
        raise RegimenError(f"{text!r}: one name per regimen (NAME=REGIMEN), '=' given twice")
    return replace(load_regimen(rest.strip()), name=name)


def _is_file(text: str) -> bool:
    """True if `text` names an existing file (a one-line regimen can be too long a name).

    Only a path counts (a separator in it, see :func:`pkpd.output.io.is_path`): a file in the
    working directory named like a one-line regimen does not replace it.
    """
    from pkpd.inputs.files import is_path

    if "\n" in text or ";" in text or not is_path(text):
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


_BOLUS = re.compile(r"^(?P<amt>.+?)\s+bolus\s+at\s+(?P<at>.+?)(?:\s+over\s+(?P<dur>.+))?$", re.I)
_SERIES = re.compile(
    r"^(?P<amt>.+?)\s+bolus\s+every\s+(?P<every>.+?)\s+from\s+(?P<start>.+?)\s+"
    r"(?P<kind>for|to|until|times)\s+(?P<end>.+?)(?:\s+over\s+(?P<dur>.+))?$",
    re.I,
)
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
    "'<amount> bolus at <time> [over <duration>]', '<amount> bolus every <interval> from "
    "<time> (to <time> | for <duration> | times <n>) [over <duration>]', "
    "'<rate> from <time> to <time>', "
    "'<rate> from <time> for <duration>' or '<amount> over <duration> from <time>'"
)


def _q(text: str, kind: str, piece: str) -> Parsed:
    try:
        return parse_quantity(text, kind, allow_per_kg=kind != "time")
    except UnitError as exc:
        raise RegimenError(f"in {piece!r}: {exc}") from None


def _tr(text: str, piece: str) -> tuple[str | None, float]:
    try:
        return _time_ref(text)
    except UnitError as exc:
        raise RegimenError(f"in {piece!r}: {exc}") from None


def _expand(pieces) -> tuple[Bolus | Infusion, ...]:
    """Doses with every :class:`BolusSeries` written out as its plain boluses."""
    out: list[Bolus | Infusion] = []
    for p in pieces:
        out.extend(p.boluses() if isinstance(p, BolusSeries) else (p,))
    return tuple(out)


def _parse_piece(piece: str) -> Bolus | Infusion | BolusSeries:
    m = _SERIES.match(piece)
    if m:
        loc = f"in {piece!r}: "
        sa, start = _tr(m["start"], piece)
        if m["kind"].lower() == "times":
            try:
                end: object = int(m["end"])
            except ValueError:
                raise RegimenError(f"{loc}'times' needs a whole number, got {m['end']!r}") from None
            form = "times"
        elif m["kind"].lower() == "for":
            end, form = _q(m["end"], "time", piece).value, "for"
        else:
            end, form = _tr(m["end"], piece), "to"
        dur = _q(m["dur"], "time", piece).value if m["dur"] else 0.0
        amount = _q(m["amt"], "amount", piece)
        every = _q(m["every"], "time", piece).value
        series = _series(amount, start, sa, every, end, form, dur, loc)
        for b in series.boluses():
            _check_dose(b, loc)
        return series
    m = _BOLUS.match(piece)
    if m:
        dur = _q(m["dur"], "time", piece).value if m["dur"] else 0.0
        anchor, at = _tr(m["at"], piece)
        return _checked(
            Bolus(_q(m["amt"], "amount", piece), at, dur, at_anchor=anchor), f"in {piece!r}: "
        )
    m = _TOTAL.match(piece)
    if m:
        sa, start = _tr(m["start"], piece)
        dur = _q(m["dur"], "time", piece).value
        total = _q(m["amt"], "amount", piece)
        return _checked(
            Infusion(start, start + dur, total=total, start_anchor=sa, stop_anchor=sa),
            f"in {piece!r}: ",
        )
    m = _RATE.match(piece)
    if m:
        sa, start = _tr(m["start"], piece)
        if m["to"]:
            ea, stop = _tr(m["end"], piece)
        else:
            ea, stop = sa, start + _q(m["end"], "time", piece).value
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
        return _checked(
            Infusion(start, stop, rate=rate, start_anchor=sa, stop_anchor=ea), f"in {piece!r}: "
        )
    raise RegimenError(f"cannot parse {piece!r}: expected {_FORMS}")


def _dose_quantity(r: Reader, d: dict, key: str, k: str, kind: str) -> Parsed:
    return r.parsed(d[k], kind, f"{key}.{k}", allow_per_kg=kind != "time")


def _time_of(r: Reader, d: dict, key: str, k: str, anchors: dict) -> tuple[str | None, float]:
    """A dose time: ``(None, h)`` or ``(anchor, offset h)`` for an event under [anchors]."""
    return r.anchored_time(d[k], f"{key}.{k}", anchors)


def _read_bolus(r: Reader, d, key: str, anchors: dict) -> Bolus | BolusSeries:
    """One ``[[bolus]]`` table (repeated with `every` and `until`, `for` or `count`)."""
    r.keys(d, key, {"amount", "at", "duration", "note", "every", "until", "for", "count"},
           ("amount", "at"))  # fmt: skip
    dur = _dose_quantity(r, d, key, "duration", "time").value if "duration" in d else 0.0
    at_anchor, at = _time_of(r, d, key, "at", anchors)
    if "every" in d or any(k in d for k in ("until", "for", "count")):
        if "every" not in d:
            raise r.err(f"{key}.every", "missing: `until`, `for` and `count` repeat a bolus "
                        "`every` <interval>")  # fmt: skip
        end_key = r.exactly_one(d, key, ("until", "for", "count"))
        every = _dose_quantity(r, d, key, "every", "time").value
        if end_key == "until":
            end: object = _time_of(r, d, key, "until", anchors)
            form = "to"
        elif end_key == "for":
            end, form = _dose_quantity(r, d, key, "for", "time").value, "for"
        else:
            end, form = d["count"], "times"
        amount = _dose_quantity(r, d, key, "amount", "amount")
        series = _series(amount, at, at_anchor, every, end, form, dur, where(r.file, key))
        for b in series.boluses():
            _check_dose(b, where(r.file, key))
        return series
    bolus = Bolus(_dose_quantity(r, d, key, "amount", "amount"), at, dur, at_anchor=at_anchor)
    return _checked(bolus, where(r.file, key))


def _read_infusion(r: Reader, d, key: str, anchors: dict) -> Infusion:
    """One ``[[infusion]]``: a `rate` or a `total`, from `start` to `stop` or for `duration`."""
    r.keys(d, key, {"rate", "total", "start", "stop", "duration", "note"})
    form = r.exactly_one(d, key, ("rate", "total"))
    if "start" not in d:
        raise r.err(f"{key}.start", "missing (required)")
    r.exactly_one(d, key, ("stop", "duration"))
    sa, start = _time_of(r, d, key, "start", anchors)
    if "stop" in d:
        ea, stop = _time_of(r, d, key, "stop", anchors)
    else:
        ea, stop = sa, start + _dose_quantity(r, d, key, "duration", "time").value
    if form == "total":
        total = _dose_quantity(r, d, key, "total", "amount")
        return _checked(Infusion(start, stop, total=total, start_anchor=sa, stop_anchor=ea),
                        where(r.file, key))  # fmt: skip
    try:
        rate = _dose_quantity(r, d, key, "rate", "rate")
    except RegimenError as exc:
        try:
            _dose_quantity(r, d, key, "rate", "amount")
        except RegimenError:
            raise exc from None
        raise r.err(
            f"{key}.rate", f"{d['rate']!r} is an amount, not a rate; for a total dose use `total`"
        ) from None
    inf = Infusion(start, stop, rate=rate, start_anchor=sa, stop_anchor=ea)
    return _checked(inf, where(r.file, key))


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
        if d.start_anchor == d.stop_anchor and d.stop <= d.start:
            raise RegimenError(
                f"{loc}infusion stops at {d.stop:g} h, not after its start at {d.start:g} h"
            )


def _checked(d, loc):
    _check_dose(d, loc)
    return d
