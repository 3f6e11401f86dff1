"""Cmax and Tmax of the exact cohort kernel's fast paths against single-patient simulations.

In summary mode (no thresholds, no AUC windows inside the grid, no anchored times, no
stored trajectories) on a uniform grid, the exact kernel (pkpd/engine/kernels.py) advances
``BLK`` grid steps at a time and evaluates the outputs at the inner points of a block
from precomputed rows of the propagator, or skips a block whose bound stays below the
running Cmax. Peaks of metabolites and effect sites lie between dose events, so they are
found there: this checks each output's Cmax and Tmax of several patients against the
maximum of the exact solution (between evaluated points included, issue 14) of the same
patient simulated alone with :func:`pkpd.simulate` (the parameters drawn by the cohort,
rebuilt as covariates plus random effects), and against its sampled maximum and argmax over
the grid plus the dose events.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import pkpd
from pkpd.errors import PkpdWarning
from pkpd.inputs.population import CovariateTable
from pkpd.running.cohort import simulate_cohort
from pkpd.running.simulate import time_grid

#: Linear models with metabolites or effect sites (peaks away from dose events).
MODELS = [
    "fanta2015_otto2021",
    "simons2022_s_ketamine",
    "perezruixo2021_esketamine",
    "hijazi2003_racemic",
]
#: Short infusion (every peak but the parent's after its end), and bolus plus infusions.
REGIMENS = {
    "infusion": "0.5 mg/kg over 40 min from 0 h",
    "bolus_infusion": "0.25 mg/kg bolus at 0 h; 0.15 mg/kg/h from 0 h to 1.5 h; "
    "0.05 mg/kg/h from 1.5 h to 3 h",
}
N = 6
UNTIL, EVERY = 12.0, "1 min"


def _table(spec):
    """`N` patients inside the model's studied weight and age ranges (if it has any)."""
    cov = {}
    for name, (lo, hi) in (("weight", (55.0, 85.0)), ("age", (20.0, 40.0))):
        c = spec.covariates.get(name)
        if c is not None and c.range is not None:
            lo, hi = c.range
        cov[name] = np.linspace(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo), N)
    return CovariateTable(covariates=cov, n=N)


def _rebuild(spec, ds, i, regimen, times):
    """Patient `i` of `ds` alone: its covariates, and random effects recovered as
    log(individual / typical) from the cohort's drawn parameters."""
    cov = {c: float(ds[c].values[i]) for c in ("weight", "age") if c in spec.covariates}
    typical = spec.individual_parameters(cov, warn=False)
    theta = np.array([float(ds[f"param_{p}"].values[i]) for p in spec.param_names])
    eta = dict(zip(spec.param_names, np.log(theta / typical), strict=True))
    np.testing.assert_allclose(spec.individual_parameters(cov, eta, warn=False), theta, rtol=1e-13)
    return pkpd.simulate(spec, regimen, covariates=cov, eta=eta, times=times)


@pytest.mark.parametrize("regimen", list(REGIMENS))
@pytest.mark.parametrize("name", MODELS)
def test_summary_mode_cmax_tmax_equal_the_single_patient_argmax(name, regimen):
    spec = pkpd.load_model(name)
    text = REGIMENS[regimen]
    with warnings.catch_warnings():
        # Defaults of covariates the table does not give (e.g. race) may be reported.
        warnings.simplefilter("ignore", PkpdWarning)
        ds = simulate_cohort(
            spec, text, _table(spec), seed=7, until=f"{UNTIL} h", every=EVERY, at={},
            bands=False,
        )  # fmt: skip
    assert np.all(ds.status.values == 0)
    assert "time" not in ds.dims  # summary mode
    grid = time_grid(0.0, UNTIL, EVERY)  # the cohort's grid (doses start at 0 h)
    assert grid.size == 721 and grid[-1] == UNTIL
    events = np.unique(pkpd.load_regimen(text).event_table(70.0).t)
    times = np.unique(np.concatenate([grid, events[events <= UNTIL]]))
    between = 0
    for i in range(N):
        sim = _rebuild(spec, ds, i, text, times)
        for o in ds.output.values:
            c = sim[str(o)].values
            want_t = times[np.argmax(c)]
            cmax = float(ds.cmax.sel(output=o).values[i])
            tmax = float(ds.tmax.sel(output=o).values[i])
            # The maximum of the exact solution (maxima between the evaluated points
            # included, issue 14): that of the single-patient path, at least the largest
            # evaluated value, and within one grid step of its time.
            attrs = sim[str(o)].attrs
            assert cmax == pytest.approx(attrs["cmax_exact"], rel=1e-9), (i, o)
            assert tmax == pytest.approx(attrs["tmax_exact"], abs=1e-8), (i, o)
            assert cmax >= c.max() * (1 - 1e-12), (i, o)
            assert abs(tmax - want_t) <= 1.0 / 60 + 1e-12, (i, o, tmax, want_t)
            between += want_t not in events
    # Metabolite peaks lie between dose events, where the kernel takes blocks of steps
    # (an effect site may peak right at the end of an infusion).
    assert between > 0 or not any(str(o).startswith("cp_") for o in ds.output.values)
