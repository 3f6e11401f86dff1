"""Cohorts of several shipped models, and every residual-error type, against mathematics.

``tests/test_cohort.py`` checks the cohort machinery in depth on one model; here the same
independent oracle runs over models that exercise other parts of the cohort kernels: an
effect site, metabolite chains, a per-kg central volume, a categorical covariate and a
nonlinear ``[ode]`` model. Each patient is rebuilt alone with :func:`pkpd.simulate` from
its covariates and the random effects recovered from its drawn parameters, and the
cohort's metrics must be what their definitions say of that trajectory: ``c_at``, ``auc``
and the stored trajectory equal it, ``cmax``/``tmax`` are its maximum over the evaluated
points, ``time_above`` the time above the threshold of its linear interpolant.

The residual error is checked against its stated distribution: with ``F`` the prediction
and ``Y`` the observation, additive ``Y - F ~ N(0, sd)``, proportional
``(Y - F) / F ~ N(0, sd)``, exponential ``log(Y / F) ~ N(0, sd)`` and combined
``Var(Y - F | F) = (prop F)^2 + add^2`` (NONMEM's one-draw form). Additive and combined
errors are not used by a shipped model, so they run on a shipped model file with its
residual-error section written into ``tmp_path``.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import pkpd
from pkpd.inputs.population import CovariateTable
from pkpd.running.cohort import simulate_cohort

MODELS_DIR = Path(pkpd.__file__).resolve().parent.parent / "models"
# Dose events at grid points (0 h and 1 h) and every window bound and `at` time on the
# grid: the evaluated points of each patient are then exactly the grid.
REGIMEN = "0.5 mg/kg bolus at 0 h; 1 mg/kg/h from 0 h to 1 h"
# In mg, for the model whose volumes and clearances are all per kg (under a dose in mg/kg
# its concentrations would not depend on the weight).
REGIMEN_MG = "35 mg bolus at 0 h; 70 mg/h from 0 h to 1 h"
N = 64
UNTIL_H, STEP_H = 8.0, 1.0 / 6.0
KW = dict(
    until="8 h",
    every="10 min",
    windows={"first_hour": ("0 h", "1 h"), "all": ("0 h", "8 h"), "late": ("2 h", "8 h")},
    at={"at_20min": "20 min", "at_90min": "90 min", "at_6h": "6 h"},
    thresholds={"cp": ["100 ng/mL", "30 ng/mL"]},
    trajectories=True,
    trajectory_dtype="float64",
    bands=False,
    progress=False,
)
# Tight tolerances for the adaptive solver of [ode] models, in the cohort and alone.
ODE_TOL = {"rtol": 1e-10, "atol": 1e-13}


def _uniform(rng, lo, hi):
    return rng.uniform(lo, hi, N)


def _population(covariates):
    """A covariate table of N patients inside the model's studied ranges (seeded)."""
    rng = np.random.default_rng(2024)
    cols = {k: make(rng) for k, make in covariates.items()}
    return CovariateTable(covariates=cols, n=N)


# model -> (what it covers, covariates of the population[, regimen])
MODELS = {
    "herd2007_racemic_children": (
        "effect site, allometric scaling, IIV on four parameters",
        {"weight": lambda r: _uniform(r, 12.0, 70.0), "age": lambda r: _uniform(r, 2.0, 13.0)},
    ),
    "simons2022_s_ketamine": (
        "metabolite chain ketamine -> norketamine -> hydroxynorketamine with transit times",
        {"weight": lambda r: _uniform(r, 55.0, 90.0), "age": lambda r: _uniform(r, 20.0, 31.0)},
    ),
    "perezruixo2021_esketamine": (
        "metabolite through a liver compartment, categorical covariate (race)",
        {
            "weight": lambda r: _uniform(r, 45.0, 120.0),
            "age": lambda r: _uniform(r, 20.0, 59.0),
            "race": lambda r: np.where(r.uniform(size=N) < 0.4, "asian", "non_asian"),
        },
    ),
    "clements1981_racemic": (
        "per-kg central volume (V1 in L/kg), effect site, no IIV; a dose in mg, not mg/kg",
        {"weight": lambda r: _uniform(r, 40.0, 110.0)},
        REGIMEN_MG,
    ),
    "fanta2015_mm_s_ketamine": (
        "nonlinear [ode] model (Michaelis-Menten elimination), IIV",
        {"weight": lambda r: _uniform(r, 50.0, 95.0)},
    ),
}


