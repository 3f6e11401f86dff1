"""Cmax and Tmax between evaluated points (issue 14): the maximum of the exact solution,
whatever the grid step.

References are mathematics, not the code's output:

* parent -> metabolite after a parent bolus (Bateman): the metabolite peaks at
  ``tmax = ln(km / k) / (km - k)`` with ``Cm(t) = D fm k / (Vm (km - k)) (e^-kt - e^-km t)``;
* an effect site after a bolus into a two-compartment model: ``dCe/dt = ke0 (Cp - Ce)``
  vanishes where ``Cp = Ce``, a transcendental equation solved here by bracketing
  (``scipy.optimize.brentq``) on the closed forms of ``tests/closed_form.py``;

on grids of 1, 2.5 and 7 min that straddle the peak, through every path of the exact cohort
kernel (blocks with skipping, blocks with thresholds, single steps, the event loop) and the
one-patient path; and the peaks of shipped models from the issue equal across grid steps.
"""

from __future__ import annotations

import warnings

import closed_form as cf
import numpy as np
import pytest
from helpers import mammillary
from scipy.integrate import solve_ivp
from scipy.optimize import brentq, minimize_scalar
from test_flint2017 import reference_parameters, reference_rhs

import pkpd
from pkpd.engine import peaks
from pkpd.engine.solvers.expm import expm_work
from pkpd.errors import PkpdWarning
from pkpd.inputs.population import CovariateTable
from pkpd.running.cohort import simulate_cohort
from pkpd.running.simulate import summarize

NG = 1000.0  # ng/mL per mg/L
GRIDS = ["1 min", "2.5 min", "7 min"]

# Parent -> metabolite (1/h, L, mg).
V, K, VM, KM, DOSE = 20.0, 0.8, 15.0, 0.35, 50.0
# Two-compartment model with an effect site.
V1, K10, K12, K21, KE0 = 12.0, 0.9, 1.4, 0.6, 2.5


def _bateman_peak(dose=DOSE, k=K, km=KM, vm=VM, t_dose=0.0):
    tm = np.log(km / k) / (km - k)
    cm = dose * k / (vm * (km - k)) * (np.exp(-k * tm) - np.exp(-km * tm))
    return cm * NG, tm + t_dose


def _effect_peak(dose=20.0):
    def dce(t):
        return cf.central_bolus(t, dose, V1, K10, K12, K21) - cf.effect_site_bolus(
            t, dose, V1, KE0, K10, K12, K21
        )

    t = brentq(dce, 1e-3, 10.0, xtol=1e-15, rtol=1e-15)
    return float(cf.effect_site_bolus(t, dose, V1, KE0, K10, K12, K21)) * NG, t


def _cohort(spec, regimen, every, until="12 h", **kw):
    table = CovariateTable(covariates={"weight": np.full(1, 70.0)}, n=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PkpdWarning)
        kw.setdefault("at", {})
        return simulate_cohort(
            spec, regimen, table, until=until, every=every, iiv=False, bands=False, **kw
        )


def _peak_of(ds, output):
    return float(ds.cmax.sel(output=output).values[0]), float(ds.tmax.sel(output=output).values[0])


# ------------------------------------------------------------------------- engine level


def _trajectory_peaks(M, b, W, ev, t):
    N = M.shape[0]
    cmax, tmax = np.zeros(W.shape[0]), np.zeros(W.shape[0])
    work = (np.zeros((N + 1, N + 1)), np.zeros((N + 1, N + 1)), *expm_work(N + 1))
    ev = [np.asarray(e, dtype=float) for e in ev]
    st = peaks.trajectory_peaks(M, b, W, *ev, 0.0, t, cmax, tmax, work)
    assert st == 0
    return cmax, tmax


@pytest.mark.parametrize("every", [1 / 60, 2.5 / 60, 7 / 60, 1.0, 3.0])
def test_refine_bateman_any_step(every):
    """The metabolite's peak from the series (steps with ||M|| h <= 2) and from sub-steps
    of the exact propagator (1 and 3 h: ||M|| h up to 2.8 and 8)."""
    M = np.array([[-K, 0.0], [K, -KM]])
    W = np.array([[0.0, NG / VM]])
    t = np.arange(0.0, 24.0 + 1e-9, every)
    cmax, tmax = _trajectory_peaks(M, np.array([1.0, 0.0]), W, ([0.0], [0.0], [DOSE]), t)
    want_c, want_t = _bateman_peak()
    assert cmax[0] == pytest.approx(want_c, rel=1e-12)
    assert tmax[0] == pytest.approx(want_t, abs=1e-9)


