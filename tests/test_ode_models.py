"""Nonlinear models written as equations in the ``[ode]`` section of a model file."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import tomllib

import numba
import numpy as np
import pytest
from click.testing import CliRunner
from scipy.integrate import solve_ivp

import pkpd
from pkpd.cli import main
from pkpd.errors import ModelError
from pkpd.inputs.model import ModelSpec, models_dir, parse_expression

REGIMEN = "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h; 0.05 mg/kg/h from 4 h to 12 h"
SRC = {"source": "test fixture", "tag": "assumed"}


def _toml(name):
    with open(models_dir() / f"{name}.toml", "rb") as fh:
        return tomllib.load(fh)


def _spec(data):
    return ModelSpec.from_dict(data, file="m.toml")


# ----------------------------------------------------------------------------- parser


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("__import__('os').system('x')", "'__import__'"),
        ("os.system", "unknown name 'os'"),
        ("V1.__class__", "attribute access is not allowed ('V1.__class__')"),
        ("cp.real", "attribute access"),
        ("(lambda: V1)()", "lambda"),
        ("eval('1')", "call of 'eval' is not allowed"),
        ("open('f')", "call of 'open'"),
        ("foo + 1", "unknown name 'foo'"),
        ("V1[0]", "subscripts"),
        ("'a'", "constant 'a'"),
        ("[1, 2]", "lists"),
        ("exp(1, 2)", "exp() takes 1 arguments, got 2"),
        ("min(V1)", "min() takes 2 or more"),
        ("exp", "function 'exp' used as a value"),
        ("V1 // 2", "operator FloorDiv"),
        ("V1 +", "cannot parse"),
        ("_secret", "unknown name '_secret'"),
        ("(V1 := 1)", "assignment expressions"),
    ],
)
def test_parser_rejects_unsafe_or_unknown_input(text, needle):
    with pytest.raises(ModelError) as ei:
        parse_expression(text, {"V1", "cp"}, file="m.toml", key="ode.derivatives.x")
    msg = str(ei.value)
    assert msg.startswith("m.toml: `ode.derivatives.x`: ")
    assert needle in msg


def test_parser_translates_the_whitelist():
    known = {"a", "b", "t"}
    src, used = parse_expression(
        "pow(a, 2) + max(a, b, 0) - abs(-b) + (sqrt(a) if a > b and not b <= 0 else log(b))"
        " + exp(-t)",
        known,
        file="f",
        key="k",
    )
    assert used == known
    env = {"v_a": 4.0, "v_b": 1.5, "v_t": 0.0, "math": __import__("math")}
    env["_pow"] = pow
    expected = 4.0**2 + 4.0 - 1.5 + 2.0 + 1.0
    assert eval(src, env) == pytest.approx(expected)  # our generated source, not user text


def test_model_errors_name_file_key_and_name():
    base = _toml("fanta2015_mm_s_ketamine")
    cases = [
        (("ode", "derivatives", "central"), "rate - Vmax * cp", "unknown name 'Vmax'"),
        (("ode", "derivatives", "peripheral1"), "__import__('os')", "'__import__'"),
        (("ode", "intermediates", "cp"), "central / V1 + elimination", "unknown name 'elim"),
        (("ode", "derivatives", "central"), "- elimination", "must contain the infusion"),
        (("ode", "outputs", "cp", "expression"), "rate", "may not depend on `rate`"),
    ]
    for path, value, needle in cases:
        data = copy.deepcopy(base)
        d = data
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
        with pytest.raises(ModelError, match=needle) as ei:
            _spec(data)
        assert str(ei.value).startswith("m.toml: `")
    data = copy.deepcopy(base)
    data["ode"]["derivatives"]["nope"] = "1"
    with pytest.raises(ModelError, match=r"`ode.derivatives.nope`: 'nope' is not a state"):
        _spec(data)
    data = copy.deepcopy(base)
    del data["ode"]["derivatives"]["peripheral2"]
    with pytest.raises(ModelError, match="every state needs a derivative"):
        _spec(data)
    data = copy.deepcopy(base)
    data["parameters"]["unused"] = {"value": "1 L", **SRC}
    with pytest.raises(ModelError, match=r"`parameters\.unused`: defined but not used"):
        _spec(data)
    data = copy.deepcopy(base)
    data["parameters"]["exp"] = {"value": "1 L", **SRC}
    with pytest.raises(ModelError, match="'exp' is reserved"):
        _spec(data)
    data = copy.deepcopy(base)
    data["compartments"] = {}
    with pytest.raises(ModelError, match="writes its structure as equations"):
        _spec(data)


def _edited(base, path, value=None, rename=None):
    """A deep copy of `base` with the entry at `path` set to `value`, or its last key
    renamed to `rename` (keeping the entry)."""
    data = copy.deepcopy(base)
    d = data
    for k in path[:-1]:
        d = d[k]
    if rename is not None:  # in place: order matters (intermediates, states)
        items = [(rename if k == path[-1] else k, v) for k, v in d.items()]
        d.clear()
        d.update(items)
    else:
        d[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "new_name", "key"),
    [
        (("ode", "states", "peripheral1"), "junk\n", "ode.states.junk\n"),
        (("ode", "outputs", "cp"), "cp\n", "ode.outputs.cp\n"),
        (("ode", "intermediates", "cp"), "cp\n", "ode.intermediates.cp\n"),
        (("parameters", "Km"), "Km\n", "parameters.Km\n"),
        (("parameters", "Km"), "ℂL", "parameters.ℂL"),
    ],
)
def test_ode_names_are_whole_ascii_identifiers(path, new_name, key):
    """`$` matched before a final newline: 'junk\\n' reached the generated code
    (IndentationError) and 'cp\\n' the CSV header."""
    data = _edited(_toml("fanta2015_mm_s_ketamine"), path, rename=new_name)
    with pytest.raises(ModelError) as ei:
        _spec(data)
    msg = str(ei.value)
    assert msg.startswith(f"m.toml: `{key}`: ") and "\n" not in msg.replace(key, "")
    assert repr(new_name) in msg and "not a valid" in msg


@pytest.mark.parametrize(
    ("text", "char"),
    [
        ("rate - ℂL * cp - Q2 * (cp - peripheral1 / V2) - Q3 * (cp - peripheral2 / V3)", "ℂ"),
        ("rate * ｅｘｐ(0) - CL * cp - Q2 * (cp - peripheral1 / V2) - Q3 * cp", "ｅ"),
    ],
)
def test_non_ascii_equations_are_refused(text, char):
    """Python's parser NFKC-normalises identifiers: 'ℂL' ran as 'CL', 'ｅｘｐ' as 'exp'."""
    data = _edited(_toml("fanta2015_mm_s_ketamine"), ("ode", "derivatives", "central"), text)
    with pytest.raises(ModelError) as ei:
        _spec(data)
    msg = str(ei.value)
    assert msg.startswith("m.toml: `ode.derivatives.central`: non-ASCII character")
    assert repr(char) in msg and f"U+{ord(char):04X}" in msg


