"""Each cohort kernel compiles its per-patient function once, not twice.

numba types a ``prange`` index int64 when it types the kernel and uint64 when it lowers the
parallel body; a per-patient function called with the bare index was therefore compiled for
both (about half of a cold compile: 140 s -> 75 s for one exact kernel). The kernels pass
``np.uint64(p)`` (the copy that ran in the parallel loop). The check reads the signatures
numba cached for the per-patient function after a small cohort (whether this process
compiled it or loaded it): the first argument of every cached signature is uint64.

numba's cache index is read through its private API (``Dispatcher._cache._cache_file``,
numba 0.6x); if that moves, the test fails loudly rather than passing.
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import sys
import warnings
from pathlib import Path

import pytest

import pkpd
from pkpd.engine import kernels_adaptive
from pkpd.inputs.model import load_model
from pkpd.running.cohort import simulate_cohort


def _cached_first_arguments(dispatcher) -> list[str]:
    index = dispatcher._cache._cache_file._load_index()
    return [str(key[0][0]) for key in index]


def _cohort(model, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        simulate_cohort(model, "lumbar_fusion_esketamine", "spine_fusion_china", n=4, seed=1,
                        until="2 h", every="10 min", bands=False, progress=False,
                        method=method)  # fmt: skip


@pytest.mark.parametrize("method", ["exact", "dopri5", "rodas"])
def test_the_patient_function_is_compiled_for_one_index_type_only(method):
    _cohort("fanta2015_otto2021", method)
    if method == "exact":
        names = [m for m in sys.modules if m.startswith("pkpd_kernels_nr")]
        assert names, "the exact cohort ran no specialised kernel"
        patients = [sys.modules[m]._patient for m in names]
    else:
        one = {"dopri5": "_linear_dopri5_one", "rodas": "_linear_rodas_one"}[method]
        patients = [getattr(kernels_adaptive, one)]
    for fn in patients:
        firsts = _cached_first_arguments(fn)
        assert firsts, f"{fn.__qualname__}: nothing in numba's cache index"
        assert set(firsts) == {"uint64"}, (fn.__module__, fn.__qualname__, firsts)


def test_a_generated_model_compiles_its_patient_functions_for_one_index_type_only():
    _cohort("fanta2015_mm_s_ketamine", "dopri5")
    module = load_model("fanta2015_mm_s_ketamine").ode.module()
    firsts = _cached_first_arguments(module._dopri5_one)
    assert firsts and set(firsts) == {"uint64"}, firsts


_WORKER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import tiny
from pkpd.cache import compile_once
f = compile_once(tiny.f, Path(sys.argv[2]))
print("ready", flush=True)
assert f(1.0) == 2.0
print(sum(tiny.f.stats.cache_misses.values()), sum(tiny.f.stats.cache_hits.values()))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locks")
def test_processes_that_need_the_same_kernel_at_once_compile_it_once(tmp_path):
    """Two processes start while the lock is held: once it is released, one compiles and
    the other loads the compiled code from numba's cache (without the lock both compile)."""
    import fcntl
    import os
    import subprocess

    import numba

    if numba.config.DISABLE_JIT:
        pytest.skip("nothing is compiled without the JIT")
    (tmp_path / "tiny.py").write_text(
        "import numba\n\n@numba.njit(cache=True)\ndef f(x):\n    return x + 1.0\n"
    )
    lock = tmp_path / "tiny.lock"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "nbcache")}
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(tmp_path), str(lock)],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(2)
        ]
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        fcntl.flock(held, fcntl.LOCK_UN)
    counts = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        counts.append(tuple(int(v) for v in out.split()))
    assert sorted(counts) == [(0, 1), (1, 0)], counts


# ----------------------------------------------------------------------------- engine digest
# numba invalidates a generated module's cache (a kernel copy, an [ode] model) by that
# file's own time stamp only, while the cached machine code includes what it calls in the
# engine; their names hash the whole engine (pkpd.cache.engine_digest). Two things make
# that complete: every engine file counts, and nothing they import holds compiled code
# outside the engine.

_ENGINE = Path(pkpd.__file__).parent / "engine"


