"""Patient-controlled analgesia: the pump's rules, the demand process and its reproducibility.

The closed loop (pkpd.engine.pca) is checked three ways:

* against an independent replay written here in Python: the same rules (thinning of the
  candidate stream, lockout, limits, reservoir) with the effect-site concentration from the
  closed-form polyexponential of tests/closed_form.py (superposition of the intraoperative
  bolus, each delivered bolus and the background infusion), not from a matrix exponential;
* by invariants read off the outputs alone (every delivery at least a lockout after the last,
  every limit window within its amount, never more than the reservoir);
* by the law of the demand process: with no relief the demands are a Poisson process of
  known intensity, so their mean count is the integral of the hazard.
"""

from __future__ import annotations

import math
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
from closed_form import effect_site_bolus, effect_site_infusion
from scipy.integrate import quad

import pkpd
from pkpd.errors import PkpdError, RegimenError
from pkpd.inputs.demand import demand_dir, demand_from_dict, load_demand
from pkpd.inputs.model import load_model
from pkpd.inputs.regimen import Regimen, load_regimen
from pkpd.running import pca as pca_pump

SUF = "gepts1995_sufentanil"
DEMAND = "spine_fusion_sufentanil_demand"
MG_L_PER_NG_ML = 1e-3

# 5 ug/mL sufentanil, 1-mL boluses, 8-min lockout, 0.5 mL/h background, at most 4 mL in any
# hour, a 12-mL reservoir (so that some patients run it dry), from 1 h to 13 h.
PUMP = ("PCA sufentanil 5 ug/mL in 12 mL bolus 1 mL lockout 8 min background 0.5 mL/h "
        "limit 4 mL per 1 h from 1 h until 13 h demand " + DEMAND)  # fmt: skip
REGIMEN = "10 ug bolus at 0 h; " + PUMP


def _demand(**values):
    """The shipped demand model with some values replaced (numbers in internal units)."""
    with open(demand_dir() / f"{DEMAND}.toml", "rb") as f:
        data = tomllib.load(f)
    for k, v in values.items():
        data["parameters"][k]["value"] = v
    return demand_from_dict(data)


def _patients(n, seed):
    """`n` patients of the Gepts model with their parameters spread (30 % log-normal)."""
    spec = load_model(SUF)
    theta0 = spec.individual_parameters({}, None, warn=False)
    rng = np.random.default_rng(seed)
    theta = theta0 * np.exp(0.3 * rng.standard_normal((n, theta0.size)))
    return spec, theta


def _run(n=40, seed=3, regimen=REGIMEN, demand=None, p0=None, kc=None):
    spec, theta = _patients(n, seed)
    reg = Regimen.parse(regimen)
    demand = demand or _demand(hazard_max="12 1/h")
    rng = np.random.default_rng(seed + 1)
    kc = kc or pca_pump.stream_length(demand, reg.pca.stop - reg.pca.start)
    draws = pca_pump.draw(demand, rng, rng, n, kc)
    if p0 is not None:
        draws.p0[:] = p0
    ev = reg.event_table(doses_only=True)
    table = tuple(np.tile(a, (n, 1)) for a in (ev.t, ev.rate, ev.bolus))
    weight = np.full(n, 70.0)
    events, res = pca_pump.run(reg, spec, demand, theta, weight, {}, table, draws)
    return spec, theta, reg, demand, draws, events, res


