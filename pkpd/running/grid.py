"""The output time grid and boluses on it: shared by one-patient and cohort simulations.

Below :mod:`pkpd.running.simulate` and :mod:`pkpd.running.cohort` (both import it), and
above the inputs layer, whose ``[ode]`` one-patient runs own the bolus helpers re-exported here.
"""

from __future__ import annotations

import numpy as np

from pkpd.errors import PkpdError
from pkpd.inputs.model.solve import (
    bolus_on_grid,
    record_bolus_limits,
)  # one home: [ode] runs use them
from pkpd.inputs.units import MG_L_TO_NG_ML, parse_quantity

__all__ = [
    "MAX_GRID_POINTS",
    "MG_L_TO_NG_ML",
    "GridError",
    "bolus_jumps",
    "bolus_on_grid",
    "grid_attrs",
    "record_bolus_limits",
    "time_grid",
]

#: Most points an output grid may have (10 million: 115 days at 1 s). Checked before the
#: grid is allocated, so a tiny `every` or a huge `until` is refused, not a MemoryError.
MAX_GRID_POINTS = 10_000_000


class GridError(PkpdError, ValueError):
    """The output time grid (`until`, `every`) is invalid or too large."""


def _hours(value, name: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return parse_quantity(value, "time", key=name).value


def time_grid(start: float, until, every) -> np.ndarray:
    """Output grid ``start, start+every, ...`` up to and including `until` (hours).

    `until` and `every` are hours or strings with units (``"48 h"``, ``"1 min"``). Points
    are computed as ``start + i*every`` (no accumulated rounding); `until` is appended if
    it is not on the grid.
    """
    until_h = _hours(until, "until")
    every_h = _hours(every, "every")
    if not every_h > 0:
        raise GridError(f"`every` must be positive, got {every!r}")
    if not until_h > start:
        raise GridError(f"`until` ({until!r}) must be after the start ({start:g} h)")
    # Counted before anything is allocated; inf (e.g. until = 1e306 day) is refused too.
    points = (until_h - start) / every_h + 1.0
    if not points <= MAX_GRID_POINTS:
        raise GridError(
            f"the output grid (`every` = {every!r}, from {start:g} h to `until` = "
            f"{until_h:g} h) would have {points:.4g} points, more than the limit of "
            f"{MAX_GRID_POINTS:,}: "
            "choose a larger `every` or an earlier `until`"
        )
    n = int(np.floor((until_h - start) / every_h + 1e-9))
    t = start + np.arange(n + 1) * every_h
    if until_h - t[-1] > 1e-9 * max(1.0, abs(until_h)):
        t = np.append(t, until_h)
    else:
        t[-1] = until_h
    return t


def bolus_jumps(spec, theta: np.ndarray) -> np.ndarray:
    """Jump of each output (ng/mL) per mg of bolus, ``(n, n_out)``, for a linear model.

    A bolus adds to the dose compartment only
    (:func:`pkpd.engine.solvers.linear_system.fill_system`: ``b[dose] = 1``), so the outputs
    read from that compartment jump by ``1 / V`` (or 1 when the state is itself a
    concentration) and the others are continuous.
    """
    d = spec.dose_index
    comp = spec.outputs_i[:, 0]
    is_state = spec.outputs_i[:, 1] == 1
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    v = spec.comps_i[d, 0]
    per_v = 1.0 / theta[:, v] if v >= 0 else np.full(theta.shape[0], np.nan)
    per_mg = np.where(is_state[None, :], 1.0, per_v[:, None])
    return np.where((comp == d)[None, :], per_mg, 0.0) * MG_L_TO_NG_ML


def grid_attrs(grid: np.ndarray) -> dict:
    """A cohort's evaluation grid as attributes: ``grid`` is text for people; the span, the
    first step (h) and the number of points are numbers for programs (nothing parses the
    text)."""
    return {
        "grid": f"{grid[0]:g} to {grid[-1]:g} h, {grid.size} points",
        "grid_start_h": float(grid[0]),
        "grid_end_h": float(grid[-1]),
        "grid_step_h": float(grid[1] - grid[0]) if grid.size > 1 else 0.0,
        "grid_points": int(grid.size),
    }
