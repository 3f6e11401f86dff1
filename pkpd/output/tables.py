"""Text tables of results: the rows the ``pkpd`` command prints and the HTML report shows.

Each builder returns rows ``(label, [one cell per column])`` of formatted strings; the
command lays them out with :func:`text_table`, :mod:`pkpd.output.report` as HTML.
"""

from __future__ import annotations

import numpy as np

from pkpd.inputs.pca import FURTHER_ATTR, further_drugs
from pkpd.inputs.units import amount_text
from pkpd.running.variables import PCA_SUMMARY

__all__ = [
    "cohort_outcome_lines",
    "cohort_summary_lines",
    "compare_rows",
    "design_pareto_rows",
    "design_pta_rows",
    "extrapolation_lines",
    "fmt_range",
    "text_table",
]

Rows = list[tuple[str, list[str]]]


def fmt_range(v) -> str:
    """'median (p5-p95)' of a (percentile,) array."""
    lo, med, hi = (float(x) for x in v)
    if not np.isfinite(med):
        return "-"
    return f"{med:.4g} ({lo:.4g}-{hi:.4g})"


def compare_rows(cds) -> Rows:
    """Rows (label, one cell per regimen) of the comparison table."""
    rows = []
    regs = list(cds.regimen.values)

    def cells(da):
        return [fmt_range(da.sel(regimen=r).values) for r in regs]

    for o in cds.output.values:
        rows.append((f"Cmax {o} (ng/mL)", cells(cds.cmax.sel(output=o))))
        for w in cds.window.values:
            rows.append((f"AUC {o} {w} (ng*h/mL)", cells(cds.auc.sel(output=o, window=w))))
        if "c_at" in cds:
            for a in cds["at"].values:
                rows.append((f"{o} at {a} (ng/mL)", cells(cds.c_at.sel(output=o, at=a))))
    if "time_above" in cds:
        for t in cds.threshold.values:
            rows.append((f"time {t} (h)", cells(cds.time_above.sel(threshold=t))))
    if "time_within" in cds:
        for r in cds["range"].values:
            rows.append((f"time {r} (h)", cells(cds.time_within.sel(range=r))))
    rows.append(("total dose (mg/kg)", cells(cds.dose_per_kg)))
    rows.append(("total dose (mg)", cells(cds.dose)))
    if "pca_demands" in cds:
        for name, units, long_name in PCA_SUMMARY:
            rows.append((f"{long_name} ({units})".replace(" (1)", ""), cells(cds[name])))
        if "pca_dose_at" in cds:
            for a in cds["at"].values:
                rows.append((f"PCA amount delivered by {a} (mg)", cells(cds.pca_dose_at.sel(at=a))))
        for drug in cds.pca_drug.values[1:] if "pca_drug" in cds.coords else ():
            x = cds.pca_drug_dose.sel(pca_drug=drug)
            rows.append((f"PCA amount of {drug} delivered (whole run) (mg)", cells(x)))

    def interval(name):
        return [_interval_cell(lambda k, r=r: cds[k].sel(regimen=r), name, cds) for r in regs]

    if "pta" in cds:
        rows.append((f"PTA [95% CI]: {cds.attrs.get('target', '')}", interval("pta")))
    for name in [r for r in str(cds.attrs.get("risks", "")).split(", ") if r]:
        rows.append((f"{name} incidence [95% interval]", interval(f"incidence_{name}")))
        for key, what in (("outside", "outside"), ("above", "above")):
            if f"{key}_{name}" in cds:
                rows.append(
                    (
                        f"{name}: patients {what} calibration exposure",
                        [f"{100 * float(cds[f'{key}_{name}'].sel(regimen=r)):.1f}%" for r in regs],
                    )
                )
        if f"extrapolation_{name}" in cds:
            rows.append(
                (
                    f"{name}: within calibration domain",
                    [
                        "no (see below)"
                        if str(cds[f"extrapolation_{name}"].sel(regimen=r).values)
                        else "yes"
                        for r in regs
                    ],
                )
            )
    rows.append(("failed patients", [str(int(cds.n_failed.sel(regimen=r))) for r in regs]))
    return rows


def _interval_cell(get, name, ds) -> str:
    """'value% (lo-hi)' of the fraction `name` and its ``_lo``/``_hi`` bounds (`get(var)`
    reads one regimen's value of a variable of `ds`)."""
    v = float(get(name))
    lo = float(get(f"{name}_lo")) if f"{name}_lo" in ds else np.nan
    hi = float(get(f"{name}_hi")) if f"{name}_hi" in ds else np.nan
    return f"{100 * v:.3g}% ({100 * lo:.3g}-{100 * hi:.3g})"


