"""Exposure targets and the probability of attaining them (PTA) over a cohort.

A :class:`Target` asks for an output at or above a level (ng/mL) for a fraction or a
duration of a window; :func:`pta` evaluates it on each patient of a cohort from the
kernel's ``time_above`` (whole grid; read through the cohort's numeric
``threshold_output`` / ``threshold_level`` coordinates and ``grid_start_h`` /
``grid_end_h`` attributes, never from their text) or from stored trajectories
(:func:`pkpd.analysis.metrics.time_above`), with a binomial interval
(:func:`binomial_interval`). Re-exported by :mod:`pkpd.analysis.risk` (``pkpd.risk.pta``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy import stats

from pkpd.analysis import metrics
from pkpd.errors import MetricsError, RiskError
from pkpd.inputs.units import parse_quantity

__all__ = ["Target", "binomial_interval", "pta", "target_cohort_kwargs"]


@dataclass
class Target:
    """An exposure target: `output` at least `at_least` for a fraction or duration of `window`.

    ``window`` None means the whole simulated grid (then the cohort kernel's ``time_above``
    is used when it holds the level; otherwise stored trajectories).
    """

    output: str
    at_least: str
    level: float  # ng/mL
    for_fraction: float | None = None
    for_duration: float | None = None  # h
    window: tuple | None = None
    #: A two-sided target: the output also at most this (text) / `level_high` (ng/mL).
    at_most: str | None = None
    level_high: float | None = None

    @classmethod
    def from_any(cls, target) -> Target:
        if isinstance(target, Target):
            return target
        if not isinstance(target, dict):
            raise RiskError(f"`target`: expected a dict or a Target, got {target!r}")
        allowed = {"output", "at_least", "at_most", "for_fraction", "for_duration", "window"}
        unknown = sorted(set(target) - allowed)
        if unknown:
            raise RiskError(
                f"`target`: unknown key {unknown[0]!r}; expected keys {', '.join(sorted(allowed))}"
            )
        for key in ("output", "at_least"):
            if key not in target:
                raise RiskError(f"`target`: missing key {key!r} (e.g. {{'output': 'cp', ...}})")
        level_text = target["at_least"]
        if isinstance(level_text, int | float) and not isinstance(level_text, bool):
            level_text = f"{level_text} ng/mL"
        level = parse_quantity(level_text, "concentration", key="target.at_least").value
        level *= 1000.0  # mg/L -> ng/mL
        if not level > 0:
            raise RiskError(f"`target.at_least` must be positive, got {target['at_least']!r}")
        frac = target.get("for_fraction")
        dur = target.get("for_duration")
        if (frac is None) == (dur is None):
            raise RiskError(
                "`target`: give exactly one of 'for_fraction' (0 < f <= 1) or 'for_duration' "
                f"(e.g. '12 h'), got for_fraction={frac!r}, for_duration={dur!r}"
            )
        if frac is not None:
            if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0 < frac <= 1:
                raise RiskError(f"`target.for_fraction` must be in (0, 1], got {frac!r}")
            frac = float(frac)
        if dur is not None:
            dur = parse_quantity(dur, "time", default_unit="h", key="target.for_duration").value
            if not dur > 0:
                raise RiskError(f"`target.for_duration` must be positive, got {dur!r}")
        window = target.get("window")
        if window is not None:
            if not isinstance(window, tuple | list) or len(window) != 2:
                raise RiskError(f"`target.window`: expected a (start, end) pair, got {window!r}")
            window = tuple(window)
        high_text, high = target.get("at_most"), None
        if high_text is not None:
            if isinstance(high_text, int | float) and not isinstance(high_text, bool):
                high_text = f"{high_text} ng/mL"
            high = 1000.0 * parse_quantity(high_text, "concentration", key="target.at_most").value
            if not high > level:
                raise RiskError(
                    f"`target.at_most` ({target['at_most']!r}) must be above `target.at_least` "
                    f"({target['at_least']!r})"
                )
            high_text = str(high_text)
        return cls(
            str(target["output"]), str(level_text), level, frac, dur, window, high_text, high
        )

    def describe(self) -> str:
        how = (
            f"for at least {100 * self.for_fraction:g}% of"
            if self.for_fraction is not None
            else f"for at least {self.for_duration:g} h of"
        )
        win = "the whole simulated grid" if self.window is None else f"{self.window}"
        if self.level_high is not None:
            return f"{self.output} within {self.level:g}..{self.level_high:g} ng/mL {how} {win}"
        return f"{self.output} >= {self.level:g} ng/mL {how} {win}"


def target_cohort_kwargs(target: Target) -> dict:
    """The :func:`pkpd.simulate_cohort` keywords `target` needs: a whole-grid target its
    threshold, a windowed target the stored trajectory of its output."""
    if target.window is None and target.level_high is not None:
        return {"ranges": {target.output: [f"{target.level:g}..{target.level_high:g} ng/mL"]}}
    if target.window is None:
        return {"thresholds": {target.output: [f"{target.level:g} ng/mL"]}}
    return {"trajectories": [target.output]}


def binomial_interval(k, n, level=0.95, method="wilson") -> tuple[float, float]:
    """Two-sided binomial confidence interval for ``k`` successes in ``n`` trials.

    ``method``: ``"wilson"`` (score interval, Wilson 1927) or ``"clopper-pearson"`` (exact).
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
        raise RiskError(f"`n` must be a positive integer, got {n!r}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k <= n:
        raise RiskError(f"`k` must be an integer in [0, n={n}], got {k!r}")
    if not 0 < level < 1:
        raise RiskError(f"`level` must be in (0, 1), got {level!r}")
    alpha = 1.0 - level
    if method == "wilson":
        z = stats.norm.ppf(1 - alpha / 2)
        ph = k / n
        den = 1 + z * z / n
        centre = (ph + z * z / (2 * n)) / den
        half = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / den
        # the bounds are exactly 0 at k = 0 and 1 at k = n (avoid 1e-19 rounding)
        return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)
    if method == "clopper-pearson":
        lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
        hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
        return lo, hi
    raise RiskError(f"`method`: expected 'wilson' or 'clopper-pearson', got {method!r}")