def _regimen(spec):
    entry = MODELS.get(spec.name, ())
    return entry[2] if len(entry) > 2 else REGIMEN


@functools.cache
def _run(model):
    spec = pkpd.load_model(model)
    extra = {} if spec.is_linear else ODE_TOL
    pop = _population(MODELS[model][1])
    with warnings.catch_warnings():
        # Perez-Ruixo 2021 declares IIV on kmet without a value (the cohort says so).
        warnings.filterwarnings("ignore", ".*inter-individual variability of kmet")
        ds = simulate_cohort(spec, _regimen(spec), pop, seed=17, **KW, **extra)
    return spec, ds


@pytest.fixture(scope="module", params=list(MODELS))
def model_cohort(request):
    return _run(request.param)


def _covariates(spec, ds, i):
    out = {}
    for name in spec.covariates:
        v = ds[name].values[i]
        out[name] = v.item() if isinstance(v, np.generic) else v
    return out


def rebuild(spec, ds, i):
    """Patient `i` of `ds` simulated alone on the cohort's grid.

    The random effects are log(individual / typical) of the cohort's drawn parameters
    (zero for a model without variability); they must give those parameters back.
    """
    cov = _covariates(spec, ds, i)
    typical = spec.individual_parameters(cov, warn=False)
    theta = np.array([float(ds[f"param_{p}"].values[i]) for p in spec.param_names])
    eta = dict(zip(spec.param_names, np.log(theta / typical), strict=True))
    np.testing.assert_allclose(spec.individual_parameters(cov, eta, warn=False), theta, rtol=1e-13)
    extra = {} if spec.is_linear else ODE_TOL
    return pkpd.simulate(spec, _regimen(spec), cov, times=ds.time.values, eta=eta, **extra)


def _linear_time_above(t, c, thr):
    """Time above `thr` of the linear interpolant of (t, c)."""
    a, b, dt = c[:-1] - thr, c[1:] - thr, np.diff(t)
    both = (a >= 0) & (b >= 0)
    one = ~both & ((a > 0) | (b > 0))
    num = np.where(a > 0, a, b)
    frac = np.divide(num, np.abs(b - a), out=np.zeros_like(num), where=one)
    return float(np.sum(dt * np.where(both, 1.0, frac)))


