"""Fuzz the command line: whatever a user types, the outcome is one of two things.

* exit status 0, and every file asked for exists and holds finite numbers, or
* exit status 2, stderr ends in exactly one line ``pkpd: error: ...`` (only ``pkpd: warning:``
  lines may come before it), and no output file, temporary or hidden store is left behind.

Never a traceback, never another exit status. Hypothesis throws random one-line regimens,
mutated model files (text edits of a shipped model: values replaced by hostile tokens, lines
dropped or duplicated), covariate CSV tables and option values at ``pkpd simulate`` in-process
(click's runner), so a failure is reported with the exact arguments that caused it.

The examples are derandomized, so CI runs the same cases every time; set
``PKPD_FUZZ_EXAMPLES`` (for instance 2000) and ``PKPD_FUZZ_RANDOM=1`` to search further.
"""

from __future__ import annotations

import os
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pkpd.cli import main
from pkpd.inputs.model import models_dir

N = int(os.environ.get("PKPD_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=N,
    deadline=None,
    derandomize=os.environ.get("PKPD_FUZZ_RANDOM") != "1",
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# ----------------------------------------------------------------------------- strategies

NUMBERS = st.one_of(
    st.sampled_from(
        [
            "0",
            "-1",
            "1",
            "0.5",
            "1e-9",
            "1e9",
            "1e306",
            "1e999",
            "-0",
            "nan",
            "inf",
            "-inf",
            "1" + "0" * 400,
            "0x10",
            "1_000",
            "2**64",
            "18446744073709551616",
            ".",
            "1e",
            "--1",
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.integers(-(2**70), 2**70).map(str),
)
UNITS = st.sampled_from(
    [
        "mg",
        "ug",
        "g",
        "mg/kg",
        "ug/kg",
        "mg/kg/h",
        "ug/kg/min",
        "mg/h",
        "mL",
        "h",
        "min",
        "day",
        "s",
        "year",
        "kg",
        "ng/mL",
        "mol",
        "furlong",
        "",
        "mg/kg bolus",
        "%",
        "m",
    ]
)
WORDS = st.sampled_from(
    [
        "bolus",
        "at",
        "from",
        "to",
        "over",
        "every",
        "for",
        ";",
        "end_of_surgery",
        "+",
        "-",
        "h",
        "start",
        "\n",
        "\t",
        "..",
        "=",
        "#",
        '"',
        "'",
        "\x1b[2J",
        "é",
        "ℂL",
        "0 h",
    ]
)
JUNK = st.text(alphabet=string.printable + "µé—\x00\x1b", max_size=12)

TOKEN = st.one_of(NUMBERS, UNITS, WORDS, JUNK)


SANE_NUMBERS = st.one_of(
    st.sampled_from(["0", "0.1", "0.25", "1", "2", "10"]),
    st.floats(0.0, 50.0, allow_nan=False).map(lambda x: f"{x:.4g}"),
)
DOSE_UNITS = st.sampled_from(["mg", "ug", "mg/kg", "ug/kg"])
RATE_UNITS = st.sampled_from(["mg/h", "mg/kg/h", "ug/kg/min", "mg/min"])
TIME_UNITS = st.sampled_from(["h", "min", "s", "day"])


def _mostly(sane, wild):
    """Mostly well-formed values (so the simulation runs), sometimes hostile ones."""
    return st.integers(0, 3).flatmap(lambda i: wild if i == 3 else sane)


def _wild_or_sane(draw, sane, wild, wild_run):
    """A sane value in a well-formed example; in a hostile one, either."""
    return draw(_mostly(sane, wild) if wild_run else sane)


@st.composite
def regimen_lines(draw) -> str:
    """A regimen in the one-line grammar, mostly well formed, sometimes not at all."""
    wild_run = draw(st.integers(0, 2)) == 2

    def num() -> str:
        return _wild_or_sane(draw, SANE_NUMBERS, NUMBERS, wild_run)

    def unit(sane) -> str:
        return _wild_or_sane(draw, sane, UNITS, wild_run)

    parts = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["bolus", "bolus", "infusion", "infusion", "over", "junk"]))
        start = f"{num()} {unit(TIME_UNITS)}"
        if kind == "bolus":
            parts.append(f"{num()} {unit(DOSE_UNITS)} bolus at {start}")
        elif kind == "over":
            parts.append(f"{num()} {unit(DOSE_UNITS)} over {num()} {unit(TIME_UNITS)} from {start}")
        elif kind == "infusion":
            end = f"{num()} {unit(TIME_UNITS)}"
            parts.append(f"{num()} {unit(RATE_UNITS)} from {start} to {end}")
        elif wild_run:
            parts.append(" ".join(draw(st.lists(TOKEN, min_size=0, max_size=6))))
        else:
            parts.append(f"{num()} {unit(DOSE_UNITS)} bolus at {start}")
    return "; ".join(parts)


GOOD_REGIMENS = st.sampled_from(
    [
        "1 mg bolus at 0 h",
        "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 1 h",
        "10 mg over 5 min from 0 h; 5 mg/h from 0 h to 30 min",
    ]
)

TIMES = st.one_of(
    st.sampled_from(
        [
            "1h",
            "2 h",
            "90 min",
            "1 min",
            "0h",
            "-1 h",
            "1e306 day",
            "1e-9h",
            "7 min",
            "nan h",
            "inf h",
            "1 mg",
            "",
            "x",
            "3 furlong",
            "1e9 s",
        ]
    ),
    st.builds(lambda n, u: f"{n} {u}", NUMBERS, UNITS),
)


@st.composite
def model_texts(draw) -> str:
    """A shipped linear model file edited at random: values replaced, lines dropped or doubled."""
    name = draw(
        st.sampled_from(["domino_racemic", "fanta2015_otto2021", "herd2007_racemic_children"])
    )
    lines = (models_dir() / f"{name}.toml").read_text(encoding="utf-8").splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["value", "value", "value", "drop", "dup", "junk"]))
        if action == "value" and "=" in lines[i]:
            key = lines[i].split("=", 1)[0]
            value = draw(
                st.one_of(
                    NUMBERS,
                    st.builds(lambda n, u: f'"{n} {u}"', NUMBERS, UNITS),
                    JUNK.map(lambda s: '"' + s.replace("\\", "").replace('"', "") + '"'),
                    st.sampled_from(["[]", "{}", "true", '""', "[1, 2]", '"1 L/h"']),
                )
            )
            lines[i] = f"{key}= {value}"
        elif action == "drop":
            del lines[i]
        elif action == "dup":
            lines.insert(i, lines[i])
        elif action == "junk":
            lines[i] = draw(JUNK)
        if not lines:
            lines = [""]
    return "\n".join(lines) + "\n"


