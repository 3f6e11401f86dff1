"""`pkpd simulate --patients` end to end, in subprocesses as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from pkpd.errors import CovariateDefaultWarning, CovariateError, CovariateRangeWarning, PkpdWarning
from pkpd.inputs.model import available_models, load_model
from pkpd.inputs.population import available_populations, load_population, populations_dir
from pkpd.running.cohort import CohortError, simulate_cohort

BIN = Path(sys.executable).parent / "pkpd"
MODEL = "fanta2015_otto2021"
REGIMEN = "lumbar_fusion_esketamine"
POP = "spine_fusion_china"
ARGS = [
    "simulate", MODEL, REGIMEN, "--patients", "3000", "--population", POP, "--seed", "7",
    "--until", "30 h", "--every", "5 min",
    "--window", "intraop=0h..end_of_surgery",
    "--window", "postop24=end_of_surgery..end_of_surgery+24h",
    "--threshold", "cp=50ng/mL", "--at", "eos=end_of_surgery",
]  # fmt: skip


def run(*args, cwd):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def api_cohort():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate_cohort(
            MODEL,
            REGIMEN,
            POP,
            n=3000,
            seed=7,
            until="30 h",
            every="5 min",
            windows={
                "intraop": ("0h", "end_of_surgery"),
                "postop24": ("end_of_surgery", "end_of_surgery+24h"),
            },
            thresholds={"cp": ["50ng/mL"]},
            at={"eos": "end_of_surgery"},
            progress=False,
        )


@pytest.mark.parametrize("name", ["cohort.zarr", "cohort.nc"])
def test_cohort_from_the_cli_equals_the_api_and_can_be_replaced(tmp_path, name):
    r = run(*ARGS, "--out", name, "--plot", "bands.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "3,000 patients" in r.stdout and "patients/s" in r.stdout
    assert "not a clinical dosing device" in r.stdout
    opener = xr.open_zarr if name.endswith(".zarr") else xr.open_dataset
    with opener(tmp_path / name) as back:
        back = back.load()
    ref = api_cohort()
    for v in ("cmax", "tmax", "auc", "time_above", "c_at", "status"):
        np.testing.assert_array_equal(back[v].values, ref[v].values, err_msg=v)
    np.testing.assert_array_equal(back.end_of_surgery.values, ref.end_of_surgery.values)
    assert (tmp_path / "bands.png").stat().st_size > 0
    # A second run with another seed replaces the file (a Zarr store is a folder).
    r = run(*[a if a != "7" else "8" for a in ARGS], "--out", name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with opener(tmp_path / name) as again:
        assert int(again.attrs["seed"]) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "bands.png"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--window", "postop=end_of_surgery"], "START..END"),
        (["--threshold", "cp"], "OUTPUT=CONC"),
        (["--window", "w=0h..nonsense_event"], "nonsense_event"),
    ],
)
def test_bad_cohort_options_fail_in_one_line_and_write_nothing(tmp_path, extra, message):
    r = run(*ARGS, *extra, "--out", "c.zarr", cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_that_is_not_a_zarr_store_is_refused(tmp_path):
    (tmp_path / "c.zarr").mkdir()
    (tmp_path / "c.zarr" / "notes.txt").write_text("mine")
    r = run(*ARGS, "--out", "c.zarr", cwd=tmp_path)
    assert r.returncode == 2 and "not a Zarr store" in r.stderr
    assert (tmp_path / "c.zarr" / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_killed_run_leaves_no_complete_looking_store(tmp_path):
    """Kill -9 while chunks are being appended: only the hidden temporary store remains."""
    args = [a if a != "3000" else "400000" for a in ARGS]
    proc = subprocess.Popen(
        [str(BIN), *args, "--chunk-size", "8192", "--out", "big.zarr"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            tmp = [p for p in tmp_path.iterdir() if p.name.startswith(".big.zarr.")]
            if tmp and (tmp[0] / ".zmetadata").exists():
                break  # the first chunk is written; the run is in the middle
            assert proc.poll() is None, "the run ended before it could be interrupted"
            time.sleep(0.05)
        else:
            pytest.fail("no temporary store appeared")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "big.zarr").exists()
    assert all(p.name.startswith(".big.zarr.") for p in tmp_path.iterdir())


def test_amounts_from_the_cli(tmp_path):
    r = run(
        "simulate", MODEL, REGIMEN, "--patients", "200", "--population", POP, "--until", "6 h",
        "--every", "10 min", "--amounts", "--trajectory-dtype", "float64", "--out", "a.nc",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    with xr.open_dataset(tmp_path / "a.nc") as back:
        assert back.amount.dtype == np.float64 and back.amount.attrs["units"] == "mg"
        assert back.amount.sizes == {"patient": 200, "compartment": 5, "time": 37}
        assert list(back.traj_output.values) == ["cp", "cp_norketamine"]  # implied
    r = run("simulate", MODEL, REGIMEN, "--weight", "70", "--amounts", cwd=tmp_path)
    assert r.returncode == 2 and "--amounts" in r.stderr


@pytest.mark.skipif(os.name != "posix", reason="signals")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_cleans_up_like_sigint_and_stale_temporaries_go(tmp_path, sig):
    """SIGTERM (or SIGINT) while chunks are appended: the temporary store is removed and
    the exit status is 128 + the signal; a temporary left by a dead run (kill -9) is
    removed at the start."""
    import re
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:63] or "localhost"
    stale = tmp_path / f".big.zarr.0123abcd.{dead.pid}@{host}.tmp"
    (stale / "cmax").mkdir(parents=True)
    (stale / "cmax" / "0").write_bytes(b"\0" * 4096)
    args = [a if a != "3000" else "400000" for a in ARGS]
    # Started as a shell starts a command in the foreground, SIGINT not ignored: under
    # pytest-xdist the worker may ignore it, and an ignored SIGINT is inherited (Python then
    # installs no KeyboardInterrupt handler: the run went on to the end). But started with
    # the signal blocked, as a parent whose libraries blocked it would start it (the mask is
    # inherited too): the command must unblock it.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
    try:
        proc = subprocess.Popen(
            [str(BIN), *args, "--chunk-size", "8192", "--out", "big.zarr"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            tmp = [p for p in tmp_path.iterdir() if p.name.startswith(".big.zarr.")]
            if tmp and tmp[0] != stale and (tmp[0] / ".zmetadata").exists():
                break  # the first chunk is written; the run is in the middle
            assert proc.poll() is None, "the run ended before it could be interrupted"
            time.sleep(0.05)
        else:
            pytest.fail("no temporary store appeared")
        assert not stale.exists()
    finally:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert err.strip().splitlines()[-1] == f"pkpd: interrupted ({sig.name})"
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_uppercase_zarr_extension_writes_a_store(tmp_path):
    r = run(*ARGS[:3], "--patients", "200", "--population", POP, "--until", "6 h",
            "--out", "c.ZARR", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    with xr.open_zarr(tmp_path / "c.ZARR") as back:
        assert back.sizes["patient"] == 200
    assert [p.name for p in tmp_path.iterdir()] == ["c.ZARR"]


def test_seed_beyond_64_bits_is_written_to_netcdf(tmp_path):
    seed = str(2**70)
    r = run(*ARGS[:3], "--patients", "200", "--population", POP, "--until", "6 h",
            "--seed", seed, "--out", "c.nc", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    with xr.open_dataset(tmp_path / "c.nc") as back:
        assert back.attrs["seed"] == seed


# ----------------------------------------------------------------------------- covariates
# (issue 12: a shipped model runs with a shipped population; nothing is defaulted silently)

PER_KG = "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 1 h"
SMALL = dict(seed=3, until="3 h", every="10 min", bands=False, progress=False)


def _cohort(model, population, n=8, regimen=PER_KG, **kw):
    """A small cohort; range warnings (adults outside a model's studied ages) are expected
    and ignored, defaults are recorded and returned for the caller to check."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", CovariateRangeWarning)
        ds = simulate_cohort(model, regimen, population, n, **{**SMALL, **kw})
    defaults = [str(w.message) for w in rec if issubclass(w.category, CovariateDefaultWarning)]
    others = [w for w in rec if not issubclass(w.category, CovariateDefaultWarning)]
    assert all(not issubclass(w.category, PkpdWarning) or "variability" in str(w.message)
               for w in others), [str(w.message) for w in others]  # fmt: skip
    return ds, defaults


