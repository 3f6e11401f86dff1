"""The instantaneous-bolus mixing peak: flagged where Cmax is that jump, and boluses that can
be given over their injection time instead (issue 14)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner

import pkpd
from pkpd.cli import main
from pkpd.errors import RegimenError
from pkpd.inputs.regimen import with_bolus_duration

MODEL = "fanta2015_otto2021"


def _cohort(regimen, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pkpd.CovariateRangeWarning)
        return pkpd.simulate_cohort(
            MODEL, regimen, "spine_fusion_china", n=200, seed=2, every="5 min", until="6 h",
            bands=False, progress=False, **kw,
        )  # fmt: skip


def test_with_bolus_duration_spreads_only_instantaneous_boluses():
    r = with_bolus_duration(
        "0.5 mg/kg bolus at 0 h; 2 mg bolus at 1 h over 5 min; 0.1 mg/kg/h from 0 h to 3 h", 1 / 60
    )
    assert [getattr(d, "duration", None) for d in r.doses] == [1 / 60, 5 / 60, None]
    assert r.text.startswith("0.5 mg/kg bolus at 0 h over 1 min; 2 mg bolus at 1 h over 5 min")
    again = pkpd.load_regimen(r.text)  # the text reads back to the same durations
    durations = [getattr(d, "duration", None) for d in again.doses]
    assert durations[:2] == pytest.approx([1 / 60, 5 / 60]) and durations[2] is None
    for bad in (0, -1.0, "1 min", True):
        with pytest.raises(RegimenError, match="positive number of hours"):
            with_bolus_duration("1 mg bolus at 0 h", bad)


def test_cohort_flags_cmax_at_the_bolus_jump_and_not_after_an_injection_time():
    ds = _cohort("0.5 mg/kg bolus at 0 h")
    flag = ds.cmax_at_bolus
    assert flag.dims == ("patient", "output") and flag.dtype == bool
    # cp is the dosing compartment's concentration: its peak is the jump dose / V1, exactly
    assert flag.sel(output="cp").values.all()
    dose_mg = 0.5 * ds.weight.values
    np.testing.assert_allclose(
        ds.cmax.sel(output="cp").values, dose_mg / ds.param_V1.values * 1000.0, rtol=1e-12
    )
    np.testing.assert_array_equal(ds.tmax.sel(output="cp").values, 0.0)
    assert not flag.sel(output="cp_norketamine").values.any()  # a metabolite never jumps
    # given over 1 min the peak is at the end of the injection and below dose / V1
    slow = _cohort("0.5 mg/kg bolus at 0 h over 1 min")
    assert not slow.cmax_at_bolus.values.any()
    assert np.all(slow.cmax.sel(output="cp").values < ds.cmax.sel(output="cp").values)
    # an infusion peak is never flagged; a later bolus under the infusion is when it is the max
    mixed = _cohort("0.05 mg/kg/h from 0 h to 4 h; 0.5 mg/kg bolus at 2 h")
    np.testing.assert_array_equal(mixed.tmax.sel(output="cp").values, 2.0)
    assert mixed.cmax_at_bolus.sel(output="cp").values.all()
    inf = _cohort("0.5 mg/kg/h from 0 h to 4 h")
    assert not inf.cmax_at_bolus.values.any()


def test_the_command_says_so_and_bolus_over_removes_it():
    base = ["simulate", MODEL, "0.5 mg/kg bolus at 0 h", "--patients", "200", "--population",
            "spine_fusion_china", "--no-bands", "--until", "6h"]  # fmt: skip
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 0, r.output
    assert "note: for 100% of patients this Cmax is the instantaneous-bolus mixing peak" in r.output
    r = CliRunner().invoke(main, [*base, "--bolus-over", "1min"])
    assert r.exit_code == 0, r.output
    assert "mixing peak" not in r.output and "bolus at 0 h over 1 min" in r.output
    r = CliRunner().invoke(main, [*base, "--bolus-over", "1 kg"])
    assert r.exit_code == 2 and "--bolus-over" in r.output and "1 kg" in r.output


def test_one_patient_summary_says_when_cmax_is_the_bolus_jump():
    base = ["simulate", "domino_racemic", "0.5 mg/kg bolus at 0 h", "--weight", "85"]
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    i = next(k for k, s in enumerate(lines) if s.strip().startswith("cp: Cmax"))
    # 0.5 mg/kg x 85 kg into Domino's V1 = dose / V1: the jump, and the note right under it
    assert "at 0 h" in lines[i] and "instantaneous-bolus mixing peak" in lines[i + 1]
    assert not any("mixing peak" in s for s in lines[i + 2 :])  # ce is continuous
    r = CliRunner().invoke(main, [*base, "--bolus-over", "1min"])
    assert r.exit_code == 0 and "mixing peak" not in r.output
