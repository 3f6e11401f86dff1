"""PD endpoints in cohorts: effect sites as model outputs, PD variables as further outputs.

References are independent of the code under test: each cohort patient is simulated alone
(:func:`pkpd.simulate`, the piecewise-exact solver, with the cohort's drawn parameters), the
effect functions are written here from the numbers of the cited abstracts (Simons 2022:
C50 0.3 nmol/mL x 237.73 g/mol; Olofsen 2012: -0.038 and +0.030 cm per ng/mL, S-norketamine
as 223.70 g/mol), and an ``[ode]`` model's effect site against the closed-form convolution.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

import pkpd
from pkpd.cli import main
from pkpd.errors import ModelError, SamplingSiteWarning
from pkpd.running.cohort import CohortError

MW_K, MW_NK = 237.73, 223.70
LN2 = math.log(2)
C50_HIGH = 0.3 * MW_K  # ng/mL, Simons 2022 drug high
C50_LO, C50_HI = 1.2 * MW_K, 1.7 * MW_K  # ng/mL, Simons 2022 antinociception range
SRC = {"source": "test fixture", "tag": "assumed", "note": "synthetic test model"}
REGIMEN = "20 mg over 30 min from 0 h; 10 mg bolus at 2 h"
EVENTS = (0.0, 0.5, 2.0)
AT = {"a": "0.75 h", "b": "2 h", "c": "3.3 h"}
AT_H = {"a": 0.75, "b": 2.0, "c": 3.3}
PD = ["simons2022_drug_high", "olofsen2012_analgesia", "simons2022_antinociception"]
PD_PARAMS = {
    "simons2022_drug_high.t_half_ke0": "3 min",
    "simons2022_drug_high.gamma": 2.0,
    "simons2022_drug_high.emax": 10.0,
}
GAMMA, EMAX = 2.0, 10.0
KE0_HIGH = LN2 / (3 / 60)  # 1/h


def model_iiv():
    """S-ketamine 1-cmt forming a 1-cmt S-norketamine (S-ketamine mass equivalents, as in
    fanta2015_otto2021), with log-normal IIV on V and k (arterial, as Simons/Olofsen)."""
    mm = {"molar_mass": "237.73 g/mol", **SRC}
    return pkpd.ModelSpec.from_dict(
        {
            "schema_version": 1,
            "model": {
                "name": "one_cmt_iiv",
                "drug": "S-ketamine",
                "citation": "synthetic",
                "population": "synthetic",
                "sampling_site": "arterial",
            },
            "analytes": {
                "s_ketamine": {"role": "parent", **mm},
                "norketamine": {"role": "metabolite", **mm},
            },
            "parameters": {
                "V": {"value": "20 L", **SRC},
                "k": {"value": "2 1/h", **SRC},
                "Vm": {"value": "30 L", **SRC},
                "km": {"value": "0.8 1/h", **SRC},
            },
            "compartments": {
                "central": {"analyte": "s_ketamine", "volume": "V", "dosing": True},
                "met": {"analyte": "norketamine", "volume": "Vm"},
            },
            "flows": [
                {"from": "central", "to": "met", "rate_constant": "k", "fraction": 0.6},
                {"from": "met", "rate_constant": "km"},
            ],
            "variability": [
                {"parameters": ["V", "k"], "omega": [[0.09, 0.01], [0.01, 0.04]], **SRC}
            ],
        },
        file="one_cmt_iiv.toml",
    )


def emax_high(ce):
    """Simons 2022 drug high with the test's gamma and Emax, from Ce in ng/mL."""
    r = np.asarray(ce) / C50_HIGH
    return EMAX * r**GAMMA / (1 + r**GAMMA)


def olofsen(ce_k, ce_nk_model):
    """Olofsen 2012 net effect (cm); S-norketamine from model units (S-K mass equivalents)."""
    return -0.038 * np.asarray(ce_k) + 0.030 * np.asarray(ce_nk_model) * MW_NK / MW_K


