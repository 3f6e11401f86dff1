"""pkpd.metrics against mathematics, and against the cohort kernel's own metrics."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import xarray as xr
from helpers import mammillary

import pkpd
from pkpd import metrics as M
from pkpd.errors import CovariateRangeWarning, MetricsError, PkpdError

C0, K = 120.0, 0.35  # ng/mL, 1/h


def decay(t, c0=C0, k=K, name="cp"):
    t = np.asarray(t, dtype=float)
    return xr.DataArray(
        c0 * np.exp(-k * t), dims="time", coords={"time": t}, name=name, attrs={"units": "ng/mL"}
    )


def exact_auc(a, b, c0=C0, k=K):
    return c0 / k * (np.exp(-k * a) - np.exp(-k * b))


# ----------------------------------------------------------------------------- AUC


def test_log_down_auc_is_exact_for_an_exponential_on_any_grid():
    rng = np.random.default_rng(7)
    t = np.sort(np.concatenate([[0.0, 12.0], rng.uniform(0, 12, 40)]))
    c = decay(t)
    windows = {"total": (0.0, 12.0), "inner": (1.2345, 7.891), "late": ("5 h", "660 min")}
    got = M.auc(c, windows).sel(output="cp")
    for name, (a, b) in {"total": (0, 12), "inner": (1.2345, 7.891), "late": (5, 11)}.items():
        assert float(got.sel(window=name)) == pytest.approx(exact_auc(a, b), rel=1e-12)
    assert got.attrs["units"] == "ng*h/mL" and "log-down" in got.attrs["method"]


def test_linear_trapezoid_converges_at_order_two():
    hs = np.array([0.5, 0.25, 0.125, 0.0625])
    err = []
    for h in hs:
        t = np.arange(0.0, 10.0 + h / 2, h)
        err.append(float(M.auc(decay(t), method="linear").squeeze()) - exact_auc(0, 10))
    err = np.array(err)
    slope = np.polyfit(np.log(hs), np.log(np.abs(err)), 1)[0]
    assert slope == pytest.approx(2.0, abs=0.02)
    # Leading term of the Euler-Maclaurin expansion: h^2/12 (c'(b) - c'(a)).
    lead = hs**2 / 12 * (-K * C0 * np.exp(-K * 10) + K * C0)
    assert err == pytest.approx(lead, rel=0.01)
    assert np.all(err > 0)  # the linear rule overestimates a convex curve


def test_auc_window_between_grid_points_uses_the_interpolant():
    t = np.arange(0.0, 4.01, 0.5)
    c = xr.DataArray(2.0 * t + 1.0, dims="time", coords={"time": t}, name="lin")
    # A linear function: both rules are exact, for any window.
    for method in ("linear", "log-down"):
        got = float(M.auc(c, {"w": (0.3, 3.7)}, method=method).squeeze())
        assert got == pytest.approx((3.7**2 + 3.7) - (0.3**2 + 0.3), rel=1e-13)


# Window ends in grid steps, at different fractions of a step (0.1 and 0.35, 0.6 and 0.85,
# 0.75 and 0.2): the errors of a wrong partial interval at the two ends do not cancel.
FRACTION_WINDOWS = {"a": (4.1, 29.35), "b": (2.6, 19.85), "c": (11.75, 36.2)}
BIEXP = ((90.0, 1.8), (30.0, 0.15))  # (amplitude ng/mL, rate 1/h) of each phase


def mono(t, d=0):
    """The mono-exponential of `decay` (d = 0), its second derivative (2), integral (-1)."""
    t = np.asarray(t, dtype=float)
    return {0: C0, 2: C0 * K**2, -1: -C0 / K}[d] * np.exp(-K * t)


def biexp(t, d=0):
    """Bi-exponential decline and its derivatives (d = 0, 1, 2) and integral (d = -1)."""
    t = np.asarray(t, dtype=float)
    out = 0.0
    for amp, k in BIEXP:
        out = out + {0: amp, 1: -amp * k, 2: amp * k**2, -1: -amp / k}[d] * np.exp(-k * t)
    return out


def biexp_log(t, d=0):
    """`biexp`, with d = 2 giving c (ln c)'' = c'' - c'^2 / c: the log-linear interpolant
    exp(L[ln c]) differs from c by c (L[ln c] - ln c), so its error is that of a linear
    interpolant of a function with this second derivative."""
    if d == 2:
        return biexp(t, 2) - biexp(t, 1) ** 2 / biexp(t)
    return biexp(t, d)


def rising(t, d=0):
    """c = 80 (1 - e^{-0.6 t}): rising, so both rules use the linear interpolant."""
    t = np.asarray(t, dtype=float)
    return {0: 80 * (1 - np.exp(-0.6 * t)), 2: -80 * 0.36 * np.exp(-0.6 * t),
            -1: 80 * (t + np.exp(-0.6 * t) / 0.6)}[d]  # fmt: skip


def linear_interpolant_error(f, t, a, b):
    """Leading term of int_a^b (L - f) for the piecewise linear interpolant L of f on `t`.

    On [t_i, t_i+1], L - f = -f''(xi) (s - t_i)(s - t_i+1) / 2; with f'' taken at the middle
    of each (partial) interval [u, v], the integral of the quadratic is exact. The rest is
    O(h^3) per unit length, against O(h^2) for the term itself.
    """
    e = 0.0
    for t0, t1 in itertools.pairwise(t):
        u, v = max(a, t0), min(b, t1)
        if v <= u:
            continue
        # int_u^v (s - t0)(s - t1) ds = P(v) - P(u), P(s) = s^3/3 - (t0 + t1) s^2/2 + t0 t1 s.
        pu, pv = ((s**3 / 3 - (t0 + t1) * s**2 / 2 + t0 * t1 * s) for s in (u, v))
        e += -f((u + v) / 2, 2) / 2 * (pv - pu)
    return e


@pytest.mark.parametrize("h", [0.25, 0.1])
def test_auc_window_ends_between_grid_points_on_curved_profiles(h):
    """Window ends at unequal fractions of a step, on curved profiles, both rules, against
    the analytic integral: a partial interval integrated wrongly (e.g. with the next grid
    value instead of the interpolant at the window end) is an O(h^2) error that neither
    cancels between the two ends nor hides in the tolerance.

    * log-down on a mono-exponential: exact (1e-12);
    * linear rule on mono- and bi-exponentials, and both rules on a rising curve (the
      linear branch of log-down): the error is the interpolant's, whose leading term is
      computed here interval by interval; the remainder is below 2 % of it;
    * log-down on the bi-exponential: the same for the log-linear interpolant.
    """
    t = np.arange(0.0, 40.5) * h
    windows = {k: (a * h, b * h) for k, (a, b) in FRACTION_WINDOWS.items()}

    def curve(f, name):
        return xr.DataArray(f(t), dims="time", coords={"time": t}, name=name)

    cases = [
        (curve(mono, "mono"), "log-down", mono, False),
        (curve(mono, "mono"), "linear", mono, True),
        (curve(biexp, "bi"), "linear", biexp, True),
        (curve(biexp, "bi"), "log-down", biexp_log, True),
        (curve(rising, "up"), "linear", rising, True),
        (curve(rising, "up"), "log-down", rising, True),
    ]
    for c, method, f, interpolant_error in cases:
        got = M.auc(c, windows, method=method).squeeze("output")
        for name, (a, b) in windows.items():
            exact = f(b, -1) - f(a, -1)
            err = got.sel(window=name).item() - exact
            if not interpolant_error:
                assert err == pytest.approx(0.0, abs=1e-12 * exact), (method, name)
                continue
            lead = linear_interpolant_error(f, t, a, b)
            assert abs(lead) > 1e-7 * abs(exact)  # a real O(h^2) error to compare with
            assert err == pytest.approx(lead, rel=0.02), (c.name, method, name)


# ----------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("x", [10.0, 60.0, 119.0])
def test_time_above_threshold_of_an_exponential(x):
    exact = np.log(C0 / x) / K
    errs = []
    for h in (0.2, 0.1, 0.05):
        t = np.arange(0.0, 20.0 + h / 2, h)
        ta = float(M.time_above(decay(t), {"cp": [f"{x} ng/mL"]}).squeeze())
        tb = float(M.time_below(decay(t), {"cp": [x]}).squeeze())
        assert ta + tb == pytest.approx(20.0, abs=1e-12)
        # Linear interpolation of the crossing: the chord lies above the convex curve by at
        # most h^2/8 max|c''|, which moves the crossing by that over |c'|; c''/|c'| = k for
        # an exponential (times e^{kh} for the variation within the interval).
        err = ta - exact
        assert -1e-12 <= err <= h**2 / 8 * K * np.exp(K * h)
        errs.append(err)
    assert errs[-1] < errs[0] / 4  # and it shrinks with h


def test_time_above_in_a_window_and_label():
    t = np.linspace(0.0, 10.0, 2001)
    got = M.time_above(decay(t), "60 ng/mL", window=(1.0, 5.0))
    assert got.threshold.values.tolist() == ["cp > 60 ng/mL"]
    assert float(got.squeeze()) == pytest.approx(np.log(C0 / 60) / K - 1.0, abs=1e-5)
    assert got.attrs["units"] == "h"


def test_cmax_tmax_and_concentration_at_times():
    t = np.linspace(0.0, 6.0, 13)
    c = xr.DataArray(np.sin(t), dims="time", coords={"time": t}, name="s", attrs={"units": "ng/mL"})
    assert float(M.cmax(c).squeeze()) == pytest.approx(np.sin(t).max())
    assert float(M.tmax(c).squeeze()) == pytest.approx(t[np.argmax(np.sin(t))])
    # Window bounds take the interpolated value: on (2.2, 5) the max is at the start.
    w = M.cmax(c, (2.2, 5.0)).squeeze()
    assert float(w) == pytest.approx(np.interp(2.2, t, np.sin(t)), rel=1e-14)
    assert float(M.tmax(c, (2.2, 5.0)).squeeze()) == 2.2
    at = M.conc_at(c, {"grid": "1.5 h", "mid": 1.75, "ev": "dose + 15 min"}, events={"dose": 1.5})
    assert at.sel(at="grid").item() == pytest.approx(np.sin(1.5), rel=1e-15)
    mid = 0.5 * (np.sin(1.5) + np.sin(2.0))
    assert at.sel(at="mid").item() == pytest.approx(mid, rel=1e-14)
    assert at.sel(at="ev").item() == pytest.approx(mid, rel=1e-14)


# ----------------------------------------------------------------------------- decrement


def one_compartment_infusion(stop=3.0, every="6 min"):
    """1-cmt model V = 10 L, k = 0.5 1/h, 10 mg/h from 0 h to `stop`."""
    spec = mammillary(V1=10.0, k10=0.5)
    return pkpd.simulate(spec, f"10 mg/h from 0 h to {stop} h", until="12 h", every=every)


def test_context_sensitive_half_time_of_one_compartment_is_ln2_over_k():
    k = 0.5
    ds = one_compartment_infusion()
    half = M.decrement_time(ds, "3 h", fraction=0.5, interpolation="log", outputs="cp")
    assert float(half.squeeze()) == pytest.approx(np.log(2) / k, rel=1e-9)
    assert half.attrs["units"] == "h" and half.attrs["not_reached"] == 0
    # Linear interpolation of the crossing: late by at most h^2/8 k e^{kh} (the chord of
    # the convex decline lies above it; see test_time_above_threshold_of_an_exponential).
    for h_min in (12, 6, 3):
        ds_h = one_compartment_infusion(every=f"{h_min} min")
        lin = float(M.decrement_time(ds_h, 3.0, fraction=0.5).sel(output="cp"))
        h = h_min / 60
        assert 0 <= lin - np.log(2) / k <= h**2 / 8 * k * np.exp(k * h)
    # Absolute level: c(t) = c_stop exp(-k (t - stop)).
    c_stop = 10.0 / (10.0 * k) * (1 - np.exp(-k * 3.0)) * 1000.0  # ng/mL
    got = M.decrement_time(ds, 3.0, below=f"{c_stop / 5} ng/mL", interpolation="log")
    assert float(got.sel(output="cp")) == pytest.approx(np.log(5) / k, rel=1e-9)


def test_decrement_independent_of_the_infusion_length_for_one_compartment():
    for stop in (0.5, 2.0, 5.0):
        ds = one_compartment_infusion(stop=stop)
        got = M.decrement_time(ds, stop, fraction=0.5, interpolation="log").sel(output="cp")
        assert float(got) == pytest.approx(np.log(2) / 0.5, rel=1e-9)


def test_decrement_edge_cases():
    t = np.linspace(0.0, 4.0, 41)
    c = decay(t)
    assert float(M.decrement_time(c, 1.0, below=200).squeeze()) == 0.0  # already below
    nr = M.decrement_time(c, 1.0, below=1.0)  # 120 e^{-1.4} > 1: not within 4 h
    assert np.isnan(nr.squeeze()) and nr.attrs["not_reached"] == 1


# ----------------------------------------------------------------------------- S-K equivalent


def test_s_ketamine_equivalent_needs_a_user_factor_and_records_it():
    ds = pkpd.simulate(
        "fanta2015_otto2021", "0.5 mg/kg over 1 h from 0 h", {"weight": 70}, until="6 h"
    )
    with pytest.raises(TypeError):
        M.s_ketamine_equivalent(ds)  # no default: no published factor exists
    for bad in (None, float("nan"), True, "0.3"):
        with pytest.raises(MetricsError, match="potency_factor"):
            M.s_ketamine_equivalent(ds, bad, "x")
    with pytest.raises(MetricsError, match="`source`"):
        M.s_ketamine_equivalent(ds, 0.2, " ")
    eq = M.s_ketamine_equivalent(ds, 0.25, "my assumption")
    np.testing.assert_allclose(eq.values, ds.cp.values + 0.25 * ds.cp_norketamine.values)
    assert eq.attrs["units"] == "ng/mL" and eq.attrs["potency_factor_source"] == "my assumption"
    assert "user-supplied" in eq.attrs["potency_factor_provenance"]
    # AUC is linear in the concentration: AUC(eq) = AUC(cp) + f AUC(nk) (linear rule).
    a = M.auc(ds, method="linear")
    ae = M.auc(eq, method="linear").squeeze()
    want = a.sel(output="cp") + 0.25 * a.sel(output="cp_norketamine")
    assert float(ae) == pytest.approx(float(want.squeeze()), rel=1e-12)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda c: M.auc(c, {"w": (0.0, 99.0)}), r"windows\.w\[1\].*99 h.*outside"),
        (lambda c: M.auc(c, {"w": (3.0, 1.0)}), r"windows\.w.*ends at or before"),
        (lambda c: M.auc(c, method="simpson"), r"`method`: 'simpson'"),
        (lambda c: M.cmax(c, outputs=["ce"]), r"`outputs`: unknown output 'ce'"),
        (lambda c: M.time_above(c, {"cp": ["-1 ng/mL"]}), r"thresholds\.cp.*positive"),
        (lambda c: M.time_above(c, {"cp": ["5 kg"]}), r"thresholds\.cp"),
        (lambda c: M.time_above(c, {"ce": [5]}), r"unknown output 'ce'"),
        (lambda c: M.conc_at(c, {"x": "eos"}), r"times\.x.*'eos'.*event"),
        (lambda c: M.conc_at(c, {"x": "soon"}), r"times\.x"),
        (lambda c: M.decrement_time(c, 1.0, fraction=1.5), r"`fraction`.*1\.5"),
        (lambda c: M.decrement_time(c, 1.0), r"exactly one of `below`"),
        (lambda c: M.decrement_time(c, 1.0, below=1, interpolation="cubic"), "interpolation"),
    ],
)
def test_errors_name_the_argument_and_value(call, match):
    with pytest.raises(MetricsError, match=match) as ei:
        call(decay(np.linspace(0, 5, 11)))
    assert isinstance(ei.value, PkpdError) and isinstance(ei.value, ValueError)


def test_inputs_are_checked():
    c = decay([0.0, 1.0, 2.0])
    with pytest.raises(MetricsError, match="ng/mL"):
        M.cmax(c.assign_attrs(units="mg/L"))
    with pytest.raises(MetricsError, match="strictly increasing"):
        M.cmax(decay([0.0, 1.0, 1.0]))
    with pytest.raises(MetricsError, match="`data`"):
        M.cmax(np.ones(3))


# ----------------------------------------------------------------------------- cohort kernel

WINDOWS = {"total": ("0 h", "8 h"), "post": ("2 h", "8 h")}
THRESH = {"cp": ["60 ng/mL"], "cp_norketamine": ["30 ng/mL"]}


def cohort(every):
    # Every dose event (0 h, 2 h) and window bound lies on the grid, so the kernel and the
    # stored trajectories see the same points.
    with pytest.warns(CovariateRangeWarning):
        return pkpd.simulate_cohort(
            "fanta2015_otto2021",
            "0.5 mg/kg/h from 0 h to 2 h",
            "spine_fusion_china",
            n=200,
            seed=11,
            until="8 h",
            every=every,
            windows=WINDOWS,
            thresholds=THRESH,
            trajectories=True,
            bands=False,
            progress=False,
        )


@pytest.fixture(scope="module")
def cohorts():
    return {h: cohort(f"{h} min") for h in (10, 5)}


def _trajectory_peak_vs_kernel(m, ds, h):
    """The trajectory's Cmax/Tmax (its grid maximum) against the kernel's, the maximum of
    the exact solution (issue 14: maxima between grid points included): the same where the
    kernel's maximum lies on a grid point (or dose event), else lower, within a step."""
    kc = ds.cmax.transpose(*m.cmax.dims).values
    kt = ds.tmax.transpose(*m.tmax.dims).values
    on_grid = m.tmax.values == kt
    assert on_grid.any()
    np.testing.assert_allclose(m.cmax.values[on_grid], kc[on_grid], rtol=2e-7)
    assert np.all(m.cmax.values <= kc * (1 + 2e-7))
    assert np.all(np.abs(m.tmax.values - kt) <= h * (1 + 1e-9))


