"""Metrics of one patient (issue 16): ``windows``, ``at`` and ``thresholds`` of
:func:`pkpd.simulate`, against mathematics and against a one-patient cohort.

The mathematics: a one-compartment model (``V``, ``k``) given an infusion at rate ``R``
from 0 to ``T`` h::

    C(t) = R / (k V) (1 - exp(-k t))              0 <= t <= T
    C(t) = C(T) exp(-k (t - T))                   t > T

so the AUC over ``[a, b]`` is the integral of these, the value at a time is exact, and the
time above a level ``L < C(T)`` runs from ``-ln(1 - L k V / R) / k`` to
``T + ln(C(T) / L) / k``.
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

NG = 1000.0  # ng/mL per mg/L
V, K, R, T = 20.0, 0.4, 30.0, 4.0  # L, 1/h, mg/h, h


def _c(t):
    t = np.asarray(t, dtype=float)
    up = R / (K * V) * (1.0 - np.exp(-K * np.minimum(t, T)))
    return np.where(t <= T, up, up * np.exp(-K * (t - T))) * NG


def _integral(a, b):
    """Integral of ``_c`` over ``[a, b]`` (ng*h/mL), piecewise closed form."""

    def prim(t):  # antiderivative of C on each piece, continuous at T
        css = R / (K * V) * NG
        if t <= T:
            return css * (t + np.expm1(-K * t) / K)
        cT = float(_c(T))
        return prim(T) + cT * (1.0 - np.exp(-K * (t - T))) / K

    return prim(b) - prim(a)


def test_one_compartment_closed_form():
    """AUC over windows (bounds off the grid), values at times off the grid and times
    above levels equal the closed form; AUC and values exactly (the solution is evaluated
    there), times above to the linear interpolation of crossings on a 1 min grid."""
    spec = mammillary(V1=V, k10=K)
    levels = [50.0, 150.0, 1000.0]  # C(T) is 1192 ng/mL
    ds = pkpd.simulate(
        spec,
        f"{R} mg/h from 0 h to {T} h",
        until="24 h",
        every="1 min",
        windows={"early": ("0.123 h", "2.345 h"), "across": ("3.3 h", "7.77 h")},
        at={"mid": "1.2345 h", "after": "9.876 h"},
        thresholds={"cp": [f"{x} ng/mL" for x in levels]},
    )
    auc = ds.auc.sel(output="cp")
    assert auc.sel(window="early") == pytest.approx(_integral(0.123, 2.345), rel=1e-9)
    assert auc.sel(window="across") == pytest.approx(_integral(3.3, 7.77), rel=1e-9)
    assert ds.auc.attrs["units"] == "ng*h/mL"
    cat = ds.c_at.sel(output="cp")
    assert cat.sel(at="mid") == pytest.approx(float(_c(1.2345)), rel=1e-10)
    assert cat.sel(at="after") == pytest.approx(float(_c(9.876)), rel=1e-10)
    assert ds.c_at.attrs["units"] == "ng/mL"
    assert list(ds.at_time.values) == [1.2345, 9.876]
    cT = float(_c(T))
    for i, L in enumerate(levels):
        want = T + np.log(cT / L) / K - (-np.log1p(-L / NG * K * V / R) / K)
        assert float(ds.time_above[i]) == pytest.approx(want, abs=2e-5)
    assert ds.time_above.attrs["units"] == "h"
    assert list(ds.threshold_level.values) == levels
    # The output grid itself is unchanged (the extra times are a second evaluation).
    assert ds.time.size == 24 * 60 + 1


def test_time_above_beyond_until_is_not_counted():
    """Time above covers the output times' span, as a cohort's: a level crossed after
    `until` counts up to `until` only."""
    spec = mammillary(V1=V, k10=K)
    ds = pkpd.simulate(
        spec, f"{R} mg/h from 0 h to {T} h", until="2 h", every="1 min",
        thresholds={"cp": ["50 ng/mL"]}, at={"late": "6 h"},
    )  # fmt: skip
    t1 = -np.log1p(-50.0 / NG * K * V / R) / K
    assert float(ds.time_above[0]) == pytest.approx(2.0 - t1, abs=2e-5)
    assert float(ds.c_at.sel(output="cp", at="late")) == pytest.approx(float(_c(6.0)), rel=1e-10)


@pytest.mark.parametrize("every", ["1 min", "7 min"])
def test_equals_one_patient_cohort(every):
    """The same regimen (bolus, infusions to and from a drawn end of surgery) and grid:
    every metric equals that of a one-patient cohort without variability."""
    reg = "lumbar_fusion_esketamine"
    windows = {
        "intraop": ("0 h", "end_of_surgery"),
        "postop": ("end_of_surgery", "end_of_surgery + 2.5 h"),
    }
    at = {"eos": "end_of_surgery", "eos1h": "end_of_surgery + 1h", "x": "0.1234 h"}
    thr = {"cp": ["40 ng/mL", "100 ng/mL"], "cp_norketamine": ["50 ng/mL"]}
    table = CovariateTable(covariates={"weight": np.full(1, 70.0)}, n=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PkpdWarning)
        coh = simulate_cohort(
            "fanta2015_otto2021", reg, table, seed=3, until="12 h", every=every,
            windows=windows, at=at, thresholds=thr, iiv=False, bands=False,
        )  # fmt: skip
    eos = float(coh.end_of_surgery.values[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PkpdWarning)
        one = pkpd.simulate(
            "fanta2015_otto2021", reg, covariates={"weight": 70.0}, until="12 h", every=every,
            anchors={"end_of_surgery": eos}, windows=windows, at=at, thresholds=thr,
        )  # fmt: skip
    assert list(one.window.values) == list(coh.window.values)
    assert list(one.threshold.values) == list(coh.threshold.values)
    np.testing.assert_allclose(one.auc.values, coh.auc.values[0], rtol=1e-9)
    np.testing.assert_allclose(one.c_at.values, coh.c_at.values[0], rtol=1e-9)
    np.testing.assert_allclose(one.time_above.values, coh.time_above.values[0], rtol=1e-9)
    assert one.time_above.values.min() > 0.01  # the levels are crossed, not trivial


def test_refused_with_the_option_named():
    spec = mammillary(V1=V, k10=K)
    with pytest.raises(PkpdError, match="end_of_surgery"):
        pkpd.simulate(spec, "30 mg/h from 0 h to 4 h", at={"x": "end_of_surgery"}, until="5 h")
    with pytest.raises(PkpdError, match="unknown output"):
        pkpd.simulate(spec, "30 mg/h from 0 h to 4 h", thresholds={"ce": ["1"]}, until="5 h")
    with pytest.raises(PkpdError, match="ends before it starts"):
        pkpd.simulate(spec, "30 mg/h from 0 h to 4 h", windows={"w": ("3h", "1h")}, until="5h")


def test_pd_variables_equal_one_patient_cohort():
    """A threshold on a PD variable (compared on its driving output at the level where
    the variable equals it), its value at a time and its AUC: as in a cohort."""
    reg = "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 2 h"
    kw = dict(
        until="6 h", every="5 min", pd=["simons2022_drug_high"],
        thresholds={"simons2022_drug_high_conc_over_c50": ["0.5"], "cp": ["80 ng/mL"]},
        at={"a": "1.1 h"}, windows={"w": ("0.2 h", "3 h")},
    )  # fmt: skip
    table = CovariateTable(covariates={"weight": np.full(1, 70.0)}, n=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PkpdWarning)
        one = pkpd.simulate("fanta2015_otto2021", reg, covariates={"weight": 70.0}, **kw)
        coh = simulate_cohort(
            "fanta2015_otto2021", reg, table, iiv=False, bands=False, **kw
        )  # fmt: skip
    assert list(one.output.values) == list(coh.output.values)
    assert list(one.threshold.values) == list(coh.threshold.values)
    np.testing.assert_allclose(one.time_above.values, coh.time_above.values[0], rtol=1e-9)
    np.testing.assert_allclose(one.c_at.values, coh.c_at.values[0], rtol=1e-9)
    np.testing.assert_allclose(one.auc.values, coh.auc.values[0], rtol=1e-9)  # NaN: not conc.
    assert one.time_above.values.min() > 0.1