@pytest.fixture(scope="module")
def spec():
    return model_iiv()


def run_cohort(spec, **kw):
    args = {"n": 21, "seed": 3, "until": "6 h", "every": "5 min", "pd": PD}
    args["pd_parameters"] = PD_PARAMS
    args.update(kw)
    return pkpd.simulate_cohort(spec, REGIMEN, "healthy_volunteers", **args)


@pytest.fixture(scope="module")
def cohort_ds(spec):
    return run_cohort(spec, at=AT, trajectories=True, trajectory_dtype="float64")


def rebuild(spec, ds, i, times):
    """Patient `i` of `ds` alone (its drawn V and k as random effects), with the PD."""
    typical = spec.individual_parameters({}, warn=False)
    theta = np.array([float(ds[f"param_{p}"].values[i]) for p in spec.param_names])
    eta = dict(zip(spec.param_names, np.log(theta / typical), strict=True))
    return pkpd.simulate(spec, REGIMEN, eta=eta, times=times, pd=PD, pd_parameters=PD_PARAMS)


def at_time(sim, name, t):
    idx = np.nonzero(sim.time.values == t)[0]
    assert idx.size, t
    return float(sim[name].values[idx[-1]])


# ----------------------------------------------------------------------------- exactness


def test_effect_sites_and_pd_variables_equal_each_patient_alone(spec, cohort_ds):
    ds = cohort_ds
    assert np.all(ds.status.values == 0)
    outs = [str(o) for o in ds.output.values]
    grid = ds.time.values
    times = np.unique(np.concatenate([grid, list(AT_H.values()), EVENTS]))
    for i in (0, 7, 20):
        sim = rebuild(spec, ds, i, times)
        # Every output (effect sites, PD variables) at the named times, as one patient.
        for o in outs:
            for name, t in AT_H.items():
                got = float(ds.c_at.sel(output=o, at=name).values[i])
                assert got == pytest.approx(at_time(sim, o, t), rel=1e-12, abs=1e-12), (i, o)
        ce = sim.ce_simons2022_drug_high_s_ketamine.values
        # The exact solution's peaks (maxima between output times included), as the kernel's
        ce_peak = sim.ce_simons2022_drug_high_s_ketamine.attrs["cmax_exact"]
        cp_peak = sim.cp.attrs["cmax_exact"]
        assert ce_peak >= ce.max() * (1 - 1e-12) and cp_peak >= sim.cp.values.max() * (1 - 1e-12)
        ce_k = sim.ce_olofsen2012_analgesia_s_ketamine.values
        ce_nk = sim.ce_olofsen2012_analgesia_s_norketamine.values
        # The effect is the function of the effect site written here from the abstracts.
        for name, t in AT_H.items():
            c_at = ds.c_at.sel(at=name).isel(patient=i)
            ce_t = at_time(sim, "ce_simons2022_drug_high_s_ketamine", t)
            assert float(c_at.sel(output="simons2022_drug_high")) == pytest.approx(
                emax_high(ce_t), rel=1e-12
            )
            want = olofsen(
                at_time(sim, "ce_olofsen2012_analgesia_s_ketamine", t),
                at_time(sim, "ce_olofsen2012_analgesia_s_norketamine", t),
            )
            assert float(c_at.sel(output="olofsen2012_analgesia")) == pytest.approx(want, rel=1e-12)
        # Cmax/Tmax of an increasing PD variable: the function of the effect site's.
        cmax = ds.cmax.isel(patient=i)
        assert float(cmax.sel(output="ce_simons2022_drug_high_s_ketamine")) == pytest.approx(
            ce_peak, rel=1e-12
        )
        assert float(cmax.sel(output="simons2022_drug_high")) == pytest.approx(
            emax_high(ce_peak), rel=1e-12
        )
        assert float(cmax.sel(output="simons2022_drug_high_conc_over_c50")) == pytest.approx(
            ce_peak / C50_HIGH, rel=1e-12
        )
        # Plasma-driven (no effect site): the bolus at 2 h is evaluated after it.
        assert float(cmax.sel(output="simons2022_antinociception_conc_over_c50_at_min_c50")) == (
            pytest.approx(cp_peak / C50_LO, rel=1e-12)
        )
        assert float(ds.tmax.sel(output="simons2022_drug_high").values[i]) == float(
            ds.tmax.sel(output="ce_simons2022_drug_high_s_ketamine").values[i]
        )
        # Decreasing or summed: no maximum recorded.
        for o in ("olofsen2012_analgesia", "olofsen2012_analgesia_contribution_s_ketamine"):
            assert np.isnan(float(cmax.sel(output=o)))
        # Contribution of S-norketamine (increasing): its Cmax is slope x Cmax.
        got = float(cmax.sel(output="olofsen2012_analgesia_contribution_s_norketamine"))
        nk_peak = sim.ce_olofsen2012_analgesia_s_norketamine.attrs["cmax_exact"]
        assert nk_peak >= ce_nk.max() * (1 - 1e-12)
        assert got == pytest.approx(0.030 * nk_peak * MW_NK / MW_K, rel=1e-12)
        # AUC: of the driving concentrations (factor x the output's), none of effects.
        auc = ds.auc.isel(patient=i, window=0)
        want = float(auc.sel(output="ce_olofsen2012_analgesia_s_norketamine")) * MW_NK / MW_K
        got = float(auc.sel(output="olofsen2012_analgesia_conc_s_norketamine"))
        assert got == pytest.approx(want, rel=1e-14)
        assert np.isnan(float(auc.sel(output="simons2022_drug_high")))
        # Trajectories (float64 here) of PD variables: the function of the stored outputs.
        traj = ds.trajectory.isel(patient=i)
        on_grid = np.searchsorted(times, grid)
        np.testing.assert_allclose(
            traj.sel(traj_output="simons2022_drug_high"), emax_high(ce[on_grid]), rtol=1e-12
        )
        np.testing.assert_allclose(
            traj.sel(traj_output="olofsen2012_analgesia"),
            olofsen(ce_k[on_grid], ce_nk[on_grid]),
            rtol=1e-11,
            atol=1e-14,
        )
    # Units of the outputs, and the endpoints' provenance in the attrs.
    units = dict(zip(outs, ds.output_units.values, strict=True))
    assert units["ce_simons2022_drug_high_s_ketamine"] == "ng/mL"
    assert units["olofsen2012_analgesia"] == "cm"
    assert units["simons2022_drug_high_conc_over_c50"] == "1"
    assert ds.attrs["pd_endpoints"] == ", ".join(PD)
    assert "USER-SUPPLIED" in ds.attrs["pd_simons2022_drug_high"]
    assert ds.attrs["model"] == "one_cmt_iiv"