def test_refine_peak_right_after_an_event():
    """A step that starts at an event with a rising output: the maximum is inside the
    first step after the event (a grid of 5 h, the peak at about 1.8 h)."""
    M = np.array([[-K, 0.0], [K, -KM]])
    W = np.array([[0.0, NG / VM]])
    t = np.array([0.0, 5.0, 10.0])
    cmax, tmax = _trajectory_peaks(M, np.array([1.0, 0.0]), W, ([0.0], [0.0], [DOSE]), t)
    want_c, want_t = _bateman_peak()
    assert cmax[0] == pytest.approx(want_c, rel=1e-12)
    assert tmax[0] == pytest.approx(want_t, abs=1e-9)


def test_no_peak_inside_monotone_steps():
    """A falling output (the parent after its bolus): Cmax is the bolus value at 0 h."""
    M = np.array([[-K, 0.0], [K, -KM]])
    W = np.array([[NG / V, 0.0]])
    t = np.arange(0.0, 6.0 + 1e-9, 7 / 60)
    cmax, tmax = _trajectory_peaks(M, np.array([1.0, 0.0]), W, ([0.0], [0.0], [DOSE]), t)
    assert cmax[0] == DOSE / V * NG and tmax[0] == 0.0


# ------------------------------------------------------------------------- cohort kernel


@pytest.mark.parametrize("every", GRIDS)
def test_cohort_bateman_grid_independent(every):
    spec = mammillary(V1=V, k10=K, metabolite=(VM, KM, 1.0))
    ds = _cohort(spec, f"{DOSE} mg bolus at 0 h", every, until="12 h")
    want_c, want_t = _bateman_peak()
    c, t = _peak_of(ds, "cp_met")
    assert c == pytest.approx(want_c, rel=1e-10)
    assert t == pytest.approx(want_t, abs=1e-8)
    # The parent's peak is the bolus itself.
    assert _peak_of(ds, "cp") == (pytest.approx(DOSE / V * NG, rel=1e-14), 0.0)


@pytest.mark.parametrize("every", GRIDS)
def test_cohort_effect_site_grid_independent(every):
    spec = mammillary(V1=V1, k10=K10, k12=K12, k21=K21, ke0=KE0)
    ds = _cohort(spec, "20 mg bolus at 0 h", every, until="6 h")
    want_c, want_t = _effect_peak()
    c, t = _peak_of(ds, "ce")
    assert c == pytest.approx(want_c, rel=1e-10)
    assert t == pytest.approx(want_t, abs=1e-8)


@pytest.mark.parametrize(
    "kw",
    [
        {"thresholds": {"cp_met": ["100 ng/mL"]}},  # point by point where it may be crossed
        {"trajectories": True},  # blocks with stored points
        {"until": "1 h"},  # too short for blocks: single steps
        {"at": {"x": "0.7 h"}, "windows": {"w": ("0.2 h", "1.1 h")}},  # event-loop points
    ],
    ids=["thresholds", "trajectories", "singles", "specials"],
)
@pytest.mark.parametrize("every", ["1 min", "7 min"])
def test_cohort_paths(kw, every):
    """Every path of the kernel gives the closed-form peak (a bolus at 0.4 h: the peak
    at about 2.2 h, or, within 1 h, the end of the grid)."""
    spec = mammillary(V1=V, k10=K, metabolite=(VM, KM, 1.0))
    kw = dict(kw)
    until = kw.pop("until", "12 h")
    ds = _cohort(spec, f"{DOSE} mg bolus at 0.4 h", every, until=until, **kw)
    c, t = _peak_of(ds, "cp_met")
    want_c, want_t = _bateman_peak(t_dose=0.4)
    if until == "1 h":
        # Rising to the end of the grid (the last grid point is 1 h on both grids... or
        # the last point before it): the maximum is the last evaluated value.
        _cp, cm = cf.parent_metabolite_bolus(np.array([t - 0.4]), DOSE, V, K, VM, KM)
        assert c == pytest.approx(cm[0] * NG, rel=1e-12)
        assert t <= 1.0
        return
    assert c == pytest.approx(want_c, rel=1e-10)
    assert t == pytest.approx(want_t, abs=1e-8)


def test_cohort_peak_at_every_position_of_a_block():
    """Doses one grid step apart move the metabolite's peak through every position of a
    block of the fast path (its first and last step included, where the inner derivative
    bounds decide alone), the grid straddling it at a third of a step."""
    spec = mammillary(V1=V, k10=K, metabolite=(VM, KM, 1.0))
    h = 2.5 / 60
    want_c, tm = _bateman_peak()
    for i in range(34):
        t_dose = (i + 1.0 / 3.0) * h
        ds = _cohort(spec, f"{DOSE} mg bolus at {t_dose!r} h", "2.5 min", until="8 h")
        c, t = _peak_of(ds, "cp_met")
        assert c == pytest.approx(want_c, rel=1e-10), i
        assert t == pytest.approx(t_dose + tm, abs=1e-8), i


