"""Linear compartment models: compartments, flows and transit chains read and checked, and
compiled into the small integer/float tables of a
:class:`~pkpd.inputs.model.schema.LinearStructure`, which the numba kernel
:func:`pkpd.engine.solvers.linear_system.fill_system` turns into the system matrix, input
map and output map, with no Python object in the loop.
"""

from __future__ import annotations

import numpy as np

from pkpd.engine.solvers import linear_system as ls
from pkpd.errors import ModelError
from pkpd.inputs.model.schema import Compartment, Flow, LinearStructure, Output

__all__ = ["compile_structure", "read_structure", "system_matrices"]


def read_structure(ctx, data: dict, parameters: dict, analytes: dict, parent: str):
    """``(compartments, flows, outputs, dose_compartment)`` of a linear model file, every
    parameter they name checked for its kind, and every parameter used."""
    compartments, dose = read_compartments(ctx, ctx.table(data, "compartments"), analytes)
    flows = read_flows(ctx, data.get("flows", []), compartments)
    expand_chains(ctx, data.get("chains", []), compartments, flows, analytes)
    used = check_references(ctx, parameters, compartments, flows, analytes)
    unused = sorted(set(parameters) - used)
    if unused:
        raise ctx.err(
            f"parameters.{unused[0]}",
            "defined but not used by any compartment, flow or effect site (a typo?)",
        )
    outputs = make_outputs(ctx, compartments, analytes, parent)
    return compartments, flows, outputs, dose


def read_compartments(ctx, tab, analytes):
    out = {}
    dose = None
    for name, key, d in ctx.entries(tab, "compartments", "expected a table"):
        ctx.keys(
            d,
            key,
            {"type", "analyte", "volume", "dosing", "link", "ke0", "output", "description"},
        )
        ctype = d.get("type", "mass")
        if ctype not in ("mass", "effect", "transit"):
            raise ctx.err(f"{key}.type", f"{ctype!r}; expected 'mass', 'effect' or 'transit'")
        if ctype == "effect":
            ctx.keys(d, key, {"type", "link", "ke0", "output", "description"}, {"link", "ke0"})
            out[name] = Compartment(
                name, "", "effect", None, link=d["link"], ke0=d["ke0"], output=d.get("output")
            )
            continue
        analyte = ctx.string(d, key, "analyte")
        if analyte not in analytes:
            raise ctx.err(
                f"{key}.analyte",
                f"{analyte!r} is not declared under `analytes` ({', '.join(analytes)})",
            )
        vol = d.get("volume")
        if vol is not None and not isinstance(vol, str):
            raise ctx.err(f"{key}.volume", f"expected a parameter name, got {vol!r}")
        if ctype == "transit" and vol is not None:
            raise ctx.err(f"{key}.volume", "a transit compartment holds an amount only")
        if d.get("dosing", False):
            if dose is not None:
                raise ctx.err(
                    f"{key}.dosing", f"only one dosing compartment allowed (already {dose!r})"
                )
            if analytes[analyte]["role"] != "parent":
                raise ctx.err(f"{key}.dosing", "doses go into a compartment of the parent analyte")
            dose = name
        out[name] = Compartment(name, analyte, ctype, vol, output=d.get("output"))
    if dose is None:
        raise ctx.err("compartments", "no compartment has `dosing = true`")
    for c in out.values():
        if c.type == "effect":
            key = f"compartments.{c.name}.link"
            if c.link not in out or out[c.link].type != "mass":
                raise ctx.err(key, f"{c.link!r} does not name a mass compartment")
            if out[c.link].volume is None:
                raise ctx.err(key, f"linked compartment {c.link!r} needs a `volume`")
            object.__setattr__(c, "analyte", out[c.link].analyte)
    return out, dose


_FLOW_KEYS = {
    "from",
    "to",
    "between",
    "clearance",
    "rate_constant",
    "mean_transit_time",
    "n_transit",
    "fraction",
    "molar_ratio",
    "description",
}
_FLOW_KINDS = {
    "clearance": ls.FLOW_CLEARANCE,
    "rate_constant": ls.FLOW_RATE_CONSTANT,
    "mean_transit_time": ls.FLOW_TRANSIT,
}


