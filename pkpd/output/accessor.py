"""The ``ds.pkpd`` accessor of :mod:`xarray` datasets, registered by ``import pkpd``.

A notebook user reaches the common metrics, tables and figures of a result without
importing the modules that compute them, as with cf_xarray's ``ds.cf`` or rioxarray's
``ds.rio``::

    import pkpd
    ds = pkpd.simulate("domino_racemic", "5 mg bolus at 0 h", until="6 h")
    ds.pkpd.cmax()                      # pkpd.metrics.cmax(ds)
    ds.pkpd.auc({"0-4h": ("0 h", "4 h")})
    ds.pkpd.plot("cp.png")              # pkpd.plot.plot_concentrations(ds, "cp.png")
    cohort.pkpd.patient_table()         # pkpd.patient_table(cohort)

Every method delegates to one function (named in its docstring) with the dataset as the
first argument and the other arguments unchanged; the function's documentation applies.
"""

from __future__ import annotations

import xarray as xr

from pkpd.errors import PkpdError

__all__ = ["PkpdAccessor"]


@xr.register_dataset_accessor("pkpd")
class PkpdAccessor:
    """``ds.pkpd``: metrics, tables and figures of a pkpd result (module docstring)."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    # ---- metrics (pkpd.analysis.metrics) -------------------------------------------

    def cmax(self, *args, **kwargs):
        """:func:`pkpd.metrics.cmax` of this dataset."""
        from pkpd.analysis import metrics

        return metrics.cmax(self._ds, *args, **kwargs)

    def tmax(self, *args, **kwargs):
        """:func:`pkpd.metrics.tmax` of this dataset."""
        from pkpd.analysis import metrics

        return metrics.tmax(self._ds, *args, **kwargs)

    def auc(self, *args, **kwargs):
        """:func:`pkpd.metrics.auc` of this dataset."""
        from pkpd.analysis import metrics

        return metrics.auc(self._ds, *args, **kwargs)

    def time_above(self, *args, **kwargs):
        """:func:`pkpd.metrics.time_above` of this dataset."""
        from pkpd.analysis import metrics

        return metrics.time_above(self._ds, *args, **kwargs)

    def time_below(self, *args, **kwargs):
        """:func:`pkpd.metrics.time_below` of this dataset."""
        from pkpd.analysis import metrics

        return metrics.time_below(self._ds, *args, **kwargs)

    def conc_at(self, *args, **kwargs):
        """:func:`pkpd.metrics.conc_at` of this dataset."""
        from pkpd.analysis import metrics

        return metrics.conc_at(self._ds, *args, **kwargs)

    def concentrations(self, *args, **kwargs):
        """:func:`pkpd.metrics.concentrations` of this dataset."""
        from pkpd.analysis import metrics

        return metrics.concentrations(self._ds, *args, **kwargs)

    def metrics(self, *args, **kwargs):
        """:func:`pkpd.metrics.nca` of this dataset: every metric in one Dataset."""
        from pkpd.analysis import metrics

        return metrics.nca(self._ds, *args, **kwargs)

    # ---- tables ---------------------------------------------------------------------

    def patient_table(self):
        """:func:`pkpd.patient_table` of this cohort: one row per patient (DataFrame)."""
        from pkpd.output.patient_table import patient_table

        return patient_table(self._ds)

    def summary(self, regimen=None) -> list[str]:
        """Summary lines: for one patient ``pkpd.summarize(ds, regimen).lines()`` (default
        regimen: the dataset's ``regimen`` attribute), for a cohort the median and 5-95 %
        range of each metric (:func:`pkpd.output.tables.cohort_summary_lines`)."""
        if "patient" in self._ds.dims:
            from pkpd.output.tables import cohort_summary_lines

            return cohort_summary_lines(self._ds)
        from pkpd.running.simulate import summarize

        return summarize(self._ds, regimen or self._ds.attrs.get("regimen", "")).lines()

    # ---- figures (pkpd.output.plot) ---------------------------------------------------

    def plot(self, path, *args, **kwargs) -> None:
        """Save the usual figure of this result to `path`: the percentile bands of a cohort
        (:func:`pkpd.plot.plot_bands`), the concentrations of one patient
        (:func:`pkpd.plot.plot_concentrations`)."""
        from pkpd.output import plot

        ds = self._ds
        if "band" in ds:
            return plot.plot_bands(ds, path, *args, **kwargs)
        if "patient" not in ds.dims and "time" in ds.dims:
            return plot.plot_concentrations(ds, path, *args, **kwargs)
        raise PkpdError(
            "ds.pkpd.plot: expected one patient (pkpd.simulate) or a cohort with percentile "
            "bands (pkpd.simulate_cohort with bands=True); this dataset has dimensions "
            f"{', '.join(map(str, ds.dims)) or 'none'}"
        )
