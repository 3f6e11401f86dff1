"""Writing results: atomically (temporary file in the target folder, then rename).

An interrupted or failed run never leaves a file that looks complete: the data go to a
hidden temporary file beside the target, which is renamed over the target only after the
writer finished. ``os.replace`` is atomic on POSIX file systems when both paths are on the
same file system, which a temporary file in the same folder guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from pkpd.errors import PkpdError

__all__ = [
    "atomic_outputs",
    "csv_metadata_path",
    "write_csv",
    "write_csv_metadata",
    "write_netcdf",
]


class OutputError(PkpdError, OSError):
    """An output file cannot be written (missing folder, wrong extension, permission)."""


def check_target(
    path: str | Path, suffixes: tuple[str, ...], what: str, store: bool | None = None
) -> Path:
    """Validate an output path before any work is done.

    The extension is compared case-insensitively; the folder must exist and accept a new
    file (tried, so read-only folders and file systems are found before simulating).
    With ``store=True`` (Zarr; the default for a ``.zarr`` suffix) the target may be an
    existing Zarr store, which is replaced when the new one is complete; any other existing
    folder is refused, never removed. Temporaries of this target left by runs that no
    longer exist are removed here (see :func:`clean_stale`).
    """
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise OutputError(
            f"{what} {str(p)!r}: expected a file name ending in {' or '.join(suffixes)}"
        )
    if store is None:
        store = p.suffix.lower() == ".zarr"
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{what} {str(p)!r}: folder {str(parent)!r} does not exist")
    if p.is_dir() and not (store and _is_zarr_store(p)):
        kind = "a folder that is not a Zarr store" if store else "a folder"
        raise OutputError(f"{what} {str(p)!r} is {kind}")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{p.name}.", suffix=f".{_owner()}.tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"{what} {str(p)!r}: cannot create a file in folder {str(parent)!r}: "
            f"{exc.strerror or exc}"
        ) from exc
    clean_stale(p)
    return p


# ----------------------------------------------------------------------------- temporaries
#
# Every temporary output is named ``.TARGET.RANDOM.PID@HOST.tmp`` (and a replaced Zarr
# store, for a moment, ``.TARGET.RANDOM.PID@HOST.old``), beside its target. A later run
# removes those whose process no longer exists on this host: a run killed with SIGKILL
# (or by a power cut) cannot clean up after itself. Temporaries of live processes, of
# other hosts (shared file systems) and of other targets are never touched.

_TEMP_RE = re.compile(
    r"(?P<rand>[A-Za-z0-9_]+)\.(?P<pid>[0-9]+)@(?P<host>[A-Za-z0-9_-]+)\.(?P<kind>tmp|old)"
)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:63] or "localhost"


def _owner() -> str:
    """``PID@HOST`` of this process, as written into the names of its temporaries."""
    return f"{os.getpid()}@{_host()}"


def temporary_path(target: Path, kind: str = "tmp") -> Path:
    """A fresh hidden path beside `target` that names this process (see above)."""
    target = Path(target)
    return target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.{_owner()}.{kind}"


def _alive(pid: int) -> bool:
    """True unless process `pid` certainly does not exist (on this host)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by another user
        return True
    return True


