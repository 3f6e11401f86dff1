"""The registry of ODE solvers, and their Python-level drivers.

Every adaptive solver has two compiled entry points with fixed argument lists (the
*kernel protocol*), one for linear models (``dy/dt = M y + b u``, module-level and cached)
and one per generated nonlinear model (:mod:`pkpd.ode`)::

    dopri5_into(p, b, y0, t0, ev_t, ev_rate, ev_bolus, t_out, rtol, atol,
                h_fixed, hmax, max_steps, nstiff, out, work, stats) -> status
    rodas_into (p, b, y0, t0, ev_t, ev_rate, ev_bolus, t_out, rtol, atol,
                h_fixed, hmax, max_steps, out, work, mats, ipiv, stats) -> status

Both are plain numba functions of arrays and scalars, so a parallel cohort kernel can
call them per patient with a workspace per thread. :func:`run` allocates the workspace
and calls one; :data:`SOLVERS` lists the solvers (tests are parametrized over it).

Any other numba right-hand side ``rhs(t, y, u, p, dy)`` gets its pair by a two-line
``njit(cache=True)`` wrapper that calls :func:`pkpd.engine.solvers.dopri5.dopri5_solve` /
:func:`pkpd.engine.solvers.rosenbrock.rodas_solve` with ``rhs`` as a global (``tests/ode_zoo.py``
is an example): a function that receives a dispatcher as an argument is compiled per
process and never loaded from numba's disk cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import N_STATS, STAT_NAMES
from . import dopri5 as _dopri5
from . import rosenbrock as _rodas
from .linear_rhs import pack

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_MAX_STEPS",
    "DEFAULT_RTOL",
    "SOLVERS",
    "SolverInfo",
    "run",
    "run_linear",
    "tolerance",
]

DEFAULT_RTOL = 1e-6
#: Absolute tolerance in internal units (mg, mg/L, mg*h/L): 1e-9 mg/L is 1e-6 ng/mL.
DEFAULT_ATOL = 1e-9
DEFAULT_MAX_STEPS = 100_000
#: Dopri5's stiffness test starts at every `DEFAULT_NSTIFF`-th accepted step and then runs
#: at each step while it is positive: Hairer's default (dopri5.f, IWORK(4) = 1000). A
#: solution that needs fewer steps is never declared stiff: a phase where the step is
#: limited by stability rather than accuracy (the slow terminal phase of a linear PK model
#: at rtol 1e-6) still gives a solution to tolerance, and costs little while it is short.
DEFAULT_NSTIFF = 1000


@dataclass(frozen=True)
class SolverInfo:
    """One adaptive solver: its name, literature name, orders and properties."""

    name: str
    method: str
    order: int
    error_order: int
    stiff: bool
    description: str
    reference: str


SOLVERS: dict[str, SolverInfo] = {
    "dopri5": SolverInfo(
        "dopri5",
        "Dopri5",
        _dopri5.ORDER,
        _dopri5.ERROR_ORDER,
        False,
        "Dopri5: explicit Runge-Kutta 5(4) of Dormand & Prince with 4th-order dense output, "
        "PI step-size control and Hairer's stiffness test",
        "Dormand & Prince 1980, doi:10.1016/0771-050X(80)90013-3; Hairer, Norsett & Wanner, "
        "Solving ODEs I, doi:10.1007/978-3-540-78862-1",
    ),
    "rodas": SolverInfo(
        "rodas",
        "Rodas4",
        _rodas.ORDER,
        _rodas.ERROR_ORDER,
        True,
        "Rodas4: L-stable, stiffly accurate Rosenbrock method 4(3) with 3rd-order dense "
        "output and a predictive step-size controller",
        "Hairer & Wanner, Solving ODEs II, Sec. IV.7, doi:10.1007/978-3-642-05221-7",
    ),
}


def tolerance(value, n: int, name: str) -> np.ndarray:
    """A tolerance as an ``(n,)`` float array: a positive scalar or one value per state."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(
            f"`{name}` must be a positive number or {n} positive numbers (one per state), "
            f"got {value!r}"
        )
    return np.ascontiguousarray(arr)


def _stats_dict(stats: np.ndarray) -> dict[str, int]:
    return {k: int(v) for k, v in zip(STAT_NAMES, stats, strict=True)}


def run(
    method: str,
    kernels: tuple[Callable, Callable],
    p,
    b,
    y0,
    ev_t,
    ev_rate,
    ev_bolus,
    t_out,
    *,
    t0: float = 0.0,
    rtol=DEFAULT_RTOL,
    atol=DEFAULT_ATOL,
    h_fixed: float = 0.0,
    hmax: float = math.inf,
    max_steps: int = DEFAULT_MAX_STEPS,
    nstiff: int | None = None,
):
    """Allocate the workspace and call one solver kernel.

    Parameters
    ----------
    method : {"dopri5", "rodas"}
    kernels : (dopri5_into, rodas_into)
        Compiled entry points of the kernel protocol (module docstring).
    p, b, y0, ev_t, ev_rate, ev_bolus, t_out
        As in :func:`pkpd.engine.solvers.dopri5.dopri5_solve`.
    rtol, atol : float or (N,) array
    h_fixed : float
        ``> 0`` for fixed steps (convergence studies); 0 adaptive.
    nstiff : int
        Dopri5's stiffness test period (0: off).

    Returns
    -------
    X : (n_out, N) ndarray
    status : int
    stats : dict
        ``nfev``, ``njev``, ``nsteps``, ``nrejected``, ``nlu``.
    """
    if method not in SOLVERS:
        raise ValueError(f"`method` must be one of {', '.join(SOLVERS)}, got {method!r}")
    y0 = np.ascontiguousarray(y0, dtype=np.float64)
    n = y0.shape[0]
    t_out = np.ascontiguousarray(t_out, dtype=np.float64)
    args = (
        np.ascontiguousarray(p, dtype=np.float64),
        np.ascontiguousarray(b, dtype=np.float64),
        y0,
        float(t0),
        np.ascontiguousarray(ev_t, dtype=np.float64),
        np.ascontiguousarray(ev_rate, dtype=np.float64),
        np.ascontiguousarray(ev_bolus, dtype=np.float64),
        t_out,
        tolerance(rtol, n, "rtol"),
        tolerance(atol, n, "atol"),
        float(h_fixed),
        float(hmax),
        int(max_steps),
    )
    out = np.zeros((t_out.shape[0], n))
    stats = np.zeros(N_STATS, dtype=np.int64)
    if method == "dopri5":
        nstiff = DEFAULT_NSTIFF if nstiff is None else nstiff
        status = kernels[0](*args, int(nstiff), out, _dopri5.workspace(n), stats)
    else:
        status = kernels[1](*args, out, *_rodas.workspace(n), stats)
    return out, int(status), _stats_dict(stats)


LINEAR_KERNELS = (_dopri5.solve_linear_dopri5_into, _rodas.solve_linear_rodas_into)


def run_linear(method: str, M, b, ev_t, ev_rate, ev_bolus, t_out, x0=None, **kwargs):
    """Solve ``dy/dt = M y + b u`` with an adaptive solver (exact Jacobian for Rodas4).

    Same event and output conventions as :func:`pkpd.engine.solvers.exact.propagate`; keyword
    arguments as :func:`run`. Returns ``(X, status, stats)``.
    """
    M = np.asarray(M, dtype=np.float64)
    x0 = np.zeros(M.shape[0]) if x0 is None else x0
    return run(method, LINEAR_KERNELS, pack(M, b), b, x0, ev_t, ev_rate, ev_bolus, t_out, **kwargs)
