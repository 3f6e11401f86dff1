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


def plot_compare(cds, path: Path, fmt: str | None = None) -> None:
    """The comparison figure: bands of each output, Cmax distributions, and PTA / risk."""
    plt = _plt()
    outs = list(cds.band_output.values) if "band" in cds else []
    has_pta = "pta" in cds
    has_risk = bool(_risk_names(cds))
    nrow = len(outs) + 1
    fig = plt.figure(figsize=(11, 3.2 * nrow), layout="constrained")
    gs = fig.add_gridspec(nrow, 2)
    thr = _thresholds(cds)
    for i, o in enumerate(outs):
        _compare_bands_axes(fig.add_subplot(gs[i, :]), cds, o, thr)
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