def test_cohort_cmax_tmax_time_above_match_the_kernel(cohorts):
    ds = cohorts[10]
    m = M.nca(ds, windows=WINDOWS, thresholds=THRESH)
    assert m.cmax.dims == ("patient", "output")
    # Trajectories are stored in float32: relative 2^-24 per value.
    _trajectory_peak_vs_kernel(m, ds, 10 / 60)
    np.testing.assert_allclose(
        m.time_above.values, ds.time_above.transpose(*m.time_above.dims).values, atol=1e-5
    )
    for v in m.data_vars.values():
        assert v.attrs["units"] and v.attrs["long_name"]


def test_cohort_auc_agrees_with_the_exact_kernel_auc_to_the_trapezoid_error(cohorts):
    """The kernel's AUC is exact; the NCA AUC on a grid of step h errs by E(h) = C h^2 + O(h^4).

    Both rules (linear, linear-up/log-down) are second order on a piecewise-smooth curve
    whose kinks (infusion start and stop) lie on the grid. So, with the same patients on
    grids h and h/2 (same seed), E(h) ~ 4 E(h/2), and the Richardson estimate
    4/3 (AUC_h - AUC_{h/2}), computed from the trajectories alone, bounds |E(h)|:
    checked here to 2 % per patient, output and window.
    """
    c10, c5 = cohorts[10], cohorts[5]
    exact = c10.auc
    # Same patients on both grids: the exact AUCs agree (to rounding).
    np.testing.assert_allclose(c5.auc.values, exact.values, rtol=1e-10)
    for method in ("linear", "log-down"):
        a10 = M.auc(c10, WINDOWS, method=method).transpose(*exact.dims)
        a5 = M.auc(c5, WINDOWS, method=method).transpose(*exact.dims)
        e10, e5 = a10 - exact, a5 - exact
        richardson = 4.0 / 3.0 * np.abs(a10 - a5)
        assert bool((np.abs(e10) <= 1.02 * richardson).all()), method
        assert bool((np.abs(e10) >= 0.98 * richardson).all()), method
        ratio = (e10 / e5).values
        assert np.all((ratio > 3.8) & (ratio < 4.2)), method
        # and the error is small at h = 10 min: below 1 % of the AUC
        assert float(np.abs(e10 / exact).max()) < 1e-2
    # The log-down rule is closer on the declining part (after the stop at 2 h).
    lin = M.auc(c10, WINDOWS, method="linear").sel(window="post")
    log = M.auc(c10, WINDOWS).sel(window="post")
    ex = exact.sel(window="post").transpose(*lin.dims)
    assert float(np.abs(log - ex).median()) < float(np.abs(lin - ex).median())


