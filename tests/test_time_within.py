"""Time within a range (issue 16): ``ranges`` of :func:`pkpd.simulate` and
:func:`pkpd.simulate_cohort`, against the closed form of a one-compartment infusion.

A one-compartment model (``V``, ``k``) given an infusion at rate ``R`` from 0 to ``T`` h
rises as ``C(t) = R / (k V) (1 - exp(-k t))`` and then falls as
``C(T) exp(-k (t - T))``, so a level ``L < C(T)`` is crossed upwards at
``-ln(1 - L k V / R) / k`` and downwards at ``T + ln(C(T) / L) / k``: the time within
``[lo, hi]`` is the sum of the two stretches between the crossings of ``lo`` and ``hi``
(or the whole stretch above ``lo`` when ``hi`` is never reached). The package derives it
from two times above; the reference here uses the crossing times directly.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import mammillary

import pkpd
from pkpd.errors import PkpdError, PkpdWarning
from pkpd.inputs.population import CovariateTable
from pkpd.running.cohort import simulate_cohort

NG = 1000.0
V, K, R, T = 20.0, 0.4, 30.0, 4.0
UNTIL = 24.0  # C(T) = 2993 ng/mL


def _up(L):
    return -np.log1p(-L / NG * K * V / R) / K


def _down(L):
    cT = R / (K * V) * (1.0 - np.exp(-K * T)) * NG
    return T + np.log(cT / L) / K


def _within(lo, hi):
    """Closed-form time (h) with lo <= C <= hi over [0, UNTIL]."""
    cT = R / (K * V) * (1.0 - np.exp(-K * T)) * NG
    end = min(_down(lo), UNTIL)
    if hi >= cT:
        return end - _up(lo)
    return (_up(hi) - _up(lo)) + (end - _down(hi))


RANGES = {"cp": ["50..150 ng/mL", "100 ng/mL..0.5 mg/L", ("40 ng/mL", "5000 ng/mL")]}
BOUNDS = [(50.0, 150.0), (100.0, 500.0), (40.0, 5000.0)]


def test_one_patient_against_the_closed_form():
    spec = mammillary(V1=V, k10=K)
    ds = pkpd.simulate(
        spec, f"{R} mg/h from 0 h to {T} h", until=f"{UNTIL} h", every="1 min",
        ranges=RANGES, thresholds={"cp": ["40 ng/mL"]},
    )  # fmt: skip
    for i, (lo, hi) in enumerate(BOUNDS):
        assert float(ds.time_within[i]) == pytest.approx(_within(lo, hi), abs=3e-5), (lo, hi)
    # A high bound above the peak: within [lo, hi] is the time above lo.
    assert float(ds.time_within[2]) == pytest.approx(float(ds.time_above[0]), rel=1e-12)
    assert list(ds.range_low.values) == [b[0] for b in BOUNDS]
    assert list(ds.range_high.values) == [b[1] for b in BOUNDS]
    assert ds.range_low.attrs["units"] == "ng/mL" and ds.time_within.attrs["units"] == "h"
    assert list(ds.range_output.values) == ["cp"] * 3
    assert str(ds["range"].values[0]) == "cp within 50..150 ng/mL"
    lines = pkpd.running.simulate.metric_lines(ds)
    assert any(line.startswith("  time cp within 50..150 ng/mL: ") for line in lines)


def test_cohort_equals_one_patient_and_the_closed_form():
    """A cohort without variability: each patient's time within equals the closed form
    (kernel crossings on a 1-min grid) and the one-patient value on the same points."""
    spec = mammillary(V1=V, k10=K)
    table = CovariateTable(covariates={"weight": np.full(2, 70.0)}, n=2)
    reg = f"{R} mg/h from 0 h to {T} h"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PkpdWarning)
        coh = simulate_cohort(
            spec, reg, table, until=f"{UNTIL} h", every="1 min", ranges=RANGES,
            iiv=False, bands=False, progress=False,
        )  # fmt: skip
        one = pkpd.simulate(spec, reg, until=f"{UNTIL} h", every="1 min", ranges=RANGES)
    assert coh.time_within.dims == ("patient", "range")
    assert list(coh["range"].values) == list(one["range"].values)
    assert "time_above" not in coh  # the bounds are integrated, not reported
    for p in range(2):
        np.testing.assert_allclose(coh.time_within.values[p], one.time_within.values, rtol=1e-9)
        for i, (lo, hi) in enumerate(BOUNDS):
            assert coh.time_within.values[p, i] == pytest.approx(_within(lo, hi), abs=3e-5)


def test_ranges_and_thresholds_together_keep_their_columns():
    """Thresholds keep their own column order; a range over [lo, hi] equals the
    threshold lo minus the threshold hi of the same cohort (independent kernel columns)."""
    spec = mammillary(V1=V, k10=K)
    table = CovariateTable(covariates={"weight": np.full(1, 70.0)}, n=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PkpdWarning)
        coh = simulate_cohort(
            spec, f"{R} mg/h from 0 h to {T} h", table, until="12 h", every="7 min",
            thresholds={"cp": ["150 ng/mL", "50 ng/mL"]}, ranges={"cp": "50..150 ng/mL"},
            iiv=False, bands=False, progress=False,
        )  # fmt: skip
    above = coh.time_above.values[0]
    assert list(coh.threshold_level.values) == [150.0, 50.0]
    assert coh.time_within.values[0, 0] == pytest.approx(above[1] - above[0], rel=1e-12)


@pytest.mark.parametrize(
    "ranges,match",
    [
        ({"cp": "150..50 ng/mL"}, r"ranges\.cp.*low bound must be below"),
        ({"cp": "50 ng/mL"}, r"ranges\.cp.*LOW\.\.HIGH"),
        ({"ce": "50..150 ng/mL"}, r"`ranges`: unknown output 'ce'"),
        ({"cp": "50..150"}, r"ranges\.cp.*has no unit"),
    ],
)
def test_bad_ranges_are_refused_with_the_key_named(ranges, match):
    spec = mammillary(V1=V, k10=K)
    with pytest.raises(PkpdError, match=match):
        pkpd.simulate(spec, "30 mg/h from 0 h to 4 h", until="5 h", ranges=ranges)


def test_cli_range_for_one_patient_and_a_cohort(tmp_path):
    """`pkpd simulate --range`: printed, and stored with the numbers of the API."""
    from click.testing import CliRunner

    from pkpd.cli import main

    reg = "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h"
    runner = CliRunner()
    out = tmp_path / "one.nc"
    res = runner.invoke(
        main,
        ["-q", "simulate", "fanta2015_otto2021", reg, "--weight", "70", "--until", "12h",
         "--range", "cp=50..150ng/mL", "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PkpdWarning)
        api = pkpd.simulate(
            "fanta2015_otto2021", reg, {"weight": 70}, until="12h",
            ranges={"cp": ["50..150 ng/mL"]},
        )  # fmt: skip
    v = float(api.time_within[0])
    assert 0.5 < v < 12.0
    assert f"time cp within 50..150 ng/mL: {v:.4g} h" in res.output
    import xarray as xr

    with xr.open_dataset(out) as ds:
        assert float(ds.time_within[0]) == pytest.approx(v, rel=1e-12)
    res = runner.invoke(
        main,
        ["-q", "simulate", "fanta2015_otto2021", reg, "--patients", "40", "--population",
         "healthy_volunteers", "--until", "12h", "--range", "cp=50..150ng/mL", "--no-bands"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "time cp within 50..150 ng/mL: median " in res.output
    res = runner.invoke(
        main, ["simulate", "fanta2015_otto2021", reg, "--weight", "70", "--range", "cp=50"]
    )
    assert res.exit_code == 2 and "--range" in res.output and "LOW..HIGH" in res.output


def test_metrics_time_within_on_stored_trajectories_and_in_a_window():
    """pkpd.metrics.time_within: on a cohort's stored trajectories (dose events on the
    grid) it equals the kernel's time_within; in a window it equals the closed form of
    the stretches inside the window."""
    spec = mammillary(V1=V, k10=K)
    table = CovariateTable(covariates={"weight": np.full(2, 70.0)}, n=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PkpdWarning)
        coh = simulate_cohort(
            spec, f"{R} mg/h from 0 h to {T} h", table, until=f"{UNTIL} h", every="1 min",
            ranges=RANGES, trajectories=True, trajectory_dtype="float64", iiv=False,
            bands=False, progress=False,
        )  # fmt: skip
    got = pkpd.metrics.time_within(coh, RANGES)
    assert got.dims == ("patient", "range")
    assert list(got["range"].values) == list(coh["range"].values)
    np.testing.assert_allclose(got.values, coh.time_within.values, rtol=1e-9, atol=1e-12)
    # A window cutting the rising and the falling stretch of [50, 150].
    a, b = 0.05, 13.0  # inside both stretches: 50 at 0.034, 14.2 h; 150 at 0.102, 11.5 h
    w = pkpd.metrics.time_within(coh, {"cp": "50..150 ng/mL"}, window=(a, b))
    ref = (_up(150.0) - a) + (b - _down(150.0))
    assert _up(50.0) < a < _up(150.0) and _down(150.0) < b < _down(50.0)
    np.testing.assert_allclose(w.values[:, 0], ref, atol=3e-5)
    with pytest.raises(PkpdError, match=r"ranges\.cp.*low bound"):
        pkpd.metrics.time_within(coh, {"cp": "150..50 ng/mL"})


def test_pta_of_a_two_sided_target():
    """A target 'cp within LOW..HIGH': with HIGH above every concentration it is the
    one-sided target 'cp >= LOW' (kernel and trajectory paths), and its attainment in a
    window equals an independent count on a 50-times finer interpolation of the stored
    trajectories."""
    from pkpd.analysis.design import parse_target
    from pkpd.analysis.exposure import pta

    reg = "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h"
    tgt = parse_target("cp within 50..150 ng/mL for 40%")
    assert tgt["at_most"] == "150 ng/mL"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PkpdWarning)
        ds = simulate_cohort(
            "fanta2015_otto2021", reg, "healthy_volunteers", 60, seed=2, until="12 h",
            every="5 min", thresholds={"cp": ["50 ng/mL"]},
            ranges={"cp": ["50..150 ng/mL", "50..1000000 ng/mL"]}, trajectories=["cp"],
            trajectory_dtype="float64", bands=False, progress=False,
        )  # fmt: skip
    one = pta(ds, parse_target("cp >= 50 ng/mL for 40%"))
    wide = pta(ds, parse_target("cp within 50..1000000 ng/mL for 40%"))
    assert "time_within" in wide.pta.attrs["source"]
    np.testing.assert_array_equal(one.attained.values, wide.attained.values)
    two = pta(ds, tgt)
    assert 0.0 < float(two.pta) < float(one.pta) <= 1.0  # the high bound binds
    w1 = pta(ds, parse_target("cp >= 50 ng/mL for 40% of 0.5 h..8 h"))
    w2 = pta(ds, parse_target("cp within 50..1000000 ng/mL for 40% of 0.5 h..8 h"))
    np.testing.assert_array_equal(w1.attained.values, w2.attained.values)
    got = pta(ds, parse_target("cp within 50..150 ng/mL for 80% of 0.5 h..8 h"))
    # Independent: the linear interpolant of each stored trajectory sampled 50 times finer.
    t = ds.time.values
    tf = np.linspace(0.5, 8.0, (t.size - 1) * 50 + 1)
    checked = 0
    for i in range(ds.sizes["patient"]):
        c = np.interp(tf, t, ds.trajectory.sel(traj_output="cp").values[i])
        mid = (c[:-1] + c[1:]) / 2
        frac = np.mean((mid >= 50.0) & (mid <= 150.0))
        if abs(frac - 0.8) > 0.01:  # not at the cut-off within the sampling error
            assert bool(got.attained.values[i]) == (frac >= 0.8), i
            checked += 1
    assert checked > 40 and 0.0 < float(got.pta) < 1.0


def test_compare_range_equals_the_cohort():
    """`pkpd compare --range`: the per-patient time within of one regimen equals that of
    simulate_cohort with the same model, population, seed and grid."""
    from click.testing import CliRunner

    from pkpd.analysis import design
    from pkpd.cli import main

    reg = "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PkpdWarning)
        cds = design.compare(
            "fanta2015_otto2021", [reg], "healthy_volunteers", 50, seed=4, until="12 h",
            ranges={"cp": ["50..150 ng/mL"]}, bands=False,
        )  # fmt: skip
        coh = simulate_cohort(
            "fanta2015_otto2021", reg, "healthy_volunteers", 50, seed=4, until="12 h",
            every="5 min", ranges={"cp": ["50..150 ng/mL"]}, bands=False, progress=False,
        )  # fmt: skip
    np.testing.assert_allclose(
        cds.time_within_patient.values[0, :, 0], coh.time_within.values[:, 0], rtol=1e-12
    )
    res = CliRunner().invoke(
        main,
        ["-q", "compare", "fanta2015_otto2021", reg, "--population", "healthy_volunteers",
         "--patients", "50", "--seed", "4", "--until", "12h", "--range", "cp=50..150ng/mL"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "time cp within 50..150 ng/mL (h)" in res.output
