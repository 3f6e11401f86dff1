"""Builders of small test models as dictionaries (the same schema as the TOML files)."""

from __future__ import annotations

from pkpd.inputs.model import ModelSpec

SRC = {"source": "test fixture", "tag": "assumed"}


def mammillary(
    V1=10.0, k10=0.5, k12=0.0, k21=0.0, k13=0.0, k31=0.0, ke0=None, metabolite=None
) -> ModelSpec:
    """A 1-3 compartment mammillary model with rate constants in 1/h and V1 in L.

    ``metabolite = (Vm, km, fm)`` adds a one-compartment metabolite formed by a fraction
    ``fm`` of the central elimination (the rest leaves the body).
    """
    params = {"V1": {"value": f"{V1!r} L", **SRC}, "k10": {"value": f"{k10!r} 1/h", **SRC}}
    comps = {"central": {"analyte": "drug", "volume": "V1", "dosing": True}}
    flows = []
    if metabolite is None:
        flows.append({"from": "central", "rate_constant": "k10"})
    else:
        Vm, km, fm = metabolite
        params |= {
            "Vm": {"value": f"{Vm!r} L", **SRC},
            "km": {"value": f"{km!r} 1/h", **SRC},
            "fm": {"value": fm, **SRC},
        }
        comps["met"] = {"analyte": "met", "volume": "Vm"}
        flows += [
            {"from": "central", "to": "met", "rate_constant": "k10", "fraction": "fm"},
            {"from": "met", "rate_constant": "km"},
        ]
    for j, (kin, kout) in enumerate(((k12, k21), (k13, k31)), start=2):
        if kin:
            params[f"k1{j}"] = {"value": f"{kin!r} 1/h", **SRC}
            params[f"k{j}1"] = {"value": f"{kout!r} 1/h", **SRC}
            comps[f"p{j}"] = {"analyte": "drug"}
            flows += [
                {"from": "central", "to": f"p{j}", "rate_constant": f"k1{j}"},
                {"from": f"p{j}", "to": "central", "rate_constant": f"k{j}1"},
            ]
    if ke0 is not None:
        params["ke0"] = {"value": f"{ke0!r} 1/h", **SRC}
        comps["effect"] = {"type": "effect", "link": "central", "ke0": "ke0"}
    analytes = {"drug": {"role": "parent"}}
    if metabolite is not None:
        analytes["met"] = {"role": "metabolite"}
    data = {
        "schema_version": 1,
        "model": {
            "name": "test",
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
    return ModelSpec.from_dict(data, file="<test>")