def extrapolation_lines(ds) -> list[str]:
    """One line per regimen (compare) or grid point (design) whose risk prediction lies
    outside its calibration's validity domain, saying why (one cohort: one line a risk)."""
    lines = []
    labels = [str(x) for x in np.ravel(ds["regimen"].values)] if "regimen" in ds else [""]
    for v in [v for v in ds.data_vars if str(v).startswith("extrapolation_")]:
        name = str(v)[len("extrapolation_") :]
        for lab, why in zip(labels, np.ravel(ds[v].values), strict=True):
            if str(why):
                lines.append(f"{name} extrapolates{' for ' + lab if lab else ''}: {why}")
    return lines


def cohort_outcome_lines(ds) -> list[str]:
    """PTA and risk incidence of one cohort (:func:`pkpd.design.cohort_outcomes`) with their
    intervals and calibration-domain flags, as the `compare` table words them."""
    lines = []

    def get(k):
        return ds[k].values

    if "pta" in ds:
        lines.append(
            f"PTA [95% CI]: {ds.attrs.get('target', '')}: {_interval_cell(get, 'pta', ds)}"
        )
    for name in [r for r in str(ds.attrs.get("risks", "")).split(", ") if r]:
        lines.append(
            f"{name} incidence [95% interval]: {_interval_cell(get, f'incidence_{name}', ds)}"
        )
        for key in ("outside", "above"):
            if f"{key}_{name}" in ds:
                lines.append(
                    f"{name}: patients {key} calibration exposure: "
                    f"{100 * float(ds[f'{key}_{name}']):.1f}%"
                )
        if f"extrapolation_{name}" in ds:
            within = "no (see below)" if str(ds[f"extrapolation_{name}"].values) else "yes"
            lines.append(f"{name}: within calibration domain: {within}")
    if "feasible" in ds:
        verdict = "met" if bool(ds.feasible) else "not met"
        if bool(ds.meets_limit_value) and not bool(ds.feasible):
            verdict = (
                "not certified (within the limit, but the prediction is outside the "
                "calibration's domain; --allow-extrapolation accepts it)"
            )
        lines.append(f"risk limit {verdict}: {ds.attrs.get('risk_limit_verdict', '')}")
    if "regimen" not in ds:
        lines += extrapolation_lines(ds)
    return lines


def design_pareto_rows(gds) -> tuple[list[str], Rows]:
    """Header and rows of the Pareto front of a design grid, by increasing risk."""
    dims = list(gds.regimen.dims)
    rname = gds.attrs.get("risk") or ""
    rows = []
    for idx in zip(*np.nonzero(gds.pareto.values), strict=True):
        pt = gds.isel(dict(zip(dims, idx, strict=True)))
        rows.append(
            (str(pt.regimen.values), [f"{100 * float(pt.pta):.3g}%",
             f"{100 * float(pt[f'incidence_{rname}']):.3g}%",
             f"{100 * float(pt[f'incidence_{rname}_hi']):.3g}%",
             f"{float(pt.total_dose):.3g}",
             _domain_cell(pt, rname)])
        )  # fmt: skip
    rows.sort(key=lambda r: float(r[1][1].rstrip("%")))
    return ["regimen", "PTA", rname, f"{rname} 95% hi", "mg/kg", "calibration domain"], rows


def _domain_cell(pt, rname: str) -> str:
    v = f"extrapolation_{rname}"
    if v not in pt:
        return "-"
    return "outside" if str(pt[v].values) else "within"


def design_pta_rows(gds) -> tuple[list[str], Rows]:
    """Header and rows of the PTA at every point of a design grid (grid order)."""
    # A grid over further template variables (PCA settings, targets): points by their values.
    named = any(d not in ("bolus", "rate", "duration") for d in gds.regimen.dims)
    rows = [
        (_point_name(gds, i) if named else str(gds.regimen.values[i]),
         [f"{100 * float(gds.pta.values[i]):.3g}%", f"{float(gds.total_dose.values[i]):.3g}"])
        for i in np.ndindex(gds.pta.shape)
    ]  # fmt: skip
    return ["point" if named else "regimen", "PTA", "mg/kg"], rows