def read_flows(ctx, flows, comps) -> list[Flow]:
    """The ``[[flows]]`` array: one-way flows, and two-way ``between`` flows (two
    :class:`Flow` records)."""
    if not isinstance(flows, list):
        raise ctx.err("flows", "expected an array of tables [[flows]]")
    out = []
    for i, d in enumerate(flows):
        key = f"flows[{i}]"
        if not isinstance(d, dict):
            raise ctx.err(key, "expected a table")
        ctx.keys(d, key, _FLOW_KEYS)
        rates = [k for k in ("clearance", "rate_constant", "mean_transit_time") if k in d]
        if len(rates) != 1:
            raise ctx.err(
                key,
                "give exactly one of `clearance`, `rate_constant`, "
                f"`mean_transit_time` (found {rates or 'none'})",
            )
        rk = rates[0]
        pname = d[rk]
        if not isinstance(pname, str):
            raise ctx.err(f"{key}.{rk}", f"expected a parameter name, got {pname!r}")
        if "between" in d:
            out.extend(_between(ctx, d, key, rk, pname, comps))
        else:
            out.append(_one_way(ctx, d, key, rk, pname, comps))
    return out


def _flow_end(ctx, comps, d, k, key) -> str:
    """The compartment ``d[k]`` names: one that takes mass flows."""
    c = d[k]
    if not isinstance(c, str) or c not in comps:
        raise ctx.err(f"{key}.{k}", f"{c!r} is not a compartment ({', '.join(comps)})")
    if comps[c].type == "effect":
        raise ctx.err(f"{key}.{k}", f"{c!r} is an effect site; effect sites take no mass flows")
    return c


def _between(ctx, d, key, rk, pname, comps) -> tuple[Flow, Flow]:
    """A two-way distribution flow ``between = [a, b]`` with an intercompartmental clearance."""
    if {"from", "to", "fraction", "molar_ratio"} & set(d):
        raise ctx.err(
            key,
            "`between` describes a two-way distribution flow; "
            "it takes no `from`, `to`, `fraction` or `molar_ratio`",
        )
    pair = d["between"]
    if not isinstance(pair, list) or len(pair) != 2:
        raise ctx.err(f"{key}.between", f"expected two compartment names, got {pair!r}")
    a = _flow_end(ctx, comps, pair, 0, f"{key}.between")
    b = _flow_end(ctx, comps, pair, 1, f"{key}.between")
    if rk != "clearance":
        raise ctx.err(
            key,
            "`between` needs an intercompartmental `clearance`; "
            "give two one-way flows with `rate_constant` instead",
        )
    if comps[a].analyte != comps[b].analyte:
        raise ctx.err(f"{key}.between", "distribution links compartments of one analyte")
    return Flow(a, b, ls.FLOW_CLEARANCE, pname), Flow(b, a, ls.FLOW_CLEARANCE, pname)


def _one_way(ctx, d, key, rk, pname, comps) -> Flow:
    """A flow ``from`` a compartment, ``to`` another one or out of the body."""
    if "from" not in d:
        raise ctx.err(f"{key}.from", "missing (or use `between`)")
    src = _flow_end(ctx, comps, d, "from", key)
    dst = _flow_end(ctx, comps, d, "to", key) if "to" in d else None
    kind = _FLOW_KINDS[rk]
    scale = 1.0
    if rk == "mean_transit_time":
        n = d.get("n_transit")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ctx.err(
                f"{key}.n_transit",
                f"expected a positive integer (steps in the chain, k = n/MTT), got {n!r}",
            )
        scale = float(n)
    elif "n_transit" in d:
        raise ctx.err(f"{key}.n_transit", "only with `mean_transit_time`")
    fparam, fconst = None, 1.0
    if "fraction" in d:
        if dst is None:
            raise ctx.err(f"{key}.fraction", "a fraction needs a destination `to`")
        fv = d["fraction"]
        if isinstance(fv, str):
            fparam = fv
        elif isinstance(fv, int | float) and not isinstance(fv, bool) and 0.0 <= fv <= 1.0:
            fconst = float(fv)
        else:
            raise ctx.err(
                f"{key}.fraction",
                f"expected a number in [0, 1] or a parameter name, got {fv!r}",
            )
    mr = d.get("molar_ratio", False)
    if not isinstance(mr, bool):
        raise ctx.err(f"{key}.molar_ratio", f"expected true or false, got {mr!r}")
    if kind == ls.FLOW_CLEARANCE and comps[src].volume is None:
        raise ctx.err(f"{key}.from", f"a clearance from {src!r} needs its `volume`")
    return Flow(src, dst, kind, pname, scale, fparam, fconst, mr)


