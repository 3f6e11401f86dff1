"""The registry of solvers: method names, resolution of ``"auto"``, kernels, attributes.

One entry of :data:`SOLVERS` per solver (``exact``, ``dopri5``, ``rodas``) says what it is
(orders, stiff, adaptive, the literature and the recorded description) and where its
kernels are; :data:`METHODS` adds ``"auto"``, which :func:`resolve` turns into a solver for
a model. :func:`simulate <pkpd.running.simulate.simulate>`, the cohort, the CLI and the
generated ``[ode]`` modules read these, and the dataset attributes of a solve come from
:func:`attrs` (one patient) and :func:`cohort_attrs`. How to add a solver: ``README.md``
next to this file.

Every adaptive solver has two compiled entry points with fixed argument lists (the
*kernel protocol*), one for linear models (``dy/dt = M y + b u``, module-level and cached)
and one per generated nonlinear model (:mod:`pkpd.inputs.model.codegen`)::

    dopri5_into(p, b, y0, t0, ev_t, ev_rate, ev_bolus, t_out, rtol, atol,
                h_fixed, hmax, max_steps, nstiff, out, work, stats) -> status
    rodas_into (p, b, y0, t0, ev_t, ev_rate, ev_bolus, t_out, rtol, atol,
                h_fixed, hmax, max_steps, out, work, mats, ipiv, stats) -> status

Both are plain numba functions of arrays and scalars, so a parallel cohort kernel can
call them per patient with a workspace per thread. :func:`run` allocates the workspace
and calls one (each entry's ``call``); :data:`ADAPTIVE` lists the adaptive solvers (tests
are parametrized over it), in the order of the ``kernels`` tuples :func:`run` takes.

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
from typing import NamedTuple

import numpy as np

from pkpd.engine import kernels_adaptive as _ka

from . import N_STATS, STAT_NAMES, Status
from . import dopri5 as _dopri5
from . import rosenbrock as _rodas
from .linear_rhs import pack

__all__ = [
    "ADAPTIVE",
    "DEFAULT_ATOL",
    "DEFAULT_MAX_STEPS",
    "DEFAULT_RTOL",
    "LINEAR_COHORT_KERNELS",
    "METHODS",
    "SOLVERS",
    "STIFF_FALLBACK",
    "Resolved",
    "SolverInfo",
    "attrs",
    "check",
    "cohort_attrs",
    "failure",
    "resolve",
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


def _call_dopri5(kernel, args, n, out, stats, nstiff):
    nstiff = DEFAULT_NSTIFF if nstiff is None else nstiff
    return kernel(*args, int(nstiff), out, _dopri5.workspace(n), stats)


def _call_rodas(kernel, args, n, out, stats, nstiff):
    return kernel(*args, out, *_rodas.workspace(n), stats)


@dataclass(frozen=True)
class SolverInfo:
    """One solver: its name, literature name, orders, properties and kernels.

    `description` and `reference` make the ``solver`` attribute of a solve; `summary` is
    the few words the CLI prints. The kernels of an adaptive solver: `call` passes the
    common arguments of the kernel protocol and the solver's own (workspace, ``nstiff``)
    to an entry point, `linear` is its entry point for linear models, `linear_cohort`
    its cohort kernel for linear models, and `ode_kernel` / `ode_cohort` name those of
    a generated ``[ode]`` module (:mod:`pkpd.inputs.model.codegen`).
    """

    name: str
    method: str
    order: int | None
    error_order: int | None
    stiff: bool
    adaptive: bool
    summary: str
    description: str
    reference: str
    call: Callable | None = None
    linear: Callable | None = None
    linear_cohort: Callable | None = None
    ode_kernel: str = ""
    ode_cohort: str = ""

    @property
    def label(self) -> str:
        """How error messages name the solver."""
        return self.method if self.adaptive else f"{self.name} solver"


SOLVERS: dict[str, SolverInfo] = {
    "exact": SolverInfo(
        "exact",
        "exact",
        None,
        None,
        True,
        False,
        "piecewise matrix exponential",
        "exact: piecewise matrix exponential of the Van Loan augmented system",
        "Pade 13, scaling and squaring, Higham 2005",
    ),
    "dopri5": SolverInfo(
        "dopri5",
        "Dopri5",
        _dopri5.ORDER,
        _dopri5.ERROR_ORDER,
        False,
        True,
        "explicit Runge-Kutta 5(4)",
        "Dopri5: explicit Runge-Kutta 5(4) of Dormand & Prince with 4th-order dense output, "
        "PI step-size control and Hairer's stiffness test",
        "Dormand & Prince 1980, doi:10.1016/0771-050X(80)90013-3; Hairer, Norsett & Wanner, "
        "Solving ODEs I, doi:10.1007/978-3-540-78862-1",
        _call_dopri5,
        _dopri5.solve_linear_dopri5_into,
        _ka.linear_dopri5_cohort,
        "solve_dopri5_into",
        "dopri5_cohort",
    ),
    "rodas": SolverInfo(
        "rodas",
        "Rodas4",
        _rodas.ORDER,
        _rodas.ERROR_ORDER,
        True,
        True,
        "stiff, L-stable Rosenbrock 4(3)",
        "Rodas4: L-stable, stiffly accurate Rosenbrock method 4(3) with 3rd-order dense "
        "output and a predictive step-size controller",
        "Hairer & Wanner, Solving ODEs II, Sec. IV.7, doi:10.1007/978-3-642-05221-7",
        _call_rodas,
        _rodas.solve_linear_rodas_into,
        _ka.linear_rodas_cohort,
        "solve_rodas_into",
        "rodas_cohort",
    ),
}
#: The adaptive solvers (the order of the ``kernels`` tuples of :func:`run`).
ADAPTIVE: dict[str, SolverInfo] = {k: v for k, v in SOLVERS.items() if v.adaptive}
#: Every accepted `method`: the solvers and ``"auto"`` (:func:`resolve`).
METHODS: tuple[str, ...] = (*SOLVERS, "auto")
#: The solver that solves again, under ``method="auto"``, what Dopri5 finds stiff.
STIFF_FALLBACK = "rodas"
#: The cohort kernel of each adaptive solver for linear models.
LINEAR_COHORT_KERNELS = {k: v.linear_cohort for k, v in ADAPTIVE.items()}
#: The single-patient entry points for linear models, in the order of :data:`ADAPTIVE`.
LINEAR_KERNELS = tuple(v.linear for v in ADAPTIVE.values())


class Resolved(NamedTuple):
    """A `method` resolved for a model: the solver, whether patients that Dopri5 finds
    stiff are solved again with Rodas4, and a note on the choice (``""`` if chosen)."""

    method: str
    auto_stiff: bool
    note: str


def check(method: str, rtol=None, atol=None):
    """Validate `method` and fill the default tolerances of the adaptive solvers.

    Returns ``(rtol, atol)``; raises :class:`ValueError` for an unknown method or
    tolerances given to the exact solver.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    exact = method in SOLVERS and not SOLVERS[method].adaptive
    if exact and (rtol is not None or atol is not None):
        raise ValueError(f"`rtol`/`atol` apply to the adaptive methods; method={method!r} is exact")
    return (DEFAULT_RTOL if rtol is None else rtol), (DEFAULT_ATOL if atol is None else atol)