def _point_name(gds, i) -> str:
    """A design point by its values: ``lockout=8 min, pca_bolus=2 mL``."""
    return ", ".join(f"{d}={gds[d].values[j]}" for d, j in zip(gds.regimen.dims, i, strict=True))


def design_pca_rows(gds) -> tuple[list[str], Rows]:
    """Header and rows of the PCA pump's medians at every point of a design grid: each
    point named by its design values (grid order); none without a pump."""
    if "pca_demands_median" not in gds:
        return [], []
    names = [name for name, *_ in PCA_SUMMARY]
    drugs = list(gds.pca_drug.values[1:]) if "pca_drug" in gds.coords else []
    rows = [
        (_point_name(gds, i), [f"{float(gds[f'{k}_median'].values[i]):.4g}" for k in names]
         + [f"{float(gds.pca_drug_dose_median.values[i][j + 1]):.4g}" for j in range(len(drugs))])
        for i in np.ndindex(gds.regimen.shape)
    ]  # fmt: skip
    amount = f"{gds.pca_drug.values[0]} (mg)" if drugs else "amount (mg)"
    head = ["point", "demands", "delivered", "in lockout", "at a limit", amount]
    return head + [f"{d} (mg)" for d in drugs], rows


def companion_lines(ds) -> list[str]:
    """One line per further drug of a PCA reservoir (a cohort's or one patient's result):
    its model and the prefix of its outputs."""
    out = []
    for p, drug, model in further_drugs(ds.attrs):
        checked = ds.attrs.get(f"{FURTHER_ATTR}{p}model_verification", "?")
        out.append(
            f"  and {drug} from the PCA reservoir: model {model} (parameters: {checked}); "
            f"outputs {p}*"
        )
    return out


def cohort_summary_lines(ds) -> list[str]:
    """Median and 5-95 % range over the successful patients of a cohort, one metric a line."""
    lines = []
    ok = ds.status.values == 0
    wd = max(16, *(len(str(o)) for o in ds.output.values))  # names of further drugs: longer
    pad = " " * wd
    for o in ds.output.values:
        cm = ds.cmax.sel(output=o).values[ok]
        unit = str(ds.output_units.sel(output=o).item()) if "output_units" in ds.coords else "ng/mL"
        shown = "" if unit == "1" else f" {unit}"  # "1": a ratio (C/C50) or a fraction
        if cm.size and np.isnan(cm).all():
            # A PD variable that decreases with its output or sums several (no maximum).
            lines.append(f"{o:>{wd}}: maximum not recorded (values at named times below)")
        else:
            lines.append(
                f"{o:>{wd}}: Cmax median {np.median(cm):.4g}{shown} "
                f"(5-95%: {np.percentile(cm, 5):.4g}-{np.percentile(cm, 95):.4g})"
            )
            lines += _bolus_peak_note(ds, o, ok, pad)
        for w in ds.window.values if unit == "ng/mL" else ():
            a = ds.auc.sel(output=o, window=w).values[ok]
            lines.append(
                f"{pad}  AUC {w}: median {np.median(a):.5g} ng*h/mL "
                f"(5-95%: {np.percentile(a, 5):.5g}-{np.percentile(a, 95):.5g})"
            )
        if "c_at" in ds:
            for a_name in ds["at"].values:
                v = ds.c_at.sel(output=o, at=a_name).values[ok]
                lines.append(
                    f"{pad}  at {a_name}: median {np.median(v):.4g}{shown} "
                    f"(5-95%: {np.percentile(v, 5):.4g}-{np.percentile(v, 95):.4g})"
                )
    if "time_above" in ds:
        for lab in ds.threshold.values:
            v = ds.time_above.sel(threshold=lab).values[ok]
            lines.append(
                f"time {lab}: median {np.median(v):.3g} h "
                f"(5-95%: {np.percentile(v, 5):.3g}-{np.percentile(v, 95):.3g})"
            )
    if "time_within" in ds:
        for lab in ds["range"].values:
            v = ds.time_within.sel(range=lab).values[ok]
            lines.append(
                f"time {lab}: median {np.median(v):.3g} h "
                f"(5-95%: {np.percentile(v, 5):.3g}-{np.percentile(v, 95):.3g})"
            )
    return lines + _pca_lines(ds, ok)


def _range(v, fmt: str = ".4g") -> str:
    return (f"median {np.median(v):{fmt}} (5-95%: {np.percentile(v, 5):{fmt}}-"
            f"{np.percentile(v, 95):{fmt}})")  # fmt: skip