def _remove(path: Path) -> None:
    """Remove a file, a link or a folder tree; gone already is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale(target: str | Path) -> list[Path]:
    """Remove the temporaries of `target` left by dead runs; restore an orphaned result.

    A run killed between moving the previous Zarr store aside (``.old``) and publishing the
    new one leaves no store at `target`: the previous one is put back. The legacy name
    ``.TARGET.old`` of earlier versions counts as a dead run's. Returns the paths removed.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    prefix = f".{target.name}."
    host = _host()
    stale = []
    try:
        entries = [e for e in folder.iterdir() if e.name.startswith(prefix)]
    except OSError:
        return []
    for entry in entries:
        m = _TEMP_RE.fullmatch(entry.name[len(prefix) :])
        if m is not None and m["host"] == host and not _alive(int(m["pid"])):
            stale.append((entry, m["kind"]))
        elif entry.name == f"{prefix}old":
            stale.append((entry, "old"))
    removed = []
    # The newest previous result is the one to restore.
    for entry, kind in sorted(stale, key=lambda e: _mtime(e[0]), reverse=True):
        if kind == "old" and not os.path.lexists(target):
            with contextlib.suppress(OSError):
                os.rename(entry, target)
                continue
        _remove(entry)
        removed.append(entry)
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def replace_store(tmp: Path, target: Path) -> None:
    """Publish the complete store `tmp` at `target`, replacing what is there.

    The previous target (a store, or a regular file) is first renamed to a hidden ``.old``
    beside it, then `tmp` is renamed into place, then the ``.old`` is removed: at every
    moment one complete result exists under a known name, and :func:`clean_stale` finishes
    the job of a run killed in between. A store published by a concurrent run in between
    is moved aside in turn (the last run to publish wins).
    """
    trash: list[Path] = []
    try:
        for _ in range(5):
            if os.path.lexists(target):
                old = temporary_path(target, "old")
                try:
                    os.rename(target, old)
                    trash.append(old)
                except FileNotFoundError:
                    pass
            try:
                os.rename(tmp, target)
                break
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
        else:
            raise OutputError(f"cannot replace {str(target)!r}: other runs keep writing it")
    except BaseException:
        if trash and not os.path.lexists(target):
            with contextlib.suppress(OSError):
                os.rename(trash.pop(), target)
        raise
    finally:
        if os.path.lexists(target):
            for old in trash:
                _remove(old)


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
        try:
            fd, tmp = tempfile.mkstemp(
                dir=target.parent if str(target.parent) else ".",
                prefix=f".{target.name}.",
                suffix=f".{_owner()}.tmp",
            )
            os.close(fd)
            staged.append((Path(tmp), target))
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
    """Write `ds` as NetCDF-4 (h5netcdf engine).

    Attribute values NetCDF cannot hold are written in a form it can: an integer beyond
    64 bits (a large ``seed``) as its decimal string, a boolean as 0/1, None as "".
    """
    ds = ds.copy(deep=False)
    ds.attrs = {k: _netcdf_attr(v) for k, v in ds.attrs.items()}
    for name in ds.variables:
        ds[name].attrs = {k: _netcdf_attr(v) for k, v in ds[name].attrs.items()}
    ds.to_netcdf(tmp, engine="h5netcdf")


def _netcdf_attr(v):
    if v is None:
        return ""
    if isinstance(v, bool | np.bool_):
        return int(v)
    if isinstance(v, int) and not -(2**63) <= v < 2**64:
        return str(v)
    return v


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
    names = [v for v in ds.data_vars if ds[v].dims == ("time",)]
    cols = [ds.time.values] + [ds[v].values for v in names]
    header = ["time [h]"] + [f"{v} [{ds[v].attrs.get('units', '')}]" for v in names]
    write_table(tmp, header, [np.asarray(c, dtype=np.float64) for c in cols])


def write_table(tmp: Path, header: list[str], columns: list) -> None:
    """Write one header row and the `columns` (arrays of one length) as a plain CSV.

    ``pandas.read_csv(path)`` with no options reads it back with the same column names
    and types: floats are written in their shortest round-trip form with a decimal point
    or an exponent (``5.0``, ``1e-05``, ``nan``), so a float column whose values are whole
    is read as float64, not int64; integer columns stay integers, booleans ``True``/``False``
    and text cells are quoted by the csv rules where needed (formula characters neutralised,
    see :func:`_text_cell`).
    """
    import pandas as pd  # lazy: only CSV and table outputs need pandas

    cells = {}
    for j, col in enumerate(columns):
        col = np.asarray(col)
        if col.dtype.kind in "US":
            col = np.array([_text_cell(str(x)) for x in col], dtype=object)
        cells[j] = col
    frame = pd.DataFrame(cells)
    frame.columns = [_text_cell(h) for h in header]
    # pandas writes float64 with repr (shortest round trip); the csv module quotes a cell
    # holding a comma, a quote or a line break.
    frame.to_csv(tmp, index=False, lineterminator="\n", encoding="utf-8")


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
        "attrs": {k: plain(v) for k, v in ds.attrs.items()},
    }  # fmt: skip
    write_json(meta, tmp)


def write_json(meta: dict, tmp: Path) -> None:
    """Write `meta` as indented JSON (the sidecar of every table output); values JSON does
    not know are written as their text."""
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=1, default=str)
        fh.write("\n")