@pytest.mark.parametrize(
    ("path", "new_name", "key"),
    [
        (("compartments", "central"), "central\n", "compartments.central\n"),
        (("analytes", "norketamine"), "nor\n", "analytes.nor\n"),
        (("parameters", "V1"), "V1\n", "parameters.V1\n"),
        (("parameters", "V1"), "Ｖ1", "parameters.Ｖ1"),
    ],
)
def test_linear_model_names_are_whole_ascii_identifiers(path, new_name, key):
    data = _edited(_toml("fanta2015_otto2021"), path, rename=new_name)
    with pytest.raises(ModelError) as ei:
        _spec(data)
    assert str(ei.value).startswith(f"m.toml: `{key}`: {new_name!r} is not a valid name")


def test_linear_effect_site_output_name_is_an_identifier():
    data = _edited(_toml("domino_racemic"), ("compartments", "effect", "output"), "ce\n")
    with pytest.raises(ModelError, match=r"`compartments.effect.output`: 'ce\\n' is not a valid"):
        _spec(data)


@pytest.mark.parametrize("name", ["dose_given", "auc_cp", "state_central", "time", "auc_x"])
def test_output_names_of_generated_variables_are_refused(name):
    """An output named like a generated dataset variable was silently replaced by it."""
    data = _edited(_toml("fanta2015_mm_s_ketamine"), ("ode", "outputs", "elimination_rate"),
                   rename=name)  # fmt: skip
    with pytest.raises(ModelError) as ei:
        _spec(data)
    msg = str(ei.value)
    assert msg.startswith(f"m.toml: `ode.outputs.{name}`: {name!r} is taken by a variable")


