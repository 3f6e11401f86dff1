"""Matplotlib figures (non-interactive Agg backend; nothing opens a window)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pkpd.errors import PkpdError, PlotError

__all__ = [
    "TimeWindow",
    "plot_bands",
    "plot_compare",
    "plot_compare_bands",
    "plot_concentrations",
    "plot_design",
    "plot_metric_distributions",
    "plot_risk_vs_dose",
    "regimen_events",
]

NOTICE = "Research software, not a clinical dosing device."


def plot_concentrations(
    ds,
    path: Path,
    events: dict[str, float] | list[float] | None = None,
    fmt: str | None = None,
    *,
    window=None,
    log: bool = False,
):
    """Plot a one-patient dataset against time and save to `path`: the concentrations
    (ng/mL) on one panel, PD variables in other units (effects, concentration / C50) on a
    second panel, each with its unit.

    Parameters
    ----------
    ds : xarray.Dataset
        Result of :func:`pkpd.simulate`.
    path : Path
        Output file (PNG, or any format matplotlib infers from the suffix).
    events : dict of str to float, or list of float, optional
        Times (h) to mark with labelled vertical lines: ``{name: time}`` (e.g.
        ``{"end_of_surgery": 4.0}``), or bare times (labelled by their time).
    fmt : str, optional
        Image format (``"png"``, ``"svg"``, ``"pdf"``); default from the suffix of `path`.
    window : str or (start, end), optional
        Time window of the x axis: ``"START..END"`` or a pair, each end in hours, a time
        with its unit (``"6 h"``), an event name of `events` or an event with an offset
        (``"end_of_surgery+2h"``); an empty end is the end of the data.
    log : bool
        Logarithmic concentration axis.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (saved and closed; its axes can still be inspected).

    The thresholds stored in `ds` (``pkpd.simulate(..., thresholds=)``) are drawn as
    horizontal lines, each in its own style, labelled with its level.
    """
    plt = _plt()
    ev = _event_dict(events)
    t = np.asarray(ds.time.values, dtype=float)
    lo, hi = TimeWindow.coerce(window).limits(ev, t)
    series = [v for v in ds.data_vars if ds[v].dims == ("time",)]
    conc = [v for v in series if ds[v].attrs.get("units") == "ng/mL" and _is_trajectory(v)]
    pd_vars = [
        v
        for v in series
        if ds[v].attrs.get("units") not in ("ng/mL", "mg", "ng*h/mL") and _is_trajectory(v)
    ]
    nrow = 2 if pd_vars else 1
    fig, axes = plt.subplots(
        nrow, 1, figsize=(8, 4.5 if nrow == 1 else 7.5), squeeze=False, sharex=True,
        layout="constrained", height_ratios=[2, 1] if nrow == 2 else None,
    )  # fmt: skip
    ax = axes[0, 0]
    eq_drug = ds.attrs.get("model_drug", "parent-drug")
    for v, same in _distinct_series(ds, conc):
        # Identical curves (an effect site and the PD driver that is the same concentration)
        # are drawn once, under both names, rather than one hiding the other.
        names = " = ".join([str(v), *same])
        ax.plot(t, ds[v].values, label=_series_label(ds, v, eq_drug, shown=names))
    thr = _thresholds(ds)
    levels = [x for o in conc for x in thr.get(str(o), [])]
    _mark_thresholds(ax, [(o, x) for o in conc for x in thr.get(str(o), [])], "ng/mL")
    ax.set_ylabel("concentration (ng/mL)")
    _time_axes(ax, t, [ds[v].values for v in conc], lo, hi, log, extra=levels)
    if pd_vars:
        ax2 = axes[1, 0]
        units = {str(ds[v].attrs.get("units", "")) for v in pd_vars}
        for v in pd_vars:
            u = str(ds[v].attrs.get("units", ""))
            lab = _series_label(ds, v, eq_drug, n=60)
            ax2.plot(t, ds[v].values, label=f"{lab} ({_unit_text(u)})" if len(units) > 1 else lab)
        pd_thr = [(o, x) for o in pd_vars for x in thr.get(str(o), [])]
        _mark_thresholds(ax2, pd_thr, next(iter(units)) if len(units) == 1 else "")
        ax2.set_ylabel(
            f"PD ({_unit_text(next(iter(units)))})" if len(units) == 1 else "PD (see legend)"
        )
        _time_axes(ax2, t, [ds[v].values for v in pd_vars], lo, hi, False,
                   extra=[x for _, x in pd_thr])  # fmt: skip
    for i, a in enumerate(axes[:, 0]):
        _mark_named_times(a, ev, lo, hi, labelled=i == 0)
        a.grid(alpha=0.3)
        # Below the top panel of two (its tick labels are hidden); the last panel's legend
        # stays inside, clear of its tick labels.
        _legend(a, below=i < nrow - 1)
    axes[-1, 0].set_xlabel("time (h)")
    axes[0, 0].set_title(
        _one_line(f"{ds.attrs.get('model', '')}: {_regimen_title(ds)}"), fontsize=8
    )
    return _save(fig, path, fmt, dpi=120)


def regimen_events(regimen, anchors: dict | None = None) -> dict[str, float]:
    """Named times of a one-patient regimen for :func:`plot_concentrations`: each event the
    doses refer to (``end_of_surgery``), at its time from `anchors` or its default, and each
    end of an infusion that is not one of them, labelled by how the regimen states it
    ("end of infusion at end_of_surgery + 48 h"; "rate change" where another starts).

    `regimen` is a :class:`pkpd.Regimen` with its events unresolved (as loaded).
    """
    from pkpd.inputs.regimen import Infusion

    named = regimen.anchor_times(anchors)
    out = dict(named)

    def at(anchor, off):
        return off + (named[anchor] if anchor else 0.0)

    infusions = [d for d in regimen.doses if isinstance(d, Infusion)]
    starts = [at(d.start_anchor, d.start) for d in infusions]
    for d in sorted(infusions, key=lambda d: at(d.stop_anchor, d.stop)):
        t = at(d.stop_anchor, d.stop)
        if any(np.isclose(t, x, rtol=0, atol=1e-9) for x in out.values()):
            continue  # already marked (a named event, or another infusion ending there)
        what = (
            "rate change"
            if any(np.isclose(t, x, rtol=0, atol=1e-9) for x in starts)
            else ("end of infusion")
        )
        if d.stop_anchor:
            off = f" {'+' if d.stop > 0 else '-'} {abs(d.stop):g} h" if d.stop else ""
            what += f" at {d.stop_anchor}{off}"
        key, k = what, 2
        while key in out:
            key, k = f"{what} ({k})", k + 1
        out[key] = t
    return out


def _distinct_series(ds, names):
    """(name, [names of later variables with the same values]) for each distinct series."""
    out: list[tuple[str, list[str]]] = []
    for v in names:
        for first, same in out:
            if np.array_equal(ds[first].values, ds[v].values, equal_nan=True):
                same.append(str(v))
                break
        else:
            out.append((str(v), []))
    return out


def _legend(ax, below: bool = True) -> None:
    """The legend inside the axes when it is small (or `below` is False), else below them
    at full width (never beside them, where it would squeeze the axes)."""
    _handles, labels = ax.get_legend_handles_labels()
    if not below or (len(labels) <= 5 and max(map(len, labels), default=0) <= 50):
        ax.legend(fontsize=7, loc="best")
    else:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.04), ncols=1,
                  frameon=False, borderaxespad=0)  # fmt: skip


def _is_trajectory(name) -> bool:
    """A time course to draw (not a cumulative AUC, amount, dose or mass-balance record)."""
    return not str(name).startswith(("auc_", "amount_", "dose_given", "eliminated_"))


def _unit_text(unit: str) -> str:
    return "dimensionless" if unit in ("", "1") else unit


def _series_label(ds, name, drug: str, shown: str | None = None, n: int = 95) -> str:
    """Legend label of a concentration: its name, what it is, and for a metabolite carried
    in parent-drug mass equivalents, the unit that says so; cut to `n` characters.
    `shown` replaces the name (e.g. two names of one curve)."""
    v = ds[name] if name in ds.variables else None
    long_name = str(v.attrs.get("long_name", "")) if v is not None else ""
    # The long names of PD drivers carry their unit and molar mass in parentheses: the axis
    # already says ng/mL, and the legend must stay narrow.
    long_name = re.sub(r"\s*\(.*\)\s*$", "", long_name)
    eq = (v is not None and "mass equivalents" in str(v.attrs.get("note", ""))) or str(
        name
    ) in _mass_equivalents(ds)
    if eq:
        # The unit is what a reader must not miss: it goes first, before any cut.
        what = long_name.removesuffix(" plasma concentration") or str(name)
        return _one_line(f"{shown or name}: {what}, {drug}-equivalent ng/mL", n)
    return _one_line(f"{shown or name}: {long_name}" if long_name else str(shown or name), n)


def _mass_equivalents(ds) -> set[str]:
    return {
        s.strip()
        for s in str(ds.attrs.get("model_mass_equivalent_outputs", "")).split(",")
        if s.strip()
    }


def _regimen_title(ds) -> str:
    """The regimen as a title: its name (where it has one) and its doses (cut to one line
    by the caller; the whole text is in ``attrs["regimen"]``)."""
    name = str(ds.attrs.get("regimen_name") or "")
    text = str(ds.attrs.get("regimen", ""))
    return f"{name}: {text}" if name and text else name or text


def _one_line(text: str, n: int = 125) -> str:
    """`text` on one line, cut to `n` characters (``...``)."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3].rstrip() + "..."