def resolve(method: str, spec) -> Resolved:
    """The solver `method` means for the model `spec` (a :class:`~pkpd.inputs.model.ModelSpec`).

    ``"auto"``: exact for a linear model; for an ``[ode]`` model Rodas4 when the file says
    ``stiff = true``, else Dopri5 with the patients it finds stiff solved again by Rodas4.
    Raises :class:`ValueError` for the exact solver on a nonlinear model.
    """
    if method == "auto":
        if spec.is_linear:
            return Resolved("exact", False, "")
        if spec.ode.stiff:
            return Resolved("rodas", False, "auto: the model file says stiff = true")
        return Resolved("dopri5", True, "auto: nonlinear model")  # STIFF_FALLBACK if stiff
    if not SOLVERS[method].adaptive and not spec.is_linear:
        usable = ["auto", *ADAPTIVE]
        raise ValueError(
            f"`method` {method!r} is for linear compartment models; {spec.name!r} is a "
            f"nonlinear [ode] model: use {', '.join(map(repr, usable[:-1]))} or {usable[-1]!r}"
        )
    return Resolved(method, False, "")


def failure(method: str, status: int) -> str:
    """The message of a failed solve: the solver, the status code and its meaning."""
    return f"{SOLVERS[method].label} failed (status {status}): {Status.describe(status)}"