def _reference(theta, reg, demand, p0, c50, gaps, uni):
    """One patient's loop, written independently: closed-form concentrations."""
    V1, V2, V3, CL, Q2, Q3, ke0 = theta
    k = dict(k10=CL / V1, k12=Q2 / V1, k21=Q2 / V2, k13=Q3 / V1, k31=Q3 / V3)
    pca = reg.pca
    conc = 5.0  # mg/L in the reservoir
    bol, bg, res = conc * pca.bolus, conc * pca.background, conc * pca.volume
    (lim,) = pca.limits
    lim_w, lim_a = lim.per, conc * lim.volume
    v = demand.values
    kk = math.log(2) / v["pain_half_life"]
    on, off = pca.start, pca.stop
    lam = demand.hazard(max(p0, v["pain_floor"]))
    deliveries, demands, c_at = [], [], []
    counts = dict(lockout=0, limit=0, empty=0)
    given, bg_end = 0.0, off

    def ce(t):
        c = effect_site_bolus(t, 0.01, V1, ke0, **k)  # the 10-ug bolus at 0 h
        c += sum(effect_site_bolus(t - td, bol, V1, ke0, **k) for td in deliveries)
        return c + effect_site_infusion(t - on, bg, bg_end - on, V1, ke0, **k)

    t = on
    for j in range(gaps.size):
        t = t + gaps[j] / lam
        t_dry = on + (res - given) / bg
        if t_dry < min(t, off) and bg_end == off:
            bg_end = t_dry
        if t >= off:
            break
        c = float(ce(t))
        base = v["pain_floor"] + (p0 - v["pain_floor"]) * math.exp(-kk * (t - on))
        pn = base * (1 - v["emax"] * c ** v["gamma"] / (c50 ** v["gamma"] + c ** v["gamma"]))
        h = v["hazard_max"] * pn ** v["hill"] / (v["pain50"] ** v["hill"] + pn ** v["hill"])
        if not uni[j] * lam < h:
            continue
        demands.append(t)
        left = res - given - bg * (min(t, bg_end) - on)
        in_window = sum(1 for td in deliveries if td > t - lim_w)
        bg_in = bg * max(0.0, min(t, bg_end) - max(t - lim_w, on))
        if deliveries and t - deliveries[-1] < pca.lockout:
            counts["lockout"] += 1
        elif bg_end < off or left < bol * (1 - 1e-12):
            counts["empty"] += 1
        elif bol * (1 + in_window) + bg_in > lim_a * (1 + 1e-12):
            counts["limit"] += 1
        else:
            deliveries.append(t)
            c_at.append(c)
            given += bol
    else:
        raise AssertionError("the reference ran out of candidates")
    return np.array(demands), np.array(deliveries), np.array(c_at), counts


def test_the_loop_matches_an_independent_replay_with_closed_form_concentrations():
    _, theta, reg, demand, draws, _, res = _run(n=12)
    branches = np.zeros(3, dtype=int)
    for p in range(theta.shape[0]):
        dem, dlv, c_at, cnt = _reference(
            theta[p], reg, demand, draws.p0[p], draws.c50[p], draws.gaps[p], draws.uniform[p]
        )
        got_dem = res.demand_t[p][np.isfinite(res.demand_t[p])]
        got_dlv = res.delivery_t[p][np.isfinite(res.delivery_t[p])]
        np.testing.assert_allclose(got_dem, dem, rtol=1e-13)
        np.testing.assert_allclose(got_dlv, dlv, rtol=1e-13)
        # The concentration the loop saw before each delivery, against the closed form.
        np.testing.assert_allclose(res.delivery_c[p][: dlv.size], c_at, rtol=1e-9)
        c = res.counts[p]
        assert list(c[2:]) == [cnt["lockout"], cnt["limit"], cnt["empty"]]
        branches += np.array([cnt["lockout"], cnt["limit"], cnt["empty"]]) > 0
    # The scenario reaches every rule: some demands meet the lockout, a limit, an empty pump.
    assert np.all(branches > 0), branches