@pytest.mark.parametrize("unit", ["ng/mL", "mg/L", "nmol/L", "ug / mL"])
def test_concentration_unit_on_a_non_concentration_output_is_refused(unit):
    """Was accepted, then `pkpd simulate` failed with a KeyError ('auc_<output>')."""
    data = _edited(_toml("fanta2015_mm_s_ketamine"),
                   ("ode", "outputs", "elimination_rate", "unit"), unit)  # fmt: skip
    with pytest.raises(ModelError) as ei:
        _spec(data)
    msg = str(ei.value)
    assert msg.startswith(f"m.toml: `ode.outputs.elimination_rate.unit`: {unit!r} is a conc")
    assert "concentration = true" in msg
    # Units that are not concentrations stay free text.
    for ok in ("mg/h", "NRS 0-10", "1"):
        data["ode"]["outputs"]["elimination_rate"]["unit"] = ok
        assert _spec(data).ode.outputs[1].unit == ok


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("1" * 400 + " * V1", "is not a finite float"),  # OverflowError
        ("V1 * 1e999", "the number '1e999' is not a finite float"),  # numba TypingError
        ("-1e999", "is not a finite float"),
        ("1" * 5000, "cannot parse"),  # Python's own int-digits limit
        (" + ".join(["V1"] * 1000), "nests 1000 levels deep"),  # RecursionError
        ("-" * 1000 + "V1", "nests 1001 levels deep"),  # RecursionError
        ("exp(" * 150 + "V1" + ")" * 150, "nests 151 levels deep"),
        ("(" * 1000 + "V1" + ")" * 1000, "cannot parse"),
    ],
)
def test_huge_literals_and_deep_nesting_are_one_line_errors(text, needle):
    import time

    t0 = time.perf_counter()
    with pytest.raises(ModelError) as ei:
        parse_expression(text, {"V1"}, file="m.toml", key="ode.derivatives.x")
    assert time.perf_counter() - t0 < 2.0
    msg = str(ei.value)
    assert msg.startswith("m.toml: `ode.derivatives.x`: ") and needle in msg
    assert "\n" not in msg and len(msg) < 400  # the text is shortened, not repeated


def test_the_deepest_accepted_equation_compiles_as_python():
    """Two parentheses per level in the generated source stay below Python's limit of 200."""
    from pkpd.inputs.model import MAX_DEPTH

    text = "V1"
    for _ in range(MAX_DEPTH - 1):
        text = f"({text} < 1)"  # a comparison: two parentheses per level
    src, _ = parse_expression(text, {"V1"}, file="m.toml", key="k")
    compile(f"def f(v_V1):\n    return {src}\n", "<generated>", "exec")
    with pytest.raises(ModelError, match=f"nests {MAX_DEPTH + 1} levels"):
        parse_expression(f"({text} < 1)", {"V1"}, file="m.toml", key="k")


def test_shipped_nonlinear_models_carry_provenance():
    for name in ("fanta2015_mm_s_ketamine", "s_ketamine_pain_turnover"):
        spec = pkpd.load_model(name)
        assert not spec.is_linear
        assert "ILLUSTRATIVE" in spec.title
        assert spec.assumed_parameters  # Km / baseline, Imax, kout
        for p in spec.assumed_parameters:
            assert spec.parameters[p].source.note  # says why it is there
        with pytest.raises(ModelError, match="no system matrix"):
            spec.system(spec.typical_theta())


