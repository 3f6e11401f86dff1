"""The cohort with the adaptive solvers: same metrics as the exact kernel, to tolerance.

The exact kernel is the oracle for linear models: Dopri5 and Rodas4 running the same
augmented system (AUC states included) must agree with it in tolerance units, patient by
patient, for every metric; failures are flagged per patient, never raised mid-cohort.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import pkpd.engine.solvers.registry
from pkpd.engine.solvers import STATUS_MAX_STEPS, STATUS_STIFF
from pkpd.errors import SimulationError
from pkpd.running.cohort import CohortError, simulate_cohort

MODEL = "fanta2015_otto2021"
KW = dict(
    until="30 h",
    every="10 min",
    windows={
        "intraop": ("0h", "end_of_surgery"),
        "postop24": ("end_of_surgery", "end_of_surgery + 24 h"),
    },
    thresholds={"cp": ["50 ng/mL", "20 ng/mL"], "cp_norketamine": ["30 ng/mL"]},
    at={"eos": "end_of_surgery", "late": "end_of_surgery + 40 h"},  # one after the grid
    trajectories=["cp"],
    progress=False,
)
RTOL, ATOL = 1e-10, 1e-13  # mg, mg/L, mg*h/L


def cohort(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate_cohort(
            MODEL, "lumbar_fusion_esketamine", "spine_fusion_china", n=64, seed=11, **KW, **kw
        )


def _check_peaks(ds, exact, tol):
    """Adaptive Cmax/Tmax (evaluated points and dose events) against the exact kernel's
    (which also finds maxima between evaluated points): the same where the exact maximum
    is at an evaluated point, and never above it elsewhere."""
    a, e = ds.cmax.values, exact.cmax.values
    same = ds.tmax.values == exact.tmax.values
    assert same.any()  # peaks at a dose event or the end of an infusion agree exactly
    assert np.all(np.abs(a - e)[same] <= tol[same])
    assert np.all(a[~same] <= e[~same] + tol[~same])


@pytest.fixture(scope="module")
def exact():
    return cohort(method="exact")


@pytest.mark.parametrize("method", ["dopri5", "rodas"])
def test_adaptive_cohort_equals_the_exact_kernel_to_tolerance(exact, method):
    ds = cohort(method=method, rtol=RTOL, atol=ATOL)
    assert np.all(ds.status.values == 0)
    assert ds.attrs["solver_method"] == method
    assert ds.attrs["solver_nsteps_mean"] > 0 and ds.attrs["solver_nfev_mean"] > 0
    # Concentrations (ng/mL) and AUCs (ng*h/mL) in tolerance units of the solver, with a
    # margin of 100 for the accumulation of local errors over the 30 h.
    for v in ("auc", "c_at"):
        a, e = ds[v].values, exact[v].values
        tol = 100 * (ATOL * 1000 + RTOL * np.abs(e))
        assert np.all(np.abs(a - e) <= tol), v
    _check_peaks(ds, exact, 100 * (ATOL * 1000 + RTOL * np.abs(exact.cmax.values)))
    # Time above: crossing interpolation moves with the concentrations at the neighbouring
    # points only.
    np.testing.assert_allclose(ds.time_above.values, exact.time_above.values, atol=1e-6)
    np.testing.assert_allclose(
        ds.trajectory.values, exact.trajectory.values, rtol=1e-6, atol=1e-6
    )  # float32
    for coord in ("end_of_surgery", "weight"):
        np.testing.assert_array_equal(ds[coord].values, exact[coord].values)


@pytest.mark.parametrize("method", ["dopri5", "rodas"])
def test_summary_mode_metrics_equal_the_full_evaluation_bit_for_bit(method):
    """In summary mode (no threshold, no stored trajectory) the adaptive solvers skip the
    rows of the steps that cannot raise Cmax; the metrics are exactly those of the run that
    evaluates every row (here: the same cohort keeping a trajectory)."""
    kw = {k: v for k, v in KW.items() if k not in ("thresholds", "trajectories")}
    runs = []
    for extra in ({}, {"trajectories": ["cp"]}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = simulate_cohort(
                MODEL, "lumbar_fusion_esketamine", "spine_fusion_china", n=64, seed=11,
                method=method, **kw, **extra,
            )  # fmt: skip
        runs.append(ds)
    lean, full = runs
    assert "trajectory" not in lean and "trajectory" in full
    for v in ("cmax", "tmax", "auc", "c_at"):
        np.testing.assert_array_equal(lean[v].values, full[v].values, err_msg=v)


REGIMEN_LATE_BOLUS = "0.3 mg/kg bolus at 0 h; 0.5 mg/kg bolus at 2.5 h"


@pytest.mark.parametrize("method", ["dopri5", "rodas"])
def test_left_limit_at_a_later_bolus_is_each_patients_own(method):
    """At a bolus between grid points, Cmax/Tmax and time above a threshold use the
    concentration just before the bolus. It comes from the solver, for each patient (a
    regression: it was once the recorded value minus the bolus through the first
    patient's volume, so time above differed from the exact kernel by up to 0.4 h)."""
    kw = dict(
        until="6 h", every="1 h", bands=False, progress=False,
        thresholds={"cp": ["100 ng/mL"], "cp_norketamine": ["30 ng/mL"]},
    )  # fmt: skip
    res = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in ("exact", method):
            extra = {} if m == "exact" else {"rtol": RTOL, "atol": ATOL}
            res[m] = simulate_cohort(
                MODEL, REGIMEN_LATE_BOLUS, "healthy_volunteers", 64, seed=3, method=m, **kw,
                **extra,
            )  # fmt: skip
    ds, exact = res[method], res["exact"]
    assert np.all(ds.status.values == 0)
    np.testing.assert_allclose(ds.time_above.values, exact.time_above.values, atol=1e-6)
    _check_peaks(ds, exact, 1e-7 * np.abs(exact.cmax.values))


def test_looser_tolerance_gives_a_larger_but_bounded_error(exact):
    ds = cohort(method="rodas", rtol=1e-5, atol=1e-8)
    assert np.all(ds.status.values == 0)
    err = np.abs(ds.auc.values - exact.auc.values) / np.abs(exact.auc.values)
    assert 1e-12 < err.max() < 1e-3  # the tolerance changes the answer, within reason


def test_stiffness_detected_by_dopri5_is_a_per_patient_status(monkeypatch, exact):
    """At a loose tolerance Dopri5's steps in the slow terminal phase become limited by
    the fast distribution eigenvalues: with the test at every step (not Hairer's default
    of every 1000th, which these short solutions never reach), it flags those patients
    (and only those) with STATUS_STIFF; the others are unaffected."""
    monkeypatch.setattr(pkpd.engine.solvers.registry, "DEFAULT_NSTIFF", 1)
    ds = cohort(method="dopri5", rtol=1e-5, atol=1e-8)
    stiff = ds.status.values == STATUS_STIFF
    assert 0 < stiff.sum() < stiff.size
    assert set(np.unique(ds.status.values)) == {0, STATUS_STIFF}
    assert np.all(np.isnan(ds.cmax.values[stiff])) and np.all(np.isfinite(ds.cmax.values[~stiff]))
    err = np.abs(ds.auc.values[~stiff] - exact.auc.values[~stiff]) / exact.auc.values[~stiff]
    assert err.max() < 1e-3
    assert int(ds.attrs["n_failed"]) == stiff.sum()


def test_a_patient_out_of_steps_is_flagged_not_raised(monkeypatch, exact):
    monkeypatch.setattr(pkpd.engine.solvers.registry, "DEFAULT_MAX_STEPS", 5)
    ds = cohort(method="dopri5")
    assert np.all(ds.status.values == STATUS_MAX_STEPS)
    assert int(ds.attrs["n_failed"]) == 64
    assert np.all(np.isnan(ds.cmax.values)) and np.all(np.isnan(ds.auc.values))
    with pytest.raises(SimulationError, match="maximum number of steps"):
        cohort(method="dopri5", raise_on_failure=True)


def test_method_validation():
    with pytest.raises(ValueError, match="`method`"):
        cohort(method="euler")
    with pytest.raises(ValueError, match="rtol"):
        cohort(method="exact", rtol=1e-8)
    assert issubclass(CohortError, ValueError)


# ----------------------------------------------------------------------------- [ode] models


# One model: the pain model has every feature (a nonlinear effect, an output that is not a
# concentration); each model compiles its own cohort kernels (about 35 s on a cold cache).
@pytest.mark.parametrize("model", ["s_ketamine_pain_turnover"])
def test_ode_cohort_patients_equal_single_patient_simulations(tmp_path, model):
    """A covariate table without variability: patient i of the cohort is pkpd.simulate of
    row i (same generated model, same solver), in tolerance units at the special times."""
    import pkpd

    weights = [52.0, 68.5, 81.0, 95.5]
    table = tmp_path / "pts.csv"
    table.write_text("weight [kg]\n" + "\n".join(str(w) for w in weights) + "\n")
    regimen = "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h; 0.05 mg/kg/h from 4 h to 20 h"
    rtol, atol = 1e-9, 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = simulate_cohort(
            model, regimen, str(table), seed=0, iiv=False, until="24 h", every="15 min",
            windows={"w": ("1 h", "10 h")}, at={"a": "6.5 h"}, trajectories=True,
            method="auto", rtol=rtol, atol=atol, progress=False,
        )  # fmt: skip
    assert ds.attrs["solver_method"] in ("dopri5", "rodas")
    assert np.all(ds.status.values == 0)
    conc = [o for o in ds.output.values if o.startswith("c")]
    for i, w in enumerate(weights):
        one = pkpd.simulate(
            model, regimen, covariates={"weight": w}, times=[1.0, 6.5, 10.0],
            method=ds.attrs["solver_method"], rtol=rtol, atol=atol,
        )  # fmt: skip
        for o in ds.output.values:
            want = one[o].values[1]
            got = ds.c_at.sel(patient=i, output=o, at="a").item()
            assert abs(got - want) <= 100 * (1e3 * atol + rtol * abs(want)), (model, o)
        for o in conc:
            want = one[f"auc_{o}"].values[2] - one[f"auc_{o}"].values[0]
            got = ds.auc.sel(patient=i, output=o, window="w").item()
            assert abs(got - want) <= 100 * (1e3 * atol + rtol * abs(want)), (model, o)
        traj = ds.trajectory.sel(patient=i)
        for o in ds.traj_output.values:
            top = float(traj.sel(traj_output=o).max())  # float32: allow its rounding
            assert ds.cmax.sel(patient=i, output=o).item() >= top * (1 - 1e-6)
    if "pain" in ds.output.values:  # not a concentration: its own unit, no AUC
        assert list(ds.output_units.values) == ["ng/mL", "ng/mL", "NRS 0-10"]
        assert np.all(np.isnan(ds.auc.sel(output="pain").values))
        assert ds.cmax.attrs["units"] == "see output_units"


def test_threshold_on_a_score_is_in_the_scores_own_unit():
    """`--threshold pain=5` on a pain score is 5 on its NRS scale, labelled so; a
    concentration unit on it is refused (it was read as 5 mg/L and labelled 'pain >
    5000 ng/mL'). Time above agrees with the stored trajectory's linear crossings."""
    kw = dict(
        n=4, seed=1, until="12 h", every="5 min", trajectories=["pain"], bands=False,
        progress=False,
    )  # fmt: skip
    regimen = "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h"
    model, pop = "s_ketamine_pain_turnover", "healthy_volunteers"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = simulate_cohort(model, regimen, pop, thresholds={"pain": ["5", "5.5 NRS 0-10"]}, **kw)
        with pytest.raises(CohortError, match=r"`thresholds.pain` = '5mg/L'.*NRS 0-10"):
            simulate_cohort(model, regimen, pop, thresholds={"pain": "5mg/L"}, **kw)
    assert list(ds.threshold.values) == ["pain > 5 NRS 0-10", "pain > 5.5 NRS 0-10"]
    np.testing.assert_array_equal(ds.threshold_level.values, [5.0, 5.5])
    assert list(ds.threshold_units.values) == ["NRS 0-10"] * 2
    pain = ds.trajectory.sel(traj_output="pain").values.astype(float)
    t = np.linspace(0.0, 12.0, pain.shape[-1])
    fine = np.linspace(0.0, 12.0, 100_001)
    for j, level in enumerate([5.0, 5.5]):
        for i in range(pain.shape[0]):
            above = np.interp(fine, t, pain[i]) > level
            want = above.mean() * 12.0
            got = ds.time_above.values[i, j]
            assert 0.5 < got < 12.0 and abs(got - want) < 0.05, (i, level, got, want)


# An output that stays negative (its Cmax is negative) and one that turns NaN for a light
# patient (sqrt of a negative number) while the state stays finite. One-compartment, so
# the kernels compile quickly; `neg` peaks at the end of the infusion.
NEG_NAN = """
schema_version = 1
[model]
name = "neg_nan"
drug = "test"
citation = "none"
population = "none"
sampling_site = "not reported"
[ode]
dose_state = "central"
[ode.states.central]
initial = 0
[ode.derivatives]
central = "rate - k * central"
[ode.outputs.neg]
expression = "central / V - 100"
concentration = true
[ode.outputs.bad]
expression = "sqrt(weight - 60 - t)"
unit = "score"
[covariates.weight]
unit = "kg"
reference = 70
[parameters.k]
value = "0.5 1/h"
source = "test"
tag = "assumed"
note = "test fixture"
[parameters.V]
value = "10 L"
source = "test"
tag = "assumed"
note = "test fixture"
"""
NEG_NAN_REGIMEN = "10 mg/h from 0 h to 2 h"


@pytest.fixture(scope="module")
def neg_nan(tmp_path_factory):
    d = tmp_path_factory.mktemp("neg_nan")
    (d / "neg_nan.toml").write_text(NEG_NAN)
    # weight 80: `bad` finite throughout; 61.5: sqrt(1.5 - t) turns NaN after 1.5 h.
    (d / "pts.csv").write_text("weight [kg]\n80\n61.5\n")
    return d / "neg_nan.toml", d / "pts.csv"


@pytest.mark.parametrize("method", ["dopri5", "rodas"])
def test_ode_cmax_is_the_true_maximum_and_a_nan_output_fails_the_patient(neg_nan, method):
    """Cmax started at 0: an always-negative output reported Cmax 0 at Tmax 0, and an
    output that turned NaN kept status 0 (NaN values were skipped by the fold)."""
    import pkpd
    from pkpd.engine.solvers import STATUS_MESSAGES, STATUS_OUTPUT_NONFINITE

    model, table = neg_nan
    kw = dict(seed=0, iiv=False, until="4 h", every="10 min", method=method,
              trajectories=True, progress=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = simulate_cohort(str(model), NEG_NAN_REGIMEN, str(table), **kw)
    assert list(ds.status.values) == [0, STATUS_OUTPUT_NONFINITE]
    assert "not finite" in STATUS_MESSAGES[STATUS_OUTPUT_NONFINITE]
    # neg(t) = R/(k V) (1 - exp(-k t)) - 100 mg/L, largest at the end of the infusion.
    want = (10.0 / (0.5 * 10.0) * (1 - np.exp(-1.0)) - 100.0) * 1e3  # ng/mL
    got = ds.cmax.sel(patient=0, output="neg").item()
    assert got == pytest.approx(want, rel=1e-6) and got < -9e4
    assert ds.tmax.sel(patient=0, output="neg").item() == pytest.approx(2.0)
    assert ds.cmax.sel(patient=0, output="bad").item() == pytest.approx(np.sqrt(20.0))
    assert ds.tmax.sel(patient=0, output="bad").item() == 0.0
    for var in ("cmax", "tmax"):
        assert np.all(np.isnan(ds[var].sel(patient=1).values)), var
    assert np.all(np.isfinite(ds.cmax.sel(patient=0).values))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SimulationError, match=r"1 of 2 patients failed .*not finite"):
            simulate_cohort(str(model), NEG_NAN_REGIMEN, str(table), raise_on_failure=True, **kw)
    # One patient: the same maximum; a NaN output raises instead of returning NaN.
    one = pkpd.simulate(model, NEG_NAN_REGIMEN, covariates={"weight": 80}, until="4 h",
                        method=method)  # fmt: skip
    assert one.neg.values.max() == pytest.approx(want, rel=1e-6)
    with pytest.raises(SimulationError, match=r"output `bad` = 'sqrt\(weight - 60 - t\)' is nan"):
        pkpd.simulate(model, NEG_NAN_REGIMEN, covariates={"weight": 61.5}, until="4 h",
                      method=method)  # fmt: skip
