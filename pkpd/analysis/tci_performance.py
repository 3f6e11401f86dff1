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

import numpy as np
import xarray as xr

from pkpd.errors import PkpdError

__all__ = ["METRICS", "performance", "varvel"]

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
    trajectory of `output`. `start` and `stop` (h) restrict the samples to a window.

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
    keep = np.ones(t.size, bool)
    if start is not None:
        keep &= t >= float(start)
    if stop is not None:
        keep &= t <= float(stop)
    res = varvel(cm.values[:, keep], cp.values[:, keep], t[keep])
    ds = xr.Dataset(coords={"patient": measured["patient"].values})
    for k, (unit, long_name) in METRICS.items():
        ds[k] = ("patient", res[k], {"units": unit, "long_name": long_name})
        q = np.nanpercentile(res[k], [5, 50, 95]) if np.isfinite(res[k]).any() else [np.nan] * 3
        ds.attrs[f"{k}_median"] = float(q[1])
        ds.attrs[f"{k}_p05_p95"] = f"{q[0]:.4g} to {q[2]:.4g}"
    ds["n_samples"] = ("patient", res["n_samples"], {"long_name": "samples used"})
    ds.attrs.update(
        output=output,
        window=f"{t[keep][0]:g} h to {t[keep][-1]:g} h" if keep.any() else "empty",
        reference="Varvel JR, Donoho DL, Shafer SL. J Pharmacokinet Biopharm 1992;20:63-94",
        summary="population values: median and 5th-95th percentiles of the individual values",
    )
    return ds