def test_the_engine_digest_changes_with_every_engine_file(tmp_path):
    from pkpd.cache import engine_digest

    copy = tmp_path / "engine"
    shutil.copytree(_ENGINE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    base = engine_digest(copy)
    assert base == engine_digest()  # relative paths and contents only
    files = sorted(copy.rglob("*.py"))
    assert {f.relative_to(copy).as_posix() for f in files} >= {
        "kernels.py", "record.py", "solvers/exact.py", "solvers/segments.py", "solvers/expm.py",
    }  # fmt: skip
    for f in files:
        text = f.read_bytes()
        f.write_bytes(text + b"\n# edited\n")
        assert engine_digest(copy) != base, f
        f.write_bytes(text)
    assert engine_digest(copy) == base


def _pkpd_imports(path: str, module: str) -> set[str]:
    """The pkpd modules `path` (the module `module`) imports, at any level of its code."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pkpd")}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            name = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            if not name.startswith("pkpd"):
                continue
            found.add(name)
            # `from pkpd.engine import record`: the submodule too.
            if importlib.util.find_spec(name).submodule_search_locations:
                found |= {f"{name}.{a.name}" for a in node.names
                          if importlib.util.find_spec(f"{name}.{a.name}") is not None}  # fmt: skip
    return found


def _reachable(path: str, module: str) -> set[str]:
    seen, todo = set(), [(path, module)]
    while todo:
        for dep in _pkpd_imports(*todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append((importlib.util.find_spec(dep).origin, dep))
    return seen


def test_generated_modules_reach_compiled_code_only_in_the_engine():
    """Every pkpd module a kernel copy or a generated [ode] module imports, directly or
    not, lies in ``pkpd/engine`` or compiles nothing (does not import numba)."""
    ode = load_model("fanta2015_mm_s_ketamine").ode.module()
    reached = _reachable(str(_ENGINE / "kernels.py"), "pkpd.engine.kernels")
    reached |= _reachable(ode.__file__, ode.__name__)
    assert {"pkpd.engine.solvers.exact", "pkpd.engine.solvers.segments"} <= reached
    outside = sorted(m for m in reached if not m.startswith("pkpd.engine"))
    for m in outside:
        tree = ast.parse(Path(importlib.util.find_spec(m).origin).read_text(encoding="utf-8"))
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not any(x.split(".")[0] == "numba" for x in names), (
            f"{m} imports numba: it may hold compiled code outside pkpd/engine"
        )
    assert "pkpd.cache" in outside  # the walk does reach beyond the engine


# --------------------------------------------------------------- the engine's own cached code
# The engine's modules are cached by numba in place (an editable install): their stamp is
# the engine's digest, not their own file's (pkpd/engine/_stamp.py).

_STAMP_PROBE = """
import sys
import numpy as np
import pkpd
assert pkpd.__file__.startswith(sys.argv[1]), pkpd.__file__  # the copy, not the install
from pkpd.engine.solvers.expm import expm
expm(np.eye(2))
print(sum(expm.stats.cache_misses.values()), sum(expm.stats.cache_hits.values()))
"""


def _expm_compiles(root: Path) -> tuple[int, ...]:
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["PYTHONPATH"] = str(root)
    r = subprocess.run([sys.executable, "-c", _STAMP_PROBE, str(root)], capture_output=True,
                       text=True, env=env, cwd=root, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return tuple(int(v) for v in r.stdout.split())


def test_an_edit_of_a_callee_file_recompiles_the_cached_engine_code(tmp_path):
    """``expm.expm`` (cached) holds ``finite.all_finite``'s machine code: after an edit of
    ``finite.py`` alone it is compiled again, not loaded (numba's own stamp is expm.py's
    time and size only); without an edit it is loaded."""
    import numba

    if numba.config.DISABLE_JIT:
        pytest.skip("nothing is compiled without the JIT")
    shutil.copytree(Path(pkpd.__file__).parent, tmp_path / "pkpd",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    assert _expm_compiles(tmp_path) == (1, 0)  # compiled into the copy's __pycache__
    assert _expm_compiles(tmp_path) == (0, 1)  # loaded
    finite = tmp_path / "pkpd" / "engine" / "solvers" / "finite.py"
    finite.write_text(finite.read_text() + "\n# edited\n")
    assert _expm_compiles(tmp_path) == (1, 0)  # compiled again


def test_every_engine_module_that_compiles_stamps_its_cache_with_the_engine():
    """Each engine module that imports numba imports ``pkpd.engine._stamp`` first (before
    any decorator runs), so its cache is stamped with the whole engine's digest."""
    modules = [f for f in sorted(_ENGINE.rglob("*.py")) if f.name != "_stamp.py"]
    compiling = [f for f in modules if "\nimport numba\n" in f.read_text(encoding="utf-8")]
    assert len(compiling) >= 15
    for f in compiling:
        text = f.read_text(encoding="utf-8")
        lines = [
            node.lineno
            for node in ast.parse(text).body
            if isinstance(node, ast.ImportFrom)
            and node.module == "pkpd.engine"
            and "_stamp" in {a.name for a in node.names}
        ]
        first_jit = text[: text.index("numba.njit(")].count("\n") + 1
        assert lines and lines[0] < first_jit, f