def test_cohort_per_patient_event_windows_and_times():
    # lumbar_fusion_esketamine draws end_of_surgery per patient (off the grid).
    with pytest.warns(CovariateRangeWarning):
        ds = pkpd.simulate_cohort(
            "fanta2015_otto2021",
            "lumbar_fusion_esketamine",
            "spine_fusion_china",
            n=64,
            seed=2,
            until="12 h",
            every="5 min",
            windows={"post2": ("end_of_surgery", "end_of_surgery + 2 h")},
            at={"eos1": "end_of_surgery + 1 h"},
            trajectories=True,
            bands=False,
            progress=False,
        )
    assert np.unique(ds.end_of_surgery).size > 1
    a = M.auc(ds, {"post2": ("end_of_surgery", "end_of_surgery + 2 h")}, method="linear")
    rel = np.abs(a / ds.auc.transpose(*a.dims) - 1)
    assert float(rel.max()) < 5e-3  # O(h^2) plus the O(h^2) kink at the off-grid stop
    got = M.conc_at(ds, {"eos1": "end_of_surgery + 1 h"}).transpose(*ds.c_at.dims)
    # Linear interpolation of a smooth decline: |error| <= h^2/8 max|c''|: small here.
    np.testing.assert_allclose(got.values, ds.c_at.values, rtol=2e-3)


