"""Self-contained HTML reports of results (one patient, cohort, comparison or design grid).

The page needs no network: figures are embedded as base64 PNG (``data:`` URIs), styles are
inline, and no script or external resource is referenced. It holds the tables, the model
provenance from the dataset attributes (each once), the assumed values, the warnings the run
raised (``attrs["warnings"]``), every metric variable of the dataset, and the
not-a-clinical-device notice (:data:`pkpd.disclaimer.DISCLAIMER`).
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pkpd.disclaimer import DISCLAIMER
from pkpd.errors import PkpdError
from pkpd.output.plot import (
    plot_bands,
    plot_compare_bands,
    plot_concentrations,
    plot_design,
    plot_metric_distributions,
    plot_risk_vs_dose,
)
from pkpd.output.tables import extrapolation_lines
from pkpd.running.warning_log import ATTR as WARNINGS_ATTR
from pkpd.running.warning_log import read_warnings

__all__ = ["ReportError", "render_report", "write_report"]


class ReportError(PkpdError, ValueError):
    """A result cannot be reported (unknown file type or content)."""


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1150px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.notice{background:#fff3cd;border:1px solid #e0c36c;padding:.7em 1em;margin:1em 0}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
"""


def _open(path):
    import xarray as xr  # lazy: xarray takes ~0.3 s to import, `pkpd --help` need not wait

    p = Path(path)
    if p.suffix.lower() == ".zarr":
        return xr.open_zarr(p)
    if p.suffix.lower() == ".nc":
        return xr.open_dataset(p, engine="h5netcdf")
    raise ReportError(f"{str(p)!r}: expected a result file ending in .nc or .zarr")