def test_cohort_and_one_patient_name_the_pd_variables_alike(spec, cohort_ds):
    sim = pkpd.simulate(spec, REGIMEN, times=[0.0, 1.0], pd=PD, pd_parameters=PD_PARAMS)
    one = {
        str(v)
        for v in sim.data_vars
        if "pd_endpoint" in sim[v].attrs and not str(v).startswith("auc_")
    }
    assert one <= set(map(str, cohort_ds.output.values))
    for v in one:
        want = sim[v].attrs["units"]
        assert str(cohort_ds.output_units.sel(output=v).item()) == want, v


def _linear_time_above(t, c, level):
    """Time with the linear interpolant of (t, c) above `level` (written independently)."""
    total = 0.0
    for a, b, ca, cb in zip(t[:-1], t[1:], c[:-1], c[1:], strict=True):
        if ca >= level and cb >= level:
            total += b - a
        elif ca > level or cb > level:
            total += (b - a) * (max(ca, cb) - level) / abs(cb - ca)
    return total


def test_time_above_an_effect_level_is_that_of_the_effect_site_at_the_inverse_level(spec):
    # E > 5 (half of Emax) exactly when Ce > C50; C/C50 > 1.5 when Ce > 1.5 C50.
    thr = {
        "simons2022_drug_high": [5.0],
        "simons2022_drug_high_conc_over_c50": ["1.5"],
        "ce_simons2022_drug_high_s_ketamine": [f"{C50_HIGH!r} ng/mL"],
        "simons2022_drug_high_conc_s_ketamine": ["0.3 nmol/mL"],
    }
    ds = run_cohort(spec, thresholds=thr, at={}, bands=False)
    labels = list(ds.threshold.values)
    assert labels[0].startswith("simons2022_drug_high > 5 (ce_simons2022_drug_high_s_ketamine")
    assert list(ds.threshold_units.values) == ["1", "1", "ng/mL", "ng/mL"]
    np.testing.assert_allclose(ds.threshold_level.values, [5.0, 1.5, C50_HIGH, C50_HIGH])
    ta = ds.time_above.values
    np.testing.assert_allclose(ta[:, 0], ta[:, 2], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ta[:, 3], ta[:, 2], rtol=1e-12, atol=1e-12)
    grid = np.arange(0, 6 * 12 + 1) / 12.0
    for i in (0, 5, 13):
        sim = rebuild(spec, ds, i, grid)
        ce = sim.ce_simons2022_drug_high_s_ketamine.values
        # The exact solution's peaks (maxima between output times included), as the kernel's
        ce_peak = sim.ce_simons2022_drug_high_s_ketamine.attrs["cmax_exact"]
        cp_peak = sim.cp.attrs["cmax_exact"]
        assert ce_peak >= ce.max() * (1 - 1e-12) and cp_peak >= sim.cp.values.max() * (1 - 1e-12)
        # The kernel's points are the 5-min grid (events lie on it; Ce does not jump).
        for j, level in ((0, C50_HIGH), (1, 1.5 * C50_HIGH)):
            want = _linear_time_above(grid, ce, level)
            assert 0.0 < want < 6.0
            assert ta[i, j] == pytest.approx(want, rel=1e-9, abs=1e-12), (i, j)


