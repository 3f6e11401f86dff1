"""Matplotlib figures (non-interactive Agg backend; nothing opens a window)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

__all__ = [
    "plot_bands",
    "plot_compare",
    "plot_compare_bands",
    "plot_concentrations",
    "plot_design",
    "plot_metric_distributions",
    "plot_risk_vs_dose",
]

NOTICE = "Research software, not a clinical dosing device."


def plot_concentrations(
    ds, path: Path, events: list[float] | None = None, fmt: str | None = None
) -> None:
    """Plot every ng/mL output of a one-patient dataset against time and save to `path`.

    Parameters
    ----------
    ds : xarray.Dataset
        Result of :func:`pkpd.simulate`.
    path : Path
        Output file (PNG, or any format matplotlib infers from the suffix).
    events : list of float, optional
        Times (h) to mark with vertical lines (e.g. ends of infusions).
    fmt : str, optional
        Image format (``"png"``, ``"svg"``, ``"pdf"``); default from the suffix of `path`.
    """
    plt = _plt()
    outs = [
        v for v in ds.data_vars if ds[v].dims == ("time",) and ds[v].attrs.get("units") == "ng/mL"
    ]
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    for v in outs:
        ax.plot(ds.time.values, ds[v].values, label=f"{v} ({ds[v].attrs.get('long_name', '')})")
    for t in events or []:
        ax.axvline(t, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("time (h)")
    ax.set_ylabel("concentration (ng/mL)")
    ax.set_title(
        f"{ds.attrs.get('model', '')}: {ds.attrs.get('regimen', '')}", fontsize=8, wrap=True
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.text(
        0.01, 0.005, "Research software, not a clinical dosing device.", fontsize=7, color="0.4"
    )
    fmt = (fmt or Path(path).suffix).lstrip(".").lower() or "png"
    fig.savefig(path, format=fmt, dpi=120)
    plt.close(fig)


def _plt():
    """matplotlib.pyplot on the non-interactive Agg backend.

    Imported on first use, not with this module: matplotlib takes ~0.15 s to import and
    only the commands that draw need it (`pkpd --help` and `import pkpd` stay fast).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, fmt, dpi=110) -> None:
    plt = _plt()
    fig.text(0.01, 0.002, NOTICE, fontsize=7, color="0.4")
    fig.savefig(path, format=(fmt or Path(path).suffix).lstrip(".").lower() or "png", dpi=dpi)
    plt.close(fig)


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


def _mark_events(ax, times, color="0.35") -> None:
    """Median (dashed line) and 5-95 % range (shaded) of each event's per-patient times."""
    for k, (name, v) in enumerate(times.items()):
        x = np.asarray(v, dtype=float).ravel()
        x = x[np.isfinite(x)]
        if not x.size:
            continue
        lo, med, hi = np.percentile(x, [5, 50, 95])
        ax.axvline(med, color=color, lw=0.9, ls="--", label=f"{name}: median {med:.3g} h")
        if hi > lo:
            ax.axvspan(lo, hi, color=color, alpha=0.08, label=f"{name}: 5-95 % {lo:.3g}-{hi:.3g} h")
        del k


def _mark_thresholds(ax, levels, unit: str = "ng/mL") -> None:
    unit = "" if unit in ("", "1") else f" {unit}"
    for v in levels:
        ax.axhline(v, color="tab:red", lw=0.9, ls=":", label=f"threshold {v:g}{unit}")


def _unit(ds, output) -> str:
    """The unit of a cohort output (``output_units`` where outputs differ)."""
    if "output_units" in ds.coords and "output" in ds.coords:
        return str(ds.output_units.sel(output=output).item())
    return "ng/mL"


