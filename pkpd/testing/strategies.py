"""Hypothesis strategies for regimens and linear compartment models.

Shipped with the package so downstream users can property-test their own code against
ketamine-pkpd objects (the pattern of ``xarray.testing.strategies``). Requires
`hypothesis` (a development dependency).
"""

from __future__ import annotations

from hypothesis import strategies as st

from pkpd.inputs.model import ModelSpec

__all__ = ["doses", "mammillary_models", "regimen_texts"]

_SRC = {"source": "hypothesis strategy", "tag": "assumed"}


def _q(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def doses(draw, max_time: float = 24.0) -> str:
    """One piece of the one-line regimen form: a bolus or an infusion (absolute mg)."""
    kind = draw(st.sampled_from(["bolus", "infusion", "total"]))
    start = round(draw(_q(0.0, max_time)), 3)
    if kind == "bolus":
        return f"{draw(_q(0.0, 100.0))!r} mg bolus at {start!r} h"
    length = round(draw(_q(0.01, max_time)), 3)
    if kind == "infusion":
        return f"{draw(_q(0.0, 50.0))!r} mg/h from {start!r} h for {length!r} h"
    return f"{draw(_q(0.0, 100.0))!r} mg over {length!r} h from {start!r} h"


def regimen_texts(min_doses: int = 1, max_doses: int = 5, max_time: float = 24.0):
    """Strategy for one-line regimens of `min_doses`..`max_doses` pieces."""
    return st.lists(doses(max_time), min_size=min_doses, max_size=max_doses).map("; ".join)


@st.composite
def mammillary_models(
    draw, max_peripherals: int = 2, effect_site: bool = True, metabolite: bool = True
) -> ModelSpec:
    """A random linear model: central + up to two peripherals, optional effect site and
    one-compartment metabolite; rate constants 1e-3..1e2 per hour, volumes 1..500 L."""
    rate = _q(1e-3, 1e2)
    params = {
        "V1": {"value": f"{draw(_q(1.0, 500.0))!r} L", **_SRC},
        "k10": {"value": f"{draw(rate)!r} 1/h", **_SRC},
    }
    comps = {"central": {"analyte": "drug", "volume": "V1", "dosing": True}}
    flows = []
    analytes = {"drug": {"role": "parent"}}
    if metabolite and draw(st.booleans()):
        fm = draw(_q(0.0, 1.0))
        params |= {
            "Vm": {"value": f"{draw(_q(1.0, 500.0))!r} L", **_SRC},
            "km": {"value": f"{draw(rate)!r} 1/h", **_SRC},
        }
        analytes["met"] = {"role": "metabolite"}
        comps["mc"] = {"analyte": "met", "volume": "Vm"}
        flows += [
            {"from": "central", "to": "mc", "rate_constant": "k10", "fraction": fm},
            {"from": "mc", "rate_constant": "km"},
        ]
    else:
        flows.append({"from": "central", "rate_constant": "k10"})
    for j in range(2, 2 + draw(st.integers(0, max_peripherals))):
        params[f"k1{j}"] = {"value": f"{draw(rate)!r} 1/h", **_SRC}
        params[f"k{j}1"] = {"value": f"{draw(rate)!r} 1/h", **_SRC}
        comps[f"p{j}"] = {"analyte": "drug"}
        flows += [
            {"from": "central", "to": f"p{j}", "rate_constant": f"k1{j}"},
            {"from": f"p{j}", "to": "central", "rate_constant": f"k{j}1"},
        ]
    if effect_site and draw(st.booleans()):
        params["ke0"] = {"value": f"{draw(rate)!r} 1/h", **_SRC}
        comps["effect"] = {"type": "effect", "link": "central", "ke0": "ke0"}
    data = {
        "schema_version": 1,
        "model": {
            "name": "hypothesis",
            "drug": "test drug",
            "citation": "none",
            "population": "none",
            "sampling_site": "not reported",
        },
        "analytes": analytes,
        "parameters": params,
        "compartments": comps,
        "flows": flows,
    }
    return ModelSpec.from_dict(data, file="<hypothesis>")