def _event_dict(events) -> dict[str, float]:
    if events is None:
        return {}
    if isinstance(events, dict):
        return {str(k): float(v) for k, v in events.items()}
    return {f"{float(x):g} h": float(x) for x in events}


def _mark_named_times(ax, events: dict[str, float], lo: float, hi: float, labelled=True) -> None:
    """A vertical line at each event time inside the window, in its own style, labelled
    with the event's name and time (unless `labelled` is False: a second panel)."""
    for k, (name, x) in enumerate(sorted(events.items(), key=lambda kv: kv[1])):
        if lo <= x <= hi:
            ax.axvline(x, color=_EVENT_COLORS[k % len(_EVENT_COLORS)], lw=0.9,
                       ls=_STYLES[k % len(_STYLES)],
                       label=f"{name}: {x:.3g} h" if labelled else None)  # fmt: skip


_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
_EVENT_COLORS = ("0.35", "tab:brown", "tab:olive", "tab:cyan")
_THRESHOLD_COLORS = ("tab:red", "tab:purple", "tab:pink", "tab:brown")


class TimeWindow:
    """A time window of a figure's x axis, ``START..END``.

    Each end is hours (``6``), a time with its unit (``"90 min"``), the name of an event of
    the run (``end_of_surgery``; for a cohort the median over patients), or an event with an
    offset (``"end_of_surgery + 2 h"``, ``"end_of_surgery-30min"``); an empty end is the
    start or end of the data. The syntax is checked when the window is made, event names
    when it is applied to a run (:meth:`limits`).
    """

    def __init__(self, start=None, end=None, text: str | None = None, key: str = "window"):
        self.key = key
        self.text = text if text is not None else f"{start}..{end}"
        self.start = self._end(start)
        self.end = self._end(end)

    @classmethod
    def parse(cls, text: str, key: str = "window") -> TimeWindow:
        """A window from ``"START..END"`` text; `key` names the option in messages."""
        if not isinstance(text, str) or text.count("..") != 1:
            raise PlotError(
                f"`{key}` {text!r}: expected START..END, each end hours, a time such as 6h, "
                "an event name such as end_of_surgery, or an event+offset "
                "(end_of_surgery+2h); e.g. 0..end_of_surgery+2h"
            )
        a, b = text.split("..")
        return cls(a.strip() or None, b.strip() or None, text=text, key=key)

    @classmethod
    def coerce(cls, window, key: str = "window") -> TimeWindow:
        if window is None:
            return cls(None, None, text="", key=key)
        if isinstance(window, TimeWindow):
            return window
        if isinstance(window, str):
            return cls.parse(window, key)
        try:
            a, b = window
        except (TypeError, ValueError):
            raise PlotError(
                f'`{key}` {window!r}: expected "START..END" or a pair (start, end)'
            ) from None
        return cls(a, b, key=key)

    def _end(self, x):
        """(event or None, offset h), or None for an open end; syntax errors raised here."""
        if x is None or (isinstance(x, str) and not x.strip()):
            return None
        if isinstance(x, int | float | np.floating) and not isinstance(x, bool):
            if not np.isfinite(x):
                raise PlotError(f"`{self.key}` {self.text!r}: {x!r} is not a finite time")
            return (None, float(x))
        if not isinstance(x, str):
            raise PlotError(f"`{self.key}` {self.text!r}: {x!r} is not a time or an event")
        s = x.strip()
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:([+-])\s*(.+))?", s)
        if m:
            name, sign, off = m.groups()
            return (name, 0.0 if off is None else float(f"{sign}1") * self._hours(off, s))
        return (None, self._hours(s, s))

    def _hours(self, text: str, whole: str) -> float:
        from pkpd.inputs.units import parse_quantity

        try:
            return float(parse_quantity(text.strip(), "time", default_unit="h").value)
        except PkpdError:
            raise PlotError(
                f"`{self.key}` {self.text!r}: {whole!r} is not a time (hours, or a number "
                "with a unit such as 90min), an event name or an event+offset"
            ) from None

    def check_events(self, events) -> None:
        """Raise :class:`PlotError` if an end names an event not among `events`."""
        for e in (self.start, self.end):
            if e is not None and e[0] is not None and e[0] not in events:
                known = ", ".join(sorted(events)) or "none"
                raise PlotError(
                    f"`{self.key}` {self.text!r}: unknown event {e[0]!r}; the events of this "
                    f"run are: {known} (or give hours, e.g. 0..6h)"
                )

    def limits(self, events: dict[str, float], t) -> tuple[float, float]:
        """(lo, hi) in hours against the run's `events` and time grid `t`."""
        t = np.asarray(t, dtype=float)
        data = (float(np.nanmin(t)), float(np.nanmax(t))) if t.size else (0.0, 1.0)
        out = []
        for e, default in ((self.start, data[0]), (self.end, data[1])):
            if e is None:
                out.append(default)
                continue
            self.check_events(events)
            name, off = e
            out.append(off + (events[name] if name is not None else 0.0))
        lo, hi = out
        if not hi > lo:
            raise PlotError(
                f"`{self.key}` {self.text!r}: the end ({hi:g} h) must be after the start ({lo:g} h)"
            )
        if hi < data[0] or lo > data[1]:
            raise PlotError(
                f"`{self.key}` {self.text!r}: {lo:g}-{hi:g} h lies outside the simulated "
                f"times {data[0]:g}-{data[1]:g} h"
            )
        return lo, hi