# ----------------------------------------------------------------------------- boluses on the grid

BOLUS_REGIMEN = "0.3 mg/kg bolus at 0 h; 0.2 mg/kg bolus at 1 h; 0.1 mg/kg/h from 0 h to 2 h"
#: Windows ending exactly at the bolus of 1 h, across it, and from it.
BOLUS_WINDOWS = {
    "to_bolus": ("0.5 h", "1 h"),
    "first_hour": ("0 h", "1 h"),
    "total": ("0 h", "1.5 h"),
    "from_bolus": ("1 h", "1.5 h"),
}
LINEAR_MODELS = [m for m in pkpd.inputs.model.available_models() if pkpd.load_model(m).is_linear]


def _mid_covariates(spec, n):
    """A covariate table inside the model's studied ranges (weights spread over it). The
    regimens are per kg, so a model without a weight covariate (the opioids) gets an adult
    weight too: it scales the doses only."""
    cov = {}
    for k in ("weight", "age"):
        c = spec.covariates.get(k)
        if c is None and k != "weight":
            continue
        lo, hi = c.range if c is not None and c.range else (55.0, 90.0)
        cov[k] = np.linspace(lo + 0.3 * (hi - lo), lo + 0.6 * (hi - lo), n)
    return pkpd.inputs.population.CovariateTable(covariates=cov, n=n)