@pytest.mark.parametrize("keep", [False, True])
def test_bands_of_pd_variables_are_their_function_of_the_output_bands(spec, keep):
    """21 patients: every quantile's position q (n - 1) is an order statistic, where
    quantiles commute with monotone maps (reversed for a decreasing one)."""
    kw = {"trajectories": True, "trajectory_dtype": "float64"} if keep else {}
    ds = run_cohort(spec, at={}, **kw)
    band = ds.band
    ce = band.sel(band_output="ce_simons2022_drug_high_s_ketamine").values
    np.testing.assert_allclose(
        band.sel(band_output="simons2022_drug_high").values, emax_high(ce), rtol=1e-12
    )
    np.testing.assert_allclose(
        band.sel(band_output="simons2022_drug_high_conc_over_c50").values,
        ce / C50_HIGH,
        rtol=1e-12,
    )
    ce_k = band.sel(band_output="ce_olofsen2012_analgesia_s_ketamine").values
    np.testing.assert_allclose(
        band.sel(band_output="olofsen2012_analgesia_contribution_s_ketamine").values,
        -0.038 * ce_k[::-1],  # quantile q of a decreasing map: the map of quantile 1 - q
        rtol=1e-12,
        atol=1e-15,
    )
    names = set(map(str, ds.band_output.values))
    # The net Olofsen effect sums two outputs: exact bands from kept trajectories only.
    assert ("olofsen2012_analgesia" in names) == keep
    if keep:
        traj = ds.trajectory
        net = traj.sel(traj_output="olofsen2012_analgesia").values
        np.testing.assert_allclose(
            band.sel(band_output="olofsen2012_analgesia").values,
            np.quantile(net, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0),
            rtol=1e-12,
        )
    assert band.attrs["units"] == "see output_units"


