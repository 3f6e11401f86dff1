"""How well a TCI pump's model predicts the concentrations of a population (Varvel 1992).

For patient `i` and sample time `j`, with ``C_m`` the patient's concentration (the
"measured" value, here simulated with the patient's own parameters) and ``C_p`` the pump's
prediction (its model's typical patient at the patient's covariates, given the same rates):

- performance error ``PE_ij = 100 (C_m - C_p) / C_p`` (%);
- MDPE (bias) ``= median_j PE_ij``;
- MDAPE (inaccuracy) ``= median_j |PE_ij|``;
- wobble (intra-individual variability) ``= median_j |PE_ij - MDPE_i|``;
- divergence ``=`` the least-squares slope of ``|PE_ij|`` against time (% per hour).

Samples where the prediction is not positive (before the pump starts) are left out. The
population values reported by :func:`performance` are the median and the 5th and 95th
percentiles of the individual values (a two-stage summary); the weighted population
estimates of Varvel et al. are not computed.

Reference: Varvel JR, Donoho DL, Shafer SL. Measuring the predictive performance of
computer-controlled infusion pumps. J Pharmacokinet Biopharm 1992;20:63-94.
doi:10.1007/BF01143186. Definitions as restated in "Performance of target-controlled
infusion systems" (aneskey.com), read 2026-12-07.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from pkpd.errors import PkpdError, PkpdWarning
from pkpd.inputs.model import load_model
from pkpd.inputs.regimen import load_regimen
from pkpd.running.cohort import simulate_cohort
from pkpd.running.tci import pump_output

__all__ = [
    "METRICS",
    "cohort_performance",
    "performance",
    "pump_window",
    "summary_lines",
    "target_output",
    "varvel",
]

#: The four Varvel metrics, their units and meaning.
METRICS = {
    "mdpe": ("%", "median performance error (bias)"),
    "mdape": ("%", "median absolute performance error (inaccuracy)"),
    "wobble": ("%", "median absolute deviation of PE from MDPE"),
    "divergence": ("%/h", "slope of |PE| against time"),
}


def varvel(measured, predicted, times) -> dict[str, np.ndarray]:
    """The Varvel metrics of each patient.

    Parameters
    ----------
    measured : (n, T) array
        Concentrations of each patient at `times`.
    predicted : (n, T) or (T,) array
        The pump's predictions at the same times (same unit).
    times : (T,) array
        Sample times (h).

    Returns
    -------
    dict of (n,) arrays: ``mdpe``, ``mdape``, ``wobble`` (%), ``divergence`` (%/h), and
    ``n_samples`` (the samples used: positive prediction, finite values). A patient with
    no usable sample gets NaN; divergence needs two sample times.
    """
    m = np.atleast_2d(np.asarray(measured, dtype=float))
    p = np.broadcast_to(np.asarray(predicted, dtype=float), m.shape)
    t = np.broadcast_to(np.asarray(times, dtype=float), m.shape)
    ok = (p > 0) & np.isfinite(m) & np.isfinite(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        pe = np.where(ok, 100.0 * (m - p) / p, np.nan)
    count = ok.sum(axis=1)
    has = count > 0
    mdpe = np.full(m.shape[0], np.nan)
    mdape = np.full(m.shape[0], np.nan)
    wobble = np.full(m.shape[0], np.nan)
    mdpe[has] = np.nanmedian(pe[has], axis=1)
    mdape[has] = np.nanmedian(np.abs(pe[has]), axis=1)
    wobble[has] = np.nanmedian(np.abs(pe[has] - mdpe[has, None]), axis=1)
    # Least-squares slope of |PE| on t over each patient's usable samples.
    a = np.where(ok, np.abs(pe), 0.0)
    tt = np.where(ok, t, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        tm = tt.sum(axis=1) / count
        am = a.sum(axis=1) / count
        dt = np.where(ok, t - tm[:, None], 0.0)
        sxx = (dt * dt).sum(axis=1)
        slope = (dt * (a - am[:, None])).sum(axis=1) / sxx
    divergence = np.where((count > 1) & (sxx > 0), slope, np.nan)
    return {"mdpe": mdpe, "mdape": mdape, "wobble": wobble, "divergence": divergence,
            "n_samples": count}  # fmt: skip


def _window_text(lo, hi) -> str:
    def span(v):
        v = v[np.isfinite(v)]
        if v.size == 0:
            return "open"
        return f"{v.min():g} h" if v.min() == v.max() else f"{v.min():g}-{v.max():g} h"

    return f"from {span(lo)} to {span(hi)}"


def pump_window(ds: xr.Dataset, regimen) -> tuple[np.ndarray, np.ndarray]:
    """Each patient's pump running time ``(start, stop)`` (h): from the first target to the
    stop, with the cohort's own event times (its anchor coordinates)."""
    tci = load_regimen(regimen).tci
    if tci is None:
        raise PkpdError("the regimen has no [tci] pump")
    n = ds.sizes["patient"]
    defaults = load_regimen(regimen).anchor_times() if tci.anchor_names else {}

    def at(anchor, off):
        if anchor is None:
            return np.full(n, float(off))
        v = ds[anchor].values if anchor in ds.coords else np.full(n, defaults[anchor])
        return np.asarray(v, float) + off

    first = tci.targets[0]
    return at(first.at_anchor, first.at), at(tci.stop_anchor, tci.stop)