def _time_axes(ax, t, ys, lo, hi, log, extra=()) -> None:
    """Limit the x axis to [lo, hi] and fit the y axis to the data drawn inside it (the
    arrays `ys` on the time grid `t`, and the levels `extra`); log scale if `log`."""
    ax.set_xlim(lo, hi)
    t = np.asarray(t, dtype=float)
    inside = (t >= lo) & (t <= hi)
    vals = [np.asarray(y, dtype=float)[..., inside].ravel() for y in ys]
    v = np.concatenate([*vals, np.asarray(list(extra), dtype=float)]) if vals or extra else []
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    if log:
        from matplotlib.ticker import FuncFormatter, LogFormatter

        ax.set_yscale("log")
        # Concentrations read as plain numbers (0.1, 10, 200), not 2 x 10^2.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
        pos = v[v > 0]
        if pos.size:
            top = float(pos.max())
            # Concentrations start at 0 (metabolites, effect sites): keep four decades below
            # the peak rather than reaching down to the first tiny value.
            ax.set_ylim(max(float(pos.min()), top * 1e-4) / 1.3, top * 1.3)
    elif v.size:
        vmin, vmax = min(float(v.min()), 0.0), float(v.max())
        pad = 0.05 * (vmax - vmin) or 1.0
        ax.set_ylim(vmin - (pad if vmin < 0 else 0.02 * (vmax - vmin)), vmax + pad)