# ----------------------------------------------------------------------------- [ode] models


def ode_model():
    """A 1-cmt S-ketamine model written as an [ode] file: dA/dt = rate - k A, cp = A / V."""
    return pkpd.ModelSpec.from_dict(
        {
            "schema_version": 1,
            "model": {
                "name": "one_cmt_ode",
                "drug": "S-ketamine",
                "citation": "synthetic",
                "population": "synthetic",
                "sampling_site": "arterial",
            },
            "analytes": {
                "s_ketamine": {"role": "parent", "molar_mass": "237.73 g/mol", **SRC},
            },
            "parameters": {
                "V": {"value": "20 L", **SRC},
                "k": {"value": "2 1/h", **SRC},
            },
            "ode": {
                "dose_state": "central",
                "states": {"central": {"initial": 0, "unit": "mg"}},
                "intermediates": {"cp": "central / V"},
                "derivatives": {"central": "rate - k * central"},
                "outputs": {"cp": {"expression": "cp", "concentration": True}},
            },
        },
        file="one_cmt_ode.toml",
    )


def test_ode_model_effect_site_against_closed_form_and_pd_as_for_linear_models():
    spec = ode_model()
    D, V, k = 30.0, 20.0, 2.0
    ds = pkpd.simulate_cohort(
        spec, f"{D} mg bolus at 0 h", "healthy_volunteers", n=3, seed=1, until="3 h",
        every="5 min", at={"a": "0.25 h", "b": "1 h", "c": "2.5 h"}, iiv=False,
        pd=["simons2022_drug_high"], pd_parameters=PD_PARAMS, rtol=1e-10, atol=1e-12,
        thresholds={"simons2022_drug_high": [5.0]},
    )  # fmt: skip
    assert ds.attrs["solver_method"] in ("dopri5", "rodas")
    t = np.array([0.25, 1.0, 2.5])
    a = D / V * 1000  # ng/mL
    ce = a * KE0_HIGH / (KE0_HIGH - k) * (np.exp(-k * t) - np.exp(-KE0_HIGH * t))
    got = ds.c_at.sel(output="ce_simons2022_drug_high_s_ketamine").values
    np.testing.assert_allclose(got, np.broadcast_to(ce, got.shape), rtol=1e-7)
    e = ds.c_at.sel(output="simons2022_drug_high").values
    np.testing.assert_allclose(e, emax_high(got), rtol=1e-12)
    # One patient with the same [ode] model and endpoint: the same effect site.
    one = pkpd.simulate(
        spec, f"{D} mg bolus at 0 h", times=t, pd=["simons2022_drug_high"],
        pd_parameters=PD_PARAMS, rtol=1e-10, atol=1e-12,
    )  # fmt: skip
    np.testing.assert_allclose(one.simons2022_drug_high.values, e[0], rtol=1e-7)
    # Time with E > Emax / 2 = time with Ce > C50 (closed form, bisection by hand).
    tm = math.log(KE0_HIGH / k) / (KE0_HIGH - k)

    def f(x):
        return a * KE0_HIGH / (KE0_HIGH - k) * (math.exp(-k * x) - math.exp(-KE0_HIGH * x))

    def root(lo, hi):
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if (f(mid) - C50_HIGH) * (f(lo) - C50_HIGH) > 0:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    want = root(tm, 3.0) - root(0.0, tm)
    # The recorder interpolates linearly between the 5-min points: an O(h^2) difference.
    np.testing.assert_allclose(ds.time_above.values[:, 0], want, atol=2e-3)