def test_the_pump_never_delivers_more_than_its_settings_allow():
    _, theta, reg, _, _, events, res = _run(n=200, seed=11)
    pca = reg.pca
    bol, bg, res_mg = 5.0 * pca.bolus, 5.0 * pca.background, 5.0 * pca.volume
    c = res.counts
    assert np.array_equal(c[:, 0], c[:, 1:].sum(axis=1))
    assert np.array_equal(c[:, 0], np.isfinite(res.demand_t).sum(axis=1))
    assert np.array_equal(c[:, 1], np.isfinite(res.delivery_t).sum(axis=1))
    assert c[:, 1].sum() > 500 and c[:, 2].sum() > 0 and c[:, 3].sum() > 0 and c[:, 4].sum() > 0
    w, a = pca.limits[0].per, 5.0 * pca.limits[0].volume
    for p in range(theta.shape[0]):
        d = res.delivery_t[p][np.isfinite(res.delivery_t[p])]
        assert np.all((d >= pca.start) & (d < pca.stop))
        assert np.all(np.diff(d) >= pca.lockout * (1 - 1e-12))
        # Every window that ends at a delivery holds at most the limit (boluses included).
        for t in d:
            bg_in = bg * max(0.0, min(t, res.bg_end[p]) - max(t - w, pca.start))
            assert bol * np.sum((d > t - w) & (d <= t)) + bg_in <= a * (1 + 1e-12)
    total = res.delivered([pca.stop])[:, 0]
    assert np.all(total <= res_mg * (1 + 1e-12))
    # The background stops when the reservoir runs dry, not before.
    dry = res.bg_end < pca.stop
    assert dry.any() and (~dry).any()
    np.testing.assert_allclose(total[dry], res_mg, rtol=1e-12)
    # The event rows given to the metrics kernel carry exactly what the pump delivered.
    t, rate, bolus = events
    pump_bolus = np.where(t >= pca.start, bolus, 0.0).sum(axis=1)
    np.testing.assert_allclose(pump_bolus, c[:, 1] * bol, rtol=1e-12)
    infused = np.zeros(theta.shape[0])
    for p in range(theta.shape[0]):
        infused[p] = np.sum(rate[p, :-1] * np.diff(t[p]))
    np.testing.assert_allclose(pump_bolus + infused, total, rtol=1e-12)


def test_without_relief_the_demands_are_poisson_with_the_integrated_hazard():
    n, p0 = 3000, 6.6
    # c50 a million times any concentration reached: the drug relieves nothing.
    demand = _demand(c50="1000 mg/L", c50_cv=0.0, hazard_max="6 1/h")
    reg_text = PUMP.replace("in 12 mL ", "").replace(" limit 4 mL per 1 h", "")
    *_, res = _run(n=n, seed=7, regimen=reg_text, demand=demand, p0=p0)
    v = demand.values
    k = math.log(2) / v["pain_half_life"]

    def h(t):
        pn = v["pain_floor"] + (p0 - v["pain_floor"]) * math.exp(-k * (t - 1.0))
        return demand.hazard(pn)

    mean = n * quad(h, 1.0, 13.0)[0]
    got = res.counts[:, 0].sum()
    assert abs(got - mean) < 4 * math.sqrt(mean), (got, mean)


def test_a_stream_drawn_too_short_is_caught_not_truncated():
    with pytest.raises(RuntimeError, match="too short"):
        _run(n=5, kc=3)


