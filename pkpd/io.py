"""Writing results: atomically (temporary file in the target folder, then rename).

An interrupted or failed run never leaves a file that looks complete: the data go to a
hidden temporary file beside the target, which is renamed over the target only after the
writer finished. ``os.replace`` is atomic on POSIX file systems when both paths are on the
same file system, which a temporary file in the same folder guarantees.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import PkpdError

__all__ = [
    "atomic_outputs",
    "csv_metadata_path",
    "read_library_file",
    "write_csv",
    "write_csv_metadata",
    "write_netcdf",
]


def read_library_file(name_or_path, folder: Path, available, what: str, error) -> tuple[Path, dict]:
    """Resolve a shipped name or a ``.toml`` path and parse it: ``(path, data)``.

    The one loader of every library folder (models, PD endpoints, populations, risk
    models): a bare name is always looked up as ``folder/NAME.toml``, whatever files the
    working directory holds; a path is a :class:`os.PathLike`, or text that contains a
    path separator or ends in ``.toml``. `available()` lists the names for the error
    message; `error` is the exception class raised (naming the file) for an unknown name,
    a missing file or invalid TOML.
    """
    import tomllib

    text = str(name_or_path)
    path = Path(text)
    if not is_path(name_or_path):
        path = Path(folder) / f"{text}.toml"
        if not path.exists():
            raise error(
                f"unknown {what} {text!r}: expected a path to a .toml file or one of "
                f"{', '.join(available()) or '(none shipped)'}"
            )
    if not path.is_file():
        raise error(f"{path}: {what} file not found (expected a .toml file)")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from exc
    return path, data


def is_path(name_or_path) -> bool:
    """True for a file path, False for a bare library name such as ``fanta2015_otto2021``.

    A file in the working directory named like a shipped model must not replace it
    silently, so only an explicit path counts: a ``PathLike``, or text with a separator
    (``./mymodel``) or ending in ``.toml``.
    """
    if isinstance(name_or_path, os.PathLike):
        return True
    text = str(name_or_path)
    seps = {"/", os.sep, os.altsep} - {None}
    return any(sep in text for sep in seps) or text.lower().endswith(".toml")


class OutputError(PkpdError, OSError):
    """An output file cannot be written (missing folder, wrong extension, permission)."""


def check_target(
    path: str | Path, suffixes: tuple[str, ...], what: str, store: bool = False
) -> Path:
    """Validate an output path before any work is done.

    With ``store=True`` (Zarr) the target may be an existing Zarr store, which is replaced
    when the new one is complete; any other existing folder is refused, never removed.
    """
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise OutputError(
            f"{what} {str(p)!r}: expected a file name ending in {' or '.join(suffixes)}"
        )
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{what} {str(p)!r}: folder {str(parent)!r} does not exist")
    if p.is_dir() and not (store and _is_zarr_store(p)):
        kind = "a folder that is not a Zarr store" if store else "a folder"
        raise OutputError(f"{what} {str(p)!r} is {kind}")
    return p


def _is_zarr_store(p: Path) -> bool:
    return any((p / marker).is_file() for marker in (".zgroup", ".zarray", "zarr.json"))


@contextlib.contextmanager
def atomic_outputs() -> Iterator[Callable[[Path, Callable[[Path], None]], None]]:
    """Stage several outputs and publish them together at the end of the block.

    Usage::

        with atomic_outputs() as stage:
            stage(Path("out.nc"), lambda tmp: ds.to_netcdf(tmp))
            stage(Path("out.png"), lambda tmp: fig.savefig(tmp))

    Each writer receives a temporary path in the target's folder. If anything in the block
    raises, every temporary file is removed and no target is touched.
    """
    staged: list[tuple[Path, Path]] = []

    def stage(target: Path, writer: Callable[[Path], None]) -> None:
        target = Path(target)
        fd, tmp = tempfile.mkstemp(
            dir=target.parent if str(target.parent) else ".",
            prefix=f".{target.name}.",
            suffix=".tmp",
        )
        os.close(fd)
        staged.append((Path(tmp), target))
        try:
            writer(Path(tmp))
        except OSError as exc:
            raise OutputError(f"cannot write {str(target)!r}: {exc}") from exc

    try:
        yield stage
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
    umask = os.umask(0)
    os.umask(umask)
    for tmp, target in staged:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)


def write_netcdf(ds, tmp: Path) -> None:
    """Write `ds` as NetCDF-4 (h5netcdf engine)."""
    ds.to_netcdf(tmp, engine="h5netcdf")


# A text cell starting with one of these is a formula to a spreadsheet (OWASP "CSV
# injection"): such cells get a leading single quote.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Control characters (line breaks included) would start a new row for line-based readers.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _text_cell(text: str) -> str:
    """A CSV text cell that no spreadsheet runs and no line-based reader splits."""
    if text.startswith(_FORMULA_START):
        text = "'" + text
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def csv_metadata_path(path: str | Path) -> Path:
    """The sidecar file of a CSV result: ``result.csv`` -> ``result.csv.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def write_csv(ds, tmp: Path) -> None:
    """Write the time-indexed variables of `ds` as CSV, units in the column headers.

    One header row, then numeric rows only; the provenance (model, regimen, covariates,
    disclaimer) goes to the JSON sidecar written by :func:`write_csv_metadata`.
    """
    import numpy as np

    names = [v for v in ds.data_vars if ds[v].dims == ("time",)]
    cols = [ds.time.values] + [ds[v].values for v in names]
    header = ["time [h]"] + [f"{v} [{ds[v].attrs.get('units', '')}]" for v in names]
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        # The csv module quotes a cell holding a comma or a quote; numbers need no quoting.
        csv.writer(fh, lineterminator="\n").writerow([_text_cell(h) for h in header])
        np.savetxt(fh, np.column_stack(cols), delimiter=",", fmt="%.17g")


