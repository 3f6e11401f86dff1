"""Numba kernels: pure functions of arrays that never raise and report status codes.

Status codes are shared by every solver (exact, Dopri5, Rodas4): one :class:`Status`
enumeration with its messages (:data:`STATUS_MESSAGES` as a plain table); the kernels
compare plain ints, the ``STATUS_*`` constants below, derived from it. Counters of the
adaptive solvers live in one ``int64`` array laid out as ``STAT_*`` below. The solver
registry is :mod:`pkpd.engine.solvers.registry`.
"""

from enum import IntEnum


class Status(IntEnum):
    """Status code of a solver (and of a cohort's patient); 0 is success."""

    OK = 0
    NONFINITE = 1
    BAD_TIMES = 2
    MAX_STEPS = 3
    STEP_UNDERFLOW = 4
    STIFF = 5
    OUTPUT_NONFINITE = 6

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @classmethod
    def describe(cls, code, unknown: str = "unknown status") -> str:
        """The message of a status code, or `unknown` for a code that is not one."""
        try:
            return cls(int(code)).message
        except ValueError:
            return unknown


_MESSAGES = {
    Status.OK: "success",
    Status.NONFINITE: "non-finite value in the state or the matrix exponential",
    Status.BAD_TIMES: "output times are not sorted or start before the initial time",
    Status.MAX_STEPS: "maximum number of steps reached before the last output time "
    "(raise `max_steps`, loosen `rtol`/`atol`, or use a stiff method)",
    Status.STEP_UNDERFLOW: "step size underflow: the step fell below the rounding error "
    "of the current time (the solution is probably singular or blows up)",
    Status.STIFF: "stiffness detected (Hairer's test: the step size is limited by "
    "stability, not accuracy); use method='rodas' or method='auto'",
    Status.OUTPUT_NONFINITE: "an output is not finite (NaN or inf) although the state is: "
    "an output equation is undefined there (e.g. log or sqrt of a negative number, 0/0)",
}

# Plain ints for the numba kernels (an IntEnum member is a different numba type).
STATUS_OK = int(Status.OK)
STATUS_NONFINITE = int(Status.NONFINITE)
STATUS_BAD_TIMES = int(Status.BAD_TIMES)
STATUS_MAX_STEPS = int(Status.MAX_STEPS)
STATUS_STEP_UNDERFLOW = int(Status.STEP_UNDERFLOW)
STATUS_STIFF = int(Status.STIFF)
STATUS_OUTPUT_NONFINITE = int(Status.OUTPUT_NONFINITE)

#: One message table for every solver status code (see STYLE.md, "Status codes").
STATUS_MESSAGES = {int(s): s.message for s in Status}

# Layout of the ``stats`` counter array of the adaptive solvers (int64, length N_STATS).
STAT_NFEV = 0  # right-hand-side evaluations
STAT_NJEV = 1  # Jacobian evaluations (exact or finite-difference)
STAT_NSTEPS = 2  # accepted steps
STAT_NREJECTED = 3  # rejected steps
STAT_NLU = 4  # LU decompositions
N_STATS = 5
STAT_NAMES = ("nfev", "njev", "nsteps", "nrejected", "nlu")

#: The names of the solvers, in the order of ``registry.SOLVERS`` (tests check both): the
#: CLI's ``--method`` choices come from here, so that ``pkpd --help`` does not load numba.
SOLVER_NAMES = ("exact", "dopri5", "rodas")
