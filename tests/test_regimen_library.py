"""The shipped regimen library (models/regimens): loading, doses by hand, limits, CLI.

The expected totals are computed here by hand from the numbers written in each file (a
70 kg patient, named events at their declared defaults), not copied from program output.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import pkpd
from pkpd.cli import main
from pkpd.inputs.regimen import Bolus, Infusion, available_regimens, regimens_dir

W = 70.0  # kg

# name -> (total dose in mg for 70 kg, hand computation, model to run it with)
LIBRARY = {
    # 1.5 mg/kg over 4 h
    "fibromyalgia_ketamine_nct06916403_low": (1.5 * W, "domino_racemic"),
    # 2 mg/kg over 3 h
    "fibromyalgia_ketamine_nct06916403_high": (2.0 * W, "domino_racemic"),
    # 3 sessions x 0.4 mg/kg
    "fibromyalgia_esketamine_high": (3 * 0.4 * W, "fanta2015_otto2021"),
    # 0.35 mg/kg bolus + 1 mg/kg/h x 4 h (end_of_surgery default 4 h)
    "asra_acute_pain_limits": (0.35 * W + 1.0 * 4 * W, "domino_racemic"),
    # 22 mg/h x 96 h (fixed dose)
    "asra_crps_22mg_h_4days": (22.0 * 96, "domino_racemic"),
    # 10 days x 4 h x 0.35 mg/kg/h
    "asra_crps_035mgkg_h_4h_10days": (10 * 4 * 0.35 * W, "domino_racemic"),
    # 0.2 mg/kg + 0.125 mg/kg/h x 4 h + 0.02 mg/kg/h x 48 h
    "lumbar_fusion_esketamine": (0.2 * W + 0.125 * 4 * W + 0.02 * 48 * W, "fanta2015_otto2021"),
    # 0.5 mg/kg + 0.25 mg/kg/h x 4 h
    "lumbar_fusion_esketamine_high": (0.5 * W + 0.25 * 4 * W, "fanta2015_otto2021"),
}


def test_library_is_shipped():
    missing = set(LIBRARY) - set(available_regimens())
    assert not missing, f"regimens not shipped: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(available_regimens()))
def test_every_shipped_regimen_loads_with_provenance(name):
    reg = pkpd.load_regimen(name)
    assert reg.name == name, "the [regimen] name must equal the file name"
    assert reg.source.strip() and reg.description.strip()
    # Every anchor has its source stated (an illustrative one says so).
    for a in reg.anchors:
        assert a.source.strip(), f"anchor {a.name} of {name} has no source"


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_choices_are_labelled(name):
    # Each of these files picks values inside a range or a duration the source does not
    # give: it must say so explicitly.
    text = (regimens_dir() / f"{name}.toml").read_text().lower()
    assert "representative" in text or "illustrative" in text


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_total_dose_for_70_kg(name):
    expected, _ = LIBRARY[name]
    ev = pkpd.load_regimen(name).event_table(W)
    assert ev.total_dose == pytest.approx(expected, rel=1e-12)


def test_nct06916403_pair_brackets_the_registered_range():
    low = pkpd.load_regimen("fibromyalgia_ketamine_nct06916403_low").event_table(W)
    high = pkpd.load_regimen("fibromyalgia_ketamine_nct06916403_high").event_table(W)
    for ev in (low, high):
        total_per_kg = ev.total_dose / W
        duration = ev.t[-1] - ev.t[0]
        assert 1.5 <= total_per_kg <= 2.0  # registered 1.5-2 mg/kg
        assert 3.0 <= duration <= 4.0  # registered 3-4 h
    # low has the lowest rate of the range (1.5/4), high the highest (2/3) mg/kg/h
    assert low.rate.max() / W == pytest.approx(1.5 / 4)
    assert high.rate.max() / W == pytest.approx(2.0 / 3)


@pytest.mark.parametrize("weight", [50.0, 70.0, 123.4])
def test_asra_acute_pain_regimen_is_at_and_not_above_the_limits(weight):
    reg = pkpd.load_regimen("asra_acute_pain_limits")
    boluses = [d for d in reg.doses if isinstance(d, Bolus)]
    assert boluses and all(b.amount.per_kg for b in boluses)
    assert max(b.amount.value for b in boluses) == pytest.approx(0.35)  # mg/kg, at the limit
    assert all(b.amount.value <= 0.35 + 1e-12 for b in boluses)
    for anchors in (None, {"end_of_surgery": 1.0}, {"end_of_surgery": 9.0}):
        ev = reg.event_table(weight, anchors)
        # Total rate at any time (overlapping infusions add up), per kg.
        assert ev.rate.max() / weight <= 1.0 + 1e-12
        assert ev.rate.max() / weight == pytest.approx(1.0)  # at the limit
        # No bolus larger than 0.35 mg/kg at any event time (coinciding boluses add up).
        assert ev.bolus.max() / weight <= 0.35 + 1e-12


def test_crps_daily_sessions_are_24_h_apart():
    reg = pkpd.load_regimen("asra_crps_035mgkg_h_4h_10days")
    infs = [d for d in reg.doses if isinstance(d, Infusion)]
    assert [d.start for d in infs] == [24.0 * k for k in range(10)]
    assert all(d.stop - d.start == 4.0 for d in infs)


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_simulate_from_the_cli(name):
    expected, model = LIBRARY[name]
    r = CliRunner().invoke(main, ["simulate", model, name, "--weight", "70", "--every", "10 min"])
    assert r.exit_code == 0, r.output
    assert f"total dose given: {expected:.4g} mg" in r.output
