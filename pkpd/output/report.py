"""Self-contained HTML reports of results (comparison, design grid or cohort).

The page needs no network: figures are embedded as base64 PNG (``data:`` URIs), styles are
inline, and no script or external resource is referenced. It holds the tables, the model
provenance from the dataset attributes, the assumed values, and the not-a-clinical-device
notice (:data:`pkpd.running.simulate.DISCLAIMER`).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pkpd.disclaimer import DISCLAIMER
from pkpd.errors import PkpdError
from pkpd.output.plot import (
    plot_bands,
    plot_compare_bands,
    plot_design,
    plot_metric_distributions,
    plot_risk_vs_dose,
)
from pkpd.output.tables import compare_rows, extrapolation_lines

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


def _table(head, rows) -> str:
    e = html.escape
    out = ["<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head) + "</tr>"]
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            cls = ' class="num"' if i else ""
            cells.append(f"<td{cls}>{e(str(c))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _attrs_table(ds, keys=None) -> str:
    items = [(k, v) for k, v in ds.attrs.items() if keys is None or k in keys]
    return _table(["attribute", "value"], [(k, _plain(v)) for k, v in items])


def _plain(v) -> str:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return ", ".join(map(str, v.tolist()))
    return str(v)


def _assumptions(ds) -> str:
    rows = []
    a = ds.attrs
    for k, v in a.items():
        s = _plain(v)
        if k in ("assumptions", "model_assumed_parameters") or (
            k != "disclaimer"
            and any(w in s.lower() for w in ("illustrative", "assumed", "representative"))
        ):
            if s and s.lower() != "none":
                rows.append((k, s))
    if not rows:
        return "<p>No assumed or illustrative values are recorded in this result.</p>"
    return _table(["where", "assumed / illustrative value"], rows)


def _compare_section(ds) -> list[str]:
    rows = compare_rows(ds)
    parts = ["<h2>Regimens</h2>"]
    parts.append(
        _table(
            ["regimen", "one-line form"],
            list(zip(map(str, ds.regimen.values), map(str, ds.regimen_text.values), strict=True)),
        )
    )
    parts.append("<h2>Comparison (median, 5-95 % over patients)</h2>")
    parts.append(_table(["metric", *map(str, ds.regimen.values)], [(lab, *c) for lab, c in rows]))
    parts.append(f"<p>{html.escape(str(ds.attrs.get('common_random_numbers', '')))}</p>")
    parts += _extrapolation_part(ds)
    if "band" in ds:
        parts.append("<h2>Concentration percentile bands</h2>")
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
    rname = str(ds.attrs.get("risk") or "")
    head = ["regimen", "mean dose (mg/kg)"]
    cols = []
    if "pta" in ds:
        head.append("PTA")
        cols.append(("pta", True))
    if rname:
        head += [f"{rname} incidence", "95% upper"]
        cols += [(f"incidence_{rname}", True), (f"incidence_{rname}_hi", True)]
    if "pareto" in ds:
        head.append("Pareto")
    why = f"extrapolation_{rname}"
    if why in ds:
        head.append("calibration domain")
    rows = []
    for idx in np.ndindex(ds.regimen.shape):
        r = [str(ds.regimen.values[idx]), f"{float(ds.total_dose.values[idx]):.3g}"]
        r += [f"{100 * float(ds[c].values[idx]):.3g}%" for c, _ in cols]
        if "pareto" in ds:
            r.append("yes" if bool(ds.pareto.values[idx]) else "")
        if why in ds:
            r.append("outside" if str(ds[why].values[idx]) else "within")
        rows.append(r)
    parts.append("<h2>All grid points</h2>")
    parts.append(_table(head, rows))
    parts += _extrapolation_part(ds)
    if rname:
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
    parts = ["<h2>Cohort</h2>"]
    ok = ds.status.values == 0
    rows = []
    for o in ds.output.values:
        v = ds.cmax.sel(output=o).values[ok]
        rows.append((f"Cmax {o} (ng/mL)", *(f"{x:.4g}" for x in np.percentile(v, [5, 50, 95]))))
        for w in ds.window.values:
            v = ds.auc.sel(output=o, window=w).values[ok]
            rows.append(
                (f"AUC {o} {w} (ng*h/mL)", *(f"{x:.4g}" for x in np.percentile(v, [5, 50, 95])))
            )
    parts.append(_table(["metric", "5 %", "median", "95 %"], rows))
    if "band" in ds:
        parts.append("<h2>Percentile bands</h2>")
        parts.append(_png(plot_bands, ds))
    return parts


#: The kinds of result a report is written for: ``attrs["kind"]`` -> (title, section).
_KINDS: dict[str, tuple[str, Callable[[Any], list[str]]]] = {
    "compare": ("Regimen comparison", _compare_section),
    "design": ("Regimen design", _design_section),
    "cohort": ("Cohort", _cohort_section),
}


def _kind(ds) -> str:
    """``attrs["kind"]`` of a comparison or design grid; ``"cohort"`` for a cohort result."""
    kind = str(ds.attrs.get("kind", ""))
    if kind in ("compare", "design"):
        return kind
    if "patient" in ds.dims and "cmax" in ds:
        return "cohort"
    raise ReportError("the result is neither a comparison, a design grid nor a cohort")


def render_report(ds) -> str:
    """The HTML text of the report of a result dataset (see the module docstring)."""
    title, section = _KINDS[_kind(ds)]
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}: {e(str(ds.attrs.get('model', '')))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}: {e(str(ds.attrs.get('model', '')))}</h1>",
        f'<div class="notice"><b>{e(DISCLAIMER)}</b></div>',
        f"<p>Population {e(str(ds.attrs.get('population', '')))}, "
        f"{e(str(ds.attrs.get('n_patients', '')))} virtual patients, seed "
        f"{e(str(ds.attrs.get('seed', '')))}; {e(str(ds.attrs.get('package', '')))}.</p>",
    ]
    parts += section(ds)
    parts.append("<h2>Model provenance</h2>")
    parts.append(_attrs_table(ds, [k for k in ds.attrs if k.startswith("model")]))
    parts.append("<h2>Assumed and illustrative values</h2>")
    parts.append(_assumptions(ds))
    parts.append("<h2>All recorded attributes</h2>")
    parts.append(_attrs_table(ds))
    parts.append(f'<div class="notice">{e(DISCLAIMER)}</div>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(result, path) -> None:
    """Write the report of `result` (a Dataset, or a .nc / .zarr path) to `path`."""
    ds = result if hasattr(result, "attrs") and hasattr(result, "dims") else _open(result)
    text = render_report(ds)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
