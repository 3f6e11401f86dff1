"""Start-up of the ``pkpd`` command and of ``import pkpd`` (issue 15): no scientific stack.

``pkpd --help`` took a second because ``import pkpd.cli`` loaded numba, xarray, scipy and
pandas before click parsed the options. These tests check *which modules are loaded*, in a
fresh interpreter, never how long anything takes: the timings are in
``benchmarks/test_bench_startup.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import pkpd
from pkpd.engine.solvers import SOLVER_NAMES, registry

#: Loaded by none of the start-up paths below (numpy included: nothing at start-up needs it).
HEAVY = ("numpy", "numba", "llvmlite", "xarray", "scipy", "matplotlib", "pandas", "dask")

#: Every command and group of the CLI, whose ``--help`` must stay light.
COMMANDS = [
    [],
    ["models"],
    ["models", "list"],
    ["models", "show"],
    ["populations"],
    ["populations", "list"],
    ["populations", "show"],
    ["regimens"],
    ["regimens", "list"],
    ["regimens", "show"],
    ["pd"],
    ["pd", "list"],
    ["pd", "show"],
    ["simulate"],
    ["compare"],
    ["design"],
    ["report"],
    ["risk"],
    ["risk", "list"],
    ["risk", "show"],
    ["risk", "refit"],
]


def loaded_after(code: str) -> list[str]:
    """The HEAVY modules in ``sys.modules`` after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    r = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"},
    )
    assert r.returncode == 0, r.stderr
    modules = json.loads(r.stdout.splitlines()[-1])
    return sorted({m.split(".")[0] for m in modules} & set(HEAVY))


def test_import_cli_loads_no_scientific_stack():
    assert loaded_after("import pkpd.cli") == []


def test_import_pkpd_loads_no_scientific_stack():
    assert loaded_after("import pkpd") == []


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "pkpd")
def test_help_loads_no_scientific_stack(args):
    code = (
        "import contextlib, io\n"
        "from pkpd.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({[*args, '--help']!r}, prog_name='pkpd')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
    )
    assert loaded_after(code) == []


def test_every_public_name_resolves_and_is_listed():
    for name in pkpd.__all__:
        assert getattr(pkpd, name) is not None
        assert name in dir(pkpd)
    assert pkpd.simulate is pkpd.running.simulate.simulate
    assert pkpd.load_model is pkpd.inputs.model.load_model
    assert pkpd.PkpdError is pkpd.errors.PkpdError


def test_accessor_registered_when_xarray_is_imported_after_pkpd():
    code = (
        "import pkpd, sys\n"
        "assert 'xarray' not in sys.modules\n"
        "import xarray as xr\n"
        "from pkpd.output.accessor import PkpdAccessor\n"
        "assert isinstance(xr.Dataset().pkpd, PkpdAccessor)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_solver_names_read_at_start_up_are_the_registry():
    assert tuple(registry.SOLVERS) == SOLVER_NAMES


def test_python_dash_m_pkpd_is_the_command():
    # `python -m pkpd` runs the installed command's entry point (same help, same errors).
    r = subprocess.run(
        [sys.executable, "-m", "pkpd", "simulate", "fanta2015_otto2021", "x", "--wieght", "70"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith("pkpd: error: No such option '--wieght'"), r.stderr
    assert "pkpd simulate --help" in r.stderr
    h = subprocess.run([sys.executable, "-m", "pkpd", "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and h.stdout.startswith("Usage: pkpd "), h.stdout[:200]