def _amount_range(mg) -> str:
    """Median and 5-95 % of amounts (mg), in ug when the median is below 1 mg."""
    med, lo, hi = np.median(mg), np.percentile(mg, 5), np.percentile(mg, 95)
    txt = [amount_text(x, unit_of=med) for x in (med, lo, hi)]
    unit = txt[0].split()[-1]
    return f"median {txt[0]} (5-95%: {txt[1].split()[0]}-{txt[2].split()[0]} {unit})"


def _pca_lines(ds, ok) -> list[str]:
    """What the PCA pump did over the cohort (its whole run, per patient)."""
    if "pca_demands" not in ds:
        return []
    v = {k: ds[k].values[ok] for k in ("pca_demands", "pca_deliveries", "pca_refused_lockout",
                                       "pca_refused_limit", "pca_dose")}  # fmt: skip
    n_dem = max(int(v["pca_demands"].sum()), 1)
    lines = [
        f"PCA demands per patient: {_range(v['pca_demands'], '.3g')}; delivered: "
        f"{_range(v['pca_deliveries'], '.3g')}",
        f"PCA demands refused: {100 * v['pca_refused_lockout'].sum() / n_dem:.1f}% in lockout, "
        f"{100 * v['pca_refused_limit'].sum() / n_dem:.1f}% at a limit; reservoir failed "
        f"{int(np.isfinite(ds['pca_reservoir_empty'].values[ok]).sum())} of {int(ok.sum())} "
        "patients",
    ]
    drugs = ds.pca_drug.values if "pca_drug" in ds.coords else [None]
    for drug in drugs:
        of = "" if drug is None else f" of {drug}"
        x = ds.pca_dose if drug is None else ds.pca_drug_dose.sel(pca_drug=drug)
        lines.append(f"PCA amount{of} delivered (whole run): {_amount_range(x.values[ok])}")
        for a_name in ds["at"].values if "pca_dose_at" in ds else ():
            x = ds.pca_dose_at if drug is None else ds.pca_drug_dose_at.sel(pca_drug=drug)
            x = x.sel(at=a_name).values[ok]
            lines.append(f"PCA amount{of} delivered by {a_name}: {_amount_range(x)}")
    model = ds.attrs.get("pca_demand_model")
    if model:
        lines.append(f"PCA demand model {model}: not calibrated against observed PCA use")
    if "pca_drug" in ds.coords:
        lines.append(
            f"PCA demand follows {ds.pca_drug.values[0]} alone: the reservoir's other drugs "
            f"({', '.join(map(str, ds.pca_drug.values[1:]))}) do not relieve pain in the demand "
            "model (no cited interaction)"
        )
    return lines


def _bolus_peak_note(ds, output, ok, pad=" " * 16) -> list[str]:
    """A line saying when Cmax is the instantaneous-bolus mixing peak (``cmax_at_bolus``)."""
    if "cmax_at_bolus" not in ds:
        return []
    share = float(np.mean(ds.cmax_at_bolus.sel(output=output).values[ok])) if ok.any() else 0.0
    if share == 0.0:
        return []
    how = (
        "give boluses over their injection time (--bolus-over 1min, or '... bolus at 0 h over "
        "1 min') for a measurable peak"
    )
    if "pca_demands" in ds:  # the pump's demand boluses are instantaneous
        how = (
            "PCA demand boluses are instantaneous here (regimen boluses can be given over "
            "their injection time, --bolus-over 1min): read the effect site, AUC or values at "
            "named times"
        )
    return [
        f"{pad}  note: for {100 * share:.3g}% of patients this Cmax is the instantaneous-"
        f"bolus mixing peak (dose / V1), which no sample measures; {how}"
    ]


def text_table(head: list[str], rows: Rows) -> list[str]:
    """Lines of a plain-text table: the first column left-aligned, the others right."""
    w0 = max(len(head[0]), *(len(r[0]) for r in rows))
    ws = [max(len(h), *(len(r[1][i]) for r in rows)) for i, h in enumerate(head[1:])]
    cols = (h.rjust(w) for h, w in zip(head[1:], ws, strict=True))
    lines = ["  ".join([head[0].ljust(w0), *cols])]
    for lab, cells in rows:
        lines.append(
            "  ".join([lab.ljust(w0), *(c.rjust(w) for c, w in zip(cells, ws, strict=True))])
        )
    return lines