ADULT_MODELS = [m for m in available_models() if not load_model(m).paediatric]


@pytest.mark.parametrize("population", available_populations())
@pytest.mark.parametrize("model", ADULT_MODELS)
def test_every_shipped_model_runs_with_every_shipped_population(model, population):
    """8 patients of each (adult model, population) pair, with per-kg doses: every patient
    solved, every covariate the model uses drawn, or its default announced by name."""
    spec = load_model(model)
    ds, defaults = _cohort(model, population)
    assert ds.sizes["patient"] == 8 and np.all(ds.status.values == 0)
    for p in spec.param_names:
        assert np.all(np.isfinite(ds[f"param_{p}"].values)), p
    drawn = set(load_population(population).covariates)
    missing = sorted(c for c in spec.used_covariates if c not in drawn)
    assert len(defaults) == len(missing), defaults
    for name, msg in zip(missing, defaults, strict=True):
        assert f"`{name}` not given by population {population!r}" in msg
    assert ds.attrs["covariate_defaults"] == (
        "; ".join(f"{c}={spec.covariates[c].default}" for c in missing) or "none"
    )
    if "weight" in spec.covariates and spec.covariates["weight"].reference:
        assert "weight" in spec.used_covariates and "weight" in ds.coords


def test_perez_ruixo_race_from_a_population_and_from_a_table(tmp_path):
    """The issue's command crashed ("truth value of an array ... is ambiguous"). The model
    file: Asian race multiplies kel by 0.36 and CLn/F by 0.81."""
    model = "perezruixo2021_esketamine"
    asian, d1 = _cohort(model, "spine_fusion_china", iiv=False, regimen="20 mg bolus at 0 h")
    other, d2 = _cohort(model, "healthy_volunteers", iiv=False, regimen="20 mg bolus at 0 h")
    assert d1 == [] and len(d2) == 1 and "default 'non_asian'" in d2[0]
    assert set(asian.race.values) == {"asian"} and "race" not in other.coords
    np.testing.assert_allclose(asian.param_kel.values / other.param_kel.values, 0.36, rtol=1e-14)
    np.testing.assert_allclose(asian.param_CLn.values / other.param_CLn.values, 0.81, rtol=1e-14)
    # a table with a race column: each row its own level
    path = tmp_path / "pts.csv"
    path.write_text("id,race,age\na,asian,30\nb,non_asian,30\nc,asian,50\nd,non_asian,50\n")
    ds, defaults = _cohort(model, str(path), n=None, iiv=False, regimen="20 mg bolus at 0 h")
    assert defaults == [] and list(ds.race.values) == ["asian", "non_asian"] * 2
    kel = ds.param_kel.values
    np.testing.assert_allclose(kel[[0, 2]] / kel[[1, 3]], 0.36, rtol=1e-14)
    for out in ("cp", "cp_noresketamine"):  # slower elimination: higher exposure
        auc = ds.auc.sel(output=out, window="total").values
        assert auc[0] > 1.01 * auc[1] and auc[2] > 1.01 * auc[3], (out, auc)
    # the command line
    r = run("simulate", model, "lumbar_fusion_esketamine", "--population", "spine_fusion_china",
            "--patients", "8", "--until", "6 h", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "population: spine_fusion_china, 8 patients" in r.stdout
    assert "Traceback" not in r.stderr and "ambiguous" not in r.stderr


def _table(tmp_path, text, name="pts.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("id,WT [kg],age\na,50,30\n", r"pts.csv: column 'WT' is not a covariate of model "
                                      r"'fanta2015_otto2021'; expected .*weight.*extra_columns"),
        ("id,weigth,age\na,50,30\n", r"pts.csv: unknown column 'weigth' .*did you mean "
                                     r"`weight`\?"),
        ("id,weight,Race\na,50,asian\n", r"column 'Race' is not a covariate of model "
                                        r"'fanta2015_otto2021'; expected weight, age"),
        ("age\n30\n", r"per-kg doses but the covariate table .*pts.csv has no `weight`"),
    ],
)  # fmt: skip
def test_covariate_table_columns_the_model_does_not_know_are_errors(tmp_path, text, error):
    """`WT [kg]` or `Race` used to run every patient at 70 kg (or non_asian), silently."""
    with pytest.raises(CovariateError, match=error):
        simulate_cohort(MODEL, PER_KG, _table(tmp_path, text), **SMALL)