def _trajectory(ds: xr.Dataset, output: str, what: str) -> xr.DataArray:
    if "trajectory" not in ds or output not in ds["traj_output"].values:
        raise PkpdError(
            f"the {what} cohort has no stored trajectory of {output!r}: run it with "
            f"trajectories=[{output!r}] (CLI: --trajectories {output})"
        )
    return ds["trajectory"].sel(traj_output=output)


def performance(measured: xr.Dataset, predicted: xr.Dataset, output: str, start=None,
                stop=None) -> xr.Dataset:  # fmt: skip
    """The Varvel metrics of a cohort under TCI.

    `measured` is the cohort simulated with the patients' model; `predicted` the same
    cohort (same population, size and seed: the same covariates and event times) simulated
    with the pump's model without random effects (``iiv=False``), both storing the
    trajectory of `output`. `start` and `stop` (h; numbers, or one per patient)
    restrict the samples to a window; :func:`pump_window` gives the pump's running time.

    Returns a Dataset with the per-patient metrics (dimension ``patient``) and, in its
    attributes, their population median and 5th-95th percentiles.
    """
    cm = _trajectory(measured, output, "measured")
    cp = _trajectory(predicted, output, "predicted")
    if cm.shape != cp.shape or not np.array_equal(cm["time"].values, cp["time"].values):
        raise PkpdError(
            "the measured and predicted cohorts differ in size or time grid "
            f"({dict(cm.sizes)} vs {dict(cp.sizes)}): run both with the same population, n, "
            "seed and grid"
        )
    for coord in ("weight", "age", *(a for a in measured.coords if a.startswith("end_of"))):
        if coord in measured.coords and coord in predicted.coords:
            if not np.array_equal(measured[coord].values, predicted[coord].values):
                raise PkpdError(
                    f"the measured and predicted cohorts have different `{coord}`: the "
                    "same population, n and seed are needed"
                )
    t = cm["time"].values
    n = cm.shape[0]
    lo = np.broadcast_to(-np.inf if start is None else np.asarray(start, float), (n,))
    hi = np.broadcast_to(np.inf if stop is None else np.asarray(stop, float), (n,))
    keep = (t[None, :] >= lo[:, None]) & (t[None, :] <= hi[:, None])
    res = varvel(np.where(keep, cm.values, np.nan), cp.values, t)
    ds = xr.Dataset(coords={"patient": measured["patient"].values})
    for k, (unit, long_name) in METRICS.items():
        ds[k] = ("patient", res[k], {"units": unit, "long_name": long_name})
        q = np.nanpercentile(res[k], [5, 50, 95]) if np.isfinite(res[k]).any() else [np.nan] * 3
        ds.attrs[f"{k}_median"] = float(q[1])
        ds.attrs[f"{k}_p05_p95"] = f"{q[0]:.4g} to {q[2]:.4g}"
    ds["n_samples"] = ("patient", res["n_samples"], {"long_name": "samples used"})
    ds.attrs.update(
        output=output,
        window=_window_text(lo, hi),
        reference="Varvel JR, Donoho DL, Shafer SL. J Pharmacokinet Biopharm 1992;20:63-94",
        summary="population values: median and 5th-95th percentiles of the individual values",
    )
    return ds


def target_output(regimen) -> str:
    """The name of the output the regimen's pump targets (in the pump's model)."""
    tci = load_regimen(regimen).tci
    if tci is None:
        raise PkpdError("the regimen has no [tci] pump")
    pump = load_model(tci.model)
    return pump.output_names[pump_output(pump, tci.site)]


def cohort_performance(measured: xr.Dataset, regimen, population, n=None, seed=0, *,
                       threads=None, chunk_size=None) -> xr.Dataset:  # fmt: skip
    """The Varvel metrics of the pump of `regimen` over the cohort `measured` (simulated
    with `population`, `n` and `seed`, storing the trajectory of the targeted output),
    while the pump runs: the pump's predictions are the same cohort simulated with the
    pump's model and no random effects, on the same time grid."""
    out = target_output(regimen)
    t = measured["time"].values
    if t.size < 2:
        raise PkpdError("the cohort needs a time grid of two or more points")
    kw = {"chunk_size": chunk_size} if chunk_size else {}
    with warnings.catch_warnings():
        # The same population's warnings (covariate ranges, defaults) were given by the run
        # of `measured`; the pump's run would repeat them.
        warnings.simplefilter("ignore", PkpdWarning)
        predicted = simulate_cohort(
            load_regimen(regimen).tci.model, regimen, population, n, seed,
            until=f"{float(t[-1])!r} h", every=f"{float(t[1] - t[0])!r} h", iiv=False,
            trajectories=[out], bands=False, progress=False, threads=threads, **kw,
        )  # fmt: skip
    if not np.array_equal(predicted["time"].values, t):
        raise PkpdError("the pump's predictions came out on another time grid than the cohort's")
    start, stop = pump_window(measured, regimen)
    return performance(measured, predicted, out, start, stop)


def summary_lines(perf: xr.Dataset, regimen) -> list[str]:
    """The population summary of :func:`performance`, a line per metric."""
    tci = load_regimen(regimen).tci
    lines = [
        f"TCI performance of the pump model {tci.model} ({perf.attrs['output']}, "
        f"{tci.site} targeting), {perf.attrs['window']}; median over patients (5th-95th):"
    ]
    for k, (unit, long_name) in METRICS.items():
        lines.append(
            f"  {k.upper():>10}: {perf.attrs[f'{k}_median']:.3g} {unit} "
            f"({perf.attrs[f'{k}_p05_p95']}) - {long_name}"
        )
    return lines