def test_each_patient_equals_its_own_simulation(model_cohort):
    spec, ds = model_cohort
    t = ds.time.values
    assert t[0] == 0.0 and t[-1] == UNTIL_H and np.allclose(np.diff(t), STEP_H)
    assert ds.sizes["patient"] == N and np.all(ds.status.values == 0)
    rel = 1e-9 if spec.is_linear else 1e-6

    def k(h):  # grid index of `h` hours (the `at` times and window bounds are grid points)
        j = round(h / STEP_H)
        assert t[j] == pytest.approx(h, abs=1e-12)
        return j

    at_idx = {"at_20min": k(1 / 3), "at_90min": k(1.5), "at_6h": k(6.0)}
    win_idx = {"first_hour": (0, k(1.0)), "all": (0, k(8.0)), "late": (k(2.0), k(8.0))}
    varying = set()
    for i in range(N):
        sim = rebuild(spec, ds, i)
        for o in ds.output.values:
            c = sim[o].values
            scale = max(np.abs(c).max(), 1e-300)
            traj = ds.trajectory.sel(traj_output=o).values[i]
            np.testing.assert_allclose(traj, c, rtol=rel, atol=rel * scale, err_msg=f"{i} {o}")
            cmax = float(ds.cmax.sel(output=o).values[i])
            tmax = float(ds.tmax.sel(output=o).values[i])
            if "cmax_exact" in sim[o].attrs:
                # exact solver: the maximum between output times, as the patient alone has it
                assert cmax == pytest.approx(sim[o].attrs["cmax_exact"], rel=rel), (i, o)
                assert tmax == pytest.approx(sim[o].attrs["tmax_exact"], abs=1e-8), (i, o)
                assert cmax >= c.max() * (1 - rel), (i, o)
            else:
                assert cmax == pytest.approx(c.max(), rel=rel), (i, o)
                k = int(np.argmin(np.abs(t - tmax)))
                assert t[k] == tmax
                assert c[k] == pytest.approx(c.max(), rel=rel), (i, o)
            for name, j in at_idx.items():
                got = float(ds.c_at.sel(output=o, at=name).values[i])
                assert got == pytest.approx(c[j], rel=rel, abs=rel * scale), (i, o, name)
            for w, (a, b) in win_idx.items():
                got = float(ds.auc.sel(output=o, window=w).values[i])
                if f"auc_{o}" not in sim:  # not a concentration: no AUC
                    assert math.isnan(got), (i, o, w)
                    continue
                auc = sim[f"auc_{o}"].values
                want = auc[b] - auc[a]
                assert got == pytest.approx(want, rel=rel, abs=rel * auc[-1]), (i, o, w)
        for thr in ds.threshold.values:
            label = str(thr)
            value = float(re.match(r"cp > ([0-9.]+) ng/mL", label).group(1))
            want = _linear_time_above(t, sim.cp.values, value)
            got = float(ds.time_above.sel(threshold=thr).values[i])
            assert got == pytest.approx(want, abs=1e-6 if spec.is_linear else 1e-4), (i, label)
        varying.add(round(float(ds.cmax.sel(output="cp").values[i]), 9))
    # The patients differ (covariates and random effects reach the kernel).
    assert len(varying) == N


def test_per_kg_volumes_scale_concentrations_with_the_inverse_weight():
    """Clements 1981: V1 = 1.7522 L/kg and weight-independent rate constants, so under a
    dose in mg every concentration is proportional to 1 / weight."""
    _, ds = _run("clements1981_racemic")
    w = ds.weight.values
    np.testing.assert_allclose(ds.param_V1.values / w, 1.7522, rtol=1e-12)
    for o in ds.output.values:
        wc = ds.trajectory.sel(traj_output=o).values * w[:, None]
        np.testing.assert_allclose(wc, np.broadcast_to(wc[0], wc.shape), rtol=1e-10, atol=1e-9)


# ----------------------------------------------------------------------------- residual error

RESIDUAL = {
    # type -> (shipped model that declares it, or a shipped file and the section to add)
    "proportional": ("fanta2015_otto2021", None),
    "exponential": ("perezruixo2021_esketamine", None),
    "additive": ("clements1981_racemic", 'type = "additive"\nsd = "15 ng/mL"'),
    "combined": (
        "clements1981_racemic",
        'type = "combined"\nproportional_sd = 0.2\nadditive_sd = "15 ng/mL"',
    ),
}
RESIDUAL_POP = {
    "fanta2015_otto2021": {
        "weight": lambda r: _uniform(r, 50.0, 95.0),
        "age": lambda r: _uniform(r, 20.0, 40.0),
    },
    "perezruixo2021_esketamine": MODELS["perezruixo2021_esketamine"][1],
    "clements1981_racemic": MODELS["clements1981_racemic"][1],
}


def _model_with_residual(tmp_path, base, section):
    text = (MODELS_DIR / f"{base}.toml").read_text()
    path = tmp_path / f"{base}_residual.toml"
    path.write_text(
        text + f'\n[residual.cp]\n{section}\nsource = "test: residual error type"\n'
        'tag = "assumed"\n'
    )
    return str(path)