HEADERS = st.sampled_from(
    [
        "weight [kg]",
        "weight",
        "WT [kg]",
        "weight [lb]",
        "weight [mg]",
        "age [year]",
        "age",
        "sex",
        "Race",
        "race",
        "height [cm]",
        "id",
        "",
        "weight [kg]",
        " weight [kg] ",
        "x;y",
    ]
)
CELLS = st.one_of(
    st.sampled_from(
        [
            "70",
            "80.5",
            "-1",
            "0",
            "1000",
            "female",
            "male",
            "asian",
            "non_asian",
            "",
            "nan",
            "inf",
            "1e999",
            "=cmd|calc",
            "70 kg",
            "M",
            "F",
        ]
    ),
    NUMBERS,
)


@st.composite
def csv_tables(draw) -> bytes:
    good = st.sampled_from(
        [
            ["weight [kg]", "age [year]", "sex", "race"],
            ["weight [lb]", "race"],
            ["id", "weight", "race"],
        ]
    )
    wild_run = draw(st.integers(0, 2)) == 2
    headers = draw(st.lists(HEADERS, min_size=1, max_size=4) if wild_run else good)
    sep = draw(st.sampled_from([",", ",", ",", ";", "\t"]))
    sane = {
        "weight [kg]": st.sampled_from(["55", "70.5", "92"]),
        "weight": st.just("80"),
        "weight [lb]": st.sampled_from(["150", "200"]),
        "age [year]": st.sampled_from(["30", "64"]),
        "sex": st.sampled_from(["female", "male"]),
        "race": st.sampled_from(["asian", "non_asian"]),
        "id": st.sampled_from(["1", "2", "p3"]),
    }
    rows = [
        sep.join(_wild_or_sane(draw, sane.get(h, CELLS), CELLS, wild_run) for h in headers)
        for _ in range(draw(st.integers(0 if wild_run else 1, 4)))
    ]
    text = "\n".join([sep.join(headers), *rows]) + "\n"
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "latin-1", "utf-16"]))
    return text.encode(encoding, errors="replace")


