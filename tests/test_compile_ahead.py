"""`pkpd compile`: the kernels a model's runs need, compiled ahead of their first use.

The contract a user relies on: after ``pkpd compile MODEL``, a new process that runs a
cohort and a patient of that model (other sizes, grid and options than the compile run's)
compiles nothing; it loads every function from the caches. The compile itself runs in the
suite's own cache (the kernels it needs are the ones the cohort tests compile anyway).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from pkpd.cli import main
from pkpd.errors import CacheError, ModelError
from pkpd.running import compile_ahead

MODEL = "fanta2015_otto2021"

_FIRST_RUN = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("ignore")
    import pkpd
    from pkpd.running.compile_ahead import _numba_compiles
    model = sys.argv[1]
    ds = pkpd.simulate_cohort(model, "0.5 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 3 h",
                              "healthy_volunteers", 300, seed=7, until="24 h", every="1 min",
                              thresholds={"cp": ["50 ng/mL"]}, progress=False)
    cov = {c: float(ds[c].values[0]) for c in pkpd.load_model(model).covariates}
    pkpd.simulate(model, "1 mg bolus at 0 h", cov, until="6 h", every="5 min")
    print(json.dumps({"compiled": _numba_compiles()}))
""")


def test_after_compile_a_new_process_compiles_nothing_for_the_model():
    (r,) = compile_ahead.compile_kernels([MODEL], jobs=1)
    assert (r.model, r.kernel) == (MODEL, "exact kernel, 7 states")
    assert r.seconds > 0 and r.compiled >= 0
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_RUN, MODEL], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"compiled": 0}, out.stderr


def test_the_count_of_compiled_functions_sees_a_new_compile():
    """The check above cannot pass by counting nothing: a function compiled in this
    process is counted."""
    import numba

    from pkpd.engine import record

    before = compile_ahead._numba_compiles()
    fresh = numba.njit(lambda x: x + 1)
    record._compile_ahead_probe = fresh  # a dispatcher in a pkpd module, as the kernels
    try:
        fresh(1.0)
        assert compile_ahead._numba_compiles() == before + 1
    finally:
        del record._compile_ahead_probe


def test_one_model_per_kernel_compiles_first():
    keys = ["exact 5", "exact 6", "exact 5", "[ode] a", "exact 6", "[ode] b"]
    assert compile_ahead.schedule(keys) == [[0, 1, 3, 5], [2, 4]]
    assert compile_ahead.schedule(["k"]) == [[0], []]


def test_models_sharing_a_state_size_share_a_key_and_ode_models_do_not():
    from pkpd.inputs.model import load_model

    keys = {m: compile_ahead.kernel_key(load_model(m)) for m in
            ("clements1981_racemic", "hijazi2003_racemic", "fanta2015_otto2021",
             "fanta2015_mm_s_ketamine", "flint2017_s_ketamine_children")}  # fmt: skip
    assert keys["clements1981_racemic"] == keys["hijazi2003_racemic"] == "exact kernel, 5 states"
    assert keys["fanta2015_otto2021"] == "exact kernel, 7 states"
    assert keys["fanta2015_mm_s_ketamine"] != keys["flint2017_s_ketamine_children"]


def test_bad_arguments_fail_before_any_process_starts(monkeypatch):
    def no_pool(*args, **kwargs):
        raise AssertionError("a worker process was started")

    monkeypatch.setattr(compile_ahead, "ProcessPoolExecutor", no_pool)
    with pytest.raises(ModelError, match="unknown model 'nosuch'"):
        compile_ahead.compile_kernels([MODEL, "nosuch"])
    for jobs in (0, -1, 1.5):
        with pytest.raises(ValueError, match=f"jobs={jobs!r}; expected a whole number >= 1"):
            compile_ahead.compile_kernels([MODEL], jobs=jobs)
    with pytest.raises(ValueError, match="no model given"):
        compile_ahead.compile_kernels([])
    monkeypatch.setattr(compile_ahead.numba.config, "DISABLE_JIT", True)
    with pytest.raises(CacheError, match="NUMBA_DISABLE_JIT is set"):
        compile_ahead.compile_kernels([MODEL])


def test_the_command_lists_each_model_and_its_kernel():
    r = CliRunner().invoke(main, ["compile", MODEL, "clements1981_racemic", "--jobs", "2"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert any(MODEL in ln and "exact kernel, 7 states" in ln for ln in lines), r.output
    assert any("clements1981_racemic" in ln and "exact kernel, 5 states" in ln for ln in lines)
    assert "2 model(s), 2 kernel(s)" in lines[-1]
    bad = CliRunner().invoke(main, ["compile", "--jobs", "0"])
    assert bad.exit_code == 2 and "0 is not in the range x>=1" in bad.output