def _plt():
    """matplotlib.pyplot on the non-interactive Agg backend.

    Imported on first use, not with this module: matplotlib takes ~0.15 s to import and
    only the commands that draw need it (`pkpd --help` and `import pkpd` stay fast).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, fmt, dpi=110):
    """Add the not-a-clinical-device notice in a strip of its own below the axes (so that
    it never covers an axis or tick label) and write the figure."""
    plt = _plt()
    strip = 0.2 / fig.get_figheight()  # 0.2 inch, whatever the figure's height
    engine = fig.get_layout_engine()
    if engine is not None and hasattr(engine, "set") and "rect" in engine.get():
        engine.set(rect=(0, strip, 1, 1 - strip))
    else:
        fig.subplots_adjust(bottom=max(fig.subplotpars.bottom, strip + 0.08))
    fig.text(0.01, strip * 0.25, NOTICE, fontsize=7, color="0.4")
    fig.savefig(path, format=(fmt or Path(path).suffix).lstrip(".").lower() or "png", dpi=dpi)
    plt.close(fig)
    return fig


_THRESHOLD = re.compile(r"^(?P<out>\w+) > (?P<v>[0-9.eE+-]+) ng/mL$")


def _thresholds(ds) -> dict[str, list[float]]:
    """Threshold levels per output (in the output's unit) of a cohort: from the
    ``threshold_output`` and ``threshold_level`` coordinates, else from the labels (ng/mL)."""
    out: dict[str, list[float]] = {}
    if "threshold" not in ds.coords:
        return out
    if "threshold_output" in ds.coords and "threshold_level" in ds.coords:
        outs = np.asarray(ds.threshold_output.values).ravel()
        levels = np.asarray(ds.threshold_level.values, dtype=float).ravel()
        if outs.size == levels.size == ds.sizes["threshold"]:
            for o, v in zip(outs, levels, strict=True):
                out.setdefault(str(o), []).append(float(v))
            return out
    for lab in ds.threshold.values:
        m = _THRESHOLD.match(str(lab))
        if m:
            out.setdefault(m["out"], []).append(float(m["v"]))
    return out


def _event_times(ds) -> dict[str, object]:
    """Per-patient event times (coordinates ``time of event ...`` or ``event_*`` variables)."""
    out = {}
    for name in ds.variables:
        v = ds[name]
        if "patient" not in v.dims or v.dims[-1] != "patient":
            continue
        if str(v.attrs.get("long_name", "")).startswith("time of event"):
            out[str(name).removeprefix("event_")] = v
    return out


def _mark_events(ax, times, color="0.35", window=(-np.inf, np.inf)) -> None:
    """Median (labelled line, one style per event) and 5-95 % range (shaded) of each
    event's per-patient times; events whose range lies outside `window` are left out."""
    for k, (name, v) in enumerate(times.items()):
        x = np.asarray(v, dtype=float).ravel()
        x = x[np.isfinite(x)]
        if not x.size:
            continue
        lo, med, hi = np.percentile(x, [5, 50, 95])
        if hi < window[0] or lo > window[1]:
            continue
        c = color if k == 0 else _EVENT_COLORS[k % len(_EVENT_COLORS)]
        ax.axvline(med, color=c, lw=0.9, ls=_STYLES[k % len(_STYLES)],
                   label=f"{name}: median {med:.3g} h")  # fmt: skip
        if hi > lo:
            ax.axvspan(lo, hi, color=c, alpha=0.08, label=f"{name}: 5-95 % {lo:.3g}-{hi:.3g} h")


def _event_medians(times) -> dict[str, float]:
    """Median over patients of each event's times (the event times a window refers to)."""
    out = {}
    for name, v in times.items():
        x = np.asarray(v, dtype=float).ravel()
        x = x[np.isfinite(x)]
        if x.size:
            out[str(name)] = float(np.median(x))
    return out


def _mark_thresholds(ax, levels, unit: str = "ng/mL") -> None:
    """One horizontal line per threshold, each in its own colour and style, labelled with
    its level (and its output, where `levels` holds ``(output, level)`` pairs)."""
    unit = "" if unit in ("", "1") else f" {unit}"
    for k, item in enumerate(levels):
        out, v = item if isinstance(item, tuple) else (None, item)
        lab = f"{out} > {v:g}{unit}" if out else f"threshold {v:g}{unit}"
        ax.axhline(v, color=_THRESHOLD_COLORS[k % len(_THRESHOLD_COLORS)], lw=1.0,
                   ls=_STYLES[(k + 1) % len(_STYLES)], label=lab)  # fmt: skip


def _unit(ds, output) -> str:
    """The unit of a cohort output (``output_units`` where outputs differ)."""
    if "output_units" in ds.coords and "output" in ds.coords:
        return str(ds.output_units.sel(output=output).item())
    return "ng/mL"


def plot_bands(
    ds,
    path: Path,
    fmt: str | None = None,
    *,
    thresholds=None,
    events: bool = True,
    window=None,
    log: bool = False,
):
    """Percentile bands (5-95 %, 25-75 %, median) of each output of a cohort dataset
    (concentrations, and PD variables in their own units).

    Parameters
    ----------
    ds : xarray.Dataset
        A :func:`pkpd.simulate_cohort` result with ``band``.
    path : Path
        Output file.
    fmt : str, optional
        Image format (default from the suffix).
    thresholds : dict, optional
        ``output -> [ng/mL, ...]`` horizontal lines; default: the cohort's own thresholds.
    events : bool
        Mark the median and 5-95 % range of the drawn event times (e.g. end_of_surgery).
    window : str or (start, end), optional
        Time window of the x axes (see :class:`TimeWindow`): ``"0..end_of_surgery+2h"``;
        an event name stands for its median over the patients.
    log : bool
        Logarithmic axes for the concentrations (ng/mL outputs).

    Returns
    -------
    matplotlib.figure.Figure
        The figure (saved and closed; its axes can still be inspected).
    """
    plt = _plt()
    outs = list(ds.band_output.values)
    thr = _thresholds(ds) if thresholds is None else dict(thresholds)
    all_ev = _event_times(ds)
    ev = all_ev if events else {}
    t = ds.band_time.values
    lo, hi = TimeWindow.coerce(window).limits(_event_medians(all_ev), t)
    fig, axes = plt.subplots(
        len(outs), 1, figsize=(8, 3.2 * len(outs)), squeeze=False, layout="constrained"
    )
    eq = _mass_equivalents(ds)
    drug = ds.attrs.get("model_drug", "parent-drug")
    for ax, o in zip(axes[:, 0], outs, strict=True):
        b = ds.band.sel(band_output=o)
        q = {float(v): b.sel(quantile=v).values for v in ds["quantile"].values}
        ax.fill_between(t, q[0.05], q[0.95], alpha=0.2, label="5-95 %")
        ax.fill_between(t, q[0.25], q[0.75], alpha=0.35, label="25-75 %")
        ax.plot(t, q[0.5], lw=1.5, label="median")
        unit = _unit(ds, o)
        levels = thr.get(str(o), [])
        _mark_thresholds(ax, levels, unit)
        _mark_events(ax, ev, window=(lo, hi))
        shown = _unit_text(unit)
        if str(o) in eq and unit == "ng/mL":
            shown = f"{drug}-equivalent ng/mL"
        ax.set_ylabel(f"{o} ({shown})" if len(str(o)) + len(shown) < 34 else shown)
        if len(str(o)) + len(shown) >= 34:
            ax.set_title(str(o), fontsize=8, loc="left")
        _time_axes(ax, t, [q[0.05], q[0.95]], lo, hi, log and unit == "ng/mL", extra=levels)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("time (h)")
    axes[0, 0].set_title(
        f"{ds.attrs.get('model', '')}, {ds.attrs.get('population', '')}, "
        f"{ds.sizes['patient']:,} patients\n{_one_line(_regimen_title(ds))}",
        fontsize=8,
    )
    return _save(fig, path, fmt)


# ----------------------------------------------------------------------------- comparison


def _compare_bands_axes(ax, cds, output, thresholds=None, *, window=None, log=False) -> None:
    """One output's bands (5-95 % light, 25-75 % darker, median line) for every regimen;
    x axis limited to `window` (a :class:`TimeWindow`, event names at their median over
    every regimen's patients), log y axis if `log`."""
    t = cds.band_time.values
    colors = _plt().rcParams["axes.prop_cycle"].by_key()["color"]
    ev_all = {
        k.removeprefix("event_"): cds[k] for k in cds.data_vars if str(k).startswith("event_")
    }
    lo, hi = TimeWindow.coerce(window).limits(_event_medians(ev_all), t)
    labels = short_labels(cds.regimen.values, 70)
    first_ev = {}
    ys = []
    for i, (r, lab) in enumerate(zip(cds.regimen.values, labels, strict=True)):
        b = cds.band.sel(regimen=r, band_output=output)
        q = {float(v): b.sel(quantile=v).values for v in cds["quantile"].values}
        c = colors[i % len(colors)]
        ax.fill_between(t, q[0.05], q[0.95], color=c, alpha=0.12, lw=0)
        ax.fill_between(t, q[0.25], q[0.75], color=c, alpha=0.28, lw=0)
        ax.plot(t, q[0.5], color=c, lw=1.4, label=lab)
        ys += [q[0.05], q[0.95]]
        ev = {
            k.removeprefix("event_"): cds[k].sel(regimen=r)
            for k in cds.data_vars
            if k.startswith("event_")
        }
        ev = {k: v for k, v in ev.items() if np.isfinite(v.values).any()}
        if i == 0:
            first_ev = ev
    # After the regimens, so that the legend lists the regimens first.
    _mark_events(ax, first_ev, window=(lo, hi))
    levels = (thresholds or {}).get(str(output), [])
    _mark_thresholds(ax, levels)
    unit = "ng/mL"
    if str(output) in _mass_equivalents(cds):
        unit = f"{cds.attrs.get('model_drug', 'parent-drug')}-equivalent ng/mL"
    ax.set_ylabel(f"{output} ({unit})")
    ax.set_xlabel("time (h); lines: median, shading: 25-75 % and 5-95 % of patients")
    _time_axes(ax, t, ys, lo, hi, log, extra=levels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_compare_bands(
    cds, path: Path, fmt: str | None = None, *, thresholds=None, window=None, log=False
):
    """Percentile bands of every band output, the regimens of a comparison overlaid.

    `window` limits the time axes (``"0..end_of_surgery+2h"``, see :class:`TimeWindow`;
    an event name stands for its median over the patients), `log` draws the concentrations
    on a logarithmic axis.
    """
    plt = _plt()
    outs = list(cds.band_output.values)
    thr = _thresholds(cds) if thresholds is None else dict(thresholds)
    fig, axes = plt.subplots(
        len(outs), 1, figsize=(9, 3.3 * len(outs)), squeeze=False, layout="constrained"
    )
    for ax, o in zip(axes[:, 0], outs, strict=True):
        _compare_bands_axes(ax, cds, o, thr, window=window, log=log)
    axes[0, 0].set_title(_compare_title(cds), fontsize=8)
    return _save(fig, path, fmt)


def _compare_title(cds) -> str:
    n = cds.sizes.get("patient", 0)
    return (
        f"{cds.attrs.get('model', '')}, {cds.attrs.get('population', '')}, {n:,} patients, "
        f"seed {cds.attrs.get('seed', '')} (same patients for every regimen)"
    )


def _short(label: str, n: int = 28) -> str:
    return label if len(label) <= n else label[: n - 3] + "..."


def short_labels(labels, n: int = 28) -> list[str]:
    """`labels` cut to `n` characters, still distinct from each other.

    A label is cut at its end (``prefix...``); where two cut labels would read the same (one
    long prefix, e.g. two one-line regimens differing only in a late dose), they are cut in
    the middle instead (``start...end``), and if that still collides, numbered by position
    (``start...#3``).
    """
    labels = [str(x) for x in labels]
    out = [_short(lab, n) for lab in labels]
    if len(set(out)) == len(out):
        return out
    k = (n - 3) // 2
    out = [lab if len(lab) <= n else f"{lab[: n - 3 - k]}...{lab[-k:]}" for lab in labels]
    if len(set(out)) == len(out):
        return out
    out = []
    for i, lab in enumerate(labels):
        tag = f"#{i + 1}"
        out.append(lab if len(lab) <= n else f"{lab[: n - 3 - len(tag)]}...{tag}")
    return out


def _distribution_axes(ax, cds, var, sel, ylabel) -> None:
    """Box plots (5-95 % whiskers) of a per-patient metric, one box per regimen."""
    data = []
    for r in cds.regimen.values:
        v = cds[f"{var}_patient"].sel(regimen=r, **sel).values.astype(float)
        data.append(v[np.isfinite(v)])
    ax.boxplot(data, whis=(5, 95), showfliers=False, medianprops={"color": "k"})
    ax.set_xticks(range(1, len(data) + 1), short_labels(cds.regimen.values))
    ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.3, axis="y")


def plot_metric_distributions(cds, path: Path, fmt: str | None = None) -> None:
    """Distributions over patients (box 25-75 %, whiskers 5-95 %) per regimen: Cmax of each
    output, AUC of each window (first output), time above each threshold."""
    plt = _plt()
    panels = [("cmax", {"output": o}, f"Cmax {o} (ng/mL)") for o in cds.output.values]
    o0 = cds.output.values[0]
    panels += [
        ("auc", {"output": o0, "window": w}, f"AUC {o0} {w} (ng*h/mL)") for w in cds.window.values
    ]
    if "time_above_patient" in cds:
        panels += [("time_above", {"threshold": t}, f"time {t} (h)") for t in cds.threshold.values]
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False, layout="constrained"
    )
    for ax, (var, sel, lab) in zip(axes.ravel(), panels, strict=False):
        _distribution_axes(ax, cds, var, sel, lab)
    for ax in axes.ravel()[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(_compare_title(cds), fontsize=8)
    _save(fig, path, fmt)


def _risk_names(ds) -> list[str]:
    return [
        str(v).removeprefix("incidence_")
        for v in ds.data_vars
        if str(v).startswith("incidence_") and not str(v).endswith(("_lo", "_hi"))
    ]


def _risk_dose_axes(ax, ds) -> bool:
    """Risk incidence (with interval) against total dose (mg/kg); False if no risk."""
    names = _risk_names(ds)
    if not names:
        return False
    if "regimen" in ds.dims:  # comparison: median dose, one point per regimen
        x = ds.dose_per_kg.sel(percentile=50.0).values
        xerr = np.abs(ds.dose_per_kg.sel(percentile=[5.0, 95.0]).values.T - x)
        labels = short_labels(ds.regimen.values, 22)
    else:  # design grid: every point
        x = ds.total_dose.values.ravel()
        xerr = None
        labels = None
    for name in names:
        y = ds[f"incidence_{name}"].values.ravel()
        lo = ds[f"incidence_{name}_lo"].values.ravel() if f"incidence_{name}_lo" in ds else y
        hi = ds[f"incidence_{name}_hi"].values.ravel() if f"incidence_{name}_hi" in ds else y
        yerr = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
        ax.errorbar(x, y, yerr=yerr, xerr=xerr, fmt="o", ms=4, capsize=2, label=name, alpha=0.8)
        if labels:
            for xi, yi, lab in zip(x, y, labels, strict=True):
                ax.annotate(lab, (xi, yi), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
    mr = ds.attrs.get("max_risk")
    if isinstance(mr, int | float) and not isinstance(mr, bool):
        ax.axhline(float(mr), color="tab:red", ls=":", lw=0.9, label=f"limit {float(mr):g}")
    ax.set_xlabel("total dose (mg/kg; comparison: median and 5-95 %)")
    ax.set_ylabel("predicted incidence")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return True


def plot_risk_vs_dose(ds, path: Path, fmt: str | None = None) -> None:
    """Predicted incidence of every risk (with its interval) against the total dose."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    if not _risk_dose_axes(ax, ds):
        ax.text(0.5, 0.5, "no risk model in this result", ha="center", va="center")
    ax.set_title(f"{ds.attrs.get('model', '')}: risk against dose", fontsize=8)
    _save(fig, path, fmt)


def plot_compare(cds, path: Path, fmt: str | None = None, *, window=None, log=False) -> None:
    """The comparison figure: bands of each output, Cmax distributions, and PTA / risk.
    `window` and `log` apply to the bands (see :func:`plot_compare_bands`)."""
    plt = _plt()
    outs = list(cds.band_output.values) if "band" in cds else []
    has_pta = "pta" in cds
    has_risk = bool(_risk_names(cds))
    nrow = len(outs) + 1
    fig = plt.figure(figsize=(11, 3.2 * nrow), layout="constrained")
    gs = fig.add_gridspec(nrow, 2)
    thr = _thresholds(cds)
    for i, o in enumerate(outs):
        _compare_bands_axes(fig.add_subplot(gs[i, :]), cds, o, thr, window=window, log=log)
    ax = fig.add_subplot(gs[nrow - 1, 0])
    o0 = cds.output.values[0]
    _distribution_axes(ax, cds, "cmax", {"output": o0}, f"Cmax {o0} (ng/mL)")
    ax2 = fig.add_subplot(gs[nrow - 1, 1])
    if has_pta:
        x = np.arange(cds.sizes["regimen"])
        p = cds.pta.values
        lo = cds.pta_lo.values if "pta_lo" in cds else p
        hi = cds.pta_hi.values if "pta_hi" in cds else p
        ax2.bar(x, p, yerr=[np.clip(p - lo, 0, None), np.clip(hi - p, 0, None)], capsize=3,
                color="tab:green", alpha=0.6, label="PTA")  # fmt: skip
        ax2.set_xticks(x, short_labels(cds.regimen.values))
        ax2.tick_params(axis="x", labelrotation=20, labelsize=7)
        ax2.set_ylim(0, 1)
        ax2.set_ylabel(f"PTA: {cds.attrs.get('target', '')}", fontsize=7)
        ax2.grid(alpha=0.3, axis="y")
        if has_risk:
            ax3 = ax2.twinx()
            for k, name in enumerate(_risk_names(cds)):
                y = cds[f"incidence_{name}"].values
                lo = cds.get(f"incidence_{name}_lo", cds[f"incidence_{name}"]).values
                hi = cds.get(f"incidence_{name}_hi", cds[f"incidence_{name}"]).values
                ax3.errorbar(x + 0.1 * (k + 1), y, yerr=[np.clip(y - lo, 0, None),
                             np.clip(hi - y, 0, None)], fmt="o", capsize=2,
                             label=f"{name} incidence")  # fmt: skip
            ax3.set_ylabel("predicted incidence", fontsize=7)
            ax3.legend(fontsize=7, loc="upper right")
    elif has_risk:
        _risk_dose_axes(ax2, cds)
    else:
        _distribution_axes(ax2, cds, "dose_per_kg", {}, "total dose (mg/kg)")
    fig.suptitle(_compare_title(cds), fontsize=8)
    _save(fig, path, fmt)


# ----------------------------------------------------------------------------- design


def _axis_label(gds, d) -> str:
    u = gds[d].attrs.get("units", "")
    return f"{d} ({u})" if u else d


def plot_design(gds, path: Path, fmt: str | None = None) -> None:
    """Heatmaps of PTA and risk over the first two design variables (one row per value of
    the others), with the Pareto front (white circles) and the best point (star); plus the
    front itself in the PTA-risk plane when both are present."""
    plt = _plt()
    dims = [d for d in gds.regimen.dims]
    rname = str(gds.attrs.get("risk") or "")
    fields = []
    if "pta" in gds:
        fields.append(("pta", "PTA", "viridis"))
    if rname and f"incidence_{rname}" in gds:
        fields.append((f"incidence_{rname}", f"{rname} incidence", "magma_r"))
    if not fields:
        o0 = str(gds.output.values[0])
        fields.append(("cmax_median", f"median Cmax {o0} (ng/mL)", "viridis"))
    xd = dims[0]
    yd = dims[1] if len(dims) >= 2 else None
    others = [d for d in dims if d not in (xd, yd)]
    combos = list(np.ndindex(*[gds.sizes[d] for d in others])) if others else [()]
    front = "pareto" in gds and "pta" in gds and rname
    ncol = len(fields) + (1 if front else 0)
    fig, axes = plt.subplots(
        len(combos), ncol, figsize=(4.6 * ncol, 3.8 * len(combos)), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    best = gds.attrs.get("best_index", "")
    best_idx = tuple(int(i) for i in str(best).split(",")) if best else None

    def lab(d, v):
        return f"{v:g}" if isinstance(v, int | float | np.floating) else str(v)

    for row, combo in enumerate(combos):
        sel = {d: i for d, i in zip(others, combo, strict=True)}
        sub = gds.isel(sel)
        for col, (var, title, cmap) in enumerate(fields):
            ax = axes[row, col]
            da = sub[var]
            if var == "cmax_median":
                da = da.isel(output=0)
            z = da.transpose(*([yd] if yd else []), xd).values
            z = z if yd else z[None, :]
            im = ax.imshow(z, origin="lower", aspect="auto", cmap=cmap)
            fig.colorbar(im, ax=ax, shrink=0.85)
            xs = gds[xd].values
            ax.set_xticks(range(len(xs)), [lab(xd, v) for v in xs], fontsize=6, rotation=45)
            ax.set_xlabel(_axis_label(gds, xd), fontsize=8)
            if yd:
                ys = gds[yd].values
                ax.set_yticks(range(len(ys)), [lab(yd, v) for v in ys], fontsize=6)
                ax.set_ylabel(_axis_label(gds, yd), fontsize=8)
            where = ", ".join(f"{d}={lab(d, gds[d].values[i])}" for d, i in sel.items())
            ax.set_title(title + (f"\n{where}" if where else ""), fontsize=8)
            if "pareto" in sub:
                pm = sub.pareto.transpose(*([yd] if yd else []), xd).values
                pm = pm if yd else pm[None, :]
                yy, xx = np.nonzero(pm)
                ax.scatter(xx, yy, s=40, facecolors="none", edgecolors="w", lw=1.2,
                           label="Pareto front")  # fmt: skip
            if best_idx is not None and all(best_idx[dims.index(d)] == i for d, i in sel.items()):
                bx = best_idx[dims.index(xd)]
                by = best_idx[dims.index(yd)] if yd else 0
                ax.scatter([bx], [by], marker="*", s=180, c="tab:red", edgecolors="w",
                           label="best under limit")  # fmt: skip
            if "pareto" in sub or best_idx is not None:
                handles = ax.get_legend_handles_labels()[0]
                if handles:
                    ax.legend(fontsize=6, loc="upper left")
        if front:
            ax = axes[row, -1]
            p = sub.pta.values.ravel()
            r = sub[f"incidence_{rname}"].values.ravel()
            pm = sub.pareto.values.ravel()
            ax.scatter(r, p, s=12, c="0.6", label="grid points")
            order = np.argsort(r[pm])
            ax.plot(r[pm][order], p[pm][order], "o-", color="tab:blue", ms=4, label="Pareto front")
            mr = gds.attrs.get("max_risk")
            if isinstance(mr, int | float) and not isinstance(mr, bool):
                # Feasibility is decided on the 95 % upper bound of the incidence, while the
                # points are plotted at its estimate: say so, or the best point looks wrong.
                ax.axvline(
                    float(mr),
                    color="tab:red",
                    ls=":",
                    label=f"limit {float(mr):g} (on the 95% upper bound)",
                )
            if gds.attrs.get("best_regimen"):
                ax.scatter([gds.attrs["best_incidence"]], [gds.attrs["best_pta"]], marker="*",
                           s=180, c="tab:red", label="best")  # fmt: skip
            ax.set_xlabel(f"{rname} incidence", fontsize=8)
            ax.set_ylabel("PTA", fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.suptitle(
        f"{gds.attrs.get('model', '')}, {gds.attrs.get('population', '')}, "
        f"{gds.attrs.get('n_patients', '')} patients per point, seed {gds.attrs.get('seed', '')}"
        f"\n{gds.attrs.get('template', '')}",
        fontsize=8,
    )
    _save(fig, path, fmt)