def write_csv_metadata(ds, tmp: Path) -> None:
    """Write the attributes of `ds` and the CSV columns (name, unit) as JSON."""
    names = [v for v in ds.data_vars if ds[v].dims == ("time",)]
    meta = {
        "columns": [{"name": "time", "units": "h"}]
        + [
            {"name": v, "units": str(ds[v].attrs.get("units", "")),
             "long_name": str(ds[v].attrs.get("long_name", ""))}
            for v in names
        ],
        "attrs": {k: _plain(v) for k, v in ds.attrs.items()},
    }  # fmt: skip
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=1, default=str)
        fh.write("\n")


class ZarrWriter:
    """Write a cohort to a Zarr store chunk by chunk, atomically.

    Chunks are appended along ``patient`` to a hidden temporary store beside the target;
    :meth:`finish` adds the whole-cohort variables (percentile bands) and attributes, then
    renames the store into place (an existing target is replaced only at that moment). An
    interrupted run leaves only the hidden temporary store, never a complete-looking target;
    :meth:`abort` removes it.
    """

    def __init__(self, target) -> None:
        import uuid

        self.target = check_target(target, (".zarr",), "out", store=True)
        self.tmp = self.target.parent / f".{self.target.name}.{uuid.uuid4().hex[:8]}.tmp"
        self._first = True

    def append(self, ds) -> None:
        if self._first:
            ds.to_zarr(self.tmp, mode="w-", consolidated=True, zarr_format=2)
            self._first = False
        else:
            per_patient = [v for v in ds.variables if "patient" in ds[v].dims]
            ds[per_patient].to_zarr(
                self.tmp, append_dim="patient", consolidated=True, zarr_format=2
            )

    def finish(self, summary) -> None:
        """Add the variables without a patient dimension and the attributes; publish."""
        import shutil

        import zarr

        extra = [v for v in summary.data_vars if "patient" not in summary[v].dims]
        if extra:
            part = summary[extra].drop_vars(
                [c for c in summary[extra].coords if "patient" in summary[c].dims]
            )
            part.to_zarr(self.tmp, mode="a", consolidated=True, zarr_format=2)
        group = zarr.open_group(str(self.tmp), mode="a")
        group.attrs.update({k: _plain(v) for k, v in summary.attrs.items()})
        zarr.consolidate_metadata(str(self.tmp))
        trash = None
        if self.target.exists():
            trash = self.target.parent / f".{self.target.name}.old"
            os.replace(self.target, trash)
        os.replace(self.tmp, self.target)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def abort(self) -> None:
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)

    def open(self):
        import xarray as xr

        return xr.open_zarr(self.target)


def _plain(v):
    """Attribute values as JSON-friendly Python scalars."""
    if hasattr(v, "item"):
        return v.item()
    return v
