"""Start-up of the ``pkpd`` command (issue 15), group ``startup``.

Each row runs one command in a fresh subprocess (warm OS and numba caches: one untimed
warm-up round first), next to ``python -c "import numpy"`` in the same run, so that the
figures can be read as multiples of the interpreter's own start with numpy on a machine
whose speed drifts. What each process loads is checked, not timed, by
``tests/test_cli_startup.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "pkpd"

COMMANDS = {
    "python -c 'import numpy'": [sys.executable, "-c", "import numpy"],
    "python -c 'import pkpd.cli'": [sys.executable, "-c", "import pkpd.cli"],
    "pkpd --help": [str(BIN), "--help"],
    "pkpd models": [str(BIN), "models"],
    "pkpd simulate (one patient)": [
        str(BIN),
        "simulate",
        "fanta2015_otto2021",
        "lumbar_fusion_esketamine",
        "--weight",
        "70",
    ],
}


def _run(args, cwd):
    r = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.benchmark(group="startup")
@pytest.mark.parametrize("name", list(COMMANDS))
def test_startup(benchmark, name, tmp_path):
    out = benchmark.pedantic(
        _run, args=(COMMANDS[name], tmp_path), rounds=5, iterations=1, warmup_rounds=1
    )
    if name.startswith("pkpd simulate"):
        assert "Cmax" in out
    elif name == "pkpd --help":
        assert out.startswith("Usage: pkpd")