def _png(fn, ds) -> str:
    """An <img> with the figure drawn by ``fn(ds, buffer, fmt='png')`` inline as base64."""
    buf = io.BytesIO()
    fn(ds, buf, fmt="png")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _table(head, rows, numeric_from: int = 1) -> str:
    """An HTML table; cells from column `numeric_from` on are right-aligned numbers."""
    e = html.escape
    out = ["<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head) + "</tr>"]
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            cls = ' class="num"' if i >= numeric_from else ""
            cells.append(f"<td{cls}>{e(str(c))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _plain(v) -> str:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return ", ".join(map(str, v.tolist()))
    return str(v)


#: Attributes shown in a section of their own, not again in the provenance table.
_OWN_SECTION = ("disclaimer", WARNINGS_ATTR, "assumptions")


def _provenance(ds) -> str:
    """Every attribute once: the model's provenance first, then the run's settings."""
    keys = [k for k in ds.attrs if k not in _OWN_SECTION]
    keys = [k for k in keys if k.startswith("model")] + [
        k for k in keys if not k.startswith("model")
    ]
    return _table(["attribute", "value"], [(k, _plain(ds.attrs[k])) for k in keys], 99)


def _assumptions(ds) -> str:
    rows = []
    seen: set[str] = set()
    for k, v in ds.attrs.items():
        s = _plain(v)
        if k in ("disclaimer", WARNINGS_ATTR) or not s or s.strip().lower() == "none":
            continue
        words = any(w in s.lower() for w in ("illustrative", "assumed", "representative"))
        if k in ("assumptions", "model_assumed_parameters") or words:
            if s not in seen:
                seen.add(s)
                rows.append((k, s))
    if rows:
        return _table(["where", "assumed / illustrative value"], rows, 99)
    if "assumptions" not in ds.attrs:
        return (
            "<p>This result does not list the assumed inputs of its run (written by an "
            "earlier version of ketamine-pkpd): check its model, regimen and population "
            "files for values tagged assumed or illustrative.</p>"
        )
    return "<p>No assumed or illustrative values are recorded in this result.</p>"


def _warnings(ds) -> list[str]:
    """The warnings raised during the run (``attrs["warnings"]``), each once with its count."""
    items = read_warnings(ds.attrs)
    e = html.escape
    if items is None:
        return [
            "<p>This result does not record the warnings of its run (written by an earlier "
            "version of ketamine-pkpd).</p>"
        ]
    if not items:
        return ["<p>The run raised no warnings.</p>"]
    lis = []
    for w in items:
        n = int(w.get("count", 1))
        times = f" (raised {n} times)" if n > 1 else ""
        cat = f"<b>{e(str(w.get('category', '')))}</b>: " if w.get("category") else ""
        lis.append(f"<li>{cat}{e(str(w['message']))}{e(times)}</li>")
    return [f'<ul class="warnings">{"".join(lis)}</ul>']


# ------------------------------------------------------------------ metrics, generically

#: Dimensions that are not a metric's own: what a table's rows or columns run over.
_OVER = ("regimen", "patient", "percentile")


def _g(x) -> str:
    x = float(x)
    return f"{x:.4g}" if np.isfinite(x) else "-"


def _what(ds, name) -> str:
    """The variable's ``long_name`` without the note on missing values (said by "-")."""
    return re.sub(r" \((NaN|'')[^)]*\)$", "", str(ds[name].attrs.get("long_name", "")))


def _is_fraction(ds, name) -> bool:
    """A probability or share (unit "1", real-valued, no output dimension): shown in
    percent. A count (unit "1", integer: PCA demands) is not a share."""
    da = ds[name]
    return (
        str(da.attrs.get("units", "")) == "1" and "output" not in da.dims and da.dtype.kind == "f"
    )


def _unit(ds, name, sel) -> str:
    da = ds[name]
    if "output" in sel and "output_units" in ds.coords:
        return str(ds.output_units.values[sel["output"]])
    if _is_fraction(ds, name):
        return "%"
    if da.dtype.kind in "iu" and str(da.attrs.get("units", "")) == "1":
        return "count"
    return str(da.attrs.get("units", "") or "")


def _combos(ds, name, skip):
    """(isel dict, label) of every combination of the variable's own dimensions."""
    da = ds[name]
    dims = [d for d in da.dims if d not in skip]
    for idx in np.ndindex(*(da.sizes[d] for d in dims)):
        sel = dict(zip(dims, idx, strict=True))
        labels = [str(ds[d].values[i]) if d in ds.coords else str(i) for d, i in sel.items()]
        yield sel, ", ".join(labels)


def _related(ds, name) -> list[str]:
    """The variables merged into `name`'s row: its bounds and its per-patient values."""
    return [v for v in (f"{name}_lo", f"{name}_hi", f"{name}_patient") if v in ds.data_vars]


def _merged(ds, name) -> bool:
    """True for a variable shown in the row of another (bounds, per-patient values)."""
    for suffix in ("_lo", "_hi", "_patient"):
        if name.endswith(suffix) and name[: -len(suffix)] in ds.data_vars:
            return True
    return False


def _cell(ds, name, sel, ok) -> str:
    """One variable at `sel`, reduced over patients or percentiles, as text."""
    da = ds[name].isel(sel)
    vals = np.asarray(da.values)
    pct = _is_fraction(ds, name)
    scale = 100.0 if pct else 1.0
    if vals.dtype.kind in "OSU":
        if name.startswith("extrapolation_"):
            return "outside (see below)" if str(vals) else "within"
        return str(vals)
    if name == "status":
        failed = int(np.count_nonzero(vals))
        return f"{failed} of {vals.size} failed"
    if "percentile" in da.dims:
        order = [list(ds.percentile.values).index(p) for p in (5.0, 50.0, 95.0)]
        lo, med, hi = (scale * float(vals[i]) for i in order)
        return f"{_g(med)} ({_g(lo)}-{_g(hi)})" if np.isfinite(med) else "-"
    if "patient" in da.dims:
        v = vals[ok] if ok is not None and vals.shape == ok.shape else vals
        if v.dtype == bool:
            return f"{100 * float(np.mean(v)):.3g}% of patients" if v.size else "-"
        v = v[np.isfinite(v)].astype(float) * scale
        if not v.size:
            return "-"
        lo, med, hi = np.percentile(v, [5, 50, 95])
        return f"{_g(med)} ({_g(lo)}-{_g(hi)})"
    if vals.dtype == bool:
        return "yes" if bool(vals) else ""
    x = scale * float(vals)
    bounds = [f"{name}_lo", f"{name}_hi"]
    if all(b in ds.data_vars for b in bounds):
        lo, hi = (scale * float(ds[b].isel(sel).values) for b in bounds)
        return f"{_g(x)} ({_g(lo)}-{_g(hi)})"
    if vals.dtype.kind in "iu":
        return str(int(vals))
    return _g(x)


def _metric_names(ds, time_dims=("time", "band_time")) -> list[str]:
    """Data variables shown as table rows: not merged into another's row, not time courses."""
    return [
        str(v)
        for v in ds.data_vars
        if not _merged(ds, str(v))
        and not any(d in ds[v].dims for d in time_dims)
        and str(v) not in ("regimen", "regimen_text")
    ]


def _metric_table(ds, names, columns) -> str:
    """Rows (variable, what, unit, one cell per column) of the `names` of `ds`.

    `columns` is ``[(header, isel dict, ok mask or None)]``: one entry per regimen of a
    comparison, one for a cohort (over its patients) or a single patient.
    """
    rows = []
    for name in names:
        what = _what(ds, name)
        shown = ", ".join([name, *_related(ds, name)])
        for sel, lab in _combos(ds, name, _OVER):
            cells = []
            for _h, col_sel, ok in columns:
                full = {**{k: v for k, v in col_sel.items() if k in ds[name].dims}, **sel}
                cells.append(_cell(ds, name, full, ok))
            rows.append((f"{shown} [{lab}]" if lab else shown, what, _unit(ds, name, sel), *cells))
    head = ["variable", "what", "unit", *(h for h, _s, _o in columns)]
    return _table(head, rows, 3)


def _events_line(ds) -> str:
    """The windows and named times the metrics refer to, as recorded in the attributes."""
    parts = []
    for key, what in (
        ("windows", "AUC windows"),
        ("at_times", "named times"),
        ("target", "target"),
    ):
        if str(ds.attrs.get(key, "")):
            parts.append(f"{what}: {ds.attrs[key]}")
    return f"<p>{html.escape('; '.join(parts))}.</p>" if parts else ""


# ------------------------------------------------------------------ the kinds of result


def _compare_section(ds) -> list[str]:
    parts = ["<h2>Regimens</h2>"]
    parts.append(
        _table(
            ["regimen", "one-line form (regimen_text)"],
            list(zip(map(str, ds.regimen.values), map(str, ds.regimen_text.values), strict=True)),
            99,
        )
    )
    parts.append(f"<p>{html.escape(str(ds.attrs.get('common_random_numbers', '')))}</p>")
    parts += _extrapolation_part(ds)
    parts.append("<h2>Comparison (median, 5-95 % over patients)</h2>")
    parts.append(_events_line(ds))
    cols = [(str(r), {"regimen": i}, None) for i, r in enumerate(ds.regimen.values)]
    parts.append(_metric_table(ds, _metric_names(ds), cols))
    if "band" in ds:
        parts.append("<h2>Concentration percentile bands</h2>")
        parts += _time_courses_note(ds)
        parts.append(_png(plot_compare_bands, ds))
    parts.append("<h2>Metric distributions</h2>")
    parts.append(_png(plot_metric_distributions, ds))
    if any(str(v).startswith("incidence_") for v in ds.data_vars):
        parts.append("<h2>Predicted risk per regimen</h2>")
        parts.append(_png(plot_risk_vs_dose, ds))
    return parts


def _design_section(ds) -> list[str]:
    dims = list(ds.regimen.dims)
    e = html.escape
    parts = ["<h2>Design grid</h2>"]
    parts.append(
        f"<p>Template <code>{e(str(ds.attrs.get('template', '')))}</code>; "
        f"{' x '.join(f'{d} ({ds.sizes[d]})' for d in dims)} = {ds.regimen.size} regimens; "
        f"target: {e(str(ds.attrs.get('target', '') or 'none'))}; risk: "
        f"{e(str(ds.attrs.get('risk', '') or 'none'))}; limit: "
        f"{e(str(ds.attrs.get('max_risk', '') or 'none'))}.</p>"
    )
    parts.append(f'<p class="best"><b>{e(str(ds.attrs.get("best_message", "")))}</b></p>')
    parts.append(_png(plot_design, ds))
    # One column per variable (and per output / window of it), one row per grid point.
    cols = []
    for name in _metric_names(ds):
        for sel, lab in _combos(ds, name, dims):
            unit = _unit(ds, name, sel)
            head = ", ".join([name, *_related(ds, name)]) + (f" [{lab}]" if lab else "")
            cols.append((head + (f" ({unit})" if unit else ""), name, sel))
    rows = []
    for idx in np.ndindex(ds.regimen.shape):
        at = dict(zip(dims, idx, strict=True))
        rows.append(
            [str(ds.regimen.values[idx])]
            + [_cell(ds, name, {**at, **sel}, None) for _h, name, sel in cols]
        )
    parts.append("<h2>All grid points</h2>")
    parts.append(_table(["regimen", *(h for h, _n, _s in cols)], rows))
    parts += _extrapolation_part(ds)
    if str(ds.attrs.get("risk") or ""):
        parts.append("<h2>Risk against dose</h2>")
        parts.append(_png(plot_risk_vs_dose, ds))
    return parts


def _extrapolation_part(ds) -> list[str]:
    """The regimens or grid points whose risk prediction extrapolates its calibration."""
    lines = extrapolation_lines(ds)
    if not lines:
        return []
    items = "".join(f"<li>{html.escape(x)}</li>" for x in lines)
    return [
        "<h2>Risk predictions outside the calibration's domain</h2>",
        f"<p>These predictions extrapolate the risk model (flagged, not certified):</p><ul>"
        f"{items}</ul>",
    ]


def _cohort_section(ds) -> list[str]:
    ok = ds.status.values == 0
    names = _metric_names(ds)
    params = [n for n in names if n.startswith("param_")]
    metrics = [n for n in names if n not in params]
    col = [("median (5-95 %)", {}, ok)]
    parts = [f"<h2>Metrics (median, 5-95 % over the {int(ok.sum())} successful patients)</h2>"]
    parts.append(_events_line(ds))
    parts.append(_metric_table(ds, metrics, col))
    if params:
        parts.append("<h2>Individual parameters (median, 5-95 % over patients)</h2>")
        parts.append(_metric_table(ds, params, col))
    parts += _time_courses_note(ds)
    if "band" in ds:
        parts.append("<h2>Percentile bands</h2>")
        parts.append(_png(plot_bands, ds))
    return parts


def _time_courses_note(ds) -> list[str]:
    """The time courses a cohort keeps (not tabulated: see the figures and the file)."""
    kept = [str(v) for v in ds.data_vars if {"time", "band_time"} & set(ds[v].dims)]
    if not kept:
        return []
    e = html.escape
    items = ", ".join(f"<code>{e(v)}</code> ({e(', '.join(map(str, ds[v].dims)))})" for v in kept)
    return [f"<p>Time courses in the dataset (percentile bands drawn below): {items}.</p>"]


def _single_section(ds) -> list[str]:
    parts = ["<h2>Metrics</h2>", _events_line(ds)]
    names = _metric_names(ds)
    if names:
        parts.append(_metric_table(ds, names, [("value", {}, None)]))
    else:
        parts.append("<p>No metric was asked for (--window, --at, --threshold, --range).</p>")
    t = ds.time.values
    rows = []
    for v in (str(x) for x in ds.data_vars if ds[x].dims == ("time",)):
        y = np.asarray(ds[v].values, dtype=float)
        i = int(np.nanargmax(y)) if np.isfinite(y).any() else 0
        rows.append(
            (v, _what(ds, v), str(ds[v].attrs.get("units", "")),
             f"{_g(y[i])} at {_g(t[i])} h", f"{_g(y[-1])} at {_g(t[-1])} h")
        )  # fmt: skip
    parts.append("<h2>Time courses (maximum on the output grid, and last value)</h2>")
    parts.append(_table(["variable", "what", "unit", "maximum", "last value"], rows, 3))
    parts.append("<h2>Concentrations</h2>")
    parts.append(_png(plot_concentrations, ds))
    return parts


#: The kinds of result a report is written for: kind -> (title, section).
_KINDS: dict[str, tuple[str, Callable[[Any], list[str]]]] = {
    "compare": ("Regimen comparison", _compare_section),
    "design": ("Regimen design", _design_section),
    "cohort": ("Cohort", _cohort_section),
    "single": ("One patient", _single_section),
}


def _kind(ds) -> str:
    """``attrs["kind"]`` of a comparison or design grid; ``"cohort"`` or ``"single"``."""
    kind = str(ds.attrs.get("kind", ""))
    if kind in ("compare", "design"):
        return kind
    if "patient" in ds.dims and "cmax" in ds:
        return "cohort"
    if "time" in ds.dims and "patient" not in ds.dims and "dose_given" in ds:
        return "single"
    raise ReportError(
        "the result is neither a comparison, a design grid, a cohort nor one patient "
        "(expected a file written by pkpd simulate, compare or design)"
    )


def _run_line(ds, kind) -> str:
    e = html.escape
    a = ds.attrs
    name = str(a.get("regimen_name", "") or "")
    reg = f"Regimen {e(name + ': ' if name else '')}{e(str(a.get('regimen', '')))}. "
    if kind == "single":
        return (
            f"<p>{reg}Covariates {e(str(a.get('covariates', '')))}; "
            f"{e(str(a.get('package', '')))}.</p>"
        )
    pop = (
        f"Population {e(str(a.get('population', '')))}, "
        f"{e(str(a.get('n_patients', '')))} virtual patients, seed {e(str(a.get('seed', '')))}; "
        f"{e(str(a.get('package', '')))}.</p>"
    )
    return f"<p>{reg if kind == 'cohort' else ''}{pop}"


def render_report(ds) -> str:
    """The HTML text of the report of a result dataset (see the module docstring)."""
    kind = _kind(ds)
    title, section = _KINDS[kind]
    e = html.escape
    heading = f"{title}: {ds.attrs.get('model', '')}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(heading)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(heading)}</h1>",
        f'<div class="notice"><b>{e(DISCLAIMER)}</b></div>',
        _run_line(ds, kind),
        "<h2>Warnings raised during the run</h2>",
        *_warnings(ds),
    ]
    parts += section(ds)
    parts.append("<h2>Assumed and illustrative values</h2>")
    parts.append(_assumptions(ds))
    parts.append("<h2>Model provenance and run settings</h2>")
    parts.append(_provenance(ds))
    parts.append(f'<div class="notice">{e(DISCLAIMER)}</div>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(result, path) -> None:
    """Write the report of `result` (a Dataset, or a .nc / .zarr path) to `path`."""
    ds = result if hasattr(result, "attrs") and hasattr(result, "dims") else _open(result)
    text = render_report(ds)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