def _one_patient(spec):
    return {k: float(v[0]) for k, v in _mid_covariates(spec, 1).covariates.items()}


def _level_between_the_limits_at_1h(model):
    """A cp level between the values just before and just after the bolus at 1 h."""
    cov = _one_patient(pkpd.load_model(model))
    ds = pkpd.simulate(model, BOLUS_REGIMEN, cov, times=[1.0 - 1e-9, 1.0])
    return float(np.sqrt(ds.cp.values[0] * ds.cp.values[1]))


@pytest.mark.parametrize("model", LINEAR_MODELS)
def test_single_patient_metrics_use_the_left_limit_at_a_bolus_on_the_grid(model):
    """The stored value at 1 h is the one after the bolus; integrals ending there must use
    the one before it. Against the solver's exact cumulative AUC: the window ending at the
    bolus to 1e-4 (before the fix: +20 % to +600 %), and O(h^2) elsewhere (Richardson)."""
    cov = _one_patient(pkpd.load_model(model))
    res = {}
    for every in ("1 min", "30 s"):
        ds = pkpd.simulate(model, BOLUS_REGIMEN, cov, until="2.5 h", every=every)
        assert list(ds.cp.attrs["bolus_times"]) == [0.0, 1.0]
        assert ds.cp.attrs["post_bolus"][1] == ds.cp.sel(time=1.0).item()
        assert ds.cp.attrs["pre_bolus"][1] < ds.cp.attrs["post_bolus"][1]
        exact = {
            k: float(ds.auc_cp.sel(time=float(b[:-2])) - ds.auc_cp.sel(time=float(a[:-2])))
            for k, (a, b) in BOLUS_WINDOWS.items()
        }
        for method in ("linear", "log-down"):
            got = M.auc(ds, BOLUS_WINDOWS, method=method, outputs="cp").squeeze("output")
            res[every, method] = {k: got.sel(window=k).item() for k in BOLUS_WINDOWS}
        res[every, "exact"] = exact
    for method in ("linear", "log-down"):
        for k in BOLUS_WINDOWS:
            ex = res["1 min", "exact"][k]
            a1, a2 = res["1 min", method][k], res["30 s", method][k]
            if k == "to_bolus":
                assert a1 == pytest.approx(ex, rel=1e-4), (method, k)
            # Second order: E(h) ~ 4 E(h/2), so 4/3 (A_h - A_h/2) estimates E(h).
            assert abs(a1 - ex) <= 1.15 * 4 / 3 * abs(a1 - a2) + 1e-9 * ex, (method, k)
            assert abs(a1 - ex) >= 0.85 * 4 / 3 * abs(a1 - a2) - 1e-9 * ex, (method, k)


