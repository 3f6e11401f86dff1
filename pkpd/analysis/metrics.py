"""Non-compartmental exposure metrics computed from simulated concentration time courses.

The functions take the concentrations on a time grid, as

* a dataset from :func:`pkpd.simulate` (dimension ``time``; every variable in ng/mL with
  only that dimension is a concentration output: ``cp``, ``ce``, ``cp_norketamine``...);
* a cohort dataset from :func:`pkpd.simulate_cohort` with stored trajectories (the
  ``trajectory`` variable, dimensions ``(patient, traj_output, time)``; the drawn event times
  such as ``end_of_surgery`` are per-patient coordinates and can be used in windows);
* or any :class:`xarray.DataArray` with a ``time`` dimension (h), in ng/mL;

and return :class:`xarray.DataArray` / :class:`xarray.Dataset` objects with an ``output``
dimension, the other dimensions of the input (e.g. ``patient``), and ``units`` and
``long_name`` in the attributes of every variable.

Definitions (``c_i`` at grid times ``t_i``, step ``h_i = t_{i+1} - t_i``)
-----------------------------------------------------------------------
* ``cmax``, ``tmax``: the largest value among the grid points inside the window and the
  (linearly interpolated) values at its two bounds; ``tmax`` is the first time it occurs.
  A peak between grid points is not searched for: the accuracy is that of the grid.
* ``auc`` over a window, two rules:

  - ``"linear"``: the linear trapezoid, ``h (c_i + c_{i+1}) / 2``. Its error on a smooth
    curve is ``-h^3 c''(xi) / 12`` per interval, so ``O(h^2)`` over a window (for a step
    ``h`` constant: ``|error| <= (b - a) h^2 max|c''| / 12``); it overestimates convex
    (decaying) curves.
  - ``"log-down"`` (default; "linear-up/log-down"): the linear trapezoid where the
    concentration rises or stays level, and ``h (c_i - c_{i+1}) / ln(c_i / c_{i+1})`` where
    it falls (both values positive). This is the exact integral of the exponential through
    the two points, so it is exact for a mono-exponential decline and much closer than the
    linear rule on multi-exponential declines.

  Window bounds between grid points use the same interpolant (linear or exponential).
* ``time_above`` / ``time_below``: time with ``c >= X`` / ``c < X`` in the window, with the
  linear interpolant between consecutive points (the crossing found by linear
  interpolation; ``time_above + time_below`` is the window length);
  ``time_above_and_below`` gives both from one pass.
* ``conc_at``: the linear interpolant at the requested times (exact at grid times).
* ``decrement_time`` (context-sensitive decrement): time from a stop time ``s`` until the
  concentration first falls below a level, either an absolute level (``below``) or a
  fraction of the concentration at ``s`` (``fraction=0.5``: the context-sensitive
  half-time). The crossing is found by linear interpolation (default) or, with
  ``interpolation="log"``, by log-linear interpolation (also of the concentration at an
  off-grid ``s``), exact for a mono-exponential decline. 0 if the concentration at ``s``
  is already below the level; NaN (and the attribute ``not_reached`` says so) if it does
  not fall below within the simulated times.
* ``s_ketamine_equivalent``: ``cp + f * cp_norketamine`` with a potency factor ``f`` that
  the caller must supply with its source (see the function: no published factor was found).

Boluses on the grid
-------------------
A concentration jumps at a bolus; the value stored at a grid time with a bolus is the one
after it (the true value at that time: ``cmax``, ``conc_at`` use it). The interval that ends
there needs the value just before it (the left limit), for integrals and crossings.
:func:`pkpd.simulate` datasets record both on every output (attributes ``bolus_times``,
``pre_bolus``, ``post_bolus``; :data:`BOLUS_ATTRS`), and so do cohorts of linear models with
stored trajectories (``trajectory_bolus_time``, ``trajectory_pre_bolus``,
``trajectory_post_bolus``); the functions here use them. Data without them (a DataArray from
arithmetic, an ``[ode]`` cohort: a :class:`~pkpd.errors.MetricsWarning` says so) are taken
as continuous, an O(h) error over the interval before such a bolus.

Kernel metrics of a cohort (``cmax``, ``tmax``, ``auc``, ``time_above`` of
:func:`pkpd.simulate_cohort`) are computed while the solver steps, on the grid *and* at
every dose event (both sides of a bolus), with an exact AUC; the functions here see only the
stored grid and the limits at boluses, so they agree exactly where every dose event lies on
the grid (float32 rounding), and the AUC agrees to the trapezoid error above, O(h^2)
(``tests/test_metrics.py`` checks both, with a bolus on the grid, on every shipped linear
model). Failed patients (NaN trajectories) give NaN metrics, as in the kernel. A cohort may
store outputs that are not concentrations (an ``[ode]`` pain score): select the
concentrations with ``outputs=``.

References
----------
Gabrielsson J, Weiner D. Pharmacokinetic and Pharmacodynamic Data Analysis, 5th ed. (2016),
chapter 2 (linear and log trapezoidal rules). Hughes MA, Glass PS, Jacobs JR.
Context-sensitive half-time in multicompartment pharmacokinetic models for intravenous
anesthetic drugs. Anesthesiology 1992;76:334-341, doi:10.1097/00000542-199203000-00003.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numba
import numpy as np

from pkpd.errors import MetricsError, MetricsWarning, UnitError
from pkpd.inputs.units import parse_quantity

__all__ = [
    "auc",
    "cmax",
    "conc_at",
    "concentrations",
    "decrement_time",
    "nca",
    "s_ketamine_equivalent",
    "time_above",
    "time_above_and_below",
    "time_below",
    "time_within",
    "tmax",
]

NG_ML_PER_MG_L = 1000.0  # 1 mg/L = 1 ug/mL = 1000 ng/mL
AUC_METHODS = ("log-down", "linear")
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")

#: Rows (e.g. patients x outputs) processed at once: bounds the temporary arrays.
_ROW_ELEMENTS = 4_000_000


# ----------------------------------------------------------------------------- inputs


def concentrations(data, outputs=None):
    """The concentrations of `data` as one DataArray ``(..., output, time)`` in ng/mL.

    Parameters
    ----------
    data : xarray.Dataset or xarray.DataArray
        A :func:`pkpd.simulate` dataset, a cohort dataset with a ``trajectory`` variable, or
        a DataArray with a ``time`` dimension (h) in ng/mL.
    outputs : str or list of str, optional
        Outputs to keep (default: all).

    Returns
    -------
    xarray.DataArray
        float64, dimensions the input's non-time dimensions, ``output`` and ``time``.
    """
    return _concentrations(data, outputs)[0]


def _concentrations(data, outputs=None):
    """:func:`concentrations` and the limits at boluses on the grid (or None): a Dataset
    with ``time`` (h), ``left`` and ``right`` (ng/mL), dimension ``bolus`` and the
    concentrations' other dimensions or a subset (see :func:`_bolus_limits`)."""
    import xarray as xr

    units = None  # per-output units of a cohort's trajectory with mixed units
    if isinstance(data, xr.DataArray):
        da = data
        if "time" not in da.dims:
            raise MetricsError(f"`data`: a DataArray needs a `time` dimension, got {da.dims}")
        if "output" not in da.dims:
            if "traj_output" in da.dims:
                da = da.rename(traj_output="output")
            else:
                da = da.expand_dims(output=[da.name if da.name is not None else "c"])
        _check_units(da, da.name or "data")
    elif isinstance(data, xr.Dataset):
        if "trajectory" in data.data_vars:
            da = data["trajectory"].rename(traj_output="output")
            if da.attrs.get("units") not in (None, "ng/mL") and "output_units" in data.coords:
                # An [ode] cohort may store outputs that are not concentrations: only the
                # selected ones must be (checked below).
                units = dict(zip(data["output"].values, data["output_units"].values, strict=True))
            else:
                _check_units(da, "trajectory")
        else:
            names = [
                k
                for k, v in data.data_vars.items()
                if v.dims == ("time",) and v.attrs.get("units") == "ng/mL"
            ]
            if not names:
                raise MetricsError(
                    "`data`: no concentration variable (dimension `time`, units ng/mL) and "
                    "no `trajectory`: simulate a cohort with trajectories=True"
                )
            da = xr.concat([data[k] for k in names], dim="output").assign_coords(output=names)
    else:
        raise MetricsError(
            f"`data`: expected an xarray Dataset or DataArray, got {type(data).__name__}"
        )
    jumps = _bolus_limits(data, da)
    if outputs is not None:
        sel = [outputs] if isinstance(outputs, str) else list(outputs)
        have = [str(o) for o in da["output"].values]
        bad = [o for o in sel if o not in have]
        if bad:
            raise MetricsError(
                f"`outputs`: unknown output {bad[0]!r}; expected one of {', '.join(have)}"
            )
        da = da.sel(output=sel)
        if jumps is not None and "output" in jumps.dims:
            jumps = jumps.sel(output=sel)
    if units is not None:
        for o in da["output"].values:
            if units.get(o) != "ng/mL":
                stored = data["trajectory"]["traj_output"].values
                conc = [str(k) for k in stored if units.get(k) == "ng/mL"]
                raise MetricsError(
                    f"`trajectory`: output {str(o)!r} is in {units.get(o)!r}, not a "
                    f"concentration in ng/mL; select concentrations with `outputs` "
                    f"(e.g. outputs={conc!r})"
                )
    da = da.transpose(..., "output", "time").astype(np.float64)
    t = np.asarray(da["time"].values, dtype=float)
    if t.size < 2 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise MetricsError(
            "`data`: the `time` coordinate must hold at least two finite, strictly increasing "
            f"times (h), got {t.size} value(s)"
        )
    da.attrs = {"units": "ng/mL", "long_name": "concentration"}
    return da, jumps