def test_race_column_in_the_wrong_case_is_an_error_for_perez_ruixo(tmp_path):
    path = _table(tmp_path, "id,Race\na,asian\n")
    for extra in ("error", "ignore"):
        with pytest.raises(CovariateError, match=r"'Race' .*did you mean `race`"):
            simulate_cohort("perezruixo2021_esketamine", "20 mg bolus at 0 h", path,
                            extra_columns=extra, **SMALL)  # fmt: skip
    bad = _table(tmp_path, "id,race\na,asian\nb,Asian\nc,white\n", "levels.csv")
    pattern = r"levels.csv: row 2: column `race`: 'Asian' is not a level .*\(2 rows affected\)"
    with pytest.raises(CovariateError, match=pattern):
        simulate_cohort("perezruixo2021_esketamine", "20 mg bolus at 0 h", bad, **SMALL)


def test_extra_columns_on_purpose_and_missing_covariates_default_loudly(tmp_path):
    path = _table(tmp_path, "id,site,age\na,Leiden,30\nb,Lyon,35\n")
    with pytest.raises(CovariateError, match=r"column 'site' is not a covariate"):
        simulate_cohort(MODEL, "20 mg bolus at 0 h", path, **SMALL)
    ds, defaults = _cohort(MODEL, path, n=None, regimen="20 mg bolus at 0 h",
                           extra_columns="ignore")  # fmt: skip
    assert list(ds.site.values) == ["Leiden", "Lyon"]
    assert len(defaults) == 1 and "`weight` not given by the covariate table" in defaults[0]
    assert "default 70 kg" in defaults[0] and ds.attrs["covariate_defaults"] == "weight=70.0"
    with pytest.raises(CohortError, match="extra_columns"):
        simulate_cohort(MODEL, "20 mg bolus at 0 h", path, extra_columns="keep", **SMALL)
    r = run("simulate", MODEL, "20 mg bolus at 0 h", "--population", path, "--until", "2 h",
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2 and "--extra-columns ignore" in r.stderr
    r = run("simulate", MODEL, "20 mg bolus at 0 h", "--population", path, "--until", "2 h",
            "--extra-columns", "ignore", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "pkpd: warning:" in r.stderr and "`weight` not given" in r.stderr


def test_children_models_need_the_childrens_weights(tmp_path):
    """A paediatric model never runs children at the 70-kg adult default; with weights it
    runs, and the cohort's range warning counts the patients outside."""
    ages = _table(tmp_path, "id,age\na,4\nb,8\n", "ages.csv")
    with pytest.raises(CovariateError, match="estimated in children"):
        simulate_cohort("herd2007_racemic_children", "20 mg bolus at 0 h", ages, **SMALL)
    kids = _table(tmp_path, "id,age,weight\na,4,16\nb,8,26\nc,12,80\nd,13,90\n", "kids.csv")
    with pytest.warns(CovariateRangeWarning) as rec:
        ds = simulate_cohort("herd2007_racemic_children", PER_KG, kids, **SMALL)
    assert np.all(ds.status.values == 0)
    msgs = [str(w.message) for w in rec]
    assert any("2 of 4 patients (50.0%) have weight (80 to 90 kg) outside" in m for m in msgs), msgs


def test_population_levels_must_be_the_models(tmp_path):
    text = (populations_dir() / "spine_fusion_china.toml").read_text()
    assert text.count('value = "asian"') == 1
    path = tmp_path / "pop.toml"
    path.write_text(text.replace('value = "asian"', 'value = "chinese"'))
    with pytest.raises(CovariateError, match=r"pop.toml: `fixed.race`: level 'chinese' is not a "
                                             r"level of covariate `race`"):  # fmt: skip
        simulate_cohort("perezruixo2021_esketamine", "20 mg bolus at 0 h", str(path), 8, **SMALL)


def test_single_patient_covariate_options_are_checked(tmp_path):
    m = "perezruixo2021_esketamine"
    r = run("simulate", m, "20 mg bolus at 0 h", "--covariate", "Race=asian", cwd=tmp_path)
    assert r.returncode == 2 and "did you mean `race`" in r.stderr, r.stderr
    for opt, value in (("--age", "-1"), ("--age", "1000"), ("--weight", "70 mg")):
        r = run("simulate", m, "20 mg bolus at 0 h", opt, value, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert opt in r.stderr and "physiological plausibility limits" in r.stderr
        assert r.stderr.strip().count("\n") == 0, r.stderr
    r = run("simulate", "herd2007_racemic_children", "1 mg/kg bolus at 0 h", "--age", "5",
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2 and "estimated in children" in r.stderr
    r = run("simulate", "domino_racemic", "1 mg/kg bolus at 0 h", "--until", "1 h", cwd=tmp_path)
    assert r.returncode == 0 and "default 70 kg for the run and its per-kg doses" in r.stderr