def attrs(method: str, rtol=None, atol=None, stats: dict | None = None, note: str = "") -> dict:
    """Dataset attributes of one patient's solve: the solver, tolerances and counters."""
    info = SOLVERS[method]
    out = {"solver": f"{info.description} ({info.reference})", "solver_method": method}
    if not info.adaptive:
        return out
    out.update({"solver_rtol": str(rtol), "solver_atol": str(atol)})
    out.update({f"solver_{k}": v for k, v in (stats or {}).items()})
    if note:
        out["solver_note"] = note
    return out


def cohort_attrs(
    method: str, rtol, atol, stats: np.ndarray | None, auto_stiff: bool, linear: bool = True
) -> dict:
    """Dataset attributes of a cohort: the solver, metric accuracy and, for an adaptive
    solver, its tolerances and the mean and maximum of each counter (`stats` per patient).
    `linear`: a linear model (under an adaptive solver its maxima are not searched between
    evaluated points; an ``[ode]`` model's are)."""
    info = SOLVERS[method]
    if not info.adaptive:
        return {
            "solver": f"{info.name}: {info.summary} (cohort kernel)",
            "metrics_accuracy": "auc and c_at exact; cmax/tmax of the exact solution (grid, "
            "dose events and maxima between them); time_above by linear interpolation "
            "between evaluated points",
        }
    out = {
        "solver": f"{info.method} (cohort kernel): {info.description}"
        + (
            f"; patients with detected stiffness re-solved with {SOLVERS[STIFF_FALLBACK].method}"
            if auto_stiff
            else ""
        ),
        "solver_method": method,
        "solver_rtol": float(np.max(rtol)),
        "solver_atol": float(np.max(atol)),
        "metrics_accuracy": f"solution to rtol {np.max(rtol):g} / atol "
        f"{np.max(atol):g} (mg, mg/L); auc integrated by the solver; cmax/tmax over "
        + ("grid + dose events" if linear else "grid + dose events + maxima between them")
        + "; time_above by linear interpolation between evaluated points",
    }
    for i, name in enumerate(STAT_NAMES):
        out[f"solver_{name}_mean"] = float(stats[:, i].mean()) if stats.size else 0.0
        out[f"solver_{name}_max"] = int(stats[:, i].max()) if stats.size else 0
    return out


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
        A key of :data:`ADAPTIVE`.
    kernels : (dopri5_into, rodas_into)
        Compiled entry points of the kernel protocol (module docstring), one per adaptive
        solver in the order of :data:`ADAPTIVE`.
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
    if method not in ADAPTIVE:
        raise ValueError(f"`method` must be one of {', '.join(ADAPTIVE)}, got {method!r}")
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
    kernel = kernels[list(ADAPTIVE).index(method)]
    status = ADAPTIVE[method].call(kernel, args, n, out, stats, nstiff)
    return out, int(status), _stats_dict(stats)


def run_linear(method: str, M, b, ev_t, ev_rate, ev_bolus, t_out, x0=None, **kwargs):
    """Solve ``dy/dt = M y + b u`` with an adaptive solver (exact Jacobian for Rodas4).

    Same event and output conventions as :func:`pkpd.engine.solvers.exact.propagate`; keyword
    arguments as :func:`run`. Returns ``(X, status, stats)``.
    """
    M = np.asarray(M, dtype=np.float64)
    x0 = np.zeros(M.shape[0]) if x0 is None else x0
    return run(method, LINEAR_KERNELS, pack(M, b), b, x0, ev_t, ev_rate, ev_bolus, t_out, **kwargs)
