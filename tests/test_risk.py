"""Risk models calibrated by virtual trials, and probability of target attainment."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import xarray as xr
from scipy import stats

import pkpd
from pkpd import risk as R
from pkpd.errors import PkpdError, RiskError

MODEL = "fanta2015_otto2021"


def _cohort(regimen, n, seed, **kw):
    # The shipped populations lie outside Fanta's studied age range: that warning is the
    # cohort module's business, not this file's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pkpd.CovariateRangeWarning)
        return pkpd.simulate_cohort(
            MODEL, regimen, "spine_fusion_china", n=n, seed=seed, bands=False, progress=False, **kw
        )


@pytest.fixture(scope="module")
def shipped():
    return R.load_risk("psychotomimetic")


# ----------------------------------------------------------------------------- the maths


def test_logistic_and_likelihood_against_hand_values():
    # logit p = -1 + 2 ln(200/100) = -1 + 1.3862944 = 0.3862944;
    # exp(-0.3862944) = 0.6795705, p = 1 / 1.6795705 = 0.5953903
    p = R.logistic_probability(math.log(2.0), -1.0, 2.0)
    assert p == pytest.approx(0.5953903, abs=1e-7)
    # no drug, no event; extreme arguments stay finite
    assert R.logistic_probability(-np.inf, 3.0, 0.5) == 0.0
    assert R.logistic_probability(np.array([-800.0, 800.0]), 0.0, 1.0).tolist() == [0.0, 1.0]
    # Each branch as written (1 / (1 + exp(-z)) for z >= 0, exp(z) / (1 + exp(z)) below),
    # bit for bit, over a broadcast grid with infinities, NaN, zero and negative slopes.
    rng = np.random.default_rng(3)
    u = np.concatenate([rng.normal(0, 3, 200), [-np.inf, np.inf, np.nan, 0.0, 1e308]])[:, None]
    a = np.concatenate([rng.normal(0, 5, 50), [0.0, -700.0, 700.0]])[None, :]
    g = np.concatenate([np.abs(rng.normal(3, 2, 50)), [0.0, -1.0, 2.0]])[None, :]
    with np.errstate(invalid="ignore", over="ignore"):
        z = np.where(np.isneginf(u) & (g > 0), -np.inf, a + g * u)
        ref = np.where(z >= 0, 1.0 / (1.0 + np.exp(-z)), np.exp(z) / (1.0 + np.exp(z)))
    np.testing.assert_array_equal(R.logistic_probability(u, a, g), ref)
    assert np.ndim(R.logistic_probability(0.5, 1.0, 2.0)) == 0
    # binomial log-likelihood without the constant, 0 ln 0 = 0
    ll = R.log_likelihood([0.1, 0.3], [10, 20], [1, 5])
    assert ll == pytest.approx(
        math.log(0.1) + 9 * math.log(0.9) + 5 * math.log(0.3) + 15 * math.log(0.7), rel=1e-12
    )
    assert R.log_likelihood([0.0], [5], [0]) == 0.0
    assert R.log_likelihood([1.0], [5], [5]) == 0.0
    # the compressed arm incidence equals the exact mean over patients
    rng = np.random.default_rng(3)
    x = rng.lognormal(math.log(150.0), 0.4, size=5000)
    arm = R._ArmExposure(x, 100.0)
    for a, g in [(-3.0, 1.0), (-1.0, 4.0), (0.5, 0.2)]:
        exact = R.arm_incidence(x, a, g, x_ref=100.0)
        assert float(arm.incidence(a, g)) == pytest.approx(exact, abs=2e-6)
        # a background incidence p0: p0 + (1 - p0) x the mean logistic, by hand
        direct = 0.03 + 0.97 * np.mean(1.0 / (1.0 + np.exp(-(a + g * np.log(x / 100.0)))))
        assert R.arm_incidence(x, a, g, x_ref=100.0, p0=0.03) == pytest.approx(direct, rel=1e-12)
        assert float(arm.incidence(a, g, 0.03)) == pytest.approx(direct, abs=2e-6)


def test_mle_is_exact_for_two_arms_and_two_parameters(shipped):
    # exactly identified: the maximum-likelihood fit reproduces both observed incidences
    for arm in shipped.fit["arms"]:
        if arm["use"] == "fit":
            assert arm["predicted_at_mle"] == pytest.approx(arm["observed"], abs=5e-4)


@pytest.mark.parametrize("k,n", [(0, 10), (2, 30), (6, 30), (11, 178), (50, 50), (37, 120)])
def test_binomial_intervals_match_scipy(k, n):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert R.binomial_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = R.binomial_interval(k, n, method="clopper-pearson")
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-10)


def test_interval_coverage_is_near_nominal():
    # exact coverage by summing the binomial pmf over the k whose interval holds p
    for n in (30, 200):
        for p in (0.07, 0.2, 0.5):
            ks = np.arange(n + 1)
            pmf = stats.binom.pmf(ks, n, p)
            cov_w = sum(
                pmf[k]
                for k in ks
                if R.binomial_interval(int(k), n)[0] <= p <= R.binomial_interval(int(k), n)[1]
            )
            cov_cp = sum(
                pmf[k]
                for k in ks
                if R.binomial_interval(int(k), n, method="clopper-pearson")[0]
                <= p
                <= R.binomial_interval(int(k), n, method="clopper-pearson")[1]
            )
            assert 0.92 <= cov_w <= 0.99
            assert cov_cp >= 0.95 - 1e-12


# ----------------------------------------------------------------------------- calibration


def test_refit_with_a_smaller_cohort_lands_within_the_shipped_uncertainty(shipped):
    res = R.calibrate(shipped, n_virtual=2000, seed=7, n_grid=200, n_posterior=500)
    summ = shipped.fit["summary"]
    for i, name in enumerate(("alpha", "gamma")):
        q = summ[name]
        assert q["q025"] < res.mle[i] < q["q975"]
        # Monte Carlo error of 2000 virtual patients is small against the binomial error
        assert abs(res.mle[i] - shipped.fit[f"{name}_mle"]) < 0.25 * q["sd"]
    new = res.summary()
    for name in ("alpha", "gamma", "background"):
        assert abs(new[name]["mean"] - summ[name]["mean"]) < 0.3 * summ[name]["sd"]
    assert res.ess > 1000  # the posterior mass is spread over many grid cells
    # the TOML section round-trips through the loader
    text = shipped.file.read_text().split(R.GENERATED_MARKER)[0] + res.to_toml()
    import tomllib

    again = R.risk_from_dict(tomllib.loads(text))
    assert again.draws.shape == (500, 3)
    assert np.all((again.draws[:, 2] > 0) & (again.draws[:, 2] < 1))


def test_calibrated_model_reproduces_its_trials_in_fresh_virtual_trials(shipped):
    d = shipped.draws
    for arm in shipped.arms:
        if arm.use != "fit":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pkpd.CovariateRangeWarning)
            x, _ = R.simulate_arm_exposure(
                shipped, arm, n=3000, seed=12345, every="5 min", until="8 h"
            )
        inc = np.array([R.arm_incidence(x, a, g, p0=p0) for a, g, p0 in d[::10]])
        lo, hi = R.binomial_interval(arm.events, arm.n, method="clopper-pearson")
        assert lo <= inc.mean() <= hi, (arm.arm, inc.mean(), lo, hi)
        assert np.quantile(inc, 0.025) < arm.events / arm.n < np.quantile(inc, 0.975)


def test_posterior_grid_matches_brute_force_integration(shipped):
    # Two synthetic arms; the posterior mean of (alpha, gamma, p0) by the grid against
    # importance sampling from the prior itself (flat box x Beta), weights = likelihood
    # from the exact per-patient mean (no compression): an independent calculation.
    rng = np.random.default_rng(8)
    xs = {"A": rng.lognormal(np.log(20.0), 0.3, 150), "B": rng.lognormal(np.log(80.0), 0.3, 150)}
    arms = [
        R.CalibrationArm("t", "A", "fit", 30, 2, "r", "", "s", "derived"),
        R.CalibrationArm("t", "B", "fit", 30, 9, "r", "", "s", "derived"),
    ]
    expo = {k: R._ArmExposure(v, shipped.x_ref) for k, v in xs.items()}
    draws, ess = R._posterior_grid(shipped, arms, expo, 3, 300, 20000)
    M = 300_000
    (alo, ahi), (glo, ghi) = shipped.prior_alpha, shipped.prior_gamma
    a = rng.uniform(alo, ahi, M)
    g = rng.uniform(glo, ghi, M)
    p0 = rng.beta(shipped.background.a, shipped.background.b, M)
    ll = np.zeros(M)
    for arm in arms:
        u = np.log(xs[arm.arm] / shipped.x_ref)
        inc = np.empty(M)
        for s in range(0, M, 20000):
            z = a[s : s + 20000, None] + g[s : s + 20000, None] * u[None, :]
            inc[s : s + 20000] = (1.0 / (1.0 + np.exp(-z))).mean(axis=1)
        p = p0 + (1 - p0) * inc
        ll += arm.events * np.log(p) + (arm.n - arm.events) * np.log1p(-p)
    w = np.exp(ll - ll.max())
    w /= w.sum()
    for j, v in enumerate((a, g, p0)):
        mean = np.sum(w * v)
        sd = np.sqrt(np.sum(w * (v - mean) ** 2))
        assert abs(draws[:, j].mean() - mean) < 0.05 * sd, (j, draws[:, j].mean(), mean, sd)
        assert draws[:, j].std() == pytest.approx(sd, rel=0.05)
    assert ess > 100


# ----------------------------------------------------------------------------- cohorts


@pytest.fixture(scope="module")
def fusion():
    return _cohort(
        "lumbar_fusion_esketamine",
        2000,
        seed=3,
        every="5 min",
        **R.required_cohort_kwargs(
            {
                "output": "cp",
                "at_least": "50 ng/mL",
                "for_fraction": 0.5,
                "window": ("end_of_surgery", "end_of_surgery + 24 h"),
            }
        ),
    )


def _awake_peak_by_hand(ds, output="cp", event="end_of_surgery"):
    """Peak of the stored trajectory from each patient's event to the end: the linearly
    interpolated value at the event and every stored point after it (written out here
    independently of pkpd.metrics)."""
    t = ds["time"].values
    c = ds["trajectory"].sel(traj_output=output).values.astype(float)
    e = ds[event].values
    out = np.empty(len(e))
    for i, ei in enumerate(e):
        at_e = np.interp(ei, t, c[i])
        out[i] = max(at_e, c[i][t >= ei].max())
    return out


def test_apply_risk_outputs_and_agreement_with_direct_computation(fusion, shipped):
    out = R.apply_risk(fusion, shipped, n_draws=400, seed=5)
    p = out["p_psychotomimetic"]
    assert p.dims == ("patient",) and p.attrs["units"] == "1" and "long_name" in p.attrs
    assert "ChiCTR2500095890" in out.attrs["risk_psychotomimetic"]
    inc = float(out["incidence_psychotomimetic"])
    assert (
        float(out["incidence_psychotomimetic_lo"])
        < inc
        < float(out["incidence_psychotomimetic_hi"])
    )
    assert inc == pytest.approx(float(p.mean()), rel=1e-12)
    # direct: mean over the same draws of p0 + (1 - p0) logistic at every patient's peak
    # concentration after end_of_surgery
    rng = np.random.default_rng(np.random.SeedSequence(5, spawn_key=(11,)))
    idx = rng.choice(len(shipped.draws), size=400, replace=False)
    d = shipped.draws[idx]
    x = _awake_peak_by_hand(fusion)
    lg = R.logistic_probability(np.log(x / 100.0)[:, None], d[None, :, 0], d[None, :, 1])
    direct = d[None, :, 2] + (1 - d[None, :, 2]) * lg
    np.testing.assert_allclose(p.values, direct.mean(axis=1), atol=1e-6)
    # the awake peak is not the intraoperative one (the bolus at induction is excluded)
    assert np.all(x < fusion.cmax.sel(output="cp").values)
    # more drug, more risk (same patients: common random numbers)
    high = _cohort(
        "lumbar_fusion_esketamine_high", 2000, seed=3, every="5 min",
        **R.required_cohort_kwargs(shipped),
    )  # fmt: skip
    assert float(R.apply_risk(high, shipped)["incidence_psychotomimetic"]) > inc


def test_interval_reduces_to_monte_carlo_error_without_calibration_uncertainty(fusion, shipped):
    one = copy.deepcopy(shipped)
    a, g = shipped.fit["alpha_mle"], shipped.fit["gamma_mle"]
    p0 = shipped.background.mean
    one.fit["posterior"] = {"alpha": [a] * 200, "gamma": [g] * 200, "background": [p0] * 200}
    out = R.apply_risk(fusion, one, n_draws=2000, seed=1)
    pi = shipped.probability(_awake_peak_by_hand(fusion), a, g, p0)
    np.testing.assert_allclose(out["p_psychotomimetic"].values, pi, atol=1e-6)
    half = 1.96 * pi.std() / math.sqrt(pi.size)
    lo, hi = float(out["incidence_psychotomimetic_lo"]), float(out["incidence_psychotomimetic_hi"])
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    # with calibration uncertainty the interval is much wider than the Monte Carlo part
    full = R.apply_risk(fusion, shipped)
    assert float(
        full["incidence_psychotomimetic_hi"] - full["incidence_psychotomimetic_lo"]
    ) > 5 * (hi - lo)


def test_no_drug_gives_the_background_and_zero_exposures_count_with_it(shipped):
    d = shipped.draws
    pk, I_d, m2 = R._cohort_probabilities(np.zeros(50), 100.0, d[:, 0], d[:, 1], d[:, 2])
    np.testing.assert_allclose(pk, d[:, 2].mean(), rtol=1e-12)
    np.testing.assert_allclose(I_d, d[:, 2], rtol=1e-12)
    np.testing.assert_allclose(m2, d[:, 2] ** 2, rtol=1e-12)
    # half the patients without exposure: I_d = (p0 + mean over the others) / 2, by hand
    x = np.concatenate([np.zeros(50), np.full(50, 60.0)])
    pk, I_d, _ = R._cohort_probabilities(x, 100.0, d[:, 0], d[:, 1], d[:, 2])
    at60 = d[:, 2] + (1 - d[:, 2]) * R.logistic_probability(np.log(0.6), d[:, 0], d[:, 1])
    np.testing.assert_allclose(I_d, (d[:, 2] + at60) / 2, atol=1e-9)


@pytest.mark.parametrize("n_nodes", [1, 5, R._NODE_BLOCK, R.COHORT_NODES])
def test_node_probabilities_in_blocks_equal_the_whole_array_expressions(shipped, n_nodes):
    """`_node_probabilities` computes the draws' probabilities at the nodes in row blocks on
    threads: bit for bit the whole-array expressions it replaces (a partial last block, a
    background probability, negative and zero slopes among the draws)."""
    d = shipped.draws.copy()
    d[:7, 1] = [-1.0, 0.0, 0.0, -3.0, 2.0, 1e-300, -1e-300]
    a, g, p0 = d[:, 0], d[:, 1], d[:, 2]
    nodes = np.linspace(-4.0, 3.0, n_nodes)
    S, S_mean, S2 = R._node_probabilities(nodes, a, g, p0)
    whole = p0[None, :] + (1.0 - p0[None, :]) * R.logistic_probability(
        nodes[:, None], a[None, :], g[None, :]
    )
    assert S.tobytes() == whole.tobytes()
    assert S_mean.tobytes() == whole.mean(axis=1).tobytes()
    assert S2.tobytes() == (whole * whole).tobytes()


def test_a_bolus_under_anaesthesia_scores_the_same_given_at_once_or_over_5_min(shipped):
    # The exposure starts at emergence: how the induction bolus was pushed does not matter
    # (with the old whole-run peak the two differed by 8 %).
    base = "0.1 mg/kg/h from 0 h to end_of_surgery"
    res, peaks = [], []
    for bolus in ("0.25 mg/kg bolus at 0 h", "0.25 mg/kg bolus at 0 h over 5 min"):
        reg = pkpd.load_regimen(f"{bolus}; {base}")
        reg = __import__("dataclasses").replace(
            reg, anchors=pkpd.load_regimen("lumbar_fusion_esketamine").anchors
        )
        ds = _cohort(reg, 1000, seed=4, every="5 min", until="30 h",
                     **R.required_cohort_kwargs(shipped))  # fmt: skip
        out = R.apply_risk(ds, shipped, regimen=reg)
        assert out.attrs["risk_psychotomimetic_fraction_dosed_while_awake"] == 0.0
        res.append(float(out["incidence_psychotomimetic"]))
        peaks.append(float(ds.cmax.sel(output="cp").median()))
    # spreading the bolus delays the curve by 2.5 min: hours later, a fraction of a percent
    assert res[0] == pytest.approx(res[1], rel=1e-2)
    # while the whole-run peaks (the mixing artefact of the bolus at once) differ far more
    assert peaks[0] / peaks[1] - 1 > 5 * abs(res[0] / res[1] - 1)


def test_dosing_while_awake_is_counted_per_patient(fusion):
    from pkpd.analysis import risk_domain as D

    reg = pkpd.load_regimen("lumbar_fusion_esketamine")
    assert D.awake_dosing(fusion, reg, "end_of_surgery") == 1.0  # the postoperative infusion
    intra = pkpd.load_regimen("0.2 mg/kg bolus at 0 h; 0.125 mg/kg/h from 0 h to end_of_surgery")
    assert D.awake_dosing(fusion, intra, "end_of_surgery") == 0.0
    # a bolus at 3 h is after emergence for the patients whose surgery ended before 3 h only
    late = pkpd.load_regimen("0.1 mg/kg/h from 0 h to end_of_surgery; 0.1 mg/kg bolus at 3 h")
    share = D.awake_dosing(fusion, late, "end_of_surgery")
    assert share == pytest.approx(float(np.mean(fusion["end_of_surgery"].values <= 3.0)))
    # without the event the patient is awake throughout
    assert D.awake_dosing(fusion, pkpd.load_regimen("1 mg bolus at 0 h"), "end_of_surgery") == 1


def test_meets_limit_rule(fusion, shipped):
    out = R.apply_risk(fusion, shipped)
    hi = float(out["incidence_psychotomimetic_hi"])
    # the shipped fusion regimen gives S-ketamine after surgery: outside the domain, so it is
    # not certified unless extrapolation is allowed explicitly
    assert out.attrs["risk_psychotomimetic_within_domain"] == 0
    assert "while awake" in out.attrs["risk_psychotomimetic_extrapolation"]
    assert R.meets_limit(out, shipped, min(hi + 0.01, 0.99)) is False
    ok = {"allow_extrapolation": True}
    assert R.meets_limit(out, shipped, min(hi + 0.01, 0.99), **ok) is True
    assert R.meets_limit(out, shipped, hi - 1e-6, **ok) is False
    assert R.meets_limit(fusion, shipped, f"{100 * (hi + 0.01):.3f} %", **ok) is True
    # rules: mean <= q50..q95 <= upper, each read from the same stored quantiles
    v = {r: R.limit_verdict(out, shipped, 0.5, rule=r).value for r in ("mean", "q90", "upper")}
    assert v["q90"] < v["upper"] == pytest.approx(hi)
    assert v["mean"] == pytest.approx(float(out["incidence_psychotomimetic"]))
    levels = out["incidence_psychotomimetic"].attrs["quantile_levels"]
    assert list(levels) == [0.5, 0.75, 0.9, 0.95, 0.975]
    # a limit below the background's own uncertainty cannot be met by any regimen
    from pkpd.analysis import risk_domain as D

    floor = D.resolution_floor(shipped, "upper")
    assert floor == pytest.approx(np.quantile(shipped.draws[:, 2], 0.975))
    vd = R.limit_verdict(out, shipped, floor / 2, allow_extrapolation=True)
    assert vd.below_resolution and not vd.meets
    assert "below what the calibration can resolve" in vd.explain(floor / 2, "upper")
    with pytest.raises(RiskError, match="q33"):
        R.limit_verdict(out, shipped, 0.1, rule="q33")
    with pytest.raises(RiskError, match="'median'"):
        R.limit_verdict(out, shipped, 0.1, rule="median")


def test_pta_on_a_cohort_uses_per_patient_events(fusion):
    target = {
        "output": "cp",
        "at_least": "20 ng/mL",
        "for_fraction": 0.5,
        "window": ("end_of_surgery", "end_of_surgery + 24 h"),
    }
    res = R.pta(fusion, target)
    assert res["window_length"].values == pytest.approx(24.0, abs=1e-6)
    assert 0 < res["pta_lo"] < res["pta"] < res["pta_hi"] < 1
    from pkpd import metrics

    ta = metrics.time_above(
        fusion, {"cp": ["20 ng/mL"]}, window=("end_of_surgery", "end_of_surgery + 24 h")
    ).isel(threshold=0)
    assert float(res["pta"]) == pytest.approx(float((ta.values >= 12.0 - 1e-9).mean()))


# ----------------------------------------------------------------------------- PTA, known answer


def _constructed():
    # c_i(t) = s_i (100 - 10 t) on 0..10 h: time at or above 50 ng/mL is 10 - 5/s_i (0 if s<=0.5)
    t = np.linspace(0.0, 10.0, 101)
    s = np.array([0.5, 0.8, 1.0, 1.25, 2.0])
    traj = (s[:, None] * (100.0 - 10.0 * t[None, :]))[:, None, :].astype(np.float32)
    above = np.maximum(10.0 - 5.0 / s, 0.0)
    return xr.Dataset(
        {
            "trajectory": (("patient", "traj_output", "time"), traj, {"units": "ng/mL"}),
            "time_above": (("patient", "threshold"), above[:, None], {"units": "h"}),
            "status": ("patient", np.zeros(5, np.int8)),
        },
        coords={
            "patient": np.arange(5),
            "traj_output": ["cp"],
            "time": t,
            "threshold": ["cp > 50 ng/mL"],
            "threshold_output": ("threshold", ["cp"]),
            "threshold_level": ("threshold", [50.0], {"units": "ng/mL"}),
            "threshold_units": ("threshold", ["ng/mL"]),
            "eos": ("patient", np.array([0.0, 0.0, 0.0, 0.0, 5.0]), {"units": "h"}),
        },
        attrs={
            "grid": "0 to 10 h, 101 points",
            "grid_start_h": 0.0,
            "grid_end_h": 10.0,
            "grid_step_h": 0.1,
            "grid_points": 101,
        },
    )


def test_pta_known_answer_whole_grid_window_and_events():
    ds = _constructed()
    # whole grid through the kernel's time_above: s >= 1 attain 50 % of 10 h -> 3 of 5
    res = R.pta(ds, {"output": "cp", "at_least": "50 ng/mL", "for_fraction": 0.5})
    assert res.attrs["source"].startswith("cohort kernel")
    assert res["attained"].values.tolist() == [False, False, True, True, True]
    assert float(res["pta"]) == pytest.approx(0.6)
    lo, hi = R.binomial_interval(3, 5)
    assert (float(res["pta_lo"]), float(res["pta_hi"])) == pytest.approx((lo, hi))
    # the same from trajectories with an explicit window
    res = R.pta(ds, {"output": "cp", "at_least": 50, "for_fraction": 0.5, "window": (0, 10)})
    assert res.attrs["source"].startswith("stored trajectories")
    assert res["attained"].values.tolist() == [False, False, True, True, True]
    np.testing.assert_allclose(res["time_at_target"], [0, 3.75, 5, 6, 7.5], atol=1e-5)
    # a duration target and a per-patient event window: patient 4 starts at eos = 5 h, where
    # c = 2 (100 - 50) = 100, above 50 until 7.5 h: 2.5 h of the window [5, 7] h -> 2 h
    res = R.pta(
        ds,
        {
            "output": "cp",
            "at_least": "50 ng/mL",
            "for_duration": "2 h",
            "window": ("eos", "eos + 2 h"),
        },
    )
    np.testing.assert_allclose(res["time_at_target"], [0, 2, 2, 2, 2], atol=1e-5)
    assert res["attained"].values.tolist() == [False, True, True, True, True]
    # failed patients are excluded from numerator and denominator
    ds2 = ds.copy()
    ds2["status"] = ("patient", np.array([0, 0, 0, 0, 3], np.int8))
    res = R.pta(ds2, {"output": "cp", "at_least": "50 ng/mL", "for_fraction": 0.5})
    assert float(res["pta"]) == pytest.approx(0.5) and res.pta.attrs["n_patients"] == 4


def test_pta_reads_the_threshold_level_and_grid_span_as_numbers():
    """The kernel's time_above is found by the numeric threshold coordinates and the window
    is the numeric grid span: neither the labels nor the `grid` text is read."""
    ds = _constructed().assign_coords(threshold=["a label nobody parses"])
    ds.attrs["grid"] = "not a grid description"
    res = R.pta(ds, {"output": "cp", "at_least": "50 ng/mL", "for_fraction": 0.5})
    assert res.attrs["source"].startswith("cohort kernel")
    assert res["attained"].values.tolist() == [False, False, True, True, True]
    np.testing.assert_array_equal(res["window_length"].values, 10.0)
    # another level, or the level of another unit, is not the kernel's threshold
    other = R.pta(ds, {"output": "cp", "at_least": "60 ng/mL", "for_fraction": 0.5})
    assert other.attrs["source"].startswith("stored trajectories")
    score = ds.assign_coords(threshold_units=("threshold", ["NRS"]))
    res = R.pta(score, {"output": "cp", "at_least": "50 ng/mL", "for_fraction": 0.5})
    assert res.attrs["source"].startswith("stored trajectories")


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_raise_pkpd_errors_naming_argument_and_value(tmp_path, fusion, shipped):
    ds = _constructed()
    cases = [
        (lambda: R.pta(ds, {"output": "cp", "for_fraction": 0.5}), "at_least"),
        (lambda: R.pta(ds, {"output": "cp", "at_least": "50 ng/mL", "for_fraction": 1.5}), "1.5"),
        (lambda: R.pta(ds, {"output": "cp", "at_least": "50 ng/mL"}), "for_fraction"),
        (lambda: R.pta(ds, {"output": "cp", "at_least": "5 mg", "for_fraction": 0.5}), "5 mg"),
        (
            lambda: R.pta(
                ds, {"output": "cp", "at_least": "50 ng/mL", "for_fraction": 0.5, "windw": (0, 1)}
            ),
            "windw",
        ),
        (
            lambda: R.pta(
                ds, {"output": "ce", "at_least": "50 ng/mL", "for_fraction": 0.5, "window": (0, 1)}
            ),
            "trajectories",
        ),
        (lambda: R.load_risk("no_such_risk"), "no_such_risk"),
        (lambda: R.apply_risk(fusion, shipped, n_draws=3), "3"),
        (lambda: R.meets_limit(fusion, shipped, 1.5), "1.5"),
        (lambda: R.meets_limit(fusion, shipped, "ten %"), "ten %"),
        (lambda: R.binomial_interval(5, 3), "5"),
        (lambda: R.binomial_interval(1, 3, method="wald"), "wald"),
    ]
    for fn, text in cases:
        with pytest.raises(PkpdError) as exc:
            fn()
        assert text in str(exc.value), str(exc.value)
    # a cohort of another PK model is refused (the fit is conditional on the PK model)
    other = fusion.copy()
    other.attrs["model"] = "simons2022_s_ketamine"
    with pytest.raises(RiskError, match="simons2022_s_ketamine"):
        R.apply_risk(other, shipped)
    # file validation: unknown key, bad tag, excluded arm without a reason
    text = shipped.file.read_text().split(R.GENERATED_MARKER)[0]
    for old, new, msg in [
        ('metric = "cmax_awake"', 'metric = "cmax_awake"\nwindw = 1', "windw"),
        ('tag = "derived"\nnote = "As S1.', 'tag = "guess"\nnote = "As S1.', "guess"),
        ("n = 30\nevents = 6", "n = 30\nevents = 31", "31"),
        ('metric = "cmax_awake"', 'metric = "auc"', "auc"),
        ('awake_from = "end_of_surgery"', 'awake_from = "end of surgery"', "end of surgery"),
        ("a = 4.0", "a = -1.0", "background.a"),
        ('prior = "beta"', 'prior = "gamma"', "gamma"),
        ("[calibration.emergence]", "[calibration.emergency]", "emergency"),
        ('median = "131 min"', 'median = "131 kg"', "131 kg"),
    ]:  # fmt: skip
        assert old in text
        p = tmp_path / "psychotomimetic.toml"
        p.write_text(text.replace(old, new, 1))
        with pytest.raises(RiskError, match=msg):
            R.load_risk(p)
    # an arm fitted on the exposure while awake must say when its patients woke up
    import tomllib

    data = tomllib.loads(text)
    del data["calibration"][0]["emergence"]
    with pytest.raises(RiskError, match=r"calibration\[0\]\.emergence"):
        R.risk_from_dict(data)


def test_registry_and_required_kwargs(shipped):
    assert "psychotomimetic" in R.available_risks()
    assert R.required_cohort_kwargs("psychotomimetic") == {"trajectories": ["cp"]}
    assert R.required_cohort_kwargs(
        {"output": "cp", "at_least": "50 ng/mL", "for_fraction": 0.5}
    ) == {"thresholds": {"cp": ["50 ng/mL"]}}
    assert R.required_cohort_kwargs(
        {"output": "cp", "at_least": "50 ng/mL", "for_fraction": 0.5, "window": (0, 4)}
    ) == {"trajectories": ["cp"]}
    # the calibration arms in the file are the sourced ones; excluded arms say why
    fit = [a for a in shipped.arms if a.use == "fit"]
    assert [(a.n, a.events) for a in fit] == [(30, 2), (30, 6)]
    assert all(a.note for a in shipped.arms if a.use == "excluded")


# ----------------------------------------------------------------------------- the command


def test_pkpd_risk_refit_rewrites_the_generated_section_only(tmp_path, shipped):
    """`pkpd risk refit` (formerly `python -m pkpd.analysis.risk refit`): the hand-written
    head is kept, one [fit] section follows the new marker, the file loads again; a file
    fitted under the old marker is refit the same way."""
    from click.testing import CliRunner

    from pkpd.cli import main

    head = shipped.file.read_text().split(R.GENERATED_MARKER)[0]
    old = tmp_path / "old" / "psychotomimetic.toml"
    old.parent.mkdir()
    old.write_text(shipped.file.read_text().replace(R.GENERATED_MARKER, R._OLD_MARKERS[0]))
    out = tmp_path / "psychotomimetic.toml"
    r = CliRunner().invoke(
        main, ["risk", "refit", str(old), "--n-virtual", "200", "--seed", "3", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert r.output.startswith("MLE alpha ") and "effective grid cells" in r.output
    for arm in shipped.arms:
        if arm.use != "excluded":
            assert f"{arm.trial} {arm.arm} [{arm.use}]: observed {arm.events}/{arm.n}" in r.output
    text = out.read_text()
    assert text.startswith(head.rstrip()) and text.count("\n[fit]\n") == 1
    assert f"{R.GENERATED_MARKER} psychotomimetic` on " in text
    assert R._OLD_MARKERS[0] not in text
    again = R.load_risk(out)
    assert again.fit["seed"] == 3 and again.fit["n_virtual"] == 200
    # a destination that cannot be written is refused before the virtual trials, in one line
    r = CliRunner().invoke(main, ["risk", "refit", "psychotomimetic", "--out", "x.txt"])
    assert r.exit_code == 2 and r.output.startswith("pkpd: error: --out 'x.txt': expected")
    r = CliRunner().invoke(main, ["risk", "refit", "no_such_risk"])
    assert r.exit_code == 2 and r.output.startswith("pkpd: error:") and "no_such_risk" in r.output


# ----------------------------------------------------------------------------- design


def test_design_flags_extrapolation_and_limits_below_resolution(shipped):
    from pkpd.analysis.design import design

    common = dict(
        bolus=[0.1, 0.5], rate=[0.1], anchors="lumbar_fusion_esketamine", risk="psychotomimetic",
        target="cp >= 20 ng/mL for 50% of 0h..end_of_surgery", every="10 min", progress=False,
    )  # fmt: skip
    intra = "{bolus} mg/kg bolus at 0 h; {rate} mg/kg/h from 0 h to end_of_surgery"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pkpd.CovariateRangeWarning)
        g = design(MODEL, "spine_fusion_china", 300, 1, template=intra, max_risk=0.5, **common)
        assert (g["extrapolation_psychotomimetic"].values == "").all()
        assert g.feasible.values.all() and g.attrs["best_regimen"]
        assert g.attrs["risk_rule"] == "upper"
        # a limit below the background's uncertainty: nothing can meet it, and it says why
        low = design(MODEL, "spine_fusion_china", 300, 1, template=intra, max_risk=0.01, **common)
        assert not low.feasible.values.any()
        assert "below what the calibration can resolve" in low.attrs["best_message"]
        # drug after surgery: outside the domain, feasible only when allowed explicitly
        post = intra + "; {rate} mg/kg/h from end_of_surgery to end_of_surgery + 12 h"
        out = design(MODEL, "spine_fusion_china", 300, 1, template=post, max_risk=0.5, **common)
        assert (out["extrapolation_psychotomimetic"].values != "").all()
        assert out.meets_limit_value.values.all() and not out.feasible.values.any()
        assert "only outside the calibration's domain" in out.attrs["best_message"]
        ok = design(
            MODEL, "spine_fusion_china", 300, 1, template=post, max_risk=0.5,
            allow_extrapolation=True, **common,
        )  # fmt: skip
        assert ok.feasible.values.all() and "WARNING" in ok.attrs["best_message"]
        # the report lists every extrapolating point, and says "outside" in its table
        from pkpd.output.report import render_report

        page = render_report(out)
        assert "outside the calibration&#x27;s domain" in page and page.count("<li>") >= 2
        # the rule is a choice: the posterior mean is below the upper bound at every point
        m = design(
            MODEL, "spine_fusion_china", 300, 1, template=intra, max_risk=0.5, risk_rule="mean",
            **common,
        )  # fmt: skip
        assert np.all(
            m.rule_incidence_psychotomimetic.values < g.rule_incidence_psychotomimetic.values
        )


def test_compare_and_design_commands_say_where_the_risk_extrapolates(tmp_path):
    from click.testing import CliRunner

    from pkpd.cli import main

    base = ["--population", "spine_fusion_china", "--patients", "200", "--risk",
            "psychotomimetic", "--anchors-from", "lumbar_fusion_esketamine"]  # fmt: skip
    r = CliRunner().invoke(
        main,
        ["compare", MODEL, "0.2 mg/kg bolus at 0 h; 0.1 mg/kg/h from 0 h to end_of_surgery",
         "lumbar_fusion_esketamine", *base],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "psychotomimetic: patients outside calibration exposure" in r.output
    assert "psychotomimetic extrapolates for lumbar_fusion_esketamine:" in r.output
    assert "extrapolates for 0.2 mg/kg bolus" not in r.output  # within the domain
    args = ["design", MODEL, *base, "--bolus", "0.2", "--rate", "0.1",
            "--template", "{bolus} mg/kg bolus at 0 h; {rate} mg/kg/h from 0 h to 30 h",
            "--target", "cp >= 20 ng/mL for 50% of 0h..24h", "--max-risk", "0.95"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "1 of 1 grid points lie outside the psychotomimetic calibration domain" in r.output
    assert "only outside the calibration's domain" in r.output
    r = CliRunner().invoke(main, [*args, "--allow-extrapolation", "--risk-rule", "q90"])
    assert r.exit_code == 0, r.output
    assert "best: " in r.output and "90% quantile" in r.output and "WARNING" in r.output
    r = CliRunner().invoke(main, [*args, "--risk-rule", "median"])
    assert r.exit_code != 0 and "median" in r.output
