"""Per-patient tables of a cohort: one row per patient, for pandas, spreadsheets and R.

:func:`patient_table` flattens a cohort dataset (:func:`pkpd.simulate_cohort`) into a
:class:`pandas.DataFrame`: the patient index, every per-patient coordinate (covariates,
drawn event times), then every per-patient metric, one column per output, window, named
time or threshold. Column names carry their unit in brackets, as the CSV time courses do:
``weight [kg]``, ``cmax_cp [ng/mL]``, ``auc_cp_postop24 [ng*h/mL]``, ``c_at_cp_eos [ng/mL]``,
``time_above_cp>=100 ng/mL [h]``, ``param_V1 [L]``; a column without a unit (``sex``,
``status``, a ratio) has no brackets. :func:`write_patient_table` writes it as CSV or Parquet
with the dataset's attributes in a JSON sidecar (``FILE.meta.json``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pkpd.errors import PkpdError
from pkpd.inputs.population import UNITS
from pkpd.output.io import plain

__all__ = ["TABLE_SUFFIXES", "patient_table", "table_metadata", "write_patient_table"]

#: File types of :func:`write_patient_table`.
TABLE_SUFFIXES = (".csv", ".parquet")

# Dimensions besides `patient` that a per-patient metric may have: one column per label.
_LABEL_DIMS = ("output", "window", "at", "threshold")


def _column(name: str, unit: str) -> str:
    unit = str(unit or "")
    return f"{name} [{unit}]" if unit else name


def _unit(ds, var: str, output: str | None) -> str:
    """The unit of `var` (for one output of the ``output`` dimension, its own unit)."""
    unit = str(ds[var].attrs.get("units", ""))
    if output is not None and "output_units" in ds.coords and unit != "h":
        own = str(ds.output_units.sel(output=output).item())
        # AUCs keep their ng*h/mL (NaN for outputs that are not concentrations).
        if var != "auc":
            unit = own
    return unit


def patient_table(ds):
    """One row per patient of the cohort `ds`: covariates, event times, metrics.

    Columns, in order: ``patient``; the per-patient coordinates (covariates such as
    ``weight [kg]``, ``sex``, and each drawn regimen event time in h); then each data
    variable whose only dimension besides ``patient`` is ``output``, ``window``, ``at`` or
    ``threshold`` (``cmax``, ``tmax``, ``cmax_at_bolus``, ``auc``, ``c_at``, ``time_above``,
    ``status``, the individual parameters ``param_<name>``, ...), one column per label,
    named ``<variable>_<label>[_<label>] [unit]``. Trajectories, amounts and bands (a time
    dimension) are not per-patient scalars and are left out. The values are the dataset's,
    unchanged (a failed patient's metrics stay NaN; see ``status``).

    Returns
    -------
    pandas.DataFrame
        With a default integer index; ``df.attrs`` holds the dataset's attributes.
    """
    import pandas as pd  # lazy: pandas is only needed for tables

    if "patient" not in ds.dims:
        raise PkpdError(
            "patient_table: expected a cohort dataset (dimension `patient`, from "
            "pkpd.simulate_cohort); this one has dimensions "
            f"{', '.join(map(str, ds.dims)) or 'none'}"
        )
    cols: dict[str, np.ndarray] = {"patient": ds.patient.values}
    for name in ds.coords:
        if name == "patient" or ds[name].dims != ("patient",):
            continue
        unit = ds[name].attrs.get("units") or UNITS.get(str(name), "")
        cols[_column(str(name), unit)] = ds[name].values
    for var in ds.data_vars:
        da = ds[var]
        if not da.dims or da.dims[0] != "patient":
            continue
        rest = da.dims[1:]
        if any(d not in _LABEL_DIMS for d in rest):
            continue
        labels = [[str(x) for x in ds[d].values] for d in rest]
        for idx in np.ndindex(*(len(lab) for lab in labels)):
            parts = [labels[k][i] for k, i in enumerate(idx)]
            out = parts[rest.index("output")] if "output" in rest else None
            name = "_".join([str(var), *parts])
            cols[_column(name, _unit(ds, str(var), out))] = da.values[(slice(None), *idx)]
    frame = pd.DataFrame(cols)
    frame.attrs = {k: plain(v) for k, v in ds.attrs.items()}
    return frame


def table_metadata(ds, frame) -> dict:
    """The JSON sidecar of a table: its columns and the dataset's attributes."""
    return {
        "columns": [str(c) for c in frame.columns],
        "attrs": {k: plain(v) for k, v in ds.attrs.items()},
    }


def write_patient_table(ds, path, frame=None) -> None:
    """Write :func:`patient_table` of `ds` to `path` (``.csv`` or ``.parquet``).

    Parquet needs pyarrow (``pip install 'ketamine-pkpd[parquet]'``); its absence is
    reported before anything is written. Either file gets its sidecar ``PATH.meta.json``;
    both are written atomically together (all or none).
    """
    from pkpd.output import io as result_io

    path = Path(path)
    kind = path.suffix.lower()
    if kind not in TABLE_SUFFIXES:
        raise result_io.OutputError(
            f"patients table {str(path)!r}: expected a file name ending in "
            f"{' or '.join(TABLE_SUFFIXES)}"
        )
    if kind == ".parquet":
        check_parquet()
    frame = patient_table(ds) if frame is None else frame
    meta = table_metadata(ds, frame)
    with result_io.atomic_outputs() as stage:
        if kind == ".csv":
            stage(
                path,
                lambda tmp: result_io.write_table(
                    tmp, [str(c) for c in frame.columns], [frame[c].to_numpy() for c in frame]
                ),
            )
        else:
            stage(path, lambda tmp: _write_parquet(frame, tmp))
        stage(result_io.csv_metadata_path(path), lambda tmp: result_io.write_json(meta, tmp))


def check_parquet() -> None:
    """Raise a clear error when pyarrow (Parquet output) is not installed."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise PkpdError(
            "Parquet output needs pyarrow: pip install 'ketamine-pkpd[parquet]' (or pip "
            "install pyarrow), or write a .csv table"
        ) from None


def _write_parquet(frame, tmp: Path) -> None:
    frame = frame.copy()
    frame.attrs = {}  # the metadata goes to the sidecar (pandas would embed it as JSON)
    frame.to_parquet(tmp, engine="pyarrow", index=False)