@pytest.fixture(scope="module", params=list(RESIDUAL))
def residual_pair(request, tmp_path_factory):
    """(error model, predictions F, observations Y) of the same cohort (same seed)."""
    base, section = RESIDUAL[request.param]
    model = base
    if section is not None:
        model = _model_with_residual(tmp_path_factory.mktemp("residual"), base, section)
    spec = pkpd.load_model(model)
    r = spec.residual["cp"]
    assert r.type == request.param
    kw = dict(KW, trajectories=["cp"], thresholds=None)
    pop = _population(RESIDUAL_POP[base])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*inter-individual variability of kmet")
        runs = [
            simulate_cohort(spec, _regimen(spec), pop, seed=23, residual=res, **kw)
            for res in (False, True)
        ]
    F, Y = (d.trajectory.sel(traj_output="cp").values for d in runs)
    # The predictions are each patient's own simulation (first patients).
    for i in range(4):
        sim = rebuild(spec, runs[0], i)
        np.testing.assert_allclose(F[i], sim.cp.values, rtol=1e-9)
    # The residual error changes the observations only.
    np.testing.assert_array_equal(runs[0].cmax.values, runs[1].cmax.values)
    return r, F, Y


def _standard_normal(z, what):
    """`z` are independent N(0, 1) draws: mean, variance (4 standard errors) and KS."""
    n = z.size
    assert n > 2000, what
    assert abs(z.mean()) < 4 / math.sqrt(n), (what, z.mean())
    assert abs(z.var(ddof=1) - 1) < 4 * math.sqrt(2 / n), (what, z.var(ddof=1))
    assert stats.kstest(z, "norm").pvalue > 1e-3, what


def test_residual_error_has_its_stated_distribution(residual_pair):
    r, F, Y = residual_pair
    ok = F > 1e-3  # ng/mL: drop the zero concentration before any dose reaches an output
    F, Y = F[ok], Y[ok]
    add = r.additive_sd * 1000.0  # mg/L -> ng/mL
    if r.type == "additive":
        z = (Y - F) / add
    elif r.type == "proportional":
        z = (Y - F) / (r.proportional_sd * F)
    elif r.type == "exponential":
        assert np.all(Y > 0)
        z = np.log(Y / F) / r.proportional_sd
    else:
        z = (Y - F) / np.sqrt((r.proportional_sd * F) ** 2 + add**2)
    _standard_normal(z, r.type)
    # The spread as a function of the prediction: in each quarter of the predictions the
    # variance of Y - F is the stated one (within 4 standard errors of a variance).
    edges = np.quantile(F, [0, 0.25, 0.5, 0.75, 1])
    for lo, hi in itertools.pairwise(edges):
        m = (F >= lo) & (F <= hi)
        d, f = Y[m] - F[m], F[m]
        if r.type == "exponential":
            d, var = np.log(Y[m] / f), np.full(f.size, r.proportional_sd**2)
        else:
            var = (r.proportional_sd * f) ** 2 + add**2
        # Var(d / sqrt(var)) = 1 in every quarter, so var adds its two terms.
        ratio = np.mean(d**2 / var)
        assert abs(ratio - 1) < 4 * math.sqrt(2 / m.sum()), (r.type, lo, hi, ratio)


@pytest.mark.parametrize("residual_pair", ["combined"], indirect=True)
def test_combined_error_is_neither_purely_additive_nor_purely_proportional(residual_pair):
    r, F, Y = residual_pair
    assert r.type == "combined"
    ok = F > 1e-3
    F, Y = F[ok], Y[ok]
    add = r.additive_sd * 1000.0
    low, high = F < np.quantile(F, 0.25), F > np.quantile(F, 0.75)
    # Either term alone underestimates the variance where the other one matters.
    assert np.mean((Y[low] - F[low]) ** 2 / (r.proportional_sd * F[low]) ** 2) > 1.5
    assert np.mean((Y[high] - F[high]) ** 2 / add**2) > 1.5
