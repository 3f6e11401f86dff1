"""Output files and library look-up (pkpd/output/io.py): CSV, sidecars, names, Zarr replacement."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import xarray as xr

from pkpd.analysis.risk import available_risks, load_risk, risk_dir
from pkpd.errors import ModelError
from pkpd.inputs.model import load_model, models_dir
from pkpd.inputs.pd import available_pd, load_pd, pd_dir
from pkpd.inputs.population import available_populations, load_population, populations_dir
from pkpd.inputs.regimen import load_regimen
from pkpd.output.io import write_csv

# ----------------------------------------------------------------------------- CSV


def _hostile_dataset():
    t = np.linspace(0.0, 1.0, 5)
    ds = xr.Dataset(
        {
            "cp": ("time", np.exp(-t), {"units": "=cmd|' /C calc'!A0", "long_name": "a\nb"}),
            "ce": ("time", -t, {"units": "ng/mL\n1,2,3\n@SUM(A1)"}),
        },
        coords={"time": t},
        attrs={
            "model": 'm\n=HYPERLINK("http://x")',
            "regimen": "5 mg bolus at 0 h\n-1,2,3",
            "disclaimer": "not a clinical device",
            "seed": np.int64(3),
        },
    )
    return ds


def test_csv_is_one_header_row_then_numbers_and_neutralises_formulas(tmp_path):
    """Units and metadata with line breaks and formulas neither add rows nor become
    spreadsheet formulas; the file reads as one header row plus numeric rows."""
    ds = _hostile_dataset()
    path = tmp_path / "r.csv"
    write_csv(ds, path)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == 1 + ds.sizes["time"]
    header = rows[0]
    assert len(header) == 3 and header[0] == "time [h]"
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in header)
    assert header[1] == "cp [=cmd|' /C calc'!A0]"  # starts with the name: not a formula
    assert "\n" not in "".join(header)
    # Line-based readers agree: one physical header line, then numbers only.
    data = np.loadtxt(path, delimiter=",", skiprows=1)
    np.testing.assert_array_equal(data[:, 0], ds.time.values)
    np.testing.assert_array_equal(data[:, 2], ds.ce.values)  # negative numbers stay numbers


def test_csv_reads_back_with_pandas_and_no_options(tmp_path):
    """`pandas.read_csv(path)` alone gives the columns, float64 even where every value is
    whole (a dose of 5 mg), and the numbers bit for bit (shortest round-trip text)."""
    import pandas as pd

    t = np.linspace(0.0, 2.0, 7)
    ds = xr.Dataset(
        {
            "cp": ("time", np.exp(-t) / 3.0, {"units": "ng/mL"}),
            "dose_given": ("time", np.full(t.size, 5.0), {"units": "mg"}),
            "tiny": ("time", 1e-300 * (t + 1e-5), {"units": "1"}),
            "gap": ("time", np.where(t > 1, np.nan, t), {"units": "h"}),
        },
        coords={"time": t},
    )
    path = tmp_path / "r.csv"
    write_csv(ds, path)
    table = pd.read_csv(path)
    assert list(table.columns) == [
        "time [h]", "cp [ng/mL]", "dose_given [mg]", "tiny [1]", "gap [h]"
    ]  # fmt: skip
    assert all(str(d) == "float64" for d in table.dtypes), table.dtypes
    np.testing.assert_array_equal(table["time [h]"], t)
    for v in ("cp", "dose_given", "tiny", "gap"):
        name = f"{v} [{ds[v].attrs['units']}]"
        np.testing.assert_array_equal(table[name].to_numpy(), ds[v].values)


def test_csv_text_cells_starting_with_formula_characters_get_a_quote(tmp_path):
    t = np.array([0.0, 1.0])
    for first in ("=", "+", "-", "@", "\t", "\r"):
        ds = xr.Dataset({f"{first}x": ("time", t, {"units": "mg"})}, coords={"time": t})
        path = tmp_path / "f.csv"
        write_csv(ds, path)
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh))
        assert header[1].startswith("'"), (first, header)


def test_csv_metadata_sidecar_keeps_the_provenance(tmp_path):
    from pkpd.output.io import csv_metadata_path, write_csv_metadata

    ds = _hostile_dataset()
    side = csv_metadata_path(tmp_path / "r.csv")
    assert side.name == "r.csv.meta.json"
    write_csv_metadata(ds, side)
    meta = json.loads(side.read_text(encoding="utf-8"))
    assert meta["attrs"]["model"] == ds.attrs["model"]
    assert meta["attrs"]["regimen"] == ds.attrs["regimen"]
    assert meta["attrs"]["seed"] == 3
    assert [c["name"] for c in meta["columns"]] == ["time", "cp", "ce"]
    assert meta["columns"][1]["units"] == ds.cp.attrs["units"]


# ----------------------------------------------------------------------------- names


def _plant(tmp_path, name, source):
    """A file without extension in the working directory, named like a shipped entry."""
    (tmp_path / name).write_bytes(source.read_bytes())


def test_a_bare_name_is_the_shipped_entry_whatever_the_working_directory_holds(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    # A planted "fanta2015_otto2021" holding another model must not replace the shipped one.
    _plant(tmp_path, "fanta2015_otto2021", models_dir() / "domino_racemic.toml")
    m = load_model("fanta2015_otto2021")
    assert m.name == "fanta2015_otto2021"
    assert str(m.file) == str(models_dir() / "fanta2015_otto2021.toml")
    pops = available_populations()
    _plant(tmp_path, pops[0], populations_dir() / f"{pops[1]}.toml")
    assert str(load_population(pops[0]).file) == str(populations_dir() / f"{pops[0]}.toml")
    pds = available_pd()
    _plant(tmp_path, pds[0], pd_dir() / f"{pds[1]}.toml")
    assert str(load_pd(pds[0]).file) == str(pd_dir() / f"{pds[0]}.toml")
    risk = available_risks()[0]
    (tmp_path / risk).write_text("not = [valid", encoding="utf-8")
    assert str(load_risk(risk).file) == str(risk_dir() / f"{risk}.toml")
    # A file that is not shipped under its name: the error says how to name it.
    _plant(tmp_path, "mymodel", models_dir() / "domino_racemic.toml")
    with pytest.raises(ModelError, match=r"unknown model 'mymodel'.*write \./mymodel"):
        load_model("mymodel")
    # An explicit path is still a path.
    assert load_model(f".{'/'}fanta2015_otto2021").name == "domino_racemic"
    assert load_model(tmp_path / "fanta2015_otto2021").name == "domino_racemic"


def test_a_file_named_like_a_one_line_regimen_does_not_replace_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "5 mg bolus at 0 h"
    (tmp_path / text).write_text(
        (models_dir() / "regimens" / "lumbar_fusion_esketamine.toml").read_text("utf-8"),
        encoding="utf-8",
    )
    reg = load_regimen(text)
    assert reg.file is None
    assert "5 mg bolus at 0 h" in reg.text and "mg/kg/h" not in reg.text
    assert "mg/kg/h" in load_regimen(f"./{text}").text


# ----------------------------------------------------------------------------- Zarr, temporaries


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _host() -> str:
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:63] or "localhost"


def _cohort_like(n=4, start=0, seed=1):
    p = np.arange(start, start + n)
    return xr.Dataset(
        {"cmax": ("patient", p * 1.5), "band": ("quantile", [1.0, 2.0])},
        coords={"patient": p, "quantile": [0.05, 0.95]},
        attrs={"seed": seed},
    )


def _write_store(target, seed=1):
    from pkpd.output.io import ZarrWriter

    w = ZarrWriter(target)
    ds = _cohort_like(seed=seed)
    w.append(ds[["cmax"]])
    w.finish(ds)
    return w


def _seed(path) -> int:
    with xr.open_zarr(path) as back:
        return int(back.attrs["seed"])


def test_stale_temporaries_of_dead_runs_are_removed_and_no_others(tmp_path):
    """Only temporaries of this target whose process is gone (on this host) are removed."""
    import os

    from pkpd.output.io import check_target

    dead, host = _dead_pid(), _host()
    planted = {
        "dead_store": f".c.zarr.deadbeef.{dead}@{host}.tmp",
        "dead_file": f".c.zarr.abc_12xy.{dead}@{host}.tmp",
        "live": f".c.zarr.cafecafe.{os.getpid()}@{host}.tmp",
        "other_host": f".c.zarr.deadbeef.{dead}@elsewhere-{host}.tmp",
        "other_target": f".d.zarr.deadbeef.{dead}@{host}.tmp",
        "user_file": ".c.zarr.notes",
    }
    for key, name in planted.items():
        if key == "dead_store":
            (tmp_path / name / "cmax").mkdir(parents=True)
            (tmp_path / name / "cmax" / "0").write_bytes(b"x" * 1000)
        else:
            (tmp_path / name).write_text("x")
    check_target(tmp_path / "c.zarr", (".zarr",), "--out")
    left = {p.name for p in tmp_path.iterdir()}
    assert planted["dead_store"] not in left and planted["dead_file"] not in left
    assert left == {planted[k] for k in ("live", "other_host", "other_target", "user_file")}


def test_a_run_killed_while_replacing_a_store_loses_nothing_and_blocks_nothing(tmp_path):
    """kill -9 after the old store was moved aside and before the new one was renamed in:
    the next run puts the old result back, removes the dead run's temporaries, and can
    replace the store again."""
    import os

    target = tmp_path / "c.zarr"
    _write_store(target, seed=1)
    dead, host = _dead_pid(), _host()
    os.rename(target, tmp_path / f".c.zarr.0badc0de.{dead}@{host}.old")
    (tmp_path / f".c.zarr.feedf00d.{dead}@{host}.tmp").mkdir()  # the dead run's new store
    from pkpd.output.io import ZarrWriter

    w = ZarrWriter(target)  # checks the target: recovers before any work is done
    assert _seed(target) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]
    ds = _cohort_like(seed=2)
    w.append(ds[["cmax"]])
    w.finish(ds)
    assert _seed(target) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]


def test_a_leftover_legacy_old_store_does_not_block_replacing(tmp_path):
    """The `.NAME.old` of a killed run of earlier versions made every later run compute
    everything and then fail with "Directory not empty"."""
    target = tmp_path / "c.zarr"
    _write_store(target, seed=1)
    (tmp_path / ".c.zarr.old" / "cmax").mkdir(parents=True)
    (tmp_path / ".c.zarr.old" / "cmax" / "0").write_bytes(b"old")
    _write_store(target, seed=2)
    assert _seed(target) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]


def test_a_regular_file_at_the_store_path_is_replaced_and_removed(tmp_path):
    target = tmp_path / "c.zarr"
    target.write_text("a file, not a store")
    _write_store(target, seed=1)
    assert _seed(target) == 1
    _write_store(target, seed=2)
    assert _seed(target) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]


def test_a_full_disk_while_writing_a_store_removes_it_and_names_the_path(tmp_path, monkeypatch):
    """ENOSPC in the middle of the chunks: the partial temporary store is removed, an
    existing result stays, and the error is one OutputError naming the target."""
    import errno

    from pkpd.output.io import OutputError, ZarrWriter

    target = tmp_path / "c.zarr"
    _write_store(target, seed=1)
    w = ZarrWriter(target)
    w.flush_bytes = 0  # every chunk written as it comes (the buffer is tested below)
    w.append(_cohort_like()[["cmax"]])
    real = xr.Dataset.to_zarr

    def full(self, store, *args, **kwargs):
        real(self, store, *args, **kwargs)  # a partial chunk lands on disk first
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(xr.Dataset, "to_zarr", full)
    with pytest.raises(OutputError) as ei:
        w.append(_cohort_like(start=4)[["cmax"]])
    msg = str(ei.value)
    assert str(target) in msg and "No space left on device" in msg and "\n" not in msg
    assert isinstance(ei.value, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]
    assert _seed(target) == 1


def _chunked_store(target, flush_bytes, n_chunks=7, size=5):
    from pkpd.output.io import ZarrWriter

    w = ZarrWriter(target)
    w.flush_bytes = flush_bytes
    parts = []
    for c in range(n_chunks):
        p = np.arange(c * size, (c + 1) * size)
        part = xr.Dataset(
            {
                "cmax": (("patient", "output"), np.c_[p * 1.5, p * 0.5]),
                "sex": ("patient", ["m", "f"] * 2 + ["m"]),
            },
            coords={"patient": p, "output": ["cp", "cn"]},
            attrs={"seed": 3},
        )
        parts.append(part)
        w.append(part)
    summary = xr.concat(parts, dim="patient").assign(band=("quantile", [1.0, 2.0]))
    w.finish(summary.assign_coords(quantile=[0.05, 0.95]))
    return w


def test_buffered_chunks_give_the_store_of_chunk_by_chunk_writes(tmp_path):
    """Chunks buffered and written together (a flush every 3 chunks, and all at the end)
    give exactly the store written chunk by chunk: same patients in the same order, same
    values, variables without a patient dimension and attributes."""
    stores = {}
    for name, flush in [("each", 0), ("three", 3 * 5 * 2 * 8), ("end", 2**40)]:
        _chunked_store(tmp_path / f"{name}.zarr", flush)
        stores[name] = xr.open_zarr(tmp_path / f"{name}.zarr").load()
    ref = stores["each"]
    assert ref.sizes["patient"] == 35 and list(ref.patient.values) == list(range(35))
    for name in ("three", "end"):
        xr.testing.assert_identical(stores[name], ref)


def test_a_failed_write_of_the_buffer_at_the_end_removes_the_store(tmp_path, monkeypatch):
    """The buffer written by ``finish`` fails (a full disk): the temporary store is
    removed and the error names the target, as for a chunk written at once."""
    import errno

    from pkpd.output.io import OutputError, ZarrWriter

    w = ZarrWriter(tmp_path / "c.zarr")
    ds = _cohort_like(n=6)
    w.append(ds[["cmax"]])  # buffered: nothing written yet
    assert list(tmp_path.iterdir()) == []

    def full(self, store, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(xr.Dataset, "to_zarr", full)
    with pytest.raises(OutputError) as ei:
        w.finish(ds)
    assert str(tmp_path / "c.zarr") in str(ei.value)
    assert list(tmp_path.iterdir()) == []


def test_netcdf_stores_attributes_beyond_64_bit_integers(tmp_path):
    from pkpd.output.io import write_netcdf

    ds = _cohort_like(seed=2**70)
    ds.attrs.update(flag=True, nothing=None)
    write_netcdf(ds, tmp_path / "c.nc")
    with xr.open_dataset(tmp_path / "c.nc", engine="h5netcdf") as back:
        assert int(back.attrs["seed"]) == 2**70
        assert back.attrs["flag"] == 1
    assert ds.attrs["seed"] == 2**70 and ds.attrs["flag"] is True  # the input is unchanged


def test_a_full_disk_inside_zarrs_concurrent_writes_leaves_nothing_behind(tmp_path, monkeypatch):
    """One chunk write fails while zarr's other writes of the batch are still pending: they
    are waited for (not left to recreate files in the removed store, nor to print
    "Task exception was never retrieved" tracebacks at exit)."""
    import asyncio
    import errno
    import time

    from zarr.storage import LocalStore

    from pkpd.output.io import OutputError, ZarrWriter

    real_set = LocalStore.set
    calls = []

    async def set_(self, key, value):
        calls.append(key)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        await asyncio.sleep(0.2)  # the other writes are still in flight at the failure
        return await real_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", set_)
    n = 100
    ds = xr.Dataset({"cmax": ("patient", np.arange(n) * 1.5)}, coords={"patient": np.arange(n)})
    ds.cmax.encoding["chunks"] = (10,)
    w = ZarrWriter(tmp_path / "c.zarr")
    w.flush_bytes = 0  # written at once (the buffer is tested below)
    with pytest.raises(OutputError, match="No space left on device"):
        w.append(ds)
    time.sleep(0.5)  # longer than any pending write would take
    assert list(tmp_path.iterdir()) == []