def test_cohort_second_peak_higher_between_points():
    """Two doses: the second metabolite peak is higher than the first by less than the
    grid's own under-reading of it, so only the maximum between points finds it (its
    blocks may be skipped: their grid values stay below the first peak)."""
    spec = mammillary(V1=V, k10=K, metabolite=(VM, KM, 1.0))
    h = 7 / 60
    c1, tm = _bateman_peak()
    t2 = 30.0 + h / 2 - tm % h  # the second peak halfway between grid points
    # The grid under-reads a peak halfway between points by about c'' (h/2)^2 / 2.
    eps = 1e-4

    def cm_total(t, d2):
        _p, a = cf.parent_metabolite_bolus(np.array([t]), DOSE, V, K, VM, KM)
        _p, b = cf.parent_metabolite_bolus(np.array([t - t2]), d2, V, K, VM, KM)
        return (a[0] + b[0]) * NG

    d2 = DOSE * (1 + eps) - DOSE * np.exp(-K * t2)  # residual parent is negligible too

    def dcm(t):
        e = 1e-6
        return cm_total(t + e, d2) - cm_total(t - e, d2)

    t_star = brentq(dcm, t2 + 0.5 * tm, t2 + 1.5 * tm, xtol=1e-13)
    c_star = cm_total(t_star, d2)
    grid = np.arange(0.0, 48.0 + 1e-9, h)
    assert c_star > c1 > max(cm_total(t, d2) for t in grid[grid > t2])  # the premise
    reg = f"{DOSE} mg bolus at 0 h; {float(d2)!r} mg bolus at {float(t2)!r} h"
    ds = _cohort(spec, reg, "7 min", until="48 h")
    c, t = _peak_of(ds, "cp_met")
    assert c == pytest.approx(c_star, rel=1e-10)
    assert t == pytest.approx(t_star, abs=1e-6)  # the reference's own root tolerance


# ------------------------------------------------------------------------- one patient


@pytest.mark.parametrize("every", GRIDS)
def test_single_patient_summary_equals_closed_form(every):
    spec = mammillary(V1=V1, k10=K10, k12=K12, k21=K21, ke0=KE0)
    ds = pkpd.simulate(spec, "20 mg bolus at 0 h", until="6 h", every=every)
    s = summarize(ds, "20 mg bolus at 0 h")
    want_c, want_t = _effect_peak()
    assert s.cmax["ce"] == pytest.approx(want_c, rel=1e-10)
    assert s.tmax["ce"] == pytest.approx(want_t, abs=1e-8)
    assert ds.ce.attrs["cmax_exact"] == s.cmax["ce"]


# ------------------------------------------------------------------------- the cases


def test_domino_effect_site_cmax_independent_of_every():
    """The issue's case: a 2.5-min grid read the effect-site Cmax of `domino_racemic`
    32 % low (Tmax 52 min off)."""
    reg = "2 mg/kg bolus at 0 h"
    out = []
    for every in ["0.5 min", "1 min", "2.5 min", "5 min"]:
        ds = _cohort("domino_racemic", reg, every, until="4 h")
        out.append(_peak_of(ds, "ce"))
        one = pkpd.simulate("domino_racemic", reg, {"weight": 70.0}, until="4 h", every=every)
        s = summarize(one, reg)
        assert s.cmax["ce"] == pytest.approx(out[-1][0], rel=1e-10)
        assert s.tmax["ce"] == pytest.approx(out[-1][1], abs=1e-8)
    c = np.array([o[0] for o in out])
    t = np.array([o[1] for o in out])
    np.testing.assert_allclose(c, c[0], rtol=1e-9)
    np.testing.assert_allclose(t, t[0], atol=1e-8)
    assert t[0] % (0.5 / 60) != 0.0  # the peak lies between the points of every grid


# ------------------------------------------------------------------------- [ode] models
#
# An [ode] model has no closed-form derivative: its maxima between points are located by
# integrating again over the bracket (pkpd.engine.peaks_adaptive). The references are the
# same closed forms, for the Bateman system written as an [ode] model, and an independent
# solver (scipy's Radau) for `flint2017_s_ketamine_children`.

BATEMAN_ODE = f"""
schema_version = 1
[model]
name = "bateman_ode"
drug = "test"
citation = "none"
population = "none"
sampling_site = "not reported"
[ode]
dose_state = "parent"
[ode.states.parent]
initial = 0
[ode.states.met]
initial = 0
[ode.derivatives]
parent = "rate - k * parent"
met = "k * parent - km * met"
[ode.outputs.cp]
expression = "parent / V"
concentration = true
[ode.outputs.cp_met]
expression = "met / VM"
concentration = true
[parameters.k]
value = "{K} 1/h"
source = "test"
tag = "assumed"
note = "test fixture"
[parameters.km]
value = "{KM} 1/h"
source = "test"
tag = "assumed"
note = "test fixture"
[parameters.V]
value = "{V} L"
source = "test"
tag = "assumed"
note = "test fixture"
[parameters.VM]
value = "{VM} L"
source = "test"
tag = "assumed"
note = "test fixture"
"""
ODE_TOL = {"rtol": 1e-10, "atol": 1e-13}