# ----------------------------------------------------------------------------- numerics


def _fanta_mm_rhs(theta, names, u_of_t):
    P = dict(zip(names, theta, strict=True))

    def f(t, y):
        a1, a2, a3 = y
        cp = a1 / P["V1"]
        el = P["CL"] * cp / (1 + cp / P["Km"])
        q2 = P["Q2"] * (cp - a2 / P["V2"])
        q3 = P["Q3"] * (cp - a3 / P["V3"])
        return [u_of_t(t) - el - q2 - q3, q2, q3]

    return f, [0.0, 0.0, 0.0], lambda y: y[0] / P["V1"]


def _pain_rhs(theta, names, u_of_t):
    P = dict(zip(names, theta, strict=True))

    def f(t, y):
        a1, a2, a3, ce, r = y
        cp = a1 / P["V1"]
        q2 = P["Q2"] * (cp - a2 / P["V2"])
        q3 = P["Q3"] * (cp - a3 / P["V3"])
        inh = P["Imax"] * ce / (P["IC50"] + ce)
        return [
            u_of_t(t) - P["CL"] * cp - q2 - q3,
            q2,
            q3,
            P["ke0"] * (cp - ce),
            P["kout"] * P["R0"] * (1 - inh) - P["kout"] * r,
        ]

    return f, [0.0, 0.0, 0.0, 0.0, P["R0"]], lambda y: y[0] / P["V1"]


def _scipy_reference(spec, build, t_out, weight=70.0):
    """Segment-by-segment Radau at rtol 1e-12 with the bolus jumps, written by hand."""
    theta = spec.individual_parameters({"weight": weight})
    ev = pkpd.load_regimen(REGIMEN).event_table(weight)

    def u_of_t(t):
        k = np.searchsorted(ev.t, t, side="right") - 1
        return ev.rate[k] if k >= 0 else 0.0

    f, y0, _ = build(theta, spec.param_names, u_of_t)
    y = np.array(y0, float)
    bounds = [*ev.t, t_out[-1]]
    out = np.zeros((t_out.size, y.size))
    for k in range(len(ev.t)):
        y[0] += ev.bolus[k]
        a, b = bounds[k], bounds[k + 1]
        if b <= a:
            continue
        mask = (t_out >= a) & (t_out <= b)
        r = solve_ivp(
            lambda t, y, b=b: f(min(t, b - 1e-12), y),
            (a, b),
            y,
            method="Radau",
            rtol=1e-12,
            atol=1e-14,
            t_eval=t_out[mask],
            dense_output=False,
        )
        out[mask] = r.y.T
        y = solve_ivp(
            lambda t, y, b=b: f(min(t, b - 1e-12), y),
            (a, b),
            y,
            method="Radau",
            rtol=1e-12,
            atol=1e-14,
        ).y[:, -1]
    return out


@pytest.mark.parametrize("method", ["dopri5", "rodas"])
@pytest.mark.parametrize(
    ("name", "build"),
    [("fanta2015_mm_s_ketamine", _fanta_mm_rhs), ("s_ketamine_pain_turnover", _pain_rhs)],
)
def test_agrees_with_scipy_radau_in_tolerance_units(name, build, method):
    spec = pkpd.load_model(name)
    t = np.linspace(0.0, 12.0, 49)[1:]  # after the first bolus
    ref = _scipy_reference(spec, build, t)
    rtol, atol = 1e-6, 1e-9
    ds = pkpd.simulate(
        spec, REGIMEN, covariates={"weight": 70}, times=t, method=method, rtol=rtol, atol=atol
    )
    Y = np.stack([ds[f"state_{s.name}"].values for s in spec.ode.states], axis=1)
    err = np.abs(Y - ref) / (atol + rtol * np.abs(ref))
    assert err.max() < 5, (name, method, err.max(axis=0))
    assert ds.dose_given.values[-1] == pytest.approx(
        pkpd.load_regimen(REGIMEN).event_table(70.0).total_dose, rel=1e-9
    )
    # Work budget over 12 h (measured ~40-60 steps when written).
    assert ds.attrs["solver_nsteps"] < 150 and ds.attrs["solver_nrejected"] < 10