OPTION_VALUES = {
    "--weight": st.one_of(
        st.sampled_from(["70", "70 kg", "154 lb", "-3", "0", "1 mg", "x"]), NUMBERS
    ),
    "--age": st.one_of(st.sampled_from(["40", "-1", "1000", "40 year", "3 h"]), NUMBERS),
    "--sex": st.sampled_from(["F", "M", "f", "x", ""]),
    "--every": TIMES,
    "--until": TIMES,
    "--covariate": st.sampled_from(["race=asian", "Race=asian", "nope=1", "weight=70", "=", "x"]),
    "--anchor": st.sampled_from(["end_of_surgery=2h", "end_of_surgery=-1h", "x=1h", "=", "a=b"]),
    "--method": st.sampled_from(["auto", "exact", "dopri5", "rodas", "euler"]),
    "--rtol": st.sampled_from(["1e-6", "0", "-1", "nan", "1e3", "x"]),
}

# ----------------------------------------------------------------------------- the oracle


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in {"model.toml", "table.csv"})


def _assert_finite(ds) -> None:
    """Every float is finite, except the NaN that marks an empty slot of the ragged
    bolus-limit variables (an event that is no bolus on the trajectory grid)."""
    empty = ds["trajectory_bolus_time"].isnull() if "trajectory_bolus_time" in ds else None
    for name, var in ds.data_vars.items():
        if var.dtype.kind != "f":
            continue
        ok = np.isfinite(var)
        if empty is not None and "trajectory_bolus_time" in ds and set(empty.dims) <= set(var.dims):
            ok = ok | empty
        assert bool(ok.all()), f"{name} not finite"


def check(result, folder: Path, outputs: list[Path]) -> None:
    """Exit 0 with finite results, or exit 2 with one error line and nothing left behind."""
    err = result.stderr
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{result.output}"
    )
    if result.exit_code == 0:
        for path in outputs:
            assert path.exists(), f"{path.name} missing after exit 0"
            if path.suffix.lower() in (".nc", ".zarr"):
                opener = xr.open_zarr if path.suffix.lower() == ".zarr" else xr.open_dataset
                with opener(path) as ds:
                    _assert_finite(ds)
        return
    assert result.exit_code == 2, f"exit {result.exit_code}:\n{result.output}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "exit 2 without a message"
    assert lines[-1].startswith("pkpd: error: "), err
    assert all(ln.startswith("pkpd: warning: ") for ln in lines[:-1]), err
    assert _leftovers(folder) == [], f"left behind: {_leftovers(folder)}\n{err}"


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=True)


# ----------------------------------------------------------------------------- the tests


@FUZZ
@given(
    regimen=st.one_of(regimen_lines(), GOOD_REGIMENS),
    until=_mostly(st.sampled_from(["2 h", "90 min", "1 day"]), TIMES),
    every=_mostly(st.sampled_from(["1 min", "5 min", "10 min"]), TIMES),
)
def test_random_regimens_and_grids(regimen, until, every):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        out = [folder / "r.nc", folder / "r.csv"]
        args = [
            "simulate",
            "domino_racemic",
            regimen,
            "--weight",
            "70",
            "--until",
            until,
            "--every",
            every,
            "--out",
            str(out[0]),
            "--csv",
            str(out[1]),
        ]
        check(_invoke(args), folder, out)