#: Attributes of a :func:`pkpd.simulate` concentration variable with the values just before
#: (left limit) and just after (right limit) each bolus that lies on its time grid.
BOLUS_ATTRS = ("bolus_times", "pre_bolus", "post_bolus")


def _outside_level() -> int:
    """The `stacklevel` of the first caller outside this module (for the warnings)."""
    import sys

    f, level = sys._getframe(1), 1
    while f is not None and f.f_globals.get("__name__") == __name__:
        f, level = f.f_back, level + 1
    return level


def _bolus_limits(data, da):
    """Left and right limits at the boluses on the grid, as recorded by the simulators.

    A stored value at a bolus time is one of the two (the one after the bolus, unless the
    bolus lies a rounding error after the grid point); the integrals need the left limit
    at the end of the interval before the bolus and the right limit at the start of the
    next. Sources: the attributes :data:`BOLUS_ATTRS` of single-patient variables, and the
    ``trajectory_bolus_time``, ``trajectory_pre_bolus``, ``trajectory_post_bolus``
    variables of a cohort. None if there are none.
    """
    import xarray as xr

    if isinstance(data, xr.Dataset) and "trajectory" in data.data_vars:
        if "trajectory_pre_bolus" not in data.data_vars:
            if "trajectory_bolus_limits" in data.attrs:
                note = data.attrs["trajectory_bolus_limits"]
                warnings.warn(
                    f"`data`: the left limits at boluses are {note}: integrals over intervals "
                    "ending at such a bolus use the value after it "
                    "(error O(h)); put the boluses off the grid or simulate single patients",
                    MetricsWarning,
                    stacklevel=_outside_level(),
                )
            return None
        return xr.Dataset(
            {
                "t": data["trajectory_bolus_time"],
                "left": data["trajectory_pre_bolus"].rename(traj_output="output"),
                "right": data["trajectory_post_bolus"].rename(traj_output="output"),
            }
        )
    if isinstance(data, xr.Dataset):
        srcs = {str(o): data[str(o)].attrs for o in da["output"].values}
    elif "output" in da.dims and da.sizes["output"] == 1:
        srcs = {str(da["output"].values[0]): data.attrs}
    else:
        return None
    srcs = {k: a for k, a in srcs.items() if all(x in a for x in BOLUS_ATTRS)}
    if not srcs:
        return None
    vals = {
        k: [np.atleast_1d(np.asarray(a[x], dtype=float)) for x in BOLUS_ATTRS]
        for k, a in srcs.items()
    }
    nb = max(v[0].size for v in vals.values())
    arr = np.full((3, len(vals), nb), np.nan)
    for i, v in enumerate(vals.values()):
        for j in range(3):
            arr[j, i, : v[j].size] = v[j]
    dims = ("output", "bolus")
    return xr.Dataset(
        {k: (dims, arr[j]) for j, k in enumerate(("t", "left", "right"))},
        coords={"output": list(vals)},
    )