def _bolus_cohort(model, every, level):
    spec = pkpd.load_model(model)
    with warnings.catch_warnings():
        # perezruixo2021_esketamine declares an IIV without its value (warned, expected).
        warnings.simplefilter("ignore", CovariateRangeWarning)
        return pkpd.simulate_cohort(
            model,
            BOLUS_REGIMEN,
            _mid_covariates(spec, 4),
            seed=3,
            until="2.5 h",
            every=every,
            windows=BOLUS_WINDOWS,
            thresholds={"cp": [f"{level} ng/mL"]},
            trajectories=True,
            bands=False,
            progress=False,
        )


@pytest.mark.parametrize("model", LINEAR_MODELS)
def test_cohort_metrics_match_the_kernel_with_a_bolus_on_the_grid(model):
    """Every shipped linear model, a bolus at 1 h on the grid, windows ending exactly there:
    Cmax, Tmax and time above as the kernel (which evaluates both sides of the bolus), the
    AUC to the trapezoid error, O(h^2) (before the fix: O(h), up to +600 % ending at 1 h)."""
    level = _level_between_the_limits_at_1h(model)
    c1, c2 = (_bolus_cohort(model, every, level) for every in ("1 min", "30 s"))
    assert np.isfinite(c1.trajectory_pre_bolus).any()
    thr = {"cp": [f"{level} ng/mL"]}
    m = M.nca(c1, windows=BOLUS_WINDOWS, thresholds=thr)
    _trajectory_peak_vs_kernel(m, c1, 1 / 60)
    np.testing.assert_allclose(
        m.time_above.values, c1.time_above.transpose(*m.time_above.dims).values, atol=1e-5
    )
    exact = c1.auc
    np.testing.assert_allclose(c2.auc.values, exact.values, rtol=1e-10)
    for method in ("linear", "log-down"):
        a1 = M.auc(c1, BOLUS_WINDOWS, method=method).transpose(*exact.dims)
        a2 = M.auc(c2, BOLUS_WINDOWS, method=method).transpose(*exact.dims)
        to = {"window": "to_bolus"}
        assert float(np.abs(a1.sel(to) / exact.sel(to) - 1).max()) < 1e-4, method
        e1, rich = np.abs(a1 - exact), 4 / 3 * np.abs(a1 - a2)
        slack = 1e-6 * np.abs(exact)  # float32 trajectories
        assert bool((e1 <= 1.15 * rich + slack).all()), method
        assert bool((e1 >= 0.85 * rich - slack).all()), method


def _ode_cohort(regimen, trajectories=True):
    spec = pkpd.load_model("s_ketamine_pain_turnover")
    return pkpd.simulate_cohort(
        spec,
        regimen,
        _mid_covariates(spec, 3),
        seed=1,
        until="2 h",
        every="2 min",
        windows={"w": ("0.5 h", "1 h")},
        trajectories=trajectories,
        bands=False,
        progress=False,
    )