@FUZZ
@given(text=model_texts(), regimen=GOOD_REGIMENS)
def test_random_model_files(text, regimen):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = folder / "model.toml"
        model.write_text(text, encoding="utf-8")
        out = [folder / "m.nc"]
        args = [
            "simulate",
            str(model),
            regimen,
            "--weight",
            "20",
            "--age",
            "8",
            "--until",
            "2 h",
            "--every",
            "10 min",
            "--out",
            str(out[0]),
        ]
        check(_invoke(args), folder, out)
        r = _invoke(["models", "show", str(model)])
        check(r, folder, [])
        assert "\x1b" not in r.output, "a control character reached the terminal"


@FUZZ
@given(table=csv_tables(), seed=st.one_of(st.sampled_from([0, 1, 2**64, -1]), st.integers()))
def test_random_covariate_tables(table, seed):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        csv = folder / "table.csv"
        csv.write_bytes(table)
        out = [folder / "c.nc"]
        args = [
            "simulate",
            "perezruixo2021_esketamine",
            "0.2 mg/kg bolus at 0 h",
            "--population",
            str(csv),
            "--seed",
            str(seed),
            "--until",
            "2 h",
            "--every",
            "10 min",
            "--out",
            str(out[0]),
        ]
        check(_invoke(args), folder, out)


@FUZZ
@given(
    options=st.dictionaries(
        st.sampled_from(sorted(OPTION_VALUES)), st.none(), min_size=1, max_size=4
    ).flatmap(lambda d: st.fixed_dictionaries({k: OPTION_VALUES[k] for k in d})),
    regimen=GOOD_REGIMENS,
)
def test_random_option_values(options, regimen):
    options.setdefault("--until", "2 h")
    options.setdefault("--every", "10 min")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        out = [folder / "o.nc"]
        args = ["simulate", "perezruixo2021_esketamine", regimen, "--out", str(out[0])]
        for k, v in options.items():
            args += [k, v]
        check(_invoke(args), folder, out)


@FUZZ
@given(
    patients=_mostly(st.sampled_from(["1", "3", "20"]), st.sampled_from(["0", "-1", "x", "1e3"])),
    seed=_mostly(st.sampled_from(["0", "7", str(2**64)]), st.sampled_from(["-1", "x", "1e3"])),
    extra=st.lists(
        st.sampled_from(
            [
                ["--threshold", "cp=50ng/mL"],
                ["--threshold", "cp=x"],
                ["--threshold", "nope=1"],
                ["--window", "w=0h..1h"],
                ["--window", "w=1h..0h"],
                ["--window", "bad"],
                ["--at", "a=end_of_surgery"],
                ["--at", "a=1e306 day"],
                ["--every", "7 min"],
                ["--every", "1e-9h"],
                ["--chunk-size", "0"],
                ["--no-bands"],
                ["--trajectories", "cp"],
                ["--trajectories", "nope"],
                ["--method", "dopri5"],
            ]
        ),
        max_size=3,
    ),
    suffix=_mostly(st.sampled_from([".nc", ".zarr", ".ZARR"]), st.just(".txt")),
)
def test_random_cohort_options(patients, seed, extra, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        out = [folder / f"k{suffix}"]
        args = [
            "simulate",
            "fanta2015_otto2021",
            "lumbar_fusion_esketamine",
            "--population",
            "spine_fusion_china",
            "--patients",
            patients,
            "--seed",
            seed,
            "--until",
            "6 h",
            "--out",
            str(out[0]),
        ]
        for item in extra:
            args += item
        result = _invoke(args)
        check(result, folder, out)


@pytest.mark.parametrize(
    "args",
    [
        ["--nope"],
        ["models", "--nope"],
        ["nocmd"],
        ["simulate"],
        ["models", "show"],
        ["simulate", "a", "b", "--method", "euler"],
        ["simulate", "a", "b", "--seed", "x"],
    ],
)
def test_click_usage_errors_are_one_line(args):
    r = _invoke(args)
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("pkpd: error: "), r.stderr
