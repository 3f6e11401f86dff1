#!/usr/bin/env bash
# Mutation testing of the numerical core with cosmic-ray (see tests/README.md).
#
#   tools/mutation.sh [MODULE ...]      # default: every module below
#   SAMPLE=40 SEED=1 TIMEOUT=40 tools/mutation.sh metrics dopri5
#
# Each module is mutated in a fresh copy of the committed tree (git archive HEAD; the work
# tree is never touched), with NUMBA_DISABLE_JIT=1 so the Python source of the numba
# kernels runs (a mutated kernel would otherwise need a recompile of minutes per mutant),
# and only the fast test files that exercise it, with -x. SAMPLE mutants per module are
# drawn at random (SEED); SAMPLE=0 runs them all. Needs cosmic-ray:
#   python -m pip install -e '.[mutation]'
# Results (OUT, default /tmp/pkpd-mutation-results): $OUT/<module>.sqlite (cosmic-ray sessions; cr-report, cr-html read them),
# $OUT/summary.md (the score table) and $OUT/survivors.txt (diffs of surviving mutants).
set -euo pipefail

ROOT=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
PY=${PYTHON:-$ROOT/.venv/bin/python}
SAMPLE=${SAMPLE:-40}
SEED=${SEED:-1}
TIMEOUT=${TIMEOUT:-40}
OUT=${OUT:-${TMPDIR:-/tmp}/pkpd-mutation-results}

# module name | file | test files
MODULES=(
  "kernels|pkpd/engine/kernels.py|tests/test_kernel_tmax.py tests/test_metrics.py"
  "exact|pkpd/engine/solvers/exact.py|tests/test_exact.py tests/test_solver_internals.py tests/test_solver_accuracy.py"
  "expm|pkpd/engine/solvers/expm.py|tests/test_expm.py tests/test_solver_internals.py"
  "linear_system|pkpd/engine/solvers/linear_system.py|tests/test_exact.py tests/test_solver_accuracy.py"
  "dopri5|pkpd/engine/solvers/dopri5.py|tests/test_dopri5.py tests/test_solver_accuracy.py tests/test_solver_internals.py tests/test_adaptive_solvers.py"
  "rosenbrock|pkpd/engine/solvers/rosenbrock.py|tests/test_rosenbrock.py tests/test_solver_accuracy.py tests/test_solver_internals.py tests/test_adaptive_solvers.py"
  "registry|pkpd/engine/solvers/registry.py|tests/test_solver_internals.py tests/test_adaptive_solvers.py tests/test_dopri5.py tests/test_rosenbrock.py"
  "regimen|pkpd/inputs/regimen.py|tests/test_regimen_library.py tests/test_validation.py tests/test_sampling_internals.py"
  "population|pkpd/inputs/population.py|tests/test_population.py tests/test_sampling_internals.py"
  "metrics|pkpd/analysis/metrics.py|tests/test_metrics.py"
)

want=("$@")
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pkpd-mutation.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
git -C "$ROOT" archive HEAD | tar -x -C "$WORK"
export NUMBA_DISABLE_JIT=1 OPENBLAS_NUM_THREADS=1 PKPD_CACHE_DIR="$WORK/.cache"
cd "$WORK"
# `python -m pytest` puts the copy first on sys.path: the copy's pkpd is the one tested.
"$PY" -c "import sys; sys.path.insert(0, ''); import pkpd; assert pkpd.__file__.startswith('$WORK'), pkpd.__file__"

sessions=()
for entry in "${MODULES[@]}"; do
  IFS='|' read -r name file tests <<<"$entry"
  if ((${#want[@]})) && [[ " ${want[*]} " != *" $name "* ]]; then continue; fi
  cfg="$WORK/$name.toml"
  db="$OUT/$name.sqlite"
  rm -f "$db"
  cat >"$cfg" <<TOML
[cosmic-ray]
module-path = "$file"
timeout = $TIMEOUT
excluded-modules = []
test-command = "$PY -m pytest -x -q -p no:cacheprovider --no-header -o addopts='' $tests"

[cosmic-ray.distributor]
name = "local"
TOML
  echo "== $name: $file ($tests) $(date -u +%H:%M:%S)"
  "$PY" -m cosmic_ray.cli init "$cfg" "$db"
  if ((SAMPLE > 0)); then "$PY" "$ROOT/tools/mutation_tool.py" sample "$db" "$SAMPLE" "$SEED"; fi
  "$PY" -m cosmic_ray.cli baseline "$cfg"
  "$PY" -m cosmic_ray.cli exec "$cfg" "$db"
  sessions+=("$db")
done
"$PY" "$ROOT/tools/mutation_tool.py" summary "${sessions[@]}" | tee "$OUT/summary.md"
for db in "${sessions[@]}"; do "$PY" "$ROOT/tools/mutation_tool.py" survivors "$db"; done \
  >"$OUT/survivors.txt"
echo "results in $OUT"