class ZarrWriter:
    """Write a cohort to a Zarr store chunk by chunk, atomically.

    Chunks are buffered until they hold :attr:`flush_bytes` (64 MiB) and then appended
    along ``patient`` in one write: each append costs about 0.2 s whatever its size
    (xarray and zarr rewrite the store's metadata), which made a 300,000-patient summary
    cohort written as 37 appends spend longer writing than simulating. A chunk larger than
    the buffer (stored trajectories) is written at once, as before. Appends go to a hidden
    temporary store beside the target
    (named after this process, see :func:`clean_stale`); :meth:`finish` adds the
    whole-cohort variables (percentile bands) and attributes, then renames the store into
    place (an existing target is replaced only at that moment, see :func:`replace_store`).
    An interrupted run leaves only the hidden temporary store, never a complete-looking
    target; :meth:`abort` removes it, and so does a later run if this one was killed. A
    write that fails (a full disk) removes the temporary store and raises
    :class:`OutputError` naming the target.
    """

    #: Buffer size (bytes of per-patient data) that triggers a write.
    flush_bytes = 64 * 2**20

    def __init__(self, target) -> None:
        self.target = check_target(target, (".zarr",), "out", store=True)
        self.tmp = temporary_path(self.target)
        self._first = True
        self._pending: list = []
        self._pending_bytes = 0

    def _failed(self, exc: OSError) -> OutputError:
        self.abort()
        return OutputError(
            f"cannot write {str(self.target)!r} (temporary store {self.tmp.name!r} removed): {exc}"
        )

    def append(self, ds) -> None:
        """Add the next chunk of patients (in order); written once the buffer is full."""
        self._pending.append(ds)
        self._pending_bytes += ds.nbytes
        if self._pending_bytes >= self.flush_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        import xarray as xr  # lazy, as in `open`

        parts, self._pending, self._pending_bytes = self._pending, [], 0
        first = parts[0]
        per_patient = [v for v in first.variables if "patient" in first[v].dims]
        if len(parts) == 1:
            ds = first
        else:
            ds = xr.concat(
                [p[per_patient] for p in parts], dim="patient", data_vars="minimal",
                coords="minimal", compat="override", join="override", combine_attrs="override",
            )  # fmt: skip
            ds = ds.assign({v: first[v] for v in first.data_vars if v not in per_patient})
            ds.attrs = dict(first.attrs)
        try:
            if self._first:
                ds.to_zarr(self.tmp, mode="w-", consolidated=True, zarr_format=2)
                self._first = False
            else:
                ds[per_patient].to_zarr(
                    self.tmp, append_dim="patient", consolidated=True, zarr_format=2
                )
        except OSError as exc:
            raise self._failed(exc) from exc

    def finish(self, summary) -> None:
        """Add the variables without a patient dimension and the attributes; publish."""
        import zarr  # lazy: only a Zarr output needs zarr (slow to import)

        self._flush()
        try:
            extra = [v for v in summary.data_vars if "patient" not in summary[v].dims]
            if extra:
                part = summary[extra].drop_vars(
                    [c for c in summary[extra].coords if "patient" in summary[c].dims]
                )
                part.to_zarr(self.tmp, mode="a", consolidated=True, zarr_format=2)
            group = zarr.open_group(str(self.tmp), mode="a")
            group.attrs.update({k: plain(v) for k, v in summary.attrs.items()})
            zarr.consolidate_metadata(str(self.tmp))
        except OSError as exc:
            raise self._failed(exc) from exc
        replace_store(self.tmp, self.target)

    def abort(self) -> None:
        self._pending, self._pending_bytes = [], 0
        _settle_zarr_io()
        _remove(self.tmp)

    def open(self):
        import xarray as xr  # lazy: xarray takes ~0.3 s to import, `pkpd --help` need not wait

        return xr.open_zarr(self.target)


def _settle_zarr_io(timeout: float = 60.0) -> None:
    """Wait until zarr's event loop has no pending task.

    When one chunk write fails (ENOSPC), zarr's ``asyncio.gather`` raises at once and the
    other writes of the batch go on in zarr's I/O thread: they would recreate files in the
    store being removed, and print a traceback each ("Task exception was never retrieved",
    "Task was destroyed but it is pending") when the process exits. Gathering them here
    retrieves their exceptions, so the removal is final and stderr keeps one line.
    """
    try:  # lazy: only a Zarr output needs zarr (slow to import)
        from zarr.core import sync as zarr_sync
    except ImportError:  # pragma: no cover - another zarr layout: nothing to wait for
        return
    loop = getattr(zarr_sync, "loop", [None])[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def drain() -> None:
        me = asyncio.current_task()
        while pending := [t for t in asyncio.all_tasks() if t is not me and not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout)


def plain(v):
    """Attribute values as JSON-friendly Python scalars (arrays as lists)."""
    if hasattr(v, "tolist") and getattr(v, "ndim", 0) > 0:
        return v.tolist()
    if hasattr(v, "item"):
        return v.item()
    return v
