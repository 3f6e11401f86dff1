"""Matplotlib figures (non-interactive Agg backend; nothing opens a window)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np

from pkpd.errors import PkpdError, PlotError
from pkpd.inputs.pca import further_drugs
from pkpd.inputs.pca import prefix as drug_prefix

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
    pump = "pca_delivered" in ds.data_vars
    groups = _drug_groups(ds, conc)  # a panel per drug of a PCA reservoir
    ng = len(groups)
    nrow = ng + bool(pd_vars) + pump
    fig, axes = plt.subplots(
        nrow, 1, figsize=(8, 4.5 + 3.0 * (nrow - 1)), squeeze=False, sharex=True,
        layout="constrained", height_ratios=[2] * ng + [1] * (nrow - ng),
    )  # fmt: skip
    eq_drug = ds.attrs.get("model_drug", "parent-drug")
    thr = _thresholds(ds)
    for g, (drug, names) in enumerate(groups):
        shown = drug or (eq_drug if ng > 1 else None)  # name the drug when there are several
        _conc_axes(axes[g, 0], ds, t, names, (eq_drug, shown), thr, (lo, hi, log))
    if pd_vars:
        ax2 = axes[ng, 0]
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
    if pump:
        _pca_axes(axes[-1, 0], ds, t, lo, hi)
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


def _drug_groups(ds, conc) -> list[tuple[str | None, list]]:
    """The concentration series by drug: the model's, then each further drug of a PCA
    reservoir (:func:`pkpd.inputs.pca.further_drugs`, series named ``<prefix>...``)."""
    prefixes = {p: drug for p, drug, _ in further_drugs(ds.attrs)}
    groups: list[tuple[str | None, list]] = [(None, [])]
    groups += [(drug, []) for drug in prefixes.values()]
    for v in conc:
        i = next((j for j, p in enumerate(prefixes, 1) if str(v).startswith(p)), 0)
        groups[i][1].append(v)
    return [g for g in groups if g[1] or g[0] is None]


def _conc_axes(ax, ds, t, names, drugs, thr, view) -> None:
    """One panel of concentrations (ng/mL) with their thresholds; `drugs`: the model's
    drug and the panel's further drug (None: the model's own panel)."""
    lo, hi, log = view
    eq_drug, drug = drugs
    for v, same in _distinct_series(ds, names):
        # Identical curves (an effect site and the PD driver that is the same concentration)
        # are drawn once, under both names, rather than one hiding the other.
        shown = " = ".join([str(v), *same])
        ax.plot(t, ds[v].values, label=_series_label(ds, v, drug or eq_drug, shown=shown))
    levels = [(o, x) for o in names for x in thr.get(str(o), [])]
    _mark_thresholds(ax, levels, "ng/mL")
    ax.set_ylabel(f"{drug} (ng/mL)" if drug else "concentration (ng/mL)")
    _time_axes(ax, t, [ds[v].values for v in names], lo, hi, log, extra=[x for _, x in levels])


def _pca_axes(ax, ds, t, lo, hi) -> None:
    """The PCA pump's cumulative delivered amount, with a tick at each demand bolus."""
    y = ds["pca_delivered"].values
    drug = ds.attrs.get("model_drug", "")
    ax.plot(t, y, color="C2", label=f"PCA: cumulative {drug} delivered (boluses, background)")
    if "pca_delivery_time" in ds:
        td = ds["pca_delivery_time"].values
        ax.plot(td, np.interp(td, t, y), "|", color="C3", markersize=9,
                label=f"PCA demand bolus ({td.size} in all)")  # fmt: skip
    ax.set_ylabel("PCA delivered (mg)")
    _time_axes(ax, t, [y], lo, hi, False)


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
    pain = "pain_band" in ds
    fig, axes = plt.subplots(
        len(outs) + pain, 1, figsize=(8, 3.2 * (len(outs) + pain)), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    if pain:
        _pain_band_axes(axes[-1, 0], ds, ev, lo, hi)
    eq = _mass_equivalents(ds)
    drug = ds.attrs.get("model_drug", "parent-drug")
    for ax, o in zip(axes[: len(outs), 0], outs, strict=True):
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


def _pain_band_axes(ax, ds, ev, lo, hi) -> None:
    """Percentiles of the PCA patients' pain (over those whose pump runs)."""
    t = ds.time.values
    q = {float(v): ds.pain_band.sel(quantile=v).values for v in ds["quantile"].values}
    ax.fill_between(t, q[0.05], q[0.95], alpha=0.2, color="C3", label="5-95 %")
    ax.fill_between(t, q[0.25], q[0.75], alpha=0.35, color="C3", label="25-75 %")
    ax.plot(t, q[0.5], lw=1.5, color="C3", label="median")
    _mark_events(ax, ev, window=(lo, hi))
    ax.set_ylabel("pain (NRS 0-10)")
    ax.set_title(f"pain under the drug on board ({ds.attrs.get('pca_demand_model', '')}, "
                 "not calibrated)", fontsize=8, loc="left")  # fmt: skip
    _time_axes(ax, t, [q[0.05], q[0.95]], lo, hi, False)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


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


# Categorical regimen axes: a label is cut to this many characters (short_labels keeps the
# cut labels distinct), then broken onto lines of at most _TICK_LINE characters, so that a
# one-line regimen stays readable without rotating it into its neighbour.
_TICK_CHARS = 40
_TICK_LINE = 18


def _wrap(label: str, width: int = _TICK_LINE) -> str:
    """`label` broken onto lines of at most `width` characters, after a space, ``;`` or
    ``_`` where there is one; only the spaces at a break are dropped."""
    lines = []
    rest = label
    while len(rest) > width:
        cut = max(rest.rfind(c, 0, width) for c in " ;_")
        cut = cut + 1 if cut > 0 else width
        lines.append(rest[:cut].rstrip(" "))
        rest = rest[cut:].lstrip(" ")
    lines.append(rest)
    return "\n".join(lines)


def regimen_tick_labels(labels) -> list[str]:
    """Tick labels of a regimen axis: :func:`short_labels` (distinct, at most 40
    characters) broken onto lines of at most 18 characters."""
    return [_wrap(s) for s in short_labels(labels, _TICK_CHARS)]


def _regimen_xticks(ax, labels) -> None:
    x = np.arange(len(labels))
    ax.set_xticks(x, regimen_tick_labels(labels))
    many = len(labels) > 4
    ax.tick_params(axis="x", labelsize=7, labelrotation=30 if many else 0)
    if many:
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")


def _distribution_axes(ax, cds, var, sel, ylabel) -> None:
    """Box plots (5-95 % whiskers) of a per-patient metric, one box per regimen."""
    data = []
    for r in cds.regimen.values:
        v = cds[f"{var}_patient"].sel(regimen=r, **sel).values.astype(float)
        data.append(v[np.isfinite(v)])
    ax.boxplot(data, positions=np.arange(len(data)), whis=(5, 95), showfliers=False,
               medianprops={"color": "k"})  # fmt: skip
    _regimen_xticks(ax, cds.regimen.values)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title("box 25-75 %, whiskers 5-95 % of patients", fontsize=8)
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
        nrow, ncol, figsize=(4.4 * ncol, 3.6 * nrow), squeeze=False, layout="constrained"
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


def _limit(ds) -> float | None:
    mr = ds.attrs.get("max_risk")
    if isinstance(mr, int | float | np.integer | np.floating) and not isinstance(mr, bool):
        return float(mr)
    return None


def _interval(ds, var) -> tuple[np.ndarray, np.ndarray]:
    """`var` and its error bars (distances to ``var_lo`` and ``var_hi``, 0 where absent)."""
    y = np.asarray(ds[var].values, dtype=float).ravel()
    lo = np.asarray(ds[f"{var}_lo"].values, dtype=float).ravel() if f"{var}_lo" in ds else y
    hi = np.asarray(ds[f"{var}_hi"].values, dtype=float).ravel() if f"{var}_hi" in ds else y
    return y, np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])