@pytest.fixture(scope="module")
def bateman_ode(tmp_path_factory):
    path = tmp_path_factory.mktemp("ode") / "bateman_ode.toml"
    path.write_text(BATEMAN_ODE)
    return str(path)


@pytest.mark.parametrize("method", ["dopri5", "rodas"])
@pytest.mark.parametrize("every", ["1 min", "7 min", "30 min"])
def test_ode_cohort_peak_is_the_closed_form_whatever_the_grid(bateman_ode, method, every):
    ds = _cohort(bateman_ode, f"{DOSE} mg bolus at 0 h", every, method=method, **ODE_TOL)
    assert ds.attrs["solver_method"] == method
    c, t = _peak_of(ds, "cp_met")
    want_c, want_t = _bateman_peak()
    assert c == pytest.approx(want_c, rel=1e-9)
    assert t == pytest.approx(want_t, abs=1e-6)
    assert (want_t * 60) % float(every.split()[0]) != 0.0  # between the grid points


def _two_bolus_peak(t2, d2):
    """The metabolite after DOSE at 0 h and d2 at t2 (superposition of Bateman curves):
    its maximum after t2, located on the closed form."""

    def cm(t):
        def one(s, d):
            s = np.maximum(s, 0.0)
            return d * K / (VM * (KM - K)) * (np.exp(-K * s) - np.exp(-KM * s))

        return (one(t, DOSE) + one(t - t2, d2)) * NG

    def dcm(t, h=1e-6):
        return (cm(t + h) - cm(t - h)) / (2 * h)

    t = brentq(dcm, t2 + 1e-6, t2 + 6.0, xtol=1e-14)
    return float(cm(t)), t


def test_ode_second_higher_peak_between_points_and_single_patient(bateman_ode):
    """A second, larger bolus between grid points: the later maximum lies inside a 30-min
    step; the cohort and the one-patient summary both find it."""
    reg = f"{DOSE} mg bolus at 0 h; 120 mg bolus at 5.1 h"
    want_c, want_t = _two_bolus_peak(5.1, 120.0)
    ds = _cohort(bateman_ode, reg, "30 min", method="dopri5", **ODE_TOL)
    c, t = _peak_of(ds, "cp_met")
    assert c == pytest.approx(want_c, rel=1e-8)
    assert t == pytest.approx(want_t, abs=1e-5)
    one = pkpd.simulate(bateman_ode, reg, until="12 h", every="30 min", method="dopri5", **ODE_TOL)
    s = summarize(one, reg)
    assert s.cmax["cp_met"] == pytest.approx(want_c, rel=1e-8)
    assert s.tmax["cp_met"] == pytest.approx(want_t, abs=1e-5)
    assert one.cp_met.values.max() < want_c * (1 - 1e-3)  # the grid alone misses it


def test_flint2017_norketamine_peak_in_a_newborn_against_radau():
    """The issue's case: a 1-min grid under-read the S-norketamine Cmax of
    `flint2017_s_ketamine_children` in a 3.6-kg child by 10-13 % (its peak comes about
    37 s after the bolus). Reference: the hand-written equations of tests/test_flint2017.py
    by scipy's Radau (rtol 1e-12), the maximum of its dense output."""
    w = 3.6
    p = reference_parameters(w)
    sol = solve_ivp(
        reference_rhs(p, lambda t: 0.0), (0.0, 1.0), [w, 0.0, 0.0], method="Radau",
        rtol=1e-12, atol=1e-16, dense_output=True,
    )  # fmt: skip
    r = minimize_scalar(
        lambda t: -sol.sol(t)[2], bounds=(0.0, 0.1), method="bounded", options={"xatol": 1e-12}
    )
    want_c, want_t = -r.fun / p["VSNK"] * NG, r.x
    table = CovariateTable(covariates={"weight": np.array([w]), "age": np.array([0.5])}, n=1)
    for every in ["1 min", "15 min"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PkpdWarning)
            ds = simulate_cohort(
                "flint2017_s_ketamine_children", "1 mg/kg bolus at 0 h", table, iiv=False,
                until="12 h", every=every, bands=False, **ODE_TOL,
            )  # fmt: skip
        c, t = _peak_of(ds, "cp_norketamine")
        assert c == pytest.approx(want_c, rel=1e-8), every
        assert t == pytest.approx(want_t, abs=1e-6), every