def _check_units(da, name):
    u = da.attrs.get("units")
    if u is not None and u != "ng/mL":
        raise MetricsError(f"`{name}`: concentrations must be in ng/mL, got units {u!r}")


def _events(data, events) -> dict:
    """Named event times: per-patient coordinates in h (cohorts) updated by `events`."""
    out = {}
    if hasattr(data, "coords"):
        for k, v in data.coords.items():
            if k != "time" and "time" not in v.dims and v.attrs.get("units") == "h":
                out[str(k)] = v
    if events is not None:
        if not isinstance(events, Mapping):
            raise MetricsError(f"`events`: expected a dict name -> time, got {events!r}")
        out.update(events)
    return out


def _time(spec, arg: str, events: dict):
    """A time (h) as a float or a DataArray: a number, '4 h', 'end_of_surgery + 1 h'."""
    import xarray as xr

    from pkpd.inputs.regimen import _time_ref

    if isinstance(spec, bool) or spec is None:
        raise MetricsError(f"`{arg}`: expected a time such as '4 h' or 2.5 (h), got {spec!r}")
    if isinstance(spec, int | float | np.integer | np.floating):
        v = float(spec)
        if not math.isfinite(v):
            raise MetricsError(f"`{arg}`: the time must be finite, got {spec!r}")
        return v
    if isinstance(spec, xr.DataArray):
        return spec.astype(float)
    try:
        anchor, off = _time_ref(spec, key=arg)
    except (UnitError, AttributeError, TypeError):
        raise MetricsError(
            f"`{arg}`: {spec!r} is not a time such as '4 h', 2.5 (h) or 'end_of_surgery + 1 h'"
        ) from None
    if anchor is None:
        return off
    if anchor not in events:
        raise MetricsError(
            f"`{arg}`: {spec!r} refers to the event {anchor!r}, which is neither a coordinate "
            f"of the data nor in `events` (known: {', '.join(sorted(events)) or 'none'})"
        )
    base = events[anchor]
    if isinstance(base, str | int | float):
        base = _time(base, f"events.{anchor}", {})
    elif not isinstance(base, xr.DataArray):
        base = np.asarray(base, dtype=float)
        if base.ndim != 0:
            raise MetricsError(
                f"`events.{anchor}`: give per-patient times as a DataArray with a `patient` "
                "dimension (or a cohort dataset's coordinate), got an unlabelled array"
            )
        base = float(base)
    return base + off


def _concentration_level(spec, arg: str) -> float:
    """A concentration in ng/mL from '50 ng/mL', '0.05 mg/L' or a number (ng/mL)."""
    if isinstance(spec, bool):
        raise MetricsError(f"`{arg}`: expected a concentration such as '50 ng/mL', got {spec!r}")
    if isinstance(spec, int | float | np.integer | np.floating):
        v = float(spec)
    else:
        try:
            v = parse_quantity(spec, "concentration", key=arg).value * NG_ML_PER_MG_L
        except UnitError as exc:
            raise MetricsError(f"`{arg}`: {exc}") from None
    if not (math.isfinite(v) and v > 0):
        raise MetricsError(f"`{arg}`: the concentration must be positive and finite, got {spec!r}")
    return v


