"""Property tests: invariants of linear PK that must hold for any model and regimen."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pkpd
from pkpd.testing.strategies import mammillary_models, regimen_texts

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T = np.linspace(0.0, 48.0, 97)


def _body(spec, ds, analyte):
    return sum(
        ds[f"amount_{c.name}"].values
        for c in spec.compartments.values()
        if c.analyte == analyte and c.type != "effect"
    )


@SETTINGS
@given(mammillary_models(), regimen_texts())
def test_mass_balance_and_nonnegativity(spec, text):
    ds = pkpd.simulate(spec, text, times=T)
    given_ = ds.dose_given.values
    scale = max(given_.max(), 1e-300)
    resid = given_ - _body(spec, ds, "drug") - ds.eliminated_drug.values
    assert np.max(np.abs(resid)) <= 1e-9 * scale
    for v in spec.output_names:
        assert np.all(ds[v].values >= -1e-9 * max(ds[v].values.max(), 1e-300))
    assert np.all(np.diff(ds.dose_given.values) >= -1e-12 * scale)
    reg = pkpd.load_regimen(text)
    ev = reg.event_table()
    expected = ev.total_dose if ev.t[-1] <= T[-1] else None
    if expected is not None:
        assert given_[-1] == np.float64(given_[-1])
        assert abs(given_[-1] - expected) <= 1e-11 * max(expected, 1.0)


@SETTINGS
@given(mammillary_models(), regimen_texts(), regimen_texts())
def test_superposition(spec, a, b):
    ra = pkpd.simulate(spec, a, times=T)
    rb = pkpd.simulate(spec, b, times=T)
    rab = pkpd.simulate(spec, f"{a}; {b}", times=T)
    for v in spec.output_names:
        ref = ra[v].values + rb[v].values
        np.testing.assert_allclose(
            rab[v].values, ref, rtol=1e-9, atol=1e-9 * max(ref.max(), 1e-300)
        )


@SETTINGS
@given(mammillary_models(), regimen_texts(max_doses=3), st.floats(0.5, 10.0))
def test_time_shift(spec, text, shift):
    reg = pkpd.load_regimen(text)
    shifted = "; ".join(_shift(d, shift) for d in reg.doses)
    a = pkpd.simulate(spec, reg, times=T)
    b = pkpd.simulate(spec, shifted, times=T + shift)
    for v in spec.output_names:
        np.testing.assert_allclose(
            b[v].values, a[v].values, rtol=1e-8, atol=1e-9 * max(a[v].values.max(), 1e-300)
        )


def _shift(d, s):
    if isinstance(d, pkpd.Bolus):
        return f"{d.amount.value!r} mg bolus at {d.at + s!r} h"
    rate = d.rate_value().value
    return f"{rate!r} mg/h from {d.start + s!r} h to {d.stop + s!r} h"