def _pta_axes(ax, cds) -> None:
    """PTA per regimen (bars) with its 95 % interval, on its own 0..1 axis."""
    x = np.arange(cds.sizes["regimen"])
    p, err = _interval(cds, "pta")
    ax.bar(x, p, yerr=err, capsize=3, color="tab:green", alpha=0.6)
    for xi, pi, top in zip(x, p, p + err[1], strict=True):
        ax.annotate(f"{pi:.2f}", (xi, top), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7)  # fmt: skip
    _regimen_xticks(ax, cds.regimen.values)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("PTA (95 % interval)", fontsize=9)
    ax.set_title(f"target: {cds.attrs.get('target', '')}", fontsize=8)
    ax.grid(alpha=0.3, axis="y")


def _risk_regimen_axes(ax, cds) -> bool:
    """Predicted incidence of every risk per regimen (point, 95 % interval), on a 0-based
    axis; the regimens are categories, not placed on a dose axis (risk follows the
    exposure the risk model uses, not the total dose). False if there is no risk."""
    names = _risk_names(cds)
    if not names:
        return False
    x = np.arange(cds.sizes["regimen"])
    w = 0.12
    top = 0.0
    for k, name in enumerate(names):
        y, err = _interval(cds, f"incidence_{name}")
        xs = x + w * (k - (len(names) - 1) / 2)
        ax.errorbar(xs, y, yerr=err, fmt="o", ms=5, capsize=3, label=name)
        for xi, yi in zip(xs, y, strict=True):
            ax.annotate(f"{yi:.3f}", (xi, yi), xytext=(5, 0), textcoords="offset points",
                        va="center", fontsize=7)  # fmt: skip
        top = max(top, float(np.nanmax(y + err[1], initial=0.0)))
    mr = _limit(cds)
    if mr is not None:
        ax.axhline(mr, color="tab:red", ls=":", lw=0.9, label=f"limit {mr:g}")
        top = max(top, mr)
    _regimen_xticks(ax, cds.regimen.values)
    ax.set_xlim(-0.6, len(x) - 0.4)
    ax.set_ylim(0, max(top * 1.1, 0.05))
    ax.set_ylabel("predicted incidence (mean, 95 % interval)", fontsize=9)
    ax.set_title("risk per regimen (driven by the risk model's exposure)", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper left")
    return True


def _risk_dose_axes(ax, ds) -> bool:
    """Risk against dose: per regimen for a comparison (:func:`_risk_regimen_axes`), every
    grid point against its mean total dose for a design grid; False if no risk."""
    if "regimen" in ds.dims:
        return _risk_regimen_axes(ax, ds)
    names = _risk_names(ds)
    if not names:
        return False
    x = np.asarray(ds.total_dose.values, dtype=float).ravel()
    for name in names:
        y, err = _interval(ds, f"incidence_{name}")
        ax.errorbar(x, y, yerr=err, fmt="o", ms=4, capsize=2, label=name, alpha=0.8)
    mr = _limit(ds)
    if mr is not None:
        # The points are posterior means; the limit applies to what the rule reads.
        rule = str(ds.attrs.get("risk_rule") or "upper")
        on = "posterior mean" if rule == "mean" else _rule_name(rule)
        ax.axhline(mr, color="tab:red", ls=":", lw=0.9, label=f"limit {mr:g} on the {on}")
    ax.set_xlabel("mean total dose of the grid point (mg/kg)")
    ax.set_ylabel("predicted incidence (mean, 95 % interval)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return True


def plot_risk_vs_dose(ds, path: Path, fmt: str | None = None) -> None:
    """Predicted incidence of every risk (with its interval): per regimen for a comparison,
    against the mean total dose of each grid point for a design grid."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    if not _risk_dose_axes(ax, ds):
        ax.text(0.5, 0.5, "no risk model in this result", ha="center", va="center")
    what = "risk per regimen" if "regimen" in ds.dims else "risk against dose"
    ax.set_title(f"{ds.attrs.get('model', '')}: {what}", fontsize=8)
    _save(fig, path, fmt)


def plot_compare(cds, path: Path, fmt: str | None = None, *, window=None, log=False):
    """The comparison figure: bands of each output, then one panel each for the Cmax
    distributions, PTA (if a target was given) and the predicted risk (if asked); without
    either, the total-dose distributions. `window` and `log` apply to the bands (see
    :func:`plot_compare_bands`). Returns the figure."""
    plt = _plt()
    outs = list(cds.band_output.values) if "band" in cds else []
    o0 = cds.output.values[0]
    panels = [lambda ax: _distribution_axes(ax, cds, "cmax", {"output": o0}, f"Cmax {o0} (ng/mL)")]
    if "pta" in cds:
        panels.append(lambda ax: _pta_axes(ax, cds))
    if _risk_names(cds):
        panels.append(lambda ax: _risk_regimen_axes(ax, cds))
    if len(panels) == 1:
        panels.append(
            lambda ax: _distribution_axes(ax, cds, "dose_per_kg", {}, "total dose (mg/kg)")
        )
    ncol = len(panels)
    nrow = len(outs) + 1
    fig = plt.figure(figsize=(max(11.0, 4.2 * ncol), 3.2 * len(outs) + 4.0), layout="constrained")
    gs = fig.add_gridspec(nrow, ncol, height_ratios=[3.2] * len(outs) + [4.0])
    thr = _thresholds(cds)
    for i, o in enumerate(outs):
        _compare_bands_axes(fig.add_subplot(gs[i, :]), cds, o, thr, window=window, log=log)
    for j, draw in enumerate(panels):
        draw(fig.add_subplot(gs[nrow - 1, j]))
    fig.suptitle(_compare_title(cds), fontsize=8)
    _save(fig, path, fmt)


# ----------------------------------------------------------------------------- design

# A risk colour scale starts at 0 and spans at least this much, so that incidences of
# 0.042 and 0.045 get nearly the same colour instead of black and white.
MIN_RISK_SPAN = 0.1
# Cells are annotated with their values up to this many cells along an axis.
_ANNOTATE_MAX = 12
# Offset (in cells) of the Pareto and best-point markers from the cell's centre.
_CORNER = 0.3


def _axis_label(gds, d) -> str:
    u = gds[d].attrs.get("units", "")
    return f"{d} ({u})" if u else d


def colour_limits(kind: str, values, limit: float | None = None) -> tuple[float, float]:
    """Colour-scale limits of a design heatmap, honest about the size of differences.

    ``"pta"``: 0 to 1. ``"risk"``: 0 to the largest of the values, the limit and
    :data:`MIN_RISK_SPAN`. Anything else: 0 (or the minimum, if negative) to the maximum.
    NaN values are ignored.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    vmax = float(v.max()) if v.size else 0.0
    if kind == "pta":
        return 0.0, 1.0
    if kind == "risk":
        return 0.0, max(vmax, float(limit) if limit is not None else 0.0, MIN_RISK_SPAN)
    vmin = min(float(v.min()) if v.size else 0.0, 0.0)
    return vmin, vmax if vmax > vmin else vmin + 1.0


def _same(a, b) -> bool:
    try:
        return bool(np.isclose(float(a), float(b), rtol=1e-12, atol=0.0))
    except (TypeError, ValueError):
        return str(a) == str(b)


def best_cell(gds) -> dict[str, int] | None:
    """The best point's index along every design dimension, or None without a best point.

    Found from its coordinate values (``best_<dim>`` attributes), so it does not depend on
    the order of the dimensions; ``best_index`` (in the order of ``gds.pta.dims``) where a
    value is missing.
    """
    dims = [str(d) for d in gds.regimen.dims]
    if not gds.attrs.get("best_regimen"):
        return None
    raw = str(gds.attrs.get("best_index", ""))
    by_index = (
        dict(zip([str(d) for d in gds.pta.dims], (int(i) for i in raw.split(",")), strict=True))
        if raw and "pta" in gds
        else {}
    )
    out = {}
    for d in dims:
        key = f"best_{d}"
        hit = [
            i for i, v in enumerate(gds[d].values) if key in gds.attrs and _same(v, gds.attrs[key])
        ]
        if len(hit) == 1:
            out[d] = hit[0]
        elif d in by_index:
            out[d] = by_index[d]
        else:
            return None
    return out


def _rule_name(rule) -> str:
    """A short name of a limit rule (pkpd.analysis.risk_domain.parse_rule's forms)."""
    rule = str(rule)
    if rule == "upper":
        return "97.5 % quantile (upper 95 % bound)"
    m = re.fullmatch(r"q(\d+(?:\.\d+)?)", rule)
    return f"{m.group(1)} % quantile" if m else rule


def _field(gds, var):
    """A design heatmap's values: a variable, or ``(variable, output)``."""
    return gds[var[0]].sel(output=var[1]) if isinstance(var, tuple) else gds[var]


def _risk_field(gds, rname) -> tuple[str, str]:
    """The risk variable a design figure shows and its label: with a limit, the quantity
    the limit rule reads (``rule_incidence_<risk>``; for the rule ``mean`` that is the
    mean itself), else the posterior-mean incidence."""
    rule = str(gds.attrs.get("risk_rule") or "")
    rule_var = f"rule_incidence_{rname}"
    if rule_var in gds and _limit(gds) is not None and rule != "mean":
        return rule_var, f"{rname} incidence,\n{_rule_name(rule)}: the limit rule"
    tail = ": the limit rule" if _limit(gds) is not None and rule == "mean" else ""
    return f"incidence_{rname}", f"{rname} incidence,\nposterior mean{tail}"


def _annotate_cells(ax, z, im, fmt) -> None:
    cmap, norm = im.get_cmap(), im.norm
    for (r, c), v in np.ndenumerate(z):
        if not np.isfinite(v):
            continue
        rgb = np.asarray(cmap(norm(v)))[:3]
        dark = float(rgb @ [0.299, 0.587, 0.114]) < 0.5
        ax.text(c, r, fmt(v), ha="center", va="center", fontsize=7,
                color="w" if dark else "k")  # fmt: skip


def _tick(v) -> str:
    return f"{v:g}" if isinstance(v, int | float | np.integer | np.floating) else str(v)


def plot_design(gds, path: Path, fmt: str | None = None) -> None:
    """Heatmaps of PTA and risk over the first two design variables (one row per value of
    the others), each cell annotated with its value, with the Pareto front (rings) and the
    best point (star); plus PTA against the risk quantity the limit rule reads, when both
    are present.

    Colour scales start at 0 (:func:`colour_limits`); with a limit, the risk heatmap shows
    the quantity the rule reads (``rule_incidence_<risk>``) and its colour bar marks the
    limit.
    """
    plt = _plt()
    from matplotlib.patches import Rectangle

    dims = [str(d) for d in gds.regimen.dims]
    rname = str(gds.attrs.get("risk") or "")
    mr = _limit(gds)
    fields = []
    if "pta" in gds:
        fields.append(("pta", "PTA", "viridis", "pta"))
    if rname and f"incidence_{rname}" in gds:
        var, title = _risk_field(gds, rname)
        fields.append((var, title, "magma_r", "risk"))
    if not fields:
        # The first output of the model, and of each further drug of a PCA reservoir.
        outs = [str(o) for o in gds.output.values]
        firsts = [outs[0]]
        for drug in gds.pca_drug.values[1:] if "pca_drug" in gds.coords else ():
            p = drug_prefix(str(drug))
            firsts += [o for o in outs if o.startswith(p)][:1]
        for o in firsts:
            fields.append((("cmax_median", o), f"median Cmax {o} (ng/mL)", "viridis", "other"))
    xd = dims[0]
    yd = dims[1] if len(dims) >= 2 else None
    others = [d for d in dims if d not in (xd, yd)]
    combos = list(np.ndindex(*[gds.sizes[d] for d in others])) if others else [()]
    front = "pareto" in gds and "pta" in gds and rname
    nx, ny = gds.sizes[xd], (gds.sizes[yd] if yd else 1)
    annotate = nx <= _ANNOTATE_MAX and ny <= _ANNOTATE_MAX
    # Wide enough for a 5-character value in each cell.
    w = max(4.8, 0.5 * nx + 1.8)
    h = max(3.8, 0.35 * ny + 1.8)
    nf = len(fields)
    if front and len(combos) == 1:
        # One row of heatmaps: the PTA-risk panel goes below them, across the width, so
        # that the figure is not three heatmaps wide (unreadable once scaled to a page).
        fig = plt.figure(figsize=(w * nf, 1.75 * h + 0.4), layout="constrained")
        gs = fig.add_gridspec(2, nf, height_ratios=[1.0, 0.75])
        heat_axes = [[fig.add_subplot(gs[0, j]) for j in range(nf)]]
        front_axes = [fig.add_subplot(gs[1, :])]
    else:
        ncol = nf + (1 if front else 0)
        fig, axes = plt.subplots(
            len(combos), ncol, figsize=(w * ncol, h * len(combos) + 0.4), squeeze=False,
            layout="constrained",
        )  # fmt: skip
        heat_axes = [list(axes[r, :nf]) for r in range(len(combos))]
        front_axes = [axes[r, -1] if front else None for r in range(len(combos))]
    best = best_cell(gds)
    limits = {
        var: colour_limits(kind, _field(gds, var).values, mr if kind == "risk" else None)
        for var, _, _, kind in fields
    }
    xs = gds[xd].values
    for row, combo in enumerate(combos):
        sel = {d: i for d, i in zip(others, combo, strict=True)}
        sub = gds.isel(sel)
        where = ", ".join(f"{d}={_tick(gds[d].values[i])}" for d, i in sel.items())
        for col, (var, title, cmap, kind) in enumerate(fields):
            ax = heat_axes[row][col]
            da = _field(sub, var)
            z = da.transpose(*([yd] if yd else []), xd).values.astype(float)
            z = z if yd else z[None, :]
            vmin, vmax = limits[var]
            im = ax.imshow(z, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
            cb = fig.colorbar(im, ax=ax, shrink=0.9)
            cb.ax.tick_params(labelsize=8)
            if kind == "risk" and mr is not None:
                cb.ax.axhline(mr, color="tab:red", lw=1.5)
                cb.set_label(f"limit {mr:g} (red line)", fontsize=8)
            if annotate:
                _annotate_cells(ax, z, im, (lambda v: f"{v:.3g}") if kind == "other"
                                else (lambda v: f"{v:.3f}"))  # fmt: skip
            ax.set_xticks(range(nx), [_tick(v) for v in xs])
            ax.tick_params(labelsize=8)
            ax.set_xlabel(_axis_label(gds, xd), fontsize=9)
            if yd:
                ax.set_yticks(range(ny), [_tick(v) for v in gds[yd].values])
                ax.set_ylabel(_axis_label(gds, yd), fontsize=9)
            else:
                ax.set_yticks([])
            ax.set_title(title + (f"\n{where}" if where else ""), fontsize=9)
            if "pareto" in sub:
                pm = sub.pareto.transpose(*([yd] if yd else []), xd).values
                pm = pm if yd else pm[None, :]
                yy, xx = np.nonzero(pm)
                # In the cell's lower-left corner, clear of the value written in its centre.
                ax.scatter(xx - _CORNER, yy - _CORNER, s=28, c="tab:cyan", edgecolors="k",
                           lw=0.6, label="Pareto front")  # fmt: skip
            if best is not None and all(best[d] == i for d, i in sel.items()):
                bx, by = best[xd], (best[yd] if yd else 0)
                ax.add_patch(Rectangle((bx - 0.5, by - 0.5), 1, 1, fill=False,
                                       ec="tab:red", lw=2.2))  # fmt: skip
                ax.scatter([bx - _CORNER], [by + _CORNER], marker="*", s=120, c="tab:red",
                           edgecolors="w", lw=0.6, zorder=3,
                           label="best under the limit" if mr is not None else "best")  # fmt: skip
        if front:
            _front_axes(front_axes[row], gds, sub, rname, mr, best, sel)
    handles, labels = heat_axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(
        f"{gds.attrs.get('model', '')}, {gds.attrs.get('population', '')}, "
        f"{gds.attrs.get('n_patients', '')} patients per point, seed {gds.attrs.get('seed', '')}"
        # A long template (a PCA pump's) wraps to the figure's width rather than leave it.
        "\n" + textwrap.fill(str(gds.attrs.get("template", "")),
                             width=max(60, int(13 * fig.get_figwidth()))),
        fontsize=8,
    )  # fmt: skip
    _save(fig, path, fmt)


def _front_axes(ax, gds, sub, rname, mr, best, sel) -> None:
    """PTA against the risk quantity the limit rule reads (posterior mean without a
    limit), the Pareto front (on the mean incidence) and the best point."""
    var, what = _risk_field(gds, rname)
    p = sub.pta.values.ravel()
    r = sub[var].values.ravel()
    pm = sub.pareto.values.ravel()
    ax.scatter(r, p, s=14, c="0.6", label="grid points")
    if var == f"incidence_{rname}":
        order = np.argsort(r[pm])
        ax.plot(r[pm][order], p[pm][order], "o-", color="tab:blue", ms=4, label="Pareto front")
    else:
        # The front is defined on the mean incidence; on the rule's axis it need not be a
        # monotone curve, so its points are marked, not joined.
        ax.scatter(r[pm], p[pm], s=40, facecolors="none", edgecolors="tab:blue", lw=1.2,
                   label="Pareto front (on the mean)")  # fmt: skip
    if mr is not None:
        ax.axvline(mr, color="tab:red", ls=":", label=f"limit {mr:g} on this quantity")
    if best is not None and all(best[d] == i for d, i in sel.items()):
        idx = tuple(best[str(d)] for d in gds[var].dims)
        ax.scatter([float(gds[var].values[idx])], [float(gds.pta.values[idx])], marker="*",
                   s=200, c="tab:red", zorder=3, clip_on=False, label="best")  # fmt: skip
    ax.set_xlabel(what, fontsize=9)
    ax.set_ylabel("PTA", fontsize=9)
    ax.set_xlim(left=0)
    ax.set_ylim(0, 1.05)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