def test_saturable_elimination_reduces_to_the_linear_model_at_low_doses():
    """cp << Km: the Michaelis-Menten variant equals the linear Fanta/Otto parent."""
    low = "1 mg over 1 h from 0 h"
    lin = pkpd.simulate("fanta2015_otto2021", low, covariates={"weight": 70}, until="6 h")
    mm = pkpd.simulate(
        "fanta2015_mm_s_ketamine",
        low,
        covariates={"weight": 70},
        until="6 h",
        method="dopri5",
        rtol=1e-9,
        atol=1e-13,
    )
    # Elimination differs by the factor 1/(1 + cp/Km), cp/Km < 2e-3 here; saturation
    # can only slow elimination.
    np.testing.assert_allclose(mm.cp.values[1:], lin.cp.values[1:], rtol=5e-3)
    assert np.all(mm.cp.values[1:] >= lin.cp.values[1:] * (1 - 1e-9))
    high = "500 mg bolus at 0 h"
    lin_h = pkpd.simulate("fanta2015_otto2021", high, covariates={"weight": 70}, until="6 h")
    mm_h = pkpd.simulate(
        "fanta2015_mm_s_ketamine", high, covariates={"weight": 70}, until="6 h", method="dopri5"
    )
    assert mm_h.cp.values[-1] > 1.05 * lin_h.cp.values[-1]  # saturation: slower decline


def test_pain_turnover_baseline_and_inhibition():
    ds = pkpd.simulate("s_ketamine_pain_turnover", REGIMEN, covariates={"weight": 70}, until="12 h")
    R0 = pkpd.load_model("s_ketamine_pain_turnover").parameters["R0"].value
    assert ds.pain.values[0] == pytest.approx(R0)
    assert ds.pain.values.min() < R0 and ds.pain.values.max() <= R0 + 1e-9
    assert ds.attrs["solver_method"] == "dopri5"
    assert ds.attrs["solver_note"] == "auto: nonlinear model"
    assert ds.ce.attrs["units"] == "ng/mL" and ds.pain.attrs["units"] == "NRS 0-10"
    with pytest.raises(ValueError, match="'exact' is for linear"):
        pkpd.simulate(
            "s_ketamine_pain_turnover",
            REGIMEN,
            covariates={"weight": 70},
            until="1 h",
            method="exact",
        )


# ----------------------------------------------------------------------------- auto, stiff

FAST = """
schema_version = 1
[model]
name = "fast_effect"
drug = "test"
citation = "none"
population = "none"
sampling_site = "not reported"
[ode]
stiff = {stiff}
dose_state = "central"
[ode.states.central]
initial = 0
[ode.states.effect]
initial = 0
[ode.derivatives]
central = "rate - k * central / (1 + central)"
effect = "ke0 * (central / V - effect)"
[ode.outputs.ce]
expression = "effect"
concentration = true
[parameters.k]
value = "0.5 1/h"
source = "test"
tag = "assumed"
note = "test fixture"
[parameters.ke0]
value = "1e5 1/h"
source = "test"
tag = "assumed"
note = "test fixture: a very fast effect site makes the system stiff"
[parameters.V]
value = "10 L"
source = "test"
tag = "assumed"
note = "test fixture"
"""


@pytest.mark.slow
def test_auto_switches_to_rodas_on_stiffness_and_on_the_stiff_flag(tmp_path):
    regimen = "10 mg bolus at 0 h; 5 mg/h from 0 h to 2 h"
    files = {}
    for flag in ("false", "true"):
        files[flag] = tmp_path / f"fast_{flag}.toml"
        files[flag].write_text(FAST.format(stiff=flag))
    ds = pkpd.simulate(files["false"], regimen, until="24 h", every="1 h")
    assert ds.attrs["solver_method"] == "rodas"
    assert ds.attrs["solver_note"].startswith("auto: Dopri5 detected stiffness")
    assert ds.attrs["solver_nsteps"] < 300
    ds2 = pkpd.simulate(files["true"], regimen, until="24 h", every="1 h")
    assert ds2.attrs["solver_note"] == "auto: the model file says stiff = true"
    np.testing.assert_array_equal(ds.ce.values, ds2.ce.values)
    with pytest.raises(pkpd.SimulationError, match="stiffness detected"):
        pkpd.simulate(files["false"], regimen, until="24 h", every="1 h", method="dopri5")


