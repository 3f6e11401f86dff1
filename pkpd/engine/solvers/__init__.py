"""Numba kernels: pure functions of arrays that never raise and report status codes.

Status codes are shared by every solver (exact, Dopri5, Rodas4) and have one message
table, :data:`STATUS_MESSAGES`; counters of the adaptive solvers live in one ``int64``
array laid out as ``STAT_*`` below. The solver registry is :mod:`pkpd.engine.solvers.registry`.
"""

STATUS_OK = 0
STATUS_NONFINITE = 1
STATUS_BAD_TIMES = 2
STATUS_MAX_STEPS = 3
STATUS_STEP_UNDERFLOW = 4
STATUS_STIFF = 5
STATUS_OUTPUT_NONFINITE = 6

#: One message table for every solver status code (see STYLE.md, "Status codes").
STATUS_MESSAGES = {
    STATUS_OK: "success",
    STATUS_NONFINITE: "non-finite value in the state or the matrix exponential",
    STATUS_BAD_TIMES: "output times are not sorted or start before the initial time",
    STATUS_MAX_STEPS: "maximum number of steps reached before the last output time "
    "(raise `max_steps`, loosen `rtol`/`atol`, or use a stiff method)",
    STATUS_STEP_UNDERFLOW: "step size underflow: the step fell below the rounding error "
    "of the current time (the solution is probably singular or blows up)",
    STATUS_STIFF: "stiffness detected (Hairer's test: the step size is limited by "
    "stability, not accuracy); use method='rodas' or method='auto'",
    STATUS_OUTPUT_NONFINITE: "an output is not finite (NaN or inf) although the state is: "
    "an output equation is undefined there (e.g. log or sqrt of a negative number, 0/0)",
}

# Layout of the ``stats`` counter array of the adaptive solvers (int64, length N_STATS).
STAT_NFEV = 0  # right-hand-side evaluations
STAT_NJEV = 1  # Jacobian evaluations (exact or finite-difference)
STAT_NSTEPS = 2  # accepted steps
STAT_NREJECTED = 3  # rejected steps
STAT_NLU = 4  # LU decompositions
N_STATS = 5
STAT_NAMES = ("nfev", "njev", "nsteps", "nrejected", "nlu")
