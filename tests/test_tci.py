"""Target-controlled infusion: the pump's rates against the mathematics of its rules.

The concentrations are computed here independently of the engine (scipy's expm on the
augmented matrix, interval by interval, on a 1-s grid) from the pump's rates. On the typical
patient (the pump's own model) the plasma rule must put the concentration on target at every
update time, reach it as fast as the maximum rate allows and hold it; the effect-site rule
must reach the target without overshoot. The Varvel metrics are checked on a hand-computed
case and on a cohort whose patients are the pump's model (all zero).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg

import pkpd
from pkpd.analysis.tci_performance import performance, varvel
from pkpd.errors import RegimenError
from pkpd.inputs.model import load_model
from pkpd.inputs.regimen import Regimen, load_regimen
from pkpd.inputs.tci import TCI, Target, parse_tci
from pkpd.inputs.units import parse_quantity
from pkpd.running.tci import event_arrays, pump_schedule

SUF = "gepts1995_sufentanil"
DT = 10 / 3600


def conc(text):
    return parse_quantity(text, "concentration")


def rate(text):
    return parse_quantity(text, "rate", allow_per_kg=True)


def tci(site, targets, stop=2.0, max_rate="6 mg/h", model=SUF, update=DT):
    return TCI(model, site, tuple(Target(conc(c), t) for c, t in targets), stop, rate(max_rate),
               update=update)  # fmt: skip


def exact_curve(model, t_ev, r_ev, t_out, row):
    """The output `row` (0 plasma, 1 effect site) at `t_out` under the piecewise-constant
    rates, from scipy's expm (independent of pkpd's engine)."""
    spec = load_model(model)
    M, b, C = spec.system(spec.typical_theta())
    nc = spec.n_comp
    A = np.zeros((nc + 1, nc + 1))
    A[:nc, :nc], A[:nc, nc] = M[:nc, :nc], b[:nc]
    x = np.zeros(nc + 1)
    out = np.empty(t_out.size)
    t = t_ev[0]
    k = 0
    for i, to in enumerate(t_out):
        while k < t_ev.size and t_ev[k] <= to:
            x = scipy.linalg.expm(A * (t_ev[k] - t)) @ x
            t = t_ev[k]
            x[nc] = r_ev[k]
            k += 1
        y = scipy.linalg.expm(A * (to - t)) @ x
        out[i] = C[row] @ y[:nc]
    return out


def schedule(p):
    t, r, pred = pump_schedule(p, {}, np.array([70.0]))
    return t[0], r[0], pred[0]


def test_plasma_rule_puts_the_pump_model_on_target_at_every_update_and_holds_it():
    p = tci("plasma", [("0.5 ng/mL", 0.0), ("0.8 ng/mL", 1.0)])
    t, r, pred = schedule(p)
    cp = exact_curve(SUF, t, r, t[:-1], 0)
    assert np.allclose(pred[:-1], cp, rtol=1e-10, atol=1e-15)  # the pump's own prediction
    target = np.where(t[:-1] < 1.0, 0.5e-3, 0.8e-3)
    reached = (r[:-1] < 6.0) & (t[:-1] > 0) & (np.abs(t[:-1] - 1.0) > DT)
    # Unclipped updates end exactly on target (checked at the next update time).
    nxt = np.flatnonzero(reached) + 1
    nxt = nxt[nxt < cp.size]
    assert np.allclose(cp[nxt], target[nxt - 1], rtol=1e-9)
    # Between updates: within 0.1 % of the target once it is reached, never above it.
    fine = np.arange(0, 2 * 3600) / 3600.0
    c = exact_curve(SUF, t, r, fine, 0)
    tgt = np.where(fine < 1.0, 0.5e-3, 0.8e-3)
    assert np.all(c <= tgt * (1 + 1e-9))
    settled = ((fine > 60 / 3600) & (fine < 1.0)) | (fine > 1.0 + 60 / 3600)
    assert np.max(np.abs(c[settled] / tgt[settled] - 1)) < 1e-3


def test_the_target_is_reached_as_fast_as_the_maximum_rate_allows():
    """Plasma rule: the time to reach the target is that of the maximum rate run
    constantly, to within one update interval; every rate before it is the maximum."""
    p = tci("plasma", [("1.5 ng/mL", 0.0)], max_rate="1.5 mg/h")
    t, r, _ = schedule(p)
    fine = np.arange(0, 3600) / 3600.0
    c_tci = exact_curve(SUF, t, r, fine, 0)
    c_max = exact_curve(SUF, np.array([0.0]), np.array([1.5]), fine, 0)
    t_max = fine[np.argmax(c_max >= 1.5e-3)]
    t_tci = fine[np.argmax(c_tci >= 1.5e-3 * (1 - 1e-9))]
    assert t_max > 5 * DT  # the limit matters here
    assert t_max <= t_tci <= t_max + DT
    k = int(np.argmax(t >= t_max - DT))
    assert np.all(r[:k] == 1.5)


def test_effect_site_rule_reaches_the_target_without_overshoot_then_holds_it():
    p = tci("effect", [("0.4 ng/mL", 0.0), ("0.6 ng/mL", 1.0)], stop=2.0)
    t, r, _ = schedule(p)
    fine = np.arange(0, 2 * 3600) / 3600.0
    ce = exact_curve(SUF, t, r, fine, 1)
    tgt = np.where(fine < 1.0, 0.4e-3, 0.6e-3)
    # No overshoot (second order in the 2.5-s look-ahead sub-step: measured 5e-6).
    assert np.max(ce / tgt) - 1 < 2e-5
    # Reached at the time of peak effect after loading, then held within 0.1 %.
    first = fine[np.argmax(ce >= 0.4e-3 * (1 - 1e-3))]
    assert 3 / 60 < first < 8 / 60  # Gepts with ke0 0.176/min: peak effect 5.6 min
    settled = ((fine > first) & (fine < 1.0)) | (fine > 1.0 + 10 / 60)
    assert np.max(np.abs(ce[settled] / tgt[settled] - 1)) < 1e-3
    # Faster at the effect site than plasma targeting of the same concentration.
    tp, rp, _ = schedule(tci("plasma", [("0.4 ng/mL", 0.0)], stop=2.0))
    ce_plasma = exact_curve(SUF, tp, rp, fine, 1)
    assert fine[np.argmax(ce_plasma >= 0.4e-3 * (1 - 1e-3))] > 3 * first


def test_rates_stay_within_the_pump_and_per_kg_limits():
    p = tci("effect", [("2 ng/mL", 0.0)], max_rate="20 ug/kg/h")
    _t, r, _ = pump_schedule(p, {}, np.array([50.0, 100.0]))
    assert np.all(r >= 0)
    assert r[0].max() == pytest.approx(1.0) and r[1].max() == pytest.approx(2.0)
    assert np.all(r[0] <= 1.0) and np.all(r[1] <= 2.0)


def test_a_pump_with_no_covariates_gives_every_patient_the_same_rates():
    p = tci("plasma", [("0.5 ng/mL", 0.0)])
    _t, r, _ = pump_schedule(p, {"age": np.array([30.0, 60.0, 45.0])}, np.full(3, 70.0))
    assert np.array_equal(r[0], r[1]) and np.array_equal(r[0], r[2])


def test_regimen_doses_and_the_pump_add_up():
    reg = Regimen.parse("1 ug bolus at 0 h; TCI plasma 0.5 ng/mL at 0 h until 1 h using "
                        "gepts1995_sufentanil max 6 mg/h")  # fmt: skip
    t, r, b = event_arrays(reg, np.array([70.0]))
    tp, rp, _ = pump_schedule(reg.tci, {}, np.array([70.0]))
    assert b.sum() == pytest.approx(1e-3)
    given = np.sum(r[0, :-1] * np.diff(t[0]))
    pumped = np.sum(rp[0, :-1] * np.diff(tp[0]))
    assert given == pytest.approx(pumped, rel=1e-12)
    with pytest.raises(RegimenError, match=r"\[tci\] pump"):
        reg.event_arrays(np.array([70.0]))


def test_one_line_form_round_trips_and_bad_settings_are_refused():
    reg = load_regimen("sufentanil_effect_tci")
    again = Regimen.parse(reg.text)
    assert again.tci == reg.tci and again.text == reg.text
    base = "TCI effect 0.4 ng/mL at 0 h until 2 h using gepts1995_sufentanil max 6 mg/h"
    for bad, match in [
        (base.replace("effect", "brain"), "site 'brain'"),
        (base + " every 0 s", "update interval 0 s"),
        (base.replace("max 6 mg/h", "max 0 mg/h"), "max_rate '0 mg/h' must be > 0"),
        (base.replace("until 2 h", "until 0 h"), "not after its first target"),
        (base.replace("0.4 ng/mL at 0 h", "0.4 ng/mL at 1 h, 0.2 ng/mL at 0.5 h"), "time order"),
        (base.replace("0.4 ng/mL", "-0.4 ng/mL"), "negative"),
        ("TCI effect 0.4 ng/mL until 2 h using x max 1 mg/h", "'<concentration> at <time>'"),
    ]:
        with pytest.raises(RegimenError, match=match):
            parse_tci(bad)


def test_regimen_file_errors_name_the_key(tmp_path):
    f = tmp_path / "r.toml"
    head = '[tci]\nmodel = "gepts1995_sufentanil"\nsite = "effect"\n'
    target = '[[tci.target]]\nat = "0 h"\nconcentration = "0.4 ng/mL"\n'
    f.write_text(head + 'max_rate = "6 mg"\nstop = "2 h"\n' + target)
    with pytest.raises(RegimenError, match=r"r\.toml.*tci\.max_rate"):
        load_regimen(str(f))
    f.write_text(head + 'max_rate = "6 mg/h"\nstop = "end"\n' + target)
    with pytest.raises(RegimenError, match=r"tci\.stop.*neither a time"):
        load_regimen(str(f))


def test_a_pump_must_run_a_linear_model_of_the_patients_drug_with_the_targeted_site():
    with pytest.raises(RegimenError, match="a pump delivers the drug of its own model"):
        pkpd.simulate("fanta2015_otto2021", load_regimen("sufentanil_effect_tci"),
                      {"weight": 70, "age": 40})  # fmt: skip
    effect_without_site = tci("effect", [("100 ng/mL", 0.0)], model="fanta2015_otto2021")
    with pytest.raises(RegimenError, match="has no effect site linked to its dosing compartment"):
        pump_schedule(effect_without_site, {"weight": np.array([70.0])}, np.array([70.0]))


def test_varvel_metrics_on_a_hand_computed_case():
    """PE = 10, -10, 5, 0 % at 0..3 h: MDPE 2.5, MDAPE 7.5, wobble median(7.5, 12.5, 2.5,
    2.5) = 5, divergence = slope of (10, 10, 5, 0) on (0, 1, 2, 3) = -17.5 / 5 = -3.5 %/h."""
    m = varvel(np.array([[110.0, 90.0, 105.0, 100.0]]), np.full(4, 100.0), np.arange(4.0))
    assert m["mdpe"][0] == pytest.approx(2.5)
    assert m["mdape"][0] == pytest.approx(7.5)
    assert m["wobble"][0] == pytest.approx(5.0)
    assert m["divergence"][0] == pytest.approx(-3.5)
    # Samples with no positive prediction are left out.
    m = varvel(np.array([[1.0, 110.0]]), np.array([0.0, 100.0]), np.array([0.0, 1.0]))
    assert m["n_samples"][0] == 1 and m["mdpe"][0] == pytest.approx(10.0)
    assert np.isnan(m["divergence"][0])


def _cohort(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pkpd.simulate_cohort(
            "fanta2015_otto2021",
            "TCI plasma 150 ng/mL at 0 h until 2 h using fanta2015_otto2021 max 1 mg/kg/min",
            "spine_fusion_china", n=40, seed=5, until="2 h", every="5 min",
            trajectories=["cp"], progress=False, bands=False, **kw,
        )  # fmt: skip


def test_cohort_under_tci_reports_the_pump_models_performance():
    measured, predicted = _cohort(), _cohort(iiv=False)
    # The pump's prediction is its own model on target.
    cp = predicted["trajectory"].sel(traj_output="cp").values
    assert np.allclose(cp[:, predicted.time.values >= 0.25], 150.0, rtol=1e-6)
    perf = performance(measured, predicted, "cp", start=0.25)
    assert perf["mdape"].min() > 0 and np.isfinite(perf["divergence"]).all()
    same = performance(predicted, predicted, "cp", start=0.25)
    for k in ("mdpe", "mdape", "wobble", "divergence"):
        assert np.all(same[k].values == 0.0)
    with pytest.raises(pkpd.PkpdError, match="no stored trajectory"):
        performance(measured.drop_vars("trajectory"), predicted, "cp")


def test_one_patient_reports_the_pump_rate_in_mg_and_ml_per_hour():
    ds = pkpd.simulate(SUF, "sufentanil_effect_tci", {"age": 50}, times=np.arange(0, 301) / 60.0)
    t, r, _ = pump_schedule(load_regimen("sufentanil_effect_tci").resolve().tci, {"age": 50},
                            np.array([np.nan]))  # fmt: skip
    k = np.searchsorted(t[0], ds.time.values, side="right") - 1
    assert np.array_equal(ds.pump_rate.values, r[0][k])
    assert ds.pump_rate.attrs["units"] == "mg/h" and ds.pump_rate_ml.attrs["units"] == "mL/h"
    # 5 ug/mL in the syringe: 1 mg/h is 200 mL/h.
    assert np.allclose(ds.pump_rate_ml.values, ds.pump_rate.values * 200.0, rtol=1e-14)
    assert ds.pump_rate.values.max() <= 6.0


def test_the_memory_estimate_counts_the_pumps_event_tables():
    from pkpd.running.cohort import simulate_cohort
    from pkpd.running.tci import event_bytes

    reg = load_regimen("sufentanil_effect_tci")
    # 4 h of 10-s updates (the declared end of surgery), 3 tables of 3 float64 arrays.
    assert event_bytes(reg) == int(1.5 * 9 * 8 * (4 * 360 + 2))
    kw = dict(estimate_only=True, chunk_size=8192)
    pump = simulate_cohort(SUF, reg, "healthy_volunteers", 100_000, **kw)
    bolus = simulate_cohort(SUF, "1 ug/kg bolus at 0 h", "healthy_volunteers", 100_000,
                            until="28 h", **kw)  # fmt: skip
    assert pump["chunk"] - bolus["chunk"] >= 8192 * event_bytes(reg)


def test_compare_counts_the_pumps_delivered_amount_as_the_dose():
    """`compare` rebuilds each patient's doses from the cohort: under a TCI pump they are
    the pump's rates at the patient's covariates (before, compare refused a pump)."""
    from pkpd.analysis.design import compare

    reg = "TCI plasma 150 ng/mL at 0 h until 2 h using fanta2015_otto2021 max 1 mg/kg/min"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cds = compare("fanta2015_otto2021", [reg, "1 mg/kg bolus at 0 h"], "spine_fusion_china",
                      30, seed=2, until="3 h")  # fmt: skip
    w = cds["weight"].values if "weight" in cds else None
    assert w is not None
    t, r, _ = pump_schedule(load_regimen(reg).tci, {"weight": w}, w)
    expected = np.sum(r[:, :-1] * np.diff(t, axis=1), axis=1)
    got = cds.dose_patient.isel(regimen=0).values
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(cds.dose_patient.isel(regimen=1).values, w, rtol=1e-12)


def test_design_sweeps_tci_targets_and_the_dose_scales_with_the_target():
    """A plasma pump's rates are linear in its target while under its maximum rate (high
    here: 1 mg/kg/min caps the loading of the Fanta model at these targets): the
    mean dose at 150 ng/mL is 1.5 times that at 100 ng/mL (on the same patients)."""
    from pkpd.analysis.design import design

    tpl = "TCI plasma {target} at 0 h until 3 h using fanta2015_otto2021 max 20 mg/kg/min"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = design("fanta2015_otto2021", "spine_fusion_china", 40, 1, template=tpl,
                   variables={"target": ["100 ng/mL", "150 ng/mL"]}, until="4 h")  # fmt: skip
    dose = g.total_dose.values
    assert g.regimen.dims == ("target",)
    assert dose[1] / dose[0] == pytest.approx(1.5, rel=1e-9)