def test_ode_cohort_metrics_of_selected_concentrations_and_left_limits():
    """An [ode] cohort storing a non-concentration output (pain): metrics of the selected
    concentrations work; selecting pain (or nothing) is refused, naming it. A bolus on
    the grid of an [ode] cohort has no recorded left limit: the metrics say so."""
    ds = _ode_cohort("0.5 mg/kg/h from 0 h to 1 h")
    assert "pain" in ds.traj_output.values
    conc = ["cp", "ce"]
    cm = M.cmax(ds, outputs=conc).transpose("patient", "output")
    # cp peaks at the end of the infusion (a grid point): the same value. ce peaks between
    # grid points, which the kernel locates (issue 14) and the stored samples miss: the
    # kernel's is higher, by less than the grid's interpolation error.
    kern = ds.cmax.sel(output=conc).values
    np.testing.assert_allclose(cm.values[:, 0], kern[:, 0], rtol=2e-7)
    assert np.all(kern[:, 1] >= cm.values[:, 1] * (1 - 2e-7))
    assert np.all(kern[:, 1] <= cm.values[:, 1] * (1 + 1e-3))
    a = M.auc(ds, {"w": ("0.5 h", "1 h")}, outputs=conc).transpose(*ds.auc.dims)
    np.testing.assert_allclose(a.values, ds.auc.sel(output=conc).values, rtol=1e-3)
    for outputs in (None, ["cp", "pain"], "pain"):
        with pytest.raises(MetricsError, match=r"`trajectory`: output 'pain'.*outputs=\['cp'"):
            M.auc(ds, outputs=outputs)
    with pytest.warns(pkpd.errors.MetricsWarning, match="not recorded: 3 bolus"):
        M.auc(_ode_cohort("0.2 mg/kg bolus at 1 h"), outputs="cp")


def test_ode_single_patient_records_the_left_limit_at_a_bolus():
    ds = pkpd.simulate(
        "s_ketamine_pain_turnover", BOLUS_REGIMEN, {"weight": 70}, until="2 h", every="2 min"
    )
    for o in ("cp", "ce", "pain"):
        assert list(ds[o].attrs["bolus_times"]) == [0.0, 1.0]
    assert ds.cp.attrs["pre_bolus"][1] < ds.cp.sel(time=1.0).item() == ds.cp.attrs["post_bolus"][1]
    exact = float(ds.auc_cp.sel(time=1.0) - ds.auc_cp.sel(time=0.5))
    got = M.auc(ds, {"w": ("0.5 h", "1 h")}, outputs="cp").item()
    assert got == pytest.approx(exact, rel=1e-3)  # before: the value after the bolus, +20 %


def test_s_ketamine_equivalent_keeps_the_limits_at_a_bolus():
    ds = pkpd.simulate("fanta2015_otto2021", BOLUS_REGIMEN, {"weight": 70}, until="2 h")
    eq = M.s_ketamine_equivalent(ds, 0.25, "my assumption")
    want = ds.cp.attrs["pre_bolus"] + 0.25 * ds.cp_norketamine.attrs["pre_bolus"]
    np.testing.assert_allclose(eq.attrs["pre_bolus"], want, rtol=1e-15)
    w = {"w": ("0.5 h", "1 h")}
    exact = (ds.auc_cp + 0.25 * ds.auc_cp_norketamine).sel(time=[0.5, 1.0]).diff("time").item()
    assert M.auc(eq, w, method="linear").item() == pytest.approx(exact, rel=1e-4)


def _time_above_rows_numpy(t, cr, cl, a, b, level):
    """The whole-array numpy expression `metrics._time_above_rows` computed until
    issue 15 (kept here as the reference its compiled pass must equal bit for bit)."""
    t0, t1 = t[:-1], t[1:]
    h = t1 - t0
    u = np.clip(t0[None, :], a[:, None], b[:, None])
    v = np.clip(t1[None, :], a[:, None], b[:, None])
    c0, c1 = cr[:, :-1], cl[:, 1:]
    cu = c0 + (u - t0) / h * (c1 - c0)
    cv = c0 + (v - t0) / h * (c1 - c0)
    dt = v - u
    p = cu - level
    q = cv - level
    with np.errstate(divide="ignore", invalid="ignore"):
        part = dt * np.where(p > 0, p, q) / np.abs(q - p)
    res = np.where((p >= 0) & (q >= 0), dt, np.where((p > 0) | (q > 0), part, 0.0))
    res = np.where(dt > 0, res, 0.0)
    out = res.sum(axis=1)
    out[np.isnan(cr).any(axis=1)] = np.nan
    return out