def _cohort(regimen, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pkpd.simulate_cohort(
            SUF, regimen, "spine_fusion_china", n=kw.pop("n", 1500), seed=kw.pop("seed", 4),
            until="30 h", every="10 min", at={"day1": "end_of_surgery + 24 h"},
            progress=False, bands=False, **kw,
        )  # fmt: skip


@pytest.fixture(scope="module")
def cohort():
    return _cohort("spine_fusion_sufentanil_pca")


PCA_VARS = ["pca_demands", "pca_deliveries", "pca_refused_lockout", "pca_dose", "pca_dose_at",
            "pca_pain_initial", "pca_c50", "cmax"]  # fmt: skip


def test_a_cohort_reports_the_pump_per_patient(cohort):
    ds = cohort
    reg = load_regimen("spine_fusion_sufentanil_pca")
    w = ds["weight"].values
    per_ml = np.minimum(4e-3 * w, 0.25) / 200.0  # mg per mL of the reservoir
    bol = per_ml * 2.0
    assert np.array_equal(
        ds.pca_demands.values,
        ds.pca_deliveries + ds.pca_refused_lockout + ds.pca_refused_limit + ds.pca_refused_empty,
    )
    assert ds.pca_deliveries.values.mean() > 1
    assert np.all(ds.pca_dose.values >= ds.pca_deliveries.values * bol * (1 - 1e-12))
    by_day1 = ds.pca_dose_at.sel(at="day1").values
    assert np.all(by_day1 <= ds.pca_dose.values * (1 + 1e-12))
    assert np.all(ds.pca_dose.values <= 200.0 * per_ml * (1 + 1e-12))
    assert ds.pca_dose.attrs["units"] == "mg" and ds.pca_c50.attrs["units"] == "ng/mL"
    assert reg.pca.lockout == pytest.approx(8 / 60)
    assert np.all(ds.pca_lockout_hours.values <= ds.pca_deliveries.values * 8 / 60 + 1e-12)


def test_the_cohort_does_not_depend_on_chunks_or_threads(cohort):
    other = _cohort("spine_fusion_sufentanil_pca", chunk_size=1024, threads=1)
    for name in PCA_VARS:
        np.testing.assert_array_equal(other[name].values, cohort[name].values, err_msg=name)


def test_regimens_side_by_side_share_every_patients_demand_stream(cohort, tmp_path):
    text = Path(load_regimen("spine_fusion_sufentanil_pca").file).read_text()
    path = tmp_path / "longer_lockout.toml"
    path.write_text(text.replace('lockout = "8 min"', 'lockout = "20 min"'))
    longer = _cohort(str(path))
    for name in ("pca_pain_initial", "pca_c50", "weight", "end_of_surgery"):
        np.testing.assert_array_equal(longer[name].values, cohort[name].values, err_msg=name)
    # A longer lockout refuses more and delivers less, over the cohort.
    assert longer.pca_refused_lockout.sum() > cohort.pca_refused_lockout.sum()
    assert longer.pca_deliveries.sum() < cohort.pca_deliveries.sum()


def test_one_patient_shows_the_pump_and_the_pain():
    ds = pkpd.simulate(SUF, "spine_fusion_sufentanil_pca", {"weight": 70}, until="54 h",
                       every="5 min", seed=2)  # fmt: skip
    t = ds.time.values
    eos = 4.0  # the regimen's default end of surgery
    assert np.all(np.isnan(ds.pain.values[t < eos])) and ds.pain.values[t == eos] == 6.6
    delivered = ds.pca_delivered.values
    assert np.all(np.diff(delivered) >= 0) and delivered[t < eos].max() == 0
    per_ml = min(4e-3 * 70, 0.25) / 200.0  # 4 ug/kg, at most 250 ug, in 200 mL
    n = ds.attrs["pca_deliveries"]
    expected = n * 2 * per_ml + 48 * per_ml  # the pump runs 48 h
    assert delivered[-1] == pytest.approx(expected, rel=1e-12)
    assert ds.attrs["pca_demands"] >= n > 0
    again = pkpd.simulate(SUF, "spine_fusion_sufentanil_pca", {"weight": 70}, until="54 h",
                          every="5 min", seed=2)  # fmt: skip
    assert np.array_equal(again.pca_delivered.values, delivered)


def test_the_one_line_form_reads_back_what_it_writes():
    reg = Regimen.parse(REGIMEN)
    again = Regimen.parse(reg.text)
    assert again.pca == reg.pca
    file_reg = load_regimen("spine_fusion_sufentanil_pca")
    assert Regimen.parse(file_reg.text).pca == file_reg.pca


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("lockout 8 min", "lockout 0 min"), "lockout 0 min: expected at least 1 min"),
        (("in 12 mL", "in 0.5 mL"), "holds less than one bolus"),
        (("limit 4 mL per 1 h", "limit 0.5 mL per 1 h"), "no demand could ever be delivered"),
        (("background 0.5 mL/h", "background 4 mL/h"), "leaves no room for a bolus"),
        (("until 13 h", "until 0.5 h"), "not after it starts"),
        (("5 ug/mL", "5 ug/kg"), "the reservoir's volume is needed"),
        (("bolus 1 mL", "bolus 1 mg"), "cannot parse"),
    ],
)
def test_bad_pump_settings_are_refused_by_name(change, message):
    text = PUMP.replace(*change)
    if change[0] == "5 ug/mL":
        text = text.replace(" in 12 mL", "")
    assert text != PUMP
    with pytest.raises(RegimenError, match=message):
        Regimen.parse(text)


