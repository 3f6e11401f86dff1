# One-command set-up on a machine with python3, make and a C compiler.
#   make demo   create .venv if missing, install, run the demo simulation
#   make test   same bootstrap, then the full test suite
#   make bench  benchmarks (pytest-benchmark; compile time reported separately)
#   make kernels  compile every shipped model's kernels ahead of their first use (pkpd compile)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo-output

.PHONY: demo test test-nojit bench kernels lint venv clean

venv: $(STAMP)

# Re-install only when the project definition changes (idempotent).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	@mkdir -p $(DEMO)
	$(BIN)/pkpd simulate fanta2015_otto2021 lumbar_fusion_esketamine --weight 70 \
		--out $(DEMO)/demo.nc --plot $(DEMO)/demo.png

# Tests multiply many tiny matrices in numpy/scipy: a multi-threaded BLAS spends far more
# time waking its threads than computing (60x slower on a busy 2-core machine).
export OPENBLAS_NUM_THREADS ?= 1

# pytest exits 5 when it collected no test: that is a failure here, like any non-zero code.
# Two workers (CI has 2 cores): most of a cold run is numba compiling kernels, one core
# each; --dist loadfile keeps each test file's module fixtures in one worker.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile
	$(MAKE) --no-print-directory test-nojit

# The solver tests once more with numba's JIT disabled, so coverage and tracebacks reach
# the kernels' Python source (STYLE.md).
test-nojit: $(STAMP)
	NUMBA_DISABLE_JIT=1 $(BIN)/python -m pytest -q -m "not slow" tests/test_exact.py tests/test_expm.py \
		tests/test_adaptive_solvers.py tests/test_dopri5.py tests/test_rosenbrock.py tests/test_dosing.py \
		tests/test_pca.py::test_the_loop_matches_an_independent_replay_with_closed_form_concentrations \
		tests/test_pca.py::test_a_stream_drawn_too_short_is_caught_not_truncated \
		tests/test_cohort.py::test_blocks_settled_against_thresholds_equal_the_point_by_point_fold

# Once per machine and package version: numba compiles a cohort kernel per state size of a
# linear model and per [ode] model (about a minute each, one process per CPU); afterwards the
# first cohort of every shipped model loads its code from the cache.
kernels: $(STAMP)
	$(BIN)/pkpd compile

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks --benchmark-only --benchmark-columns=min,mean,median,stddev,rounds -o testpaths=benchmarks

lint: $(STAMP)
	$(BIN)/ruff check pkpd tests benchmarks
	$(BIN)/ruff format --check pkpd tests benchmarks

clean:
	rm -rf $(DEMO) .pytest_cache .benchmarks build dist *.egg-info