def pta(ds, target, *, level: float = 0.95, method: str = "wilson"):
    """Probability of target attainment over a cohort, with a binomial interval.

    Parameters
    ----------
    ds : xarray.Dataset
        A cohort (see :func:`pkpd.analysis.risk.required_cohort_kwargs` for what the target
        needs).
    target : dict or Target
        ``{"output": "cp", "at_least": "50 ng/mL", "for_fraction": 0.5,
        "window": ("end_of_surgery", "end_of_surgery + 24 h")}``; ``for_duration`` (e.g.
        ``"12 h"``) instead of ``for_fraction``; no window = the whole grid.
    level, method
        Interval level and method (``"wilson"`` or ``"clopper-pearson"``).

    Returns
    -------
    xarray.Dataset
        ``attained`` (patient, bool), ``time_at_target`` and ``window_length`` (patient, h),
        ``pta``, ``pta_lo``, ``pta_hi`` (fractions over the successful patients). The
        interval is the Monte Carlo (finite cohort) uncertainty only: it assumes the model.
    """
    t = Target.from_any(target)
    if not isinstance(ds, xr.Dataset) or "patient" not in ds.dims:
        raise RiskError("`ds`: expected a cohort xarray.Dataset with a `patient` dimension")
    j = _kernel_threshold(ds, t) if t.window is None else None
    r = _kernel_range(ds, t) if t.window is None else None
    if r is not None:
        above = np.asarray(ds["time_within"].isel(range=r).values, float)
        length = np.full(above.shape, _grid_span(ds))
        source = "cohort kernel time_within over the whole grid"
    elif t.level_high is not None:
        if "trajectory" not in ds or t.output not in [str(v) for v in ds["traj_output"].values]:
            need = target_cohort_kwargs(t)
            raise RiskError(
                f"`ds` lacks what target {t.describe()!r} needs: simulate the cohort with {need}"
            )
        try:
            rng = {t.output: [(t.level, t.level_high)]}
            a = metrics.time_within(ds, rng, window=t.window, outputs=[t.output])
            lvl = {t.output: [t.level]}
            up, down = metrics.time_above_and_below(ds, lvl, window=t.window, outputs=[t.output])
            full = up + down
        except MetricsError as exc:
            raise RiskError(f"`target.window`: {exc}") from exc
        above = np.asarray(a.isel(range=0).values, float)
        length = np.asarray(full.isel(threshold=0).values, float)
        source = "stored trajectories (pkpd.metrics.time_within, linear interpolation of crossings)"
    elif j is not None:
        above = np.asarray(ds["time_above"].isel(threshold=j).values, float)
        length = np.full(above.shape, _grid_span(ds))
        source = "cohort kernel time_above over the whole grid"
    elif "trajectory" in ds and t.output in [str(v) for v in ds["traj_output"].values]:
        try:
            a, b = metrics.time_above_and_below(
                ds, {t.output: [t.level]}, window=t.window, outputs=[t.output]
            )
        except MetricsError as exc:
            raise RiskError(f"`target.window`: {exc}") from exc
        above = np.asarray(a.isel(threshold=0).values, float)
        length = above + np.asarray(b.isel(threshold=0).values, float)
        source = "stored trajectories (pkpd.metrics.time_above, linear interpolation of crossings)"
    else:
        need = target_cohort_kwargs(t)
        raise RiskError(
            f"`ds` lacks what target {t.describe()!r} needs: simulate the cohort with {need}"
        )
    ok = np.isfinite(above)
    if "status" in ds:
        ok &= ds["status"].values == 0
    if not ok.any():
        raise RiskError("`ds`: no successful patient to evaluate the target on")
    need_h = (
        t.for_fraction * length
        if t.for_fraction is not None
        else np.full(length.shape, t.for_duration)
    )
    # 1e-9 h tolerance: float32 trajectories and interpolated crossings.
    attained = ok & (above >= need_h - 1e-9)
    k, n = int(attained[ok].sum()), int(ok.sum())
    lo, hi = binomial_interval(k, n, level=level, method=method)
    attrs = {"target": t.describe(), "source": source, "interval": f"{method} {100 * level:g}%"}
    per_patient = {"attained": attained, "time_at_target": np.where(ok, above, np.nan)}
    per_patient["window_length"] = np.where(ok, length, np.nan)
    return _pta_dataset(ds, t, per_patient, (k, n, lo, hi), attrs)