def test_time_above_rows_equal_the_numpy_expression_bit_for_bit():
    """Random concentrations with values exactly at the level, jumps (different left and
    right limits), NaN rows, windows inside, across, outside and of zero length, a window
    bound exactly on grid times and NaN bounds: the compiled pass gives the same bits."""
    from pkpd.analysis.metrics import _time_above_rows

    rng = np.random.default_rng(5)
    t = np.concatenate([[0.0], np.cumsum(rng.uniform(0.01, 0.5, size=300))])
    n = 400
    cr = rng.lognormal(0.0, 1.0, size=(n, t.size)) * 50.0
    cr[rng.uniform(size=cr.shape) < 0.05] = 50.0  # exactly at the level
    cl = cr.copy()
    jumps = rng.uniform(size=cr.shape) < 0.02
    cl[jumps] = cr[jumps] * rng.uniform(0.1, 0.9, size=jumps.sum())
    cr[7, 30] = np.nan
    cl[8, 31] = np.nan
    a = rng.uniform(-1.0, t[-1], size=n)
    b = a + rng.uniform(0.0, t[-1], size=n)
    a[:20], b[:20] = t[5], t[40]  # bounds on grid times
    b[20:25] = a[20:25]  # zero length
    a[25:28], b[25:28] = -5.0, -1.0  # outside
    a[28], b[29] = np.nan, np.nan
    for level in (50.0, 10.0, 1e9, 0.0):
        got = _time_above_rows(t, cr, cl, a, b, level)
        ref = _time_above_rows_numpy(t, cr, cl, a, b, level)
        np.testing.assert_array_equal(got, ref)
        assert got.tobytes() == ref.tobytes()


def test_peak_rows_equal_the_argmax_expression_bit_for_bit():
    """`metrics._peak_rows` (the windowed Cmax/Tmax pass) against the whole-array argmax
    it replaced: ties, -inf, NaN values inside and outside the window, NaN window values
    and bounds, windows outside the grid and of zero length; the same bits."""
    from pkpd.analysis.metrics import _peak_rows

    rng = np.random.default_rng(8)
    t = np.concatenate([[0.0], np.cumsum(rng.uniform(0.01, 0.5, size=200))])
    n = 300
    cr = np.round(rng.lognormal(0.0, 1.0, size=(n, t.size)) * 5.0)  # many ties
    cr[3, 40] = np.nan
    cr[4, :] = -np.inf
    a = rng.uniform(-1.0, t[-1], size=n)
    b = a + rng.uniform(0.0, t[-1], size=n)
    a[:20], b[:20] = t[5], t[40]  # bounds on grid times
    b[20:25] = a[20:25]  # zero length
    a[25:28], b[25:28] = -5.0, -1.0  # outside
    a[28], b[29], a[30], b[30] = np.nan, np.nan, np.nan, np.nan
    ca = rng.lognormal(0.0, 1.0, size=n) * 5.0
    cb = rng.lognormal(0.0, 1.0, size=n) * 5.0
    ca[31], cb[32], ca[33], cb[33] = np.nan, np.nan, -np.inf, np.inf
    inside = (t[None, :] >= a[:, None]) & (t[None, :] <= b[:, None])
    top = np.where(inside, cr, -np.inf).max(axis=1)
    ca[:20], cb[:20] = top[:20], top[:20]  # ties with the inside maximum: the first wins
    cb[40:60] = top[40:60]
    cm, tm = np.empty(n), np.empty(n)
    _peak_rows(t, cr, ca, cb, a, b, cm, tm)
    vals = np.concatenate([ca[:, None], np.where(inside, cr, -np.inf), cb[:, None]], 1)
    times = np.concatenate([a[:, None], np.broadcast_to(t, (n, t.size)), b[:, None]], 1)
    k = np.argmax(vals, axis=1)
    r = np.arange(n)
    assert cm.tobytes() == vals[r, k].tobytes()
    assert tm.tobytes() == times[r, k].tobytes()


@pytest.mark.parametrize("window", [None, ("0.5 h", "6 h")])
def test_time_above_and_below_in_one_pass_equal_the_two_calls(cohorts, window):
    """`time_above_and_below` (what `pta` and `nca` use) is the pair of `time_above` and
    `time_below` calls with the same arguments: values bit for bit, names, coordinates and
    attributes; with a bolus on the grid (left and right limits) and without."""
    with pytest.warns(CovariateRangeWarning):
        bolus = pkpd.simulate_cohort(
            "fanta2015_otto2021", "0.3 mg/kg bolus at 1 h; 0.5 mg/kg/h from 0 h to 2 h",
            "spine_fusion_china", n=50, seed=3, until="8 h", every="10 min",
            trajectories=True, bands=False, progress=False,
        )  # fmt: skip
    for ds in (cohorts[10], bolus):
        up, down = M.time_above_and_below(ds, THRESH, window)
        xr.testing.assert_identical(up, M.time_above(ds, THRESH, window))
        xr.testing.assert_identical(down, M.time_below(ds, THRESH, window))
        # ... and the time below is the window's length minus the time above, as documented.
        t = ds.time.values
        a, b = (t[0], t[-1]) if window is None else (0.5, 6.0)
        np.testing.assert_array_equal(down.values, (b - a) - up.values)
        assert 0 < float(up.mean()) and 0 < float(down.mean())