# ----------------------------------------------------------------------------- CLI, cache


@pytest.mark.parametrize("method", ["auto", "dopri5", "rodas"])
def test_cli_runs_a_nonlinear_model_file_with_each_method(method, tmp_path):
    path = models_dir() / "s_ketamine_pain_turnover.toml"
    out = tmp_path / "r.nc"
    r = CliRunner().invoke(
        main,
        [
            "simulate",
            str(path),
            REGIMEN,
            "--weight",
            "70",
            "--until",
            "12h",
            "--method",
            method,
            "--rtol",
            "1e-7",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    want = "dopri5" if method == "auto" else method
    assert f"solver: {want} (rtol 1e-07" in r.output
    import xarray as xr

    with xr.open_dataset(out) as ds:
        assert ds.attrs["solver_method"] == want
        assert "pain" in ds


def test_cli_rejects_tolerances_for_the_exact_method():
    r = CliRunner().invoke(
        main,
        [
            "simulate",
            "fanta2015_otto2021",
            REGIMEN,
            "--weight",
            "70",
            "--method",
            "exact",
            "--rtol",
            "1e-8",
        ],
    )
    assert r.exit_code == 2 and "--rtol" in r.output


@pytest.mark.slow
def test_second_process_loads_generated_code_from_the_cache(tmp_path):
    """A fresh cache folder: the first process compiles, the second loads machine code."""
    code = textwrap.dedent("""
        import json, numpy as np, pkpd
        spec = pkpd.load_model("fanta2015_mm_s_ketamine")
        ds = pkpd.simulate(spec, "20 mg bolus at 0 h", covariates={"weight": 70},
                           until="2 h", every="1 h", method="dopri5")
        k = spec.ode.module().solve_dopri5_into
        print(json.dumps({"hits": sum(k.stats.cache_hits.values()),
                          "misses": sum(k.stats.cache_misses.values()),
                          "file": spec.ode.module().__file__, "cp": float(ds.cp[-1])}))
    """)
    env = {**os.environ, "PKPD_CACHE_DIR": str(tmp_path)}
    env.pop("NUMBA_DISABLE_JIT", None)

    def once():
        r = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        import json

        return json.loads(r.stdout.strip().splitlines()[-1])

    first, second = once(), once()
    assert first["file"].startswith(str(tmp_path / "ode"))
    assert first["misses"] == 1 and first["hits"] == 0
    assert second["hits"] == 1 and second["misses"] == 0
    assert second["cp"] == first["cp"]


# ----------------------------------------------------------------------------- cache trust


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache root (not created yet) and no generated module imported in-process."""
    import pkpd.inputs.model.codegen

    root = tmp_path / "cache"
    monkeypatch.setenv("PKPD_CACHE_DIR", str(root))
    monkeypatch.setattr(pkpd.inputs.model.codegen, "_MODULES", {})
    return root


def _module_name(spec):
    import hashlib

    return "pkpd_ode_" + hashlib.sha256(spec.ode.generate().encode()).hexdigest()[:20]


def test_cache_folders_are_created_private_and_load(fresh_cache):
    """A normal (0700, own) cache works; importing does not compile (no call is made)."""
    spec = _spec(_toml("fanta2015_mm_s_ketamine"))
    module = spec.ode.module()
    assert module.__file__ == str(fresh_cache / "ode" / f"{_module_name(spec)}.py")
    for d in (fresh_cache, fresh_cache / "ode", fresh_cache / "ode" / "__pycache__"):
        assert (d.stat().st_mode & 0o777) == 0o700, d
    assert (fresh_cache / "ode" / f"{_module_name(spec)}.py").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(("where", "mode"), [("", 0o777), ("", 0o775), ("ode", 0o757)])
def test_cache_writable_by_others_is_refused(fresh_cache, where, mode):
    """numba's index files are pickles loaded before any check: a planted one ran
    os.system. A folder others can write is refused before anything is imported."""
    from pkpd.errors import CacheError, PkpdError

    folder = fresh_cache / where if where else fresh_cache
    folder.mkdir(parents=True)
    folder.chmod(mode)
    spec = _spec(_toml("fanta2015_mm_s_ketamine"))
    with pytest.raises(CacheError) as ei:
        spec.ode.module()
    assert isinstance(ei.value, PkpdError)
    msg = str(ei.value)
    assert msg.startswith(f"code cache {folder}: writable by group or others (mode {mode:o})")
    assert "\n" not in msg
    assert not (fresh_cache / "ode" / f"{_module_name(spec)}.py").exists()


def test_cache_owned_by_another_user_is_refused(fresh_cache, monkeypatch):
    from pkpd.errors import CacheError

    fresh_cache.mkdir(mode=0o700)
    uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    with pytest.raises(CacheError, match=rf"code cache {fresh_cache}: owned by user id {uid}, "):
        _spec(_toml("fanta2015_mm_s_ketamine")).ode.module()


def test_planted_numba_index_is_refused_before_it_is_loaded(fresh_cache, monkeypatch, tmp_path):
    """A pickled index that others could write (or that another user owns) is not read."""
    import pickle

    from pkpd.errors import CacheError

    spec = _spec(_toml("fanta2015_mm_s_ketamine"))
    pyc = fresh_cache / "ode" / "__pycache__"
    pyc.mkdir(parents=True)
    pyc.chmod(0o755)  # enterable by others: a group-writable file in it is writable by them
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    index = pyc / f"{_module_name(spec)}.rhs-1.py311.nbi"
    index.write_bytes(pickle.dumps(Payload()))
    index.chmod(0o666)
    with pytest.raises(CacheError, match=rf"{index}: writable by group or others \(mode 666\)"):
        spec.ode.module()
    # Owned by someone else (stat result rewritten: chown needs privileges).
    index.chmod(0o644)
    real_lstat = os.lstat

    def lstat(path, *a, **k):
        st = real_lstat(path, *a, **k)
        if str(path) == str(index):
            return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink,
                                   st.st_uid + 1, *st[5:]))  # fmt: skip
        return st

    monkeypatch.setattr(os, "lstat", lstat)
    import pkpd.inputs.model.codegen

    monkeypatch.setattr(pkpd.inputs.model.codegen, "_MODULES", {})
    with pytest.raises(CacheError, match=rf"{index}: owned by user id"):
        _spec(_toml("fanta2015_mm_s_ketamine")).ode.module()
    assert not marker.exists()


def test_cli_refuses_an_open_cache_in_one_line(fresh_cache):
    fresh_cache.mkdir()
    fresh_cache.chmod(0o777)
    path = models_dir() / "fanta2015_mm_s_ketamine.toml"
    r = CliRunner().invoke(
        main, ["simulate", str(path), "20 mg bolus at 0 h", "--weight", "70", "--until", "1h"]
    )
    assert r.exit_code == 2
    assert r.output.startswith(f"pkpd: error: code cache {fresh_cache}: writable by group")
    assert r.output.count("\n") == 1


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="no generated kernels without the JIT")
def test_specialised_cohort_kernels_share_the_cache_rule(fresh_cache, monkeypatch):
    """The exact cohort kernel's generated copies live in the same cache (``kernels/``)."""
    import pkpd.engine.kernels
    from pkpd.errors import CacheError

    monkeypatch.setattr(pkpd.engine.kernels, "_SPECIALISED", {})
    (fresh_cache / "kernels").mkdir(parents=True)
    (fresh_cache / "kernels").chmod(0o777)
    with pytest.raises(CacheError, match=rf"code cache {fresh_cache / 'kernels'}: writable by"):
        pkpd.engine.kernels.kernel_for(7)