def _six_digits(x: float) -> float:
    """`x` to the 6 significant digits with which :func:`target_cohort_kwargs` writes a
    level (``:g``), so a cohort simulated with those keywords matches its target."""
    return float(f"{x:.6g}")


def _kernel_threshold(ds, t: Target) -> int | None:
    """Index of the cohort's kernel threshold on `t`'s output at `t`'s level (ng/mL), from
    the numeric threshold coordinates; None if the cohort has none."""
    need = ("time_above", "threshold_output", "threshold_level", "threshold_units")
    if any(name not in ds.variables for name in need):
        return None
    outputs = [str(v) for v in ds["threshold_output"].values]
    units = [str(v) for v in ds["threshold_units"].values]
    levels = np.asarray(ds["threshold_level"].values, dtype=float)
    want = _six_digits(t.level)
    for j, (o, u, x) in enumerate(zip(outputs, units, levels, strict=True)):
        if o == t.output and u == "ng/mL" and _six_digits(float(x)) == want:
            return j
    return None


def _kernel_range(ds, t: Target) -> int | None:
    """Index of the cohort's kernel range equal to two-sided target `t`'s, from the numeric
    range coordinates; None if `t` is one-sided or the cohort has none."""
    need = ("time_within", "range_output", "range_low", "range_high", "range_units")
    if t.level_high is None or any(name not in ds.variables for name in need):
        return None
    want = (_six_digits(t.level), _six_digits(t.level_high))
    for k, (o, u, lo, hi) in enumerate(
        zip(
            [str(v) for v in ds["range_output"].values],
            [str(v) for v in ds["range_units"].values],
            np.asarray(ds["range_low"].values, dtype=float),
            np.asarray(ds["range_high"].values, dtype=float),
            strict=True,
        )
    ):
        if o == t.output and u == "ng/mL" and (_six_digits(lo), _six_digits(hi)) == want:
            return k
    return None


def _grid_span(ds) -> float:
    """Length (h) of the cohort's evaluation grid, from its numeric attributes."""
    try:
        return float(ds.attrs["grid_end_h"]) - float(ds.attrs["grid_start_h"])
    except (KeyError, TypeError, ValueError):
        raise RiskError(
            "`ds.attrs`: the cohort has no numeric grid span (`grid_start_h`, `grid_end_h`), "
            f"got grid_start_h={ds.attrs.get('grid_start_h')!r}, "
            f"grid_end_h={ds.attrs.get('grid_end_h')!r}"
        ) from None


def _pta_dataset(ds, t: Target, per_patient: dict, counts: tuple, attrs: dict) -> xr.Dataset:
    """The result of :func:`pta`: per-patient variables and the PTA with its interval."""
    k, n, lo, hi = counts
    coords = {"patient": ds["patient"]}
    label = (
        f"{t.output} > {t.level:g} ng/mL"
        if t.level_high is None
        else f"{t.output} within {t.level:g}..{t.level_high:g} ng/mL"
    )
    per = {
        "attained": {"long_name": f"target attained: {t.describe()}", "units": "1"},
        "time_at_target": {"units": "h", "long_name": f"time with {label}"},
        "window_length": {"units": "h", "long_name": "target window length"},
    }
    data = {
        name: xr.DataArray(per_patient[name], dims=("patient",), coords=coords, attrs=a)
        for name, a in per.items()
    }
    data["pta"] = xr.DataArray(
        k / n,
        attrs={
            "units": "1",
            "long_name": "probability of target attainment",
            **attrs,
            "n_patients": n,
        },
    )
    data["pta_lo"] = xr.DataArray(lo, attrs={"units": "1", "long_name": "PTA lower bound", **attrs})
    data["pta_hi"] = xr.DataArray(hi, attrs={"units": "1", "long_name": "PTA upper bound", **attrs})
    return xr.Dataset(data, attrs=attrs)