def plot_bands(
    ds, path: Path, fmt: str | None = None, *, thresholds=None, events: bool = True
) -> None:
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
    """
    plt = _plt()
    outs = list(ds.band_output.values)
    thr = _thresholds(ds) if thresholds is None else dict(thresholds)
    ev = _event_times(ds) if events else {}
    fig, axes = plt.subplots(
        len(outs), 1, figsize=(8, 3.2 * len(outs)), squeeze=False, layout="constrained"
    )
    t = ds.band_time.values
    for ax, o in zip(axes[:, 0], outs, strict=True):
        b = ds.band.sel(band_output=o)
        q = {float(v): b.sel(quantile=v).values for v in ds["quantile"].values}
        ax.fill_between(t, q[0.05], q[0.95], alpha=0.2, label="5-95 %")
        ax.fill_between(t, q[0.25], q[0.75], alpha=0.35, label="25-75 %")
        ax.plot(t, q[0.5], lw=1.5, label="median")
        unit = _unit(ds, o)
        _mark_thresholds(ax, thr.get(str(o), []), unit)
        _mark_events(ax, ev)
        shown = unit if unit not in ("", "1") else "dimensionless"
        ax.set_ylabel(f"{o} ({shown})" if len(str(o)) < 28 else shown)
        if len(str(o)) >= 28:
            ax.set_title(str(o), fontsize=8, loc="left")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("time (h)")
    axes[0, 0].set_title(
        f"{ds.attrs.get('model', '')}, {ds.attrs.get('population', '')}, "
        f"{ds.sizes['patient']:,} patients\n{ds.attrs.get('regimen', '')}",
        fontsize=8,
    )
    _save(fig, path, fmt)


# ----------------------------------------------------------------------------- comparison


def _compare_bands_axes(ax, cds, output, thresholds=None) -> None:
    """One output's bands (5-95 % light, 25-75 % darker, median line) for every regimen."""
    t = cds.band_time.values
    colors = _plt().rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(cds.regimen.values):
        b = cds.band.sel(regimen=r, band_output=output)
        q = {float(v): b.sel(quantile=v).values for v in cds["quantile"].values}
        c = colors[i % len(colors)]
        ax.fill_between(t, q[0.05], q[0.95], color=c, alpha=0.12, lw=0)
        ax.fill_between(t, q[0.25], q[0.75], color=c, alpha=0.28, lw=0)
        ax.plot(t, q[0.5], color=c, lw=1.4, label=f"{r}: median, 25-75 %, 5-95 %")
        ev = {
            k.removeprefix("event_"): cds[k].sel(regimen=r)
            for k in cds.data_vars
            if k.startswith("event_")
        }
        ev = {k: v for k, v in ev.items() if np.isfinite(v.values).any()}
        if i == 0:
            _mark_events(ax, ev)
    _mark_thresholds(ax, (thresholds or {}).get(str(output), []))
    ax.set_ylabel(f"{output} (ng/mL)")
    ax.set_xlabel("time (h)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)


def plot_compare_bands(cds, path: Path, fmt: str | None = None, *, thresholds=None) -> None:
    """Percentile bands of every band output, the regimens of a comparison overlaid."""
    plt = _plt()
    outs = list(cds.band_output.values)
    thr = _thresholds(cds) if thresholds is None else dict(thresholds)
    fig, axes = plt.subplots(
        len(outs), 1, figsize=(9, 3.3 * len(outs)), squeeze=False, layout="constrained"
    )
    for ax, o in zip(axes[:, 0], outs, strict=True):
        _compare_bands_axes(ax, cds, o, thr)
    axes[0, 0].set_title(_compare_title(cds), fontsize=8)
    _save(fig, path, fmt)


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


def plot_compare(cds, path: Path, fmt: str | None = None) -> None:
    """The comparison figure: bands of each output, then one panel each for the Cmax
    distributions, PTA (if a target was given) and the predicted risk (if asked); without
    either, the total-dose distributions."""
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
        _compare_bands_axes(fig.add_subplot(gs[i, :]), cds, o, thr)
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
        o0 = str(gds.output.values[0])
        fields.append(("cmax_median", f"median Cmax {o0} (ng/mL)", "viridis", "other"))
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
        var: colour_limits(kind, gds[var].values, mr if kind == "risk" else None)
        for var, _, _, kind in fields
    }
    xs = gds[xd].values
    for row, combo in enumerate(combos):
        sel = {d: i for d, i in zip(others, combo, strict=True)}
        sub = gds.isel(sel)
        where = ", ".join(f"{d}={_tick(gds[d].values[i])}" for d, i in sel.items())
        for col, (var, title, cmap, kind) in enumerate(fields):
            ax = heat_axes[row][col]
            da = sub[var]
            if var == "cmax_median":
                da = da.isel(output=0)
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
        f"\n{gds.attrs.get('template', '')}",
        fontsize=8,
    )
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