class _Rows:
    """`da` (..., output, time) as a (rows, n_time) array, and the way back; with `jumps`
    (from :func:`_concentrations`), the left and right limits at boluses on the grid."""

    def __init__(self, da, jumps=None):
        self.da = da
        self.t = np.asarray(da["time"].values, dtype=float)
        self.template = da.isel(time=0, drop=True)
        self.shape = self.template.shape
        self.c = np.ascontiguousarray(da.values.reshape(-1, self.t.size))
        self.n = self.c.shape[0]
        self.jump_rows = np.zeros(0, dtype=np.int64)
        if jumps is not None and jumps.sizes.get("bolus", 0) > 0:
            dims = (*self.template.dims, "bolus")
            flat = [
                np.asarray(
                    jumps[k].broadcast_like(self.template).transpose(*dims).values, dtype=float
                ).reshape(self.n, -1)
                for k in ("t", "left", "right")
            ]
            tb, left, right = flat
            # A bolus "on the grid" is within the grid's own rounding of a grid time.
            j = np.clip(np.searchsorted(self.t, tb), 1, self.t.size - 1)
            j = np.where(np.abs(self.t[j - 1] - tb) < np.abs(self.t[j] - tb), j - 1, j)
            tol = 1e-9 * np.maximum(1.0, np.abs(self.t[j]))
            ok = np.isfinite(tb) & np.isfinite(left) & np.isfinite(right)
            with np.errstate(invalid="ignore"):
                ok &= np.abs(self.t[j] - tb) <= tol
            r, k = np.nonzero(ok)
            self.jump_rows, self.jump_cols = r, j[r, k]
            self.jump_left, self.jump_right = left[r, k], right[r, k]

    def limits(self, s: slice):
        """``(right, left)`` limits of rows `s` at every grid time: the stored values, but
        after and before each bolus on the grid (the same arrays where there is none)."""
        c = self.c[s]
        m = (self.jump_rows >= s.start) & (self.jump_rows < s.stop)
        if not m.any():
            return c, c
        r, k = self.jump_rows[m] - s.start, self.jump_cols[m]
        cr, cl = c.copy(), c.copy()
        cr[r, k] = self.jump_right[m]
        cl[r, k] = self.jump_left[m]
        return cr, cl

    def bound(self, value, arg: str) -> np.ndarray:
        """A scalar or DataArray time broadcast to one value per row, checked in range."""
        import xarray as xr

        if isinstance(value, xr.DataArray):
            extra = set(value.dims) - set(self.template.dims)
            if extra:
                raise MetricsError(
                    f"`{arg}`: the time has dimension(s) {sorted(extra)} that the "
                    f"concentrations do not have ({', '.join(self.template.dims)})"
                )
            v = xr.broadcast(value, self.template)[0].transpose(*self.template.dims).values
            v = np.asarray(v, dtype=float).reshape(-1)
        else:
            v = np.full(self.c.shape[0], float(value))
        t0, t1 = self.t[0], self.t[-1]
        tol = 1e-9 * max(1.0, abs(t0), abs(t1))
        bad = ~np.isfinite(v) | (v < t0 - tol) | (v > t1 + tol)
        if bad.any():
            raise MetricsError(
                f"`{arg}`: time {v[bad][0]:g} h lies outside the simulated times {t0:g}-{t1:g} h"
            )
        return np.clip(v, t0, t1)

    def back(self, values, name: str, attrs: dict):
        import xarray as xr

        return xr.DataArray(
            np.asarray(values).reshape(self.shape),
            dims=self.template.dims,
            coords=self.template.coords,
            name=name,
            attrs=attrs,
        )

    def chunks(self):
        step = max(1, _ROW_ELEMENTS // max(1, self.t.size))
        for r0 in range(0, self.c.shape[0], step):
            yield slice(r0, min(self.c.shape[0], r0 + step))


def _window(rows: _Rows, window, events, arg: str):
    if window is None:
        return np.full(rows.n, rows.t[0]), np.full(rows.n, rows.t[-1])
    if not isinstance(window, tuple | list) or len(window) != 2:
        raise MetricsError(f"`{arg}`: expected a (start, end) pair of times, got {window!r}")
    a = rows.bound(_time(window[0], f"{arg}[0]", events), f"{arg}[0]")
    b = rows.bound(_time(window[1], f"{arg}[1]", events), f"{arg}[1]")
    if np.any(b <= a):
        i = int(np.argmax(b <= a))
        raise MetricsError(
            f"`{arg}`: the window {window!r} ends at or before its start ({b[i]:g} h <= {a[i]:g} h)"
        )
    return a, b


# ----------------------------------------------------------------------------- numerics


def _segment(t, cr, cl, x):
    """Interval index of each x (per row) and its end values: the right limit at its start
    and the left limit at its end (they differ from the stored value at a bolus only)."""
    idx = np.clip(np.searchsorted(t, x, side="right") - 1, 0, t.size - 2)
    r = np.arange(cr.shape[0])
    return idx, cr[r, idx], cl[r, idx + 1]


def _interp(t, cr, cl, x):
    """Linear interpolant of each row at its own time `x` (rows,); at a grid time the value
    there (the right limit, after a bolus)."""
    idx, c0, c1 = _segment(t, cr, cl, x)
    w = (x - t[idx]) / (t[idx + 1] - t[idx])
    return np.where(x >= t[-1], cr[:, -1], c0 + w * (c1 - c0))


def _interp_log(t, cr, cl, x):
    """Log-linear interpolant where the concentration falls (both ends > 0), else linear."""
    idx, c0, c1 = _segment(t, cr, cl, x)
    w = (x - t[idx]) / (t[idx + 1] - t[idx])
    with np.errstate(divide="ignore", invalid="ignore"):
        lg = c0 * np.power(c1 / c0, w)
    out = np.where(_log_mask(c0, c1), lg, c0 + w * (c1 - c0))
    return np.where(x >= t[-1], cr[:, -1], out)


def _log_mask(c0, c1):
    with np.errstate(invalid="ignore"):
        return (c1 < c0) & (c1 > 0) & (c0 > 0)


def _cumulative(t, cr, cl, method):
    """Cumulative integral of the interpolant at the grid times, (rows, n_time)."""
    h = np.diff(t)
    c0, c1 = cr[:, :-1], cl[:, 1:]
    seg = h * (c0 + c1) / 2.0
    if method == "log-down":
        m = _log_mask(c0, c1)
        with np.errstate(divide="ignore", invalid="ignore"):
            logseg = h * (c0 - c1) / np.log(c0 / c1)
        seg = np.where(m, logseg, seg)
    out = np.zeros_like(cr)
    np.cumsum(seg, axis=1, out=out[:, 1:])
    return out


def _integral_to(t, cr, cl, cum, x, method):
    """Integral of the interpolant from t[0] to x (rows,)."""
    idx, c0, c1 = _segment(t, cr, cl, x)
    r = np.arange(cr.shape[0])
    h = t[idx + 1] - t[idx]
    dx = x - t[idx]
    w = dx / h
    lin = dx * (c0 + (c0 + w * (c1 - c0))) / 2.0
    part = lin
    if method == "log-down":
        m = _log_mask(c0, c1)
        with np.errstate(divide="ignore", invalid="ignore"):
            # Exponential through (t_i, c0), (t_i+1, c1): c(x) = c0 (c1/c0)^w, and
            # int_0^dx c = c0 h (1 - (c1/c0)^w) / ln(c0/c1).
            lg = c0 * h * (1.0 - np.power(c1 / c0, w)) / np.log(c0 / c1)
        part = np.where(m, lg, lin)
    return cum[r, idx] + part


def _time_above_rows(t, cr, cl, a, b, level):
    """Time with c >= level in [a, b] per row, linear interpolant (rows,).

    The per-interval times are computed in one compiled pass (:func:`_above_parts`; the
    whole-array numpy expression it replaces made about fifteen temporaries of the size
    of the trajectories, and took most of a windowed target's evaluation in ``design``)
    and summed by numpy as before, so the result is bit for bit that expression's
    (``tests/test_metrics.py``).
    """
    res = np.empty((cr.shape[0], t.size - 1))
    _above_parts(np.ascontiguousarray(t, dtype=float), cr, cl, np.asarray(a, dtype=float),
                 np.asarray(b, dtype=float), float(level), res)  # fmt: skip
    out = res.sum(axis=1)
    out[np.isnan(cr).any(axis=1)] = np.nan
    return out


@_jit
def _np_clip(x, lo, hi):
    """``np.clip(x, lo, hi)`` for scalars, as numpy's ufunc computes it:
    ``_NPY_MIN(_NPY_MAX(x, lo), hi)``, NaN-propagating, ties to the bound."""
    m = x if (x != x or x > lo) else lo
    return m if (m != m or m < hi) else hi


@_jit
def _above_parts(t, cr, cl, a, b, level, res):
    """``res[r, k]``: the time with c >= level of interval ``[t[k], t[k+1]]`` within
    ``[a[r], b[r]]``, from the right limit at its start and the left limit at its end
    (crossings by linear interpolation), with the operations, in the order, of the numpy
    expression it replaced."""
    for r in range(cr.shape[0]):
        ar = a[r]
        br = b[r]
        for k in range(t.shape[0] - 1):
            t0 = t[k]
            t1 = t[k + 1]
            h = t1 - t0
            u = _np_clip(t0, ar, br)
            v = _np_clip(t1, ar, br)
            c0 = cr[r, k]
            c1 = cl[r, k + 1]
            cu = c0 + (u - t0) / h * (c1 - c0)
            cv = c0 + (v - t0) / h * (c1 - c0)
            dt = v - u
            p = cu - level
            q = cv - level
            if not (dt > 0):
                res[r, k] = 0.0
            elif p >= 0 and q >= 0:
                res[r, k] = dt
            elif p > 0 or q > 0:
                res[r, k] = dt * (p if p > 0 else q) / abs(q - p)
            else:
                res[r, k] = 0.0


# ----------------------------------------------------------------------------- metrics


def cmax(data, window=None, *, outputs=None, events=None):
    """Maximum concentration (ng/mL) in `window` (default: all simulated times).

    Parameters
    ----------
    data
        See :func:`concentrations`.
    window : (start, end), optional
        Times as numbers (h), strings with units (``"4 h"``) or event references
        (``"end_of_surgery + 24 h"``; per-patient coordinates of a cohort or `events`).
    outputs : list of str, optional
    events : dict, optional
        Event times by name: numbers (h), strings, or DataArrays over ``patient``.

    Returns
    -------
    xarray.DataArray
        ``(..., output)`` in ng/mL.
    """
    return _peak(data, window, outputs, events)[0]


def tmax(data, window=None, *, outputs=None, events=None):
    """Time (h) of the first maximum of the concentration in `window`; see :func:`cmax`."""
    return _peak(data, window, outputs, events)[1]


def _peak(data, window, outputs, events):
    da, jumps = _concentrations(data, outputs)
    rows = _Rows(da, jumps)
    ev = _events(data, events)
    a, b = _window(rows, window, ev, "window")
    t = rows.t
    cm = np.empty(rows.n)
    tm = np.empty(rows.n)
    for s in rows.chunks():
        cr, cl = rows.limits(s)
        ca, cb = _interp(t, cr, cl, a[s]), _interp(t, cr, cl, b[s])
        # At a bolus on the grid the value at t is the one after it (the right limit).
        _peak_rows(t, cr, ca, cb, a[s], b[s], cm[s], tm[s])
        nan = np.isnan(cr).any(axis=1)
        cm[s][nan] = np.nan
        tm[s][nan] = np.nan
    note = {"window": _window_text(window, t)}
    return (
        rows.back(cm, "cmax", {"units": "ng/mL", "long_name": "maximum concentration", **note}),
        rows.back(tm, "tmax", {"units": "h", "long_name": "time of maximum concentration", **note}),
    )


@_jit
def _peak_rows(t, cr, ca, cb, a, b, cm, tm):
    """Per row: the first maximum of the window's start value ``ca`` at ``a``, the values
    ``cr`` at the grid times inside ``[a, b]``, and the end value ``cb`` at ``b``, in that
    order (strict ``>``: a tie keeps the earlier time), or the first NaN among them. The
    same value and time as ``np.argmax`` over the row ``[ca, cr where inside else -inf,
    cb]`` (which made four temporaries of the trajectories' size), NaN included."""
    for r in range(cr.shape[0]):
        m = ca[r]
        tt = a[r]
        nan = m != m
        for k in range(t.shape[0]):
            if nan:
                break
            if t[k] >= a[r] and t[k] <= b[r]:
                v = cr[r, k]
                if v > m or v != v:
                    m = v
                    tt = t[k]
                    nan = v != v
        if not nan and (cb[r] > m or cb[r] != cb[r]):
            m = cb[r]
            tt = b[r]
        cm[r] = m
        tm[r] = tt


def _window_text(window, t) -> str:
    if window is None:
        return f"{t[0]:g} h .. {t[-1]:g} h"
    return f"{window[0]} .. {window[1]}"


def _windows(windows, t) -> dict:
    if windows is None:
        return {"total": None}
    if not isinstance(windows, Mapping) or not windows:
        raise MetricsError(f"`windows`: expected a dict name -> (start, end), got {windows!r}")
    return dict(windows)


def auc(data, windows=None, *, method="log-down", outputs=None, events=None):
    """Area under the concentration curve (ng*h/mL) over named windows.

    Parameters
    ----------
    data
        See :func:`concentrations`.
    windows : dict, optional
        ``name -> (start, end)`` (times as in :func:`cmax`); default ``{"total": all}``.
    method : {"log-down", "linear"}
        ``"log-down"``: linear-up/log-down trapezoid (exact for mono-exponential declines);
        ``"linear"``: linear trapezoid (error O(h^2)). See the module docstring.

    Returns
    -------
    xarray.DataArray
        ``(..., output, window)`` in ng*h/mL.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> t = np.linspace(0.0, 10.0, 11)
    >>> c = xr.DataArray(100 * np.exp(-0.3 * t), dims="time", coords={"time": t}, name="cp")
    >>> exact = 100 / 0.3 * (1 - np.exp(-3.0))
    >>> bool(abs(float(auc(c).squeeze()) - exact) < 1e-9 * exact)
    True
    """
    import xarray as xr

    if method not in AUC_METHODS:
        raise MetricsError(f"`method`: {method!r}; expected one of {', '.join(AUC_METHODS)}")
    da, jumps = _concentrations(data, outputs)
    rows = _Rows(da, jumps)
    ev = _events(data, events)
    win = _windows(windows, rows.t)
    cols = []
    for name, w in win.items():
        a, b = _window(rows, w, ev, f"windows.{name}")
        out = np.empty(rows.n)
        for s in rows.chunks():
            cr, cl = rows.limits(s)
            cum = _cumulative(rows.t, cr, cl, method)
            out[s] = _integral_to(rows.t, cr, cl, cum, b[s], method) - _integral_to(
                rows.t, cr, cl, cum, a[s], method
            )
        cols.append(rows.back(out, "auc", {}))
    res = xr.concat(cols, dim="window").assign_coords(window=list(win))
    res = res.transpose(..., "window")
    res.name = "auc"
    res.attrs = {
        "units": "ng*h/mL",
        "long_name": "area under the concentration curve",
        "method": "linear-up/log-down trapezoid" if method == "log-down" else "linear trapezoid",
        "windows": "; ".join(f"{k}: {_window_text(w, rows.t)}" for k, w in win.items()),
    }
    return res


def _thresholds(thresholds, outputs_all) -> list[tuple[str, float, str]]:
    if isinstance(thresholds, Mapping):
        items = thresholds.items()
    elif thresholds is None:
        raise MetricsError("`thresholds`: expected e.g. {'cp': ['50 ng/mL']} or '50 ng/mL'")
    else:
        items = [(o, thresholds) for o in outputs_all]
    out = []
    for o, vals in items:
        if o not in outputs_all:
            raise MetricsError(
                f"`thresholds`: unknown output {o!r}; expected one of {', '.join(outputs_all)}"
            )
        for v in [vals] if isinstance(vals, str | int | float) else list(vals):
            x = _concentration_level(v, f"thresholds.{o}")
            out.append((o, x, f"{o} > {x:g} ng/mL"))
    if not out:
        raise MetricsError("`thresholds`: no threshold given")
    return out


def time_above(data, thresholds, window=None, *, outputs=None, events=None):
    """Time (h) with the concentration at or above each threshold, in `window`.

    Parameters
    ----------
    thresholds : dict or str or number or list
        ``output -> [levels]`` (``{"cp": ["50 ng/mL", "100 ng/mL"]}``), or levels applied
        to every output; numbers are ng/mL.
    window : (start, end), optional
        Default: all simulated times.

    Returns
    -------
    xarray.DataArray
        ``(..., threshold)`` in h; labels ``"cp > 50 ng/mL"`` as in the cohort kernel.
    """
    return _time_vs(data, thresholds, window, outputs, events, ("above",))[0]


def time_below(data, thresholds, window=None, *, outputs=None, events=None):
    """Time (h) with the concentration below each threshold: window length - time above."""
    return _time_vs(data, thresholds, window, outputs, events, ("below",))[0]


def time_above_and_below(data, thresholds, window=None, *, outputs=None, events=None):
    """``(time_above(...), time_below(...))`` with the same arguments, from one pass over
    the trajectories (the time below is the window length minus the time above): the same
    values as the two calls, in half the time."""
    return _time_vs(data, thresholds, window, outputs, events, ("above", "below"))


def _time_vs(data, thresholds, window, outputs, events, which):
    """The time above (``"above"`` in `which`) and below (``"below"``) each threshold."""
    import xarray as xr

    da, jumps = _concentrations(data, outputs)
    names = [str(o) for o in da["output"].values]
    thr = _thresholds(thresholds, names)
    ev = _events(data, events)
    cols = {w: [] for w in which}
    for o, level, _ in thr:
        jo = jumps.sel(output=o) if jumps is not None and "output" in jumps.dims else jumps
        rows = _Rows(da.sel(output=o), jo)
        a, b = _window(rows, window, ev, "window")
        out = np.empty(rows.n)
        for s in rows.chunks():
            out[s] = _time_above_rows(rows.t, *rows.limits(s), a[s], b[s], level)
        for w in which:
            v = out if w == "above" else (b - a) - out
            cols[w].append(rows.back(v, "t", {}).drop_vars("output", errors="ignore"))
    results = []
    for w in which:
        res = xr.concat(cols[w], dim="threshold").assign_coords(threshold=[lab for *_, lab in thr])
        res = res.transpose(..., "threshold")
        res.name = f"time_{w}"
        res.attrs = {
            "units": "h",
            "long_name": ("time at or above threshold" if w == "above" else "time below threshold"),
            "method": "linear interpolation of crossings between grid points",
            "window": _window_text(window, np.asarray(da["time"].values)),
        }
        results.append(res)
    return tuple(results)


def time_within(data, ranges, window=None, *, outputs=None, events=None):
    """Time (h) with the concentration within each range ``[low, high]``, in `window`.

    The time at or above `low` minus the time at or above `high`, both with the linear
    interpolant on the same points (:func:`time_above`): the sets are nested, so the
    difference is exactly the time with ``low <= c < high`` (the cohort kernel's
    ``time_within``), with windows too.

    Parameters
    ----------
    ranges : dict
        ``output -> ["50..150 ng/mL", ...]`` (a range is ``"LOW..HIGH"`` or a ``(low,
        high)`` pair; numbers are ng/mL).
    window : (start, end), optional
        Default: all simulated times.

    Returns
    -------
    xarray.DataArray
        ``(..., range)`` in h; labels ``"cp within 50..150 ng/mL"`` as in the cohort.
    """
    import xarray as xr

    from pkpd.inputs.units import range_bounds

    if not isinstance(ranges, Mapping) or not ranges:
        raise MetricsError(f"`ranges`: expected e.g. {{'cp': ['50..150 ng/mL']}}, got {ranges!r}")
    items = []
    for o, vals in ranges.items():
        single = isinstance(vals, str) or (
            isinstance(vals, tuple | list) and len(vals) == 2 and not any(
                (isinstance(x, str) and ".." in x) or isinstance(x, tuple | list) for x in vals
            )
        )  # fmt: skip
        for v in [vals] if single else list(vals):
            try:
                a, b = range_bounds(v, f"ranges.{o}")
            except UnitError as exc:
                raise MetricsError(str(exc)) from None
            lo = _concentration_level(_unitless_ng_ml(a), f"ranges.{o}")
            hi = _concentration_level(_unitless_ng_ml(b), f"ranges.{o}")
            if not lo < hi:
                raise MetricsError(
                    f"`ranges.{o}` = {v!r}: the low bound must be below the high bound "
                    f"({lo:g} >= {hi:g} ng/mL)"
                )
            items.append((o, lo, hi))
    thr = {}
    for o, lo, hi in items:
        thr.setdefault(o, []).extend([lo, hi])
    (above,) = _time_vs(data, thr, window, outputs, events, ("above",))
    cols = []
    for j in range(len(items)):
        d = above.isel(threshold=2 * j, drop=True) - above.isel(threshold=2 * j + 1, drop=True)
        cols.append(d.where(~(d < 0.0), 0.0))
    labels = [f"{o} within {lo:g}..{hi:g} ng/mL" for o, lo, hi in items]
    res = xr.concat(cols, dim="range").assign_coords(range=labels).transpose(..., "range")
    res.name = "time_within"
    res.attrs = {
        "units": "h",
        "long_name": "time within range (low <= c <= high)",
        "method": "time above low minus time above high, linear interpolation of crossings",
        "window": above.attrs["window"],
    }
    return res


def _unitless_ng_ml(text: str):
    """A bare number of a range bound is ng/mL (as the other functions' numbers)."""
    try:
        return float(text)
    except ValueError:
        return text


def conc_at(data, times, *, outputs=None, events=None):
    """Concentrations (ng/mL) at named times, by linear interpolation (exact on the grid).

    Parameters
    ----------
    times : dict or list
        ``name -> time`` (e.g. ``{"eos": "end_of_surgery", "eos_1h": "end_of_surgery + 1 h",
        "24h": "24 h"}``) or a list of times (named by their text).

    Returns
    -------
    xarray.DataArray
        ``(..., output, at)`` in ng/mL.
    """
    import xarray as xr

    if isinstance(times, Mapping):
        items = dict(times)
    elif isinstance(times, str | int | float):
        items = {str(times): times}
    else:
        items = {str(x): x for x in times}
    if not items:
        raise MetricsError("`times`: no time given")
    da, jumps = _concentrations(data, outputs)
    rows = _Rows(da, jumps)
    ev = _events(data, events)
    cols = []
    for name, x in items.items():
        tx = rows.bound(_time(x, f"times.{name}", ev), f"times.{name}")
        out = np.empty(rows.n)
        for s in rows.chunks():
            out[s] = _interp(rows.t, *rows.limits(s), tx[s])
        cols.append(rows.back(out, "c_at", {}))
    res = xr.concat(cols, dim="at").assign_coords(at=list(items)).transpose(..., "at")
    res.name = "c_at"
    res.attrs = {
        "units": "ng/mL",
        "long_name": "concentration at named times",
        "method": "linear interpolation between grid points",
        "times": "; ".join(f"{k}: {v}" for k, v in items.items()),
    }
    return res


def decrement_time(
    data, stop, *, below=None, fraction=None, interpolation="linear", outputs=None, events=None
):
    """Time (h) from `stop` until the concentration first falls below a level.

    The context-sensitive decrement time of an infusion stopped at `stop`: give exactly one
    of `below` (an absolute level) and `fraction` (a fraction of the concentration at
    `stop`; 0.5 gives the context-sensitive half-time).

    Parameters
    ----------
    stop : time
        As in :func:`cmax`: ``"4 h"``, ``2.5``, ``"end_of_surgery"``.
    below : str or number, optional
        Level, e.g. ``"50 ng/mL"`` (numbers are ng/mL).
    fraction : float, optional
        In (0, 1).
    interpolation : {"linear", "log"}
        Crossing between grid points: linear (as for time above thresholds) or log-linear
        (exact for a mono-exponential decline).

    Returns
    -------
    xarray.DataArray
        ``(..., output)`` in h: 0 if already below at `stop`; NaN where the concentration
        stays at or above the level until the last simulated time (counted in the
        attribute ``not_reached``: simulate longer). For `fraction`, a zero concentration at
        `stop` also gives NaN (no level to fall below).
    """
    if (below is None) == (fraction is None):
        raise MetricsError("give exactly one of `below` (a level) and `fraction` (of c at stop)")
    if interpolation not in ("linear", "log"):
        raise MetricsError(f"`interpolation`: {interpolation!r}; expected 'linear' or 'log'")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise MetricsError(f"`fraction`: expected a number in (0, 1), got {fraction!r}")
        if not 0.0 < float(fraction) < 1.0:
            raise MetricsError(f"`fraction`: must lie in (0, 1), got {fraction!r}")
    level_abs = _concentration_level(below, "below") if below is not None else None
    da, jumps = _concentrations(data, outputs)
    rows = _Rows(da, jumps)
    ev = _events(data, events)
    s_all = rows.bound(_time(stop, "stop", ev), "stop")
    t = rows.t
    out = np.empty(rows.n)
    for sl in rows.chunks():
        (cr, cl), s = rows.limits(sl), s_all[sl]
        cs = (_interp_log if interpolation == "log" else _interp)(t, cr, cl, s)
        level = np.full(cr.shape[0], level_abs) if fraction is None else float(fraction) * cs
        valid = t[None, :] > s[:, None]
        # A grid point ends the interval before it: its left limit (before a bolus there).
        with np.errstate(invalid="ignore"):
            under = valid & (cl < level[:, None])
        found = under.any(axis=1)
        j = np.argmax(under, axis=1)
        r = np.arange(cr.shape[0])
        jm = np.maximum(j - 1, 0)
        prev_on_grid = (j > 0) & valid[r, jm]
        tp = np.where(prev_on_grid, t[jm], s)
        cp = np.where(prev_on_grid, cr[r, jm], cs)
        tj, cj = t[j], cl[r, j]
        with np.errstate(divide="ignore", invalid="ignore"):
            if interpolation == "log":
                ok = cj > 0
                w = np.where(ok, np.log(cp / level) / np.log(cp / cj), (cp - level) / (cp - cj))
            else:
                w = (cp - level) / (cp - cj)
        res = np.where(found, tp + w * (tj - tp) - s, np.nan)
        res = np.where(cs < level, 0.0, res)
        if fraction is not None:
            res = np.where(cs > 0, res, np.nan)
        res[np.isnan(cr).any(axis=1)] = np.nan
        out[sl] = res
    how = f"below {level_abs:g} ng/mL" if fraction is None else f"below {fraction:g} x c(stop)"
    return rows.back(
        out,
        "decrement_time",
        {
            "units": "h",
            "long_name": f"time from {stop} until the concentration falls {how}",
            "method": f"{interpolation} interpolation of the crossing between grid points",
            "not_reached": int(np.isnan(out).sum()),
        },
    )


def s_ketamine_equivalent(data, potency_factor, source, *, parent="cp", metabolite=None):
    """S-ketamine-equivalent concentration ``c_parent + f * c_norketamine`` (ng/mL).

    **No published potency factor for adding S-norketamine to S-ketamine exposure was
    found**, so `f` has no default and must come with its `source`:

    * the project's reference document (``shared/reference/ketamine-models.md``) reports,
      for acute analgesia, an S-norketamine effect *opposite* to S-ketamine's (Olofsen
      2012, Anesthesiology 117:353; linear slopes -0.038 and +0.030 cm per ng/mL, section
      5.1) and no S-norketamine contribution at all (Simons 2022, section 5.1; Olofsen 2012
      for cognition);
    * it rejects the "norketamine potency 0.30" of a public mrgsolve CRPS model as a model
      assumption, not literature (section 9);
    * encyclopaedic summaries call norketamine 3-5 times less potent *as an anaesthetic*
      (animal data): not an analgesic potency in patients.

    Parameters
    ----------
    data
        A :func:`pkpd.simulate` dataset or cohort dataset of an S-ketamine model with a
        norketamine output (``cp_norketamine`` / ``cp_noresketamine``).
    potency_factor : float
        ``f``: ng/mL of S-ketamine equivalent per ng/mL of the metabolite **as the model
        reports it** (some models carry S-norketamine in S-ketamine mass equivalents, see
        ``models/README.md``). Any finite number (a negative value expresses an opposing
        effect).
    source : str
        Where `f` comes from; recorded in the attributes.
    parent, metabolite : str
        Outputs to combine (default metabolite: the one output whose name starts with
        ``cp_nor``).

    Returns
    -------
    xarray.DataArray
        ``(..., time)`` in ng/mL, named ``cp_s_ketamine_equivalent``: pass it to the other
        functions of this module (e.g. ``auc(s_ketamine_equivalent(ds, f, src))``).
    """
    if (
        isinstance(potency_factor, bool)
        or not isinstance(potency_factor, int | float | np.integer | np.floating)
        or not math.isfinite(float(potency_factor))
    ):
        raise MetricsError(
            f"`potency_factor`: expected a finite number (no published value exists: give "
            f"yours and its `source`), got {potency_factor!r}"
        )
    if not isinstance(source, str) or not source.strip():
        raise MetricsError(f"`source`: say where the potency factor comes from, got {source!r}")
    da, jumps = _concentrations(data)
    names = [str(o) for o in da["output"].values]
    if metabolite is None:
        cands = [o for o in names if o.startswith("cp_nor")]
        if len(cands) != 1:
            raise MetricsError(
                f"`metabolite`: cannot choose the norketamine output among {', '.join(names)}; "
                "pass metabolite='...'"
            )
        metabolite = cands[0]
    for arg, o in (("parent", parent), ("metabolite", metabolite)):
        if o not in names:
            raise MetricsError(f"`{arg}`: unknown output {o!r}; expected one of {', '.join(names)}")
    f = float(potency_factor)
    res = da.sel(output=parent, drop=True) + f * da.sel(output=metabolite, drop=True)
    res.name = "cp_s_ketamine_equivalent"
    res.attrs = {
        "units": "ng/mL",
        "long_name": f"S-ketamine-equivalent concentration ({parent} + {f:g} x {metabolite})",
        "potency_factor": f,
        "potency_factor_source": source.strip(),
        "potency_factor_provenance": "user-supplied (no published factor found)",
    }
    if jumps is not None and set(jumps.dims) == {"output", "bolus"}:
        # One patient: the limits at boluses combine as the concentrations do.
        jp, jm = jumps.sel(output=parent), jumps.sel(output=metabolite)
        if np.array_equal(jp["t"].values, jm["t"].values, equal_nan=True):
            ok = np.isfinite(jp["t"].values)
            res.attrs.update(
                {
                    "bolus_times": jp["t"].values[ok],
                    "pre_bolus": (jp["left"] + f * jm["left"]).values[ok],
                    "post_bolus": (jp["right"] + f * jm["right"]).values[ok],
                }
            )
    return res


def nca(
    data,
    *,
    windows=None,
    thresholds=None,
    at=None,
    stop=None,
    fraction=0.5,
    method="log-down",
    outputs=None,
    events=None,
):
    """All metrics of this module in one Dataset (the names of the cohort kernel's).

    Parameters
    ----------
    windows, method
        As for :func:`auc`; Cmax/Tmax are over all simulated times.
    thresholds : optional
        As for :func:`time_above` (adds ``time_above`` and ``time_below``).
    at : optional
        As `times` of :func:`conc_at` (adds ``c_at``).
    stop, fraction : optional
        With `stop`, adds ``decrement_time`` (fraction of the value at `stop`).

    Returns
    -------
    xarray.Dataset
    """
    import xarray as xr

    kw = {"outputs": outputs, "events": events}
    out = {
        "cmax": cmax(data, **kw),
        "tmax": tmax(data, **kw),
        "auc": auc(data, windows, method=method, **kw),
    }
    if thresholds is not None:
        out["time_above"], out["time_below"] = time_above_and_below(data, thresholds, **kw)
    if at is not None:
        out["c_at"] = conc_at(data, at, **kw)
    if stop is not None:
        out["decrement_time"] = decrement_time(data, stop, fraction=fraction, **kw)
    ds = xr.Dataset(out)
    ds.attrs["metrics"] = "non-compartmental, from the stored time grid (pkpd.metrics)"
    for k in ("model", "regimen"):
        if hasattr(data, "attrs") and k in data.attrs:
            ds.attrs[k] = data.attrs[k]
    return ds