def test_a_regimen_file_names_the_key_of_a_bad_setting(tmp_path):
    text = Path(load_regimen("spine_fusion_sufentanil_pca").file).read_text()
    bad = tmp_path / "bad_pca.toml"
    bad.write_text(text.replace('lockout = "8 min"', 'lockout = "eight minutes"'))
    with pytest.raises(RegimenError, match=r"bad_pca\.toml.*pca\.lockout"):
        load_regimen(bad)


def test_the_patients_model_must_be_the_reservoirs_drug_and_linear():
    with pytest.raises(PkpdError, match="the reservoir must hold the model's drug"):
        pkpd.simulate("fanta2015_otto2021", "spine_fusion_sufentanil_pca", {"weight": 70})


def test_a_demand_model_without_a_parameter_is_refused():
    with open(demand_dir() / f"{DEMAND}.toml", "rb") as f:
        data = tomllib.load(f)
    del data["parameters"]["hill"]
    with pytest.raises(PkpdError, match="hill"):
        demand_from_dict(data, file=f"{DEMAND}.toml")
    assert load_demand(DEMAND).assumed  # every assumed value is listed


def test_the_command_reports_the_pump_for_one_patient_and_compares_pumps(tmp_path):
    from click.testing import CliRunner

    from pkpd.cli import main

    png = tmp_path / "one.png"
    args = ["--weight", "70", "--until", "54h", "--seed", "2", "--plot", str(png)]
    r = CliRunner().invoke(main, ["simulate", SUF, "spine_fusion_sufentanil_pca", *args])
    assert r.exit_code == 0, r.output
    ds = pkpd.simulate(SUF, "spine_fusion_sufentanil_pca", {"weight": 70}, until="54 h", seed=2)
    a = ds.attrs
    assert (f"PCA pump 4-52 h: {a['pca_demands']} demands, {a['pca_deliveries']} delivered"
            in r.output)  # fmt: skip
    assert "not calibrated" in r.output and png.stat().st_size > 0
    longer = tmp_path / "longer.toml"
    text = Path(load_regimen("spine_fusion_sufentanil_pca").file).read_text()
    longer.write_text(text.replace('lockout = "8 min"', 'lockout = "20 min"').replace(
        'name = "spine_fusion_sufentanil_pca"', 'name = "lockout_20_min"'))  # fmt: skip
    r = CliRunner().invoke(main, ["compare", SUF, "spine_fusion_sufentanil_pca", str(longer),
                                  "0.5 ug/kg bolus at end_of_surgery", "--anchors-from",
                                  "spine_fusion_sufentanil_pca", "--population",
                                  "spine_fusion_china", "--patients", "300", "--until", "60h",
                                  "--at", "day1=end_of_surgery+24h"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = {line.split("  ")[0]: line for line in r.output.splitlines()}
    for label in ("PCA demands", "PCA demands refused in lockout",
                  "PCA amount delivered by day1 (mg)"):  # fmt: skip
        assert label in rows, r.output
        assert rows[label].rstrip().endswith("-")  # the regimen without a pump


def test_a_cohort_keeping_the_relief_output_has_each_patients_pain_and_its_bands():
    ds = _cohort("spine_fusion_sufentanil_pca", n=200, trajectories=["ce"])
    t, on = ds.time.values, ds.pca_start.values
    pain = ds.pain.values
    assert np.all(np.isnan(pain[t[None, :] < on[:, None]]))
    # At a grid time just after the start: the initial pain, relieved by the ce there.
    demand = load_demand(DEMAND)
    v = demand.values
    for p in range(0, 200, 37):
        j = int(np.searchsorted(t, on[p]))
        ce = float(ds.trajectory.sel(traj_output="ce").values[p, j]) * MG_L_PER_NG_ML
        p0, floor, g = ds.pca_pain_initial.values[p], v["pain_floor"], v["gamma"]
        base = floor + (p0 - floor) * 2 ** (-(t[j] - on[p]) / v["pain_half_life"])
        c50 = ds.pca_c50.values[p] * MG_L_PER_NG_ML
        relief = v["emax"] * ce**g / (c50**g + ce**g)
        assert pain[p, j] == pytest.approx(base * (1 - relief), rel=1e-5)
    med = ds.pain_band.sel(quantile=0.5).values
    late = t > on.max()
    np.testing.assert_allclose(med[late], np.median(pain[:, late], axis=0), rtol=1e-6)
    assert ds.pain.attrs["units"] == "NRS 0-10"


PCA_TEMPLATE = (
    "PCA sufentanil 4 ug/kg max 250 ug in 200 mL bolus {pca_bolus} lockout {lockout} "
    "background 1 mL/h from end_of_surgery until end_of_surgery + 48 h "
    "demand spine_fusion_sufentanil_demand"
)


def test_design_sweeps_pca_settings_on_the_same_patients(tmp_path):
    from pkpd.analysis.design import design

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = design(SUF, "spine_fusion_china", 200, 3, template=PCA_TEMPLATE,
                   variables={"pca_bolus": ["1 mL", "2 mL"], "lockout": ["5 min", "20 min"]},
                   anchors="spine_fusion_sufentanil_pca", until="56 h")  # fmt: skip
    assert g.regimen.dims == ("pca_bolus", "lockout")
    assert list(g.lockout.values) == ["5 min", "20 min"]
    assert "lockout 20 min" in str(g.regimen.sel(pca_bolus="2 mL", lockout="20 min").item())
    # A point is the cohort its regimen gives on the same patients: the shipped file (2 mL,
    # 8 min, the same events) with its lockout set to 20 min.
    text = Path(load_regimen("spine_fusion_sufentanil_pca").file).read_text()
    path = tmp_path / "lockout_20.toml"
    path.write_text(text.replace('lockout = "8 min"', 'lockout = "20 min"'))
    ds = _cohort(str(path), n=200, seed=3)
    point = g.sel(pca_bolus="2 mL", lockout="20 min")
    assert float(point.pca_dose_median) == float(np.median(ds.pca_dose.values))
    assert float(point.pca_demands_median) == float(np.median(ds.pca_demands.values))
    refused = g.pca_refused_lockout_median
    assert float(refused.sel(pca_bolus="1 mL", lockout="20 min")) >= float(
        refused.sel(pca_bolus="1 mL", lockout="5 min")
    )
    assert g.pca_dose_median.attrs["units"] == "mg"
    assert np.all(g.pca_dose_median.values > 0)


def test_the_design_command_takes_further_variables_and_prints_the_pumps_medians():
    from click.testing import CliRunner

    from pkpd.cli import main

    args = ["design", SUF, "--population", "spine_fusion_china", "--patients", "100",
            "--template", PCA_TEMPLATE, "--var", "pca_bolus=2 mL", "--var",
            "lockout=5 min,20 min", "--anchors-from", "spine_fusion_sufentanil_pca",
            "--until", "56h"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "grid: pca_bolus (1) x lockout (2) = 2 regimens" in r.output
    assert "PCA over the grid" in r.output
    assert "pca_bolus=2 mL, lockout=20 min" in r.output
    r = CliRunner().invoke(main, [*args[:-6], "--var", "lockout"])
    assert r.exit_code == 2 and "expected NAME=V1,V2" in r.output


def test_the_command_lists_and_shows_the_demand_models():
    from click.testing import CliRunner

    from pkpd.cli import main

    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0 and "PCA demand model" in r.output
    assert f"{DEMAND}  sufentanil  ce of gepts1995_sufentanil" in r.output
    r = CliRunner().invoke(main, ["models", "show", DEMAND])
    assert r.exit_code == 0, r.output
    assert "c50 = 0.024 ng/mL [assumed]" in r.output and "Lehmann" in r.output
