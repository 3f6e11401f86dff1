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

import sys
import warnings

import pytest

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