def expand_chains(ctx, chains, comps, flows, analytes):
    """Transit chains: ``n`` amount-only compartments, each left at rate n/MTT."""
    if not isinstance(chains, list):
        raise ctx.err("chains", "expected an array of tables [[chains]]")
    for i, d in enumerate(chains):
        key = f"chains[{i}]"
        if not isinstance(d, dict):
            raise ctx.err(key, "expected a table")
        ctx.keys(
            d,
            key,
            {
                "name",
                "analyte",
                "from",
                "to",
                "clearance",
                "rate_constant",
                "mean_transit_time",
                "n_transit",
                "fraction",
                "molar_ratio",
                "description",
            },
            {"name", "analyte", "from", "to", "mean_transit_time", "n_transit"},
        )
        name = ctx.string(d, key, "name")
        n = d["n_transit"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ctx.err(f"{key}.n_transit", f"expected a positive integer, got {n!r}")
        an = d["analyte"]
        if an not in analytes:
            raise ctx.err(f"{key}.analyte", f"{an!r} is not declared under `analytes`")
        entry = [k for k in ("clearance", "rate_constant") if k in d]
        if len(entry) != 1:
            raise ctx.err(
                key,
                "give exactly one of `clearance`, `rate_constant` for the flow into the chain",
            )
        names = [f"{name}_{j + 1}" for j in range(n)]
        for c in names:
            if c in comps:
                raise ctx.err(f"{key}.name", f"compartment {c!r} already exists")
            comps[c] = Compartment(c, an, "transit", None)
        base = {"molar_ratio": d.get("molar_ratio", False)}
        sub = [{"from": d["from"], "to": names[0], entry[0]: d[entry[0]], **base}]
        for j in range(n - 1):
            sub.append(
                {
                    "from": names[j],
                    "to": names[j + 1],
                    "mean_transit_time": d["mean_transit_time"],
                    "n_transit": n,
                }
            )
        last = {
            "from": names[-1],
            "to": d["to"],
            "mean_transit_time": d["mean_transit_time"],
            "n_transit": n,
        }
        if "fraction" in d:
            last["fraction"] = d["fraction"]
        sub.append(last)
        try:
            flows.extend(read_flows(ctx, sub, comps))
        except ModelError as exc:
            raise ModelError(f"{exc} (in {key})") from None


def check_references(ctx, params, comps, flows, analytes):
    used = set()

    def need(pname, key, kinds):
        if pname not in params:
            raise ctx.err(key, f"parameter {pname!r} is not defined under `parameters`")
        if params[pname].kind not in kinds:
            raise ctx.err(
                key,
                f"parameter {pname!r} is a {params[pname].kind} "
                f"({params[pname].unit_text!r}); expected a "
                f"{' or '.join(kinds)}",
            )
        used.add(pname)

    for c in comps.values():
        if c.volume is not None:
            need(c.volume, f"compartments.{c.name}.volume", ("volume",))
        if c.type == "effect":
            need(c.ke0, f"compartments.{c.name}.ke0", ("rate_constant", "time"))
    for i, f in enumerate(flows):
        kinds = {
            ls.FLOW_CLEARANCE: ("clearance",),
            ls.FLOW_RATE_CONSTANT: ("rate_constant",),
            ls.FLOW_TRANSIT: ("time",),
        }[f.kind]
        need(f.param, f"flows[{i}] ({f.src} -> {f.dst or 'out'})", kinds)
        if f.fraction_param:
            need(f.fraction_param, f"flows[{i}].fraction", ("dimensionless",))
        if f.molar_ratio:
            a, b = comps[f.src].analyte, comps[f.dst].analyte
            if analytes[a]["molar_mass"] is None or analytes[b]["molar_mass"] is None:
                raise ctx.err(
                    f"flows[{i}].molar_ratio",
                    f"needs `molar_mass` for analytes {a!r} and {b!r}",
                )
    for a in analytes:
        if analytes[a]["role"] == "metabolite":
            feeds = [
                f
                for f in flows
                if f.dst and comps[f.dst].analyte == a and comps[f.src].analyte != a
            ]
            if not feeds:
                raise ctx.err(
                    f"analytes.{a}",
                    "metabolite is formed by no flow: add a flow `to` one of its compartments",
                )
        if not any(c.analyte == a and c.type == "mass" and c.volume for c in comps.values()):
            raise ctx.err(
                f"analytes.{a}",
                "needs a compartment with a `volume` (its plasma concentration is reported)",
            )
    return used


def make_outputs(ctx, comps, analytes, parent):
    outs: list[Output] = []
    # Plasma concentration: the first mass compartment of each analyte with a volume,
    # or the one explicitly marked `output`.
    for a in analytes:
        cands = [c for c in comps.values() if c.analyte == a and c.type == "mass" and c.volume]
        marked = [c for c in cands if c.output]
        central = marked[0] if marked else cands[0]
        name = "cp" if a == parent else f"cp_{a}"
        if marked and central.output != name:
            raise ctx.err(
                f"compartments.{central.name}.output",
                f"{central.output!r}; the plasma output of {a!r} is named {name!r}",
            )
        outs.append(Output(name, central.name, a, f"{a} plasma concentration", False))
    for c in comps.values():
        if c.type == "effect":
            default = "ce" if c.analyte == parent else f"ce_{c.analyte}"
            name = c.output or default
            outs.append(
                Output(name, c.name, c.analyte, f"{c.analyte} effect-site concentration", True)
            )
    seen = set()
    for o in outs:
        if o.name in seen:
            raise ctx.err(
                "compartments",
                f"two outputs are named {o.name!r}: give effect sites distinct `output` names",
            )
        seen.add(o.name)
    return outs


# ----------------------------------------------------------------------------- compilation


def compile_structure(compartments, flows, parameters, analytes, outputs, dose) -> LinearStructure:
    """The tables of :func:`pkpd.engine.solvers.linear_system.fill_system` (rows index the
    parameters, compartments and analytes in file order)."""
    pidx = {p: i for i, p in enumerate(parameters)}
    cidx = {c: i for i, c in enumerate(compartments)}
    aidx = {a: i for i, a in enumerate(analytes)}
    comps_i = np.zeros((len(compartments), 3), dtype=np.int64)
    for i, c in enumerate(compartments.values()):
        comps_i[i] = (
            pidx[c.volume] if c.volume else -1,
            aidx[c.analyte],
            1 if c.type == "effect" else 0,
        )
    flows_i = np.zeros((len(flows), 5), dtype=np.int64)
    flows_f = np.zeros((len(flows), 3))
    for i, f in enumerate(flows):
        flows_i[i] = (
            cidx[f.src],
            cidx[f.dst] if f.dst else -1,
            f.kind,
            pidx[f.param],
            pidx[f.fraction_param] if f.fraction_param else -1,
        )
        ratio = 1.0
        if f.molar_ratio:
            ratio = (
                analytes[compartments[f.dst].analyte]["molar_mass"]
                / analytes[compartments[f.src].analyte]["molar_mass"]
            )
        flows_f[i] = (f.scale, f.fraction, ratio)
    effs = [c for c in compartments.values() if c.type == "effect"]
    effects_i = np.zeros((len(effs), 4), dtype=np.int64)
    for i, c in enumerate(effs):
        kind = ls.KE0_HALF_LIFE if parameters[c.ke0].kind == "time" else ls.KE0_RATE
        effects_i[i] = (cidx[c.name], cidx[c.link], pidx[c.ke0], kind)
    outputs_i = np.zeros((len(outputs), 2), dtype=np.int64)
    for i, o in enumerate(outputs):
        outputs_i[i] = (cidx[o.compartment], 1 if o.is_state else 0)
    return LinearStructure(
        compartments=compartments,
        flows=flows,
        comps_i=comps_i,
        flows_i=flows_i,
        flows_f=flows_f,
        effects_i=effects_i,
        outputs_i=outputs_i,
        dose_index=cidx[dose],
        n_aug=len(compartments) + 1 + len(analytes) + len(outputs),
    )


def system_matrices(structure: LinearStructure, theta: np.ndarray, n_analytes: int):
    """System matrix ``M`` (N, N), input map ``b`` (N,), output map ``C`` (n_out, n_comp)
    for the parameters `theta` (see :meth:`pkpd.inputs.model.ModelSpec.system`)."""
    s = structure
    N = s.n_aug
    M = np.zeros((N, N))
    b = np.zeros(N)
    C = np.zeros((s.outputs_i.shape[0], s.n_comp))
    ls.fill_system(
        np.ascontiguousarray(theta, dtype=np.float64),
        s.comps_i,
        s.flows_i,
        s.flows_f,
        s.effects_i,
        s.outputs_i,
        s.dose_index,
        n_analytes,
        M,
        b,
        C,
    )
    return M, b, C