def test_ode_endpoints_need_the_plasma_concentration_output():
    with pytest.raises(ModelError, match=r"`ode.outputs.cp_norketamine`|no such analyte"):
        pkpd.simulate_cohort(
            ode_model(), "30 mg bolus at 0 h", "healthy_volunteers", n=2,
            pd=["olofsen2012_analgesia"],
        )  # fmt: skip


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (
            {"thresholds": {"olofsen2012_analgesia": ["-1"]}},
            r"olofsen2012_analgesia.*sums 2 outputs",
        ),
        (
            {"thresholds": {"olofsen2012_analgesia_contribution_s_ketamine": ["-1"]}},
            r"decreases as ce_olofsen2012_analgesia_s_ketamine increases \(the time with it "
            r"below a level L is the time with ce_olofsen2012_analgesia_s_ketamine above "
            r"L / -0\.038 ng/mL\)",
        ),
        ({"thresholds": {"simons2022_drug_high": ["5 ng/mL"]}}, r"not a concentration"),
        ({"residual": True}, r"`residual`.*PD variables"),
        ({"pd": None}, r"`pd_parameters` given without `pd`"),
        ({"trajectories": ["nausea"]}, r"no output named 'nausea'.*simons2022_drug_high"),
    ],
)
def test_refused_combinations_say_why(spec, kw, match):
    with pytest.raises(CohortError, match=match):
        run_cohort(spec, **kw)


def test_racemic_cohort_drives_the_s_ketamine_model_with_half_the_dose():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingSiteWarning)
        ds = pkpd.simulate_cohort(
            model_iiv(), "20 mg bolus at 0 h", "healthy_volunteers", n=2, until="1 h",
            iiv=False, racemic=True, at={"a": "0 h"},
        )  # fmt: skip
    assert float(ds.c_at.sel(output="cp", at="a").values[0]) == pytest.approx(10 / 20 * 1000)
    assert "racemic" in ds.attrs["dose_conversion"]
    with pytest.raises(ModelError, match="needs an S-ketamine model"):
        pkpd.simulate_cohort("domino_racemic", "20 mg bolus at 0 h", "healthy_volunteers", n=2,
                             racemic=True)  # fmt: skip


# ----------------------------------------------------------------------------- CLI


def test_cli_cohort_with_pd_threshold_and_plot(tmp_path):
    png = tmp_path / "bands.png"
    r = CliRunner().invoke(
        main,
        ["simulate", "simons2022_s_ketamine", "0.5 mg/kg over 40 min from 0 h",
         "--patients", "40", "--population", "healthy_volunteers", "--until", "4h",
         "--pd", "simons2022_drug_high", "--pd-param", "simons2022_drug_high.t_half_ke0=3min",
         "--threshold", "simons2022_drug_high_conc_over_c50=1", "--at", "end=40min",
         "--plot", str(png)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "simons2022_drug_high_conc_over_c50 > 1 (ce_simons2022_drug_high_s_ketamine" in (
        r.output
    )
    assert "PD simons2022_drug_high: Simons P" in r.output
    assert "USER-SUPPLIED (not literature): t_half_ke0=3min" in r.output
    assert png.stat().st_size > 10_000


def test_zarr_output_holds_the_pd_variables_and_streams_their_bands(spec, cohort_ds, tmp_path):
    ds = run_cohort(
        spec, at=AT, trajectories=True, trajectory_dtype="float64", out=tmp_path / "c.zarr"
    )
    for v in ("cmax", "tmax", "c_at", "trajectory"):
        np.testing.assert_array_equal(ds[v].values, cohort_ds[v].values, err_msg=v)
    assert list(ds.traj_output.values) == list(cohort_ds.traj_output.values)
    # Written chunk by chunk: streaming bands, for the PD variables of one output only.
    names = list(map(str, ds.band_output.values))
    assert "simons2022_drug_high" in names and "olofsen2012_analgesia" not in names
    ce = ds.band.sel(band_output="ce_simons2022_drug_high_s_ketamine").values
    np.testing.assert_allclose(
        ds.band.sel(band_output="simons2022_drug_high").values, emax_high(ce), rtol=1e-12
    )
