"""Pharmacodynamic endpoints: companion files ``models/pd/*.toml`` and their evaluation.

An endpoint file (schema in ``models/README.md``) names the drug, the sampling site and the
PK model its parameters were estimated with, an optional effect site (its own ke0 or
t1/2ke0), one or more input analytes, and an algebraic effect function:

* ``linear``: ``E = sum_i slope_i * C_i`` (a change from baseline, Olofsen 2012);
* ``sigmoid_emax``: ``E = E0 + Emax * C^gamma / (C50^gamma + C^gamma)`` (Simons 2022,
  Dahan 2011). Where gamma or Emax are not published the file marks them ``missing`` and
  the endpoint reports ``C / C50`` only (which needs neither: the effect is half maximal at
  ``C / C50 = 1`` whatever gamma), unless the user supplies them.

Evaluation is exact: each effect site is an extra state ``dCe/dt = ke0 (Cp - Ce)`` of the
model's linear system (the model is augmented with one effect compartment per endpoint and
input, solved with the piecewise-exact solver), then the effect function is applied to the
effect-site (or plasma) concentration in the PD file's concentration units (molar masses
convert, e.g. S-norketamine carried in S-ketamine mass equivalents).

Combining an endpoint with a PK model of another sampling site issues a
:class:`~pkpd.errors.SamplingSiteWarning`; combining it with a model of another drug
(racemic vs S-ketamine) is an error.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from pkpd.errors import ModelError, SamplingSiteWarning, UnitError
from pkpd.inputs.model import ModelSpec, load_model
from pkpd.inputs.reader import SAMPLING_SITES, TAGS, Reader
from pkpd.inputs.units import parse_quantity

__all__ = [
    "EFFECT_TYPES",
    "PDEndpoint",
    "PDOutput",
    "add_pd_variables",
    "augment_model",
    "available_pd",
    "load_pd",
    "pd_attrs",
    "pd_dir",
    "pd_outputs",
]

EFFECT_TYPES = ("linear", "sigmoid_emax")
LN2 = math.log(2.0)
# Endpoint analytes and the model analyte names that carry them.
ANALYTE_ALIASES = {"norketamine": ("norketamine", "noresketamine", "s_norketamine")}
# Parameters a user may supply (only where the file marks them missing) besides t_half_ke0.
_USER_KINDS = {"gamma": "dimensionless", "emax": "dimensionless", "slope": "dimensionless"}


def pd_dir() -> Path:
    """Directory of the shipped PD endpoint files (package ``pkpd.models.pd``)."""
    return Path(str(resources.files("pkpd.models.pd")))


def available_pd() -> list[str]:
    """Names of the shipped PD endpoints (file stems)."""
    return sorted(p.stem for p in pd_dir().glob("*.toml"))


@dataclass(frozen=True)
class PDParameter:
    """One PD number with provenance; ``value is None`` when missing in the source."""

    name: str
    value: float | None  # internal: concentrations mg/L, slopes per ng/mL, plain numbers
    text: str
    unit: str
    source: str
    tag: str
    note: str = ""
    low: float | None = None  # a published range instead of a point value
    high: float | None = None
    user: bool = False

    @property
    def missing(self) -> bool:
        return self.value is None and self.low is None


@dataclass(frozen=True)
class PDInput:
    name: str
    analyte: str  # "parent" or a key of ANALYTE_ALIASES
    molar_mass: float  # g/mol of the species in which the PD concentrations are expressed
    slope: str | None  # parameter name (linear endpoints)


@dataclass(frozen=True)
class PDEndpoint:
    """A validated PD endpoint file."""

    file: Path | None
    name: str
    title: str
    drug: str
    citation: str
    doi: str
    population: str
    sampling_site: str
    pk_model: str
    library_pk_model: str
    effect: str
    effect_unit: str
    effect_long_name: str
    notes: tuple[str, ...]
    inputs: tuple[PDInput, ...]
    parameters: dict[str, PDParameter]
    effect_site: PDParameter | None  # a time (t1/2ke0, h) or a rate constant (ke0, 1/h)
    effect_site_kind: str  # "time" | "rate_constant" | ""
    valid_range: tuple[float, float] | None  # mg/L
    valid_range_source: str = ""
    user_values: dict[str, str] = field(default_factory=dict)

    # ---- provenance -----------------------------------------------------------------

    def all_numbers(self) -> list[PDParameter]:
        out = list(self.parameters.values())
        if self.effect_site is not None:
            out.append(self.effect_site)
        return out

    def verification_summary(self) -> str:
        counts: dict[str, int] = {}
        for p in self.all_numbers():
            key = "user-supplied" if p.user else ("missing" if p.missing else p.tag)
            counts[key] = counts.get(key, 0) + 1
        return ", ".join(f"{n} {t}" for t, n in counts.items())

    @property
    def missing_parameters(self) -> list[str]:
        return [p.name for p in self.parameters.values() if p.missing]

    def with_user_values(self, values: dict[str, object]) -> PDEndpoint:
        """A copy with user-supplied values for parameters the source does not give.

        Accepted keys: any parameter the file marks ``missing`` (e.g. ``gamma``, ``emax``,
        ``slope_vas``), and ``t_half_ke0`` where the file has no effect site.
        """
        if not values:
            return self
        params = dict(self.parameters)
        site, site_kind = self.effect_site, self.effect_site_kind
        record = {}
        for key, val in values.items():
            loc = f"`pd_parameters`: `{self.name}.{key}`"
            if key == "t_half_ke0":
                if self.effect_site is not None:
                    raise ModelError(
                        f"{loc}: the endpoint file gives its effect site "
                        f"({self.effect_site.text}); copy the file to change a literature value"
                    )
                try:
                    h = parse_quantity(val, "time", key=f"{self.name}.t_half_ke0").value
                except UnitError as exc:
                    raise ModelError(f"{loc}: {exc}") from None
                if not h > 0:
                    raise ModelError(f"{loc} = {val!r}: expected a positive time")
                site = PDParameter(
                    "t_half_ke0",
                    h,
                    str(val),
                    "h",
                    "user-supplied",
                    "assumed",
                    "supplied by the user, not a literature value",
                    user=True,
                )
                site_kind = "time"
            elif key in params:
                if not params[key].missing:
                    raise ModelError(
                        f"{loc}: {params[key].text!r} is a literature value in "
                        f"{self.file}; only missing parameters "
                        f"({', '.join(self.missing_parameters) or 'none'}) can be supplied"
                    )
                if isinstance(val, bool) or not isinstance(val, int | float | str):
                    raise ModelError(f"{loc} = {val!r}: expected a number")
                try:
                    v = float(val)
                except ValueError:
                    raise ModelError(f"{loc} = {val!r}: expected a number") from None
                if not math.isfinite(v) or (key == "gamma" and not v > 0):
                    raise ModelError(f"{loc} = {val!r}: expected a finite (gamma: positive) number")
                p = params[key]
                params[key] = PDParameter(
                    p.name,
                    v,
                    str(val),
                    p.unit,
                    "user-supplied",
                    "assumed",
                    "supplied by the user, not a literature value",
                    user=True,
                )
            else:
                raise ModelError(
                    f"{loc}: unknown; expected t_half_ke0 (endpoints without an effect site) "
                    f"or a missing parameter of the endpoint "
                    f"({', '.join(self.missing_parameters) or 'none'})"
                )
            record[key] = str(val)
        return PDEndpoint(
            **{
                **self.__dict__,
                "parameters": params,
                "effect_site": site,
                "effect_site_kind": site_kind,
                "user_values": {**self.user_values, **record},
            }
        )


# ----------------------------------------------------------------------------- loading


def load_pd(name_or_path) -> PDEndpoint:
    """Load and validate a PD endpoint by shipped name or path to a ``.toml`` file."""
    if isinstance(name_or_path, PDEndpoint):
        return name_or_path
    from pkpd.inputs.files import read_library_file

    path, data = read_library_file(name_or_path, pd_dir(), available_pd, "PD endpoint", ModelError)
    return pd_from_dict(data, file=path)


_TOP_KEYS = {"schema_version", "endpoint", "effect_site", "inputs", "parameters", "validity"}
_META_KEYS = {
    "name", "title", "drug", "citation", "doi", "population", "sampling_site", "pk_model",
    "library_pk_model", "effect", "effect_unit", "effect_long_name", "notes",
}  # fmt: skip
_META_REQUIRED = ("name", "drug", "citation", "population", "sampling_site", "pk_model", "effect")
_INPUT_KEYS = {"analyte", "molar_mass", "slope", "source", "tag", "note"}
_PARAM_KEYS = {"value", "range", "missing", "unit", "description", "source", "tag", "note"}


def pd_from_dict(data: dict, file=None) -> PDEndpoint:
    """Validate a parsed PD endpoint file (schema in ``models/README.md``)."""
    r = Reader(file if file is not None else "<pd>", ModelError)
    r.keys(data, "", _TOP_KEYS, ("schema_version", "endpoint", "inputs", "parameters"))
    r.schema_version(data)
    meta = data["endpoint"]
    r.keys(meta, "endpoint", _META_KEYS, _META_REQUIRED)
    site = r.choice(meta, "endpoint", "sampling_site", SAMPLING_SITES)
    effect = r.choice(meta, "endpoint", "effect", EFFECT_TYPES)
    drug = r.string(meta, "endpoint", "drug")
    if _drug_class(drug) is None:
        raise r.err(
            "endpoint.drug", f"{drug!r}; expected a text naming 'S-ketamine' or 'racemic ketamine'"
        )
    notes = r.strings(meta, "endpoint", "notes")
    inputs = _read_inputs(r, data["inputs"], effect)
    params = _read_parameters(r, data["parameters"], inputs[0].molar_mass)
    _check_parameter_use(r, effect, inputs, params)
    esite, ekind = _read_effect_site(r, data)
    vr, vr_src = _read_validity(r, data, inputs[0].molar_mass)
    name = r.string(meta, "endpoint", "name")
    if file is not None:
        r.name_of_file(name, "endpoint.name")
    return PDEndpoint(
        file=Path(file) if file is not None else None,
        name=name,
        title=r.string(meta, "endpoint", "title", required=False),
        drug=drug,
        citation=r.string(meta, "endpoint", "citation"),
        doi=r.string(meta, "endpoint", "doi", required=False),
        population=r.string(meta, "endpoint", "population"),
        sampling_site=site,
        pk_model=r.string(meta, "endpoint", "pk_model"),
        library_pk_model=r.string(meta, "endpoint", "library_pk_model", required=False),
        effect=effect,
        effect_unit=r.string(meta, "endpoint", "effect_unit", required=False, default="1"),
        effect_long_name=r.string(
            meta, "endpoint", "effect_long_name", required=False, default=name
        ),
        notes=tuple(notes),
        inputs=tuple(inputs),
        parameters=params,
        effect_site=esite,
        effect_site_kind=ekind,
        valid_range=vr,
        valid_range_source=vr_src,
    )


def _read_inputs(r: Reader, tab, effect: str) -> list[PDInput]:
    """The ``[inputs.NAME]`` tables: analyte, molar mass, slope (linear endpoints)."""
    if not isinstance(tab, dict) or not tab:
        raise r.err("inputs", "expected at least one [inputs.NAME] table")
    inputs = []
    for iname, d in tab.items():
        key = f"inputs.{iname}"
        r.keys(d, key, _INPUT_KEYS, ("analyte", "molar_mass"))
        an = r.string(d, key, "analyte")
        if an != "parent" and an not in ANALYTE_ALIASES:
            raise r.err(
                f"{key}.analyte",
                f"{an!r}; expected 'parent' or one of {', '.join(ANALYTE_ALIASES)}",
            )
        mm = r.quantity(d["molar_mass"], "molar_mass", f"{key}.molar_mass", positive=True)
        r.provenance(d, key)
        slope = d.get("slope")
        if effect == "linear":
            if not isinstance(slope, str):
                raise r.err(
                    f"{key}.slope",
                    f"{slope!r}: a linear endpoint needs the name of a slope parameter",
                )
        elif slope is not None:
            raise r.err(f"{key}.slope", "only linear endpoints take a slope")
        inputs.append(PDInput(iname, an, mm, slope))
    if effect == "sigmoid_emax" and len(inputs) != 1:
        raise r.err("inputs", f"a sigmoid_emax endpoint takes exactly one input, got {len(inputs)}")
    return inputs


def _read_parameters(r: Reader, ptab, mm0: float) -> dict[str, PDParameter]:
    """The ``[parameters.NAME]`` tables (`mm0`: molar mass of the concentrations)."""
    if not isinstance(ptab, dict):
        raise r.err("parameters", "expected a table of [parameters.NAME]")
    return {pname: _read_parameter(r, pname, d, mm0) for pname, d in ptab.items()}


def _read_parameter(r: Reader, pname: str, d, mm0: float) -> PDParameter:
    """One parameter: a `value`, a published `range` or ``missing = true``."""
    key = f"parameters.{pname}"
    r.keys(d, key, _PARAM_KEYS)
    src, tag, note = r.provenance(d, key)
    form = r.exactly_one(
        d, key, ("value", "range", "missing"), "`value`, `range`, `missing = true`"
    )
    is_conc = pname == "c50"
    unit = "ng/mL" if is_conc else r.string(d, key, "unit", required=False, default="")
    if form == "missing":
        if d["missing"] is not True:
            raise r.err(f"{key}.missing", f"{d['missing']!r}; expected true")
        return PDParameter(pname, None, "missing", unit, src, tag, note)

    def number(v, k):
        if is_conc:
            return r.quantity(v, "concentration", k, positive=form == "value", molar_mass=mm0)
        return r.real(v, k)

    if form == "range":
        rng = d["range"]
        lo, hi = (number(x, f"{key}.range") for x in r.pair(rng, f"{key}.range"))
        if not 0 < lo < hi:
            raise r.err(f"{key}.range", f"{rng!r}: expected 0 < low < high")
        return PDParameter(
            pname, None, f"{rng[0]} to {rng[1]}", unit, src, tag, note, low=lo, high=hi
        )
    v = d["value"]
    return PDParameter(pname, number(v, f"{key}.value"), str(v), unit, src, tag, note)


def _check_parameter_use(r: Reader, effect: str, inputs, params) -> None:
    """Every slope defined, the sigmoid_emax parameters declared, no parameter unused."""
    used = {i.slope for i in inputs if i.slope}
    if effect == "linear":
        for i in inputs:
            if i.slope not in params:
                raise r.err(
                    f"inputs.{i.name}.slope", f"{i.slope!r} is not defined under `parameters`"
                )
            if params[i.slope].low is not None:
                raise r.err(f"parameters.{i.slope}", "a slope needs a `value` (or missing = true)")
    else:
        for req in ("c50", "gamma", "emax"):
            if req not in params:
                raise r.err(
                    f"parameters.{req}",
                    "missing: a sigmoid_emax endpoint declares c50, gamma and emax "
                    "(mark unpublished ones `missing = true`)",
                )
        if params["c50"].missing:
            raise r.err("parameters.c50", "a sigmoid_emax endpoint needs a published C50")
        g = params["gamma"]
        if g.low is not None or (g.value is not None and not g.value > 0):
            raise r.err("parameters.gamma", f"{g.text!r}: expected a positive `value`")
        if params["emax"].low is not None:
            raise r.err("parameters.emax", "expected a `value` or missing = true")
        used |= {"c50", "gamma", "emax", "e0"}
    unused = sorted(set(params) - used)
    if unused:
        raise r.err(f"parameters.{unused[0]}", "defined but not used by the endpoint (a typo?)")


def _read_effect_site(r: Reader, data: dict) -> tuple[PDParameter | None, str]:
    """The optional ``[effect_site]``: a t1/2ke0 (time) or a ke0 (rate constant)."""
    if "effect_site" not in data:
        return None, ""
    d = data["effect_site"]
    r.keys(d, "effect_site", {"t_half_ke0", "ke0", "description", "source", "tag", "note"})
    k = r.exactly_one(d, "effect_site", ("t_half_ke0", "ke0"), "`t_half_ke0` (a time) or `ke0`")
    ekind = "time" if k == "t_half_ke0" else "rate_constant"
    v = r.quantity(d[k], ekind, f"effect_site.{k}", positive=True)
    src, tag, note = r.provenance(d, "effect_site")
    unit = "h" if ekind == "time" else "1/h"
    return PDParameter(k, v, str(d[k]), unit, src, tag, note), ekind


def _read_validity(r: Reader, data: dict, mm0: float) -> tuple[tuple[float, float] | None, str]:
    """The optional ``[validity]`` range of the concentration-effect relation (mg/L)."""
    if "validity" not in data:
        return None, ""
    d = data["validity"]
    r.keys(d, "validity", {"range", "source", "tag", "note"}, ("range",))
    rng = d["range"]
    pair = r.pair(rng, "validity.range", "[low, high] concentrations")
    lo, hi = (r.quantity(x, "concentration", "validity.range", molar_mass=mm0) for x in pair)
    if not 0 <= lo < hi:
        raise r.err("validity.range", f"{rng!r}: expected 0 <= low < high")
    src, tag, _ = r.provenance(d, "validity")
    return (lo, hi), f"{src} [{TAGS[tag]}]"


def _drug_class(drug: str) -> str | None:
    d = drug.lower()
    if "racemic" in d:
        return "racemic"
    if "s-ketamine" in d or "esketamine" in d:
        return "S-ketamine"
    return None


# ----------------------------------------------------------------------------- evaluation


@dataclass
class PDBundle:
    """Endpoints prepared for one model: the augmented model and where each input lives."""

    base: ModelSpec
    model: ModelSpec
    endpoints: list[PDEndpoint]
    # endpoint name -> input name -> (model analyte, driving output name, conversion factor)
    drivers: dict[str, dict[str, tuple[str, str, float]]]


def _model_analyte(spec: ModelSpec, ep: PDEndpoint, inp: PDInput) -> str:
    if inp.analyte == "parent":
        return spec.parent
    for a in ANALYTE_ALIASES[inp.analyte]:
        if a in spec.analytes and spec.analytes[a]["role"] == "metabolite":
            return a
    raise ModelError(
        f"{ep.file}: `inputs.{inp.name}.analyte`: {inp.analyte!r} is needed by PD endpoint "
        f"{ep.name!r} but model {spec.name!r} has no such analyte "
        f"(its analytes: {', '.join(spec.analytes)})"
    )


def augment_model(
    model, endpoints, user_values: dict | None = None, *, stacklevel: int = 1
) -> PDBundle:
    """Check PD endpoints against a model and add one effect site per endpoint input.

    Parameters
    ----------
    model : str, Path or ModelSpec
    endpoints : list of str, Path or PDEndpoint
    user_values : dict, optional
        ``{"endpoint.parameter": value}`` for parameters the source does not publish (see
        :meth:`PDEndpoint.with_user_values`).

    Raises
    ------
    ModelError
        Unknown endpoint, drug mismatch (racemic vs S-ketamine), missing analyte.

    Warns
    -----
    SamplingSiteWarning
        The endpoint was estimated with concentrations from another sampling site.
    """
    base = load_model(model)
    eps = [load_pd(e) for e in endpoints]
    names = [e.name for e in eps]
    if len(set(names)) != len(names):
        raise ModelError(f"`pd`: endpoint listed twice in {names}")
    per_ep: dict[str, dict[str, object]] = {}
    for key, val in dict(user_values or {}).items():
        if "." not in str(key):
            raise ModelError(f"`pd_parameters`: {key!r}: expected 'endpoint.parameter'")
        e, p = str(key).split(".", 1)
        if e not in names:
            raise ModelError(
                f"`pd_parameters`: {key!r}: endpoint {e!r} is not among the selected {names}"
            )
        per_ep.setdefault(e, {})[p] = val
    eps = [e.with_user_values(per_ep.get(e.name, {})) for e in eps]
    raw = copy.deepcopy(base.raw)
    raw.setdefault("parameters", {})
    if base.is_linear:
        raw.setdefault("compartments", {})
    drivers: dict[str, dict[str, tuple[str, str, float]]] = {}
    for ep in eps:
        _check_drug_and_site(ep, base, stacklevel + 1)
        drivers[ep.name] = {}
        for inp in ep.inputs:
            analyte = _model_analyte(base, ep, inp)
            mm_model = base.analytes[analyte]["molar_mass"]
            if mm_model is None:
                raise ModelError(
                    f"model {base.name!r}: analyte {analyte!r} has no `molar_mass`; PD endpoint "
                    f"{ep.name!r} needs it to express concentrations as {inp.name}"
                )
            # model ng/mL -> nmol/mL -> PD-species ng/mL (metabolites carried in parent mass
            # equivalents have the parent's molar mass in the model file).
            factor = inp.molar_mass / mm_model
            out = _plasma_output(base, ep, inp, analyte)
            if ep.effect_site is None:
                drivers[ep.name][inp.name] = (analyte, out, factor)
                continue
            oname = _add_effect_site(raw, base, ep, inp, out)
            drivers[ep.name][inp.name] = (analyte, oname, factor)
    spec = ModelSpec.from_dict(raw, file=base.file) if raw != base.raw else base
    return PDBundle(base, spec, eps, drivers)


def _check_drug_and_site(ep: PDEndpoint, base: ModelSpec, stacklevel: int) -> None:
    """Drug mismatch (racemic vs S-ketamine) is an error, a sampling-site mismatch warns."""
    if _drug_class(ep.drug) != _drug_class(base.drug):
        # Say what the user can do: another endpoint or another PK model; racemic doses on
        # an S-ketamine endpoint go through an S-ketamine model and the racemic conversion.
        racemic_doses = (
            "; for racemic doses, an S-ketamine PK model with `racemic` (CLI --racemic) "
            "simulates their S half"
            if _drug_class(base.drug) == "racemic"
            else ""
        )
        raise ModelError(
            f"{ep.file}: `endpoint.drug`: PD endpoint {ep.name!r} was estimated for "
            f"{ep.drug!r} but model {base.name!r} simulates {base.drug!r}; racemic and "
            f"S-ketamine concentrations are not interchangeable: use a PD endpoint of "
            f"{base.drug} (`pkpd pd list` shows each endpoint's drug) or a PK model of "
            f"{ep.drug} (`pkpd models`){racemic_doses}"
        )
    if ep.sampling_site != base.sampling_site:
        warnings.warn(
            f"PD endpoint {ep.name!r} was estimated with {ep.sampling_site} concentrations "
            f"(PK model: {ep.pk_model}), but model {base.name!r} predicts "
            f"{base.sampling_site} concentrations; arterial and venous concentrations "
            "differ during and after infusions, so the effect prediction mixes sampling "
            "sites",
            SamplingSiteWarning,
            stacklevel=stacklevel + 1,
        )


def _plasma_output(base: ModelSpec, ep: PDEndpoint, inp: PDInput, analyte: str) -> str:
    """The model output holding the plasma concentration of `analyte`.

    Linear models: the analyte's plasma output. ``[ode]`` models: the concentration output
    ``cp`` (parent) or ``cp_<analyte>`` (a metabolite), by the naming convention of the
    linear models (``models/README.md``).
    """
    if base.is_linear:
        return next(o.name for o in base.outputs if not o.is_state and o.analyte == analyte)
    name = "cp" if analyte == base.parent else f"cp_{analyte}"
    out = next((o for o in base.ode.outputs if o.name == name), None)
    if out is None or not out.concentration:
        raise ModelError(
            f"{base.file}: `ode.outputs.{name}`: PD endpoint {ep.name!r} (input {inp.name}) "
            f"is driven by the {analyte} plasma concentration, which an [ode] model reports "
            f"as the concentration output `{name}`; model {base.name!r} has "
            + ("no such output" if out is None else "it, but not as a concentration")
        )
    return name


def _add_effect_site(raw: dict, base: ModelSpec, ep: PDEndpoint, inp: PDInput, out: str) -> str:
    """Add endpoint `ep`'s effect site for input `inp` to the model file `raw` (in place).

    Linear models get an effect compartment linked to the compartment of output `out`;
    ``[ode]`` models a state ``dCe/dt = ke0 (Cp - Ce)`` (Cp: the expression of output
    `out`, mg/L) and an output of it. Returns the name of the effect-site output.
    """
    pname = f"pd_{ep.name}_ke0"
    cname = f"pd_{ep.name}_{inp.name}"
    oname = f"ce_{ep.name}_{inp.name}"
    s = ep.effect_site
    raw["parameters"][pname] = {
        "value": s.text if not s.user else f"{s.value} h",
        "description": f"effect site of PD endpoint {ep.name}",
        "source": s.source,
        "tag": s.tag,
        **({"note": s.note} if s.note else {}),
    }
    if base.is_linear:
        raw["compartments"][cname] = {
            "type": "effect",
            "link": next(o.compartment for o in base.outputs if o.name == out),
            "ke0": pname,
            "output": oname,
        }
        return oname
    ode = raw["ode"]
    expr = next(o.text for o in base.ode.outputs if o.name == out)
    ke0 = f"({LN2!r} / {pname})" if ep.effect_site_kind == "time" else pname
    ode["states"][cname] = {
        "initial": 0,
        "unit": "mg/L",
        "description": f"effect site of PD endpoint {ep.name} (input {inp.name})",
    }
    ode["derivatives"][cname] = f"{ke0} * (({expr}) - {cname})"
    ode["outputs"][oname] = {
        "expression": cname,
        "concentration": True,
        "long_name": f"{inp.name} effect-site concentration of PD endpoint {ep.name}",
    }
    return oname


@dataclass(frozen=True)
class PDOutput:
    """One PD variable as a function of model outputs: ``g(sum_i slope_i * factor_i * x_i)``.

    ``x_i`` is model output ``terms[i][0]`` in its reporting unit (ng/mL of the model's
    species), ``factor_i`` converts it to the endpoint's species (molar masses) and
    ``slope_i`` is a linear endpoint's slope (1 otherwise). ``g`` is the identity (driving
    concentrations, linear effects and their contributions), ``u / C50``
    (``gamma is None``), the fraction of Emax ``r^gamma / (1 + r^gamma)`` (``emax is
    None``) or the effect ``E0 + Emax r^gamma / (1 + r^gamma)`` with ``r = u / C50``.

    One patient (:func:`add_pd_variables`) and cohorts evaluate the same objects, so a
    PD variable has one name, unit and formula everywhere.
    """

    name: str
    endpoint: str
    units: str
    long_name: str
    terms: tuple[tuple[str, float, float], ...]  # (model output, factor, slope)
    c50: float | None = None  # ng/mL of the endpoint's species; None: g is the identity
    gamma: float | None = None
    emax: float | None = None
    e0: float = 0.0
    molar_mass: float | None = None  # g/mol of a driving concentration's species

    @property
    def single(self) -> bool:
        """A function of one model output (a monotone map of it)."""
        return len(self.terms) == 1

    @property
    def affine(self) -> bool:
        """Linear in the model outputs (a driving concentration, a linear effect, C/C50)."""
        return self.gamma is None

    @property
    def rising(self) -> bool:
        """The variable increases with its first output (False: decreases or is constant)."""
        _, factor, slope = self.terms[0]
        up = factor * slope > 0
        return up if self.gamma is None or self.emax is None else up == (self.emax > 0)

    @property
    def increasing(self) -> bool:
        """A strictly increasing function of a single model output."""
        return self.single and self.rising

    @property
    def concentration(self) -> bool:
        """A driving concentration (ng/mL of the endpoint's species)."""
        return self.units == "ng/mL" and self.c50 is None

    def value(self, *xs):
        """The variable from its model outputs `xs` (arrays in the terms' order, ng/mL)."""
        u = 0.0
        for (_, factor, slope), x in zip(self.terms, xs, strict=True):
            c = np.asarray(x, dtype=float) * factor
            u = u + (c if slope == 1.0 else slope * c)
        if self.c50 is None:
            return u
        r = u / self.c50
        if self.gamma is None:
            return r
        rg = np.power(np.maximum(r, 0.0), self.gamma)
        frac = rg / (1.0 + rg)
        return frac if self.emax is None else self.e0 + self.emax * frac

    def inverse(self, level: float) -> float:
        """The model-output level (ng/mL) at which an increasing variable equals `level`.

        ``x > inverse(L)`` exactly when the variable is ``> L`` (for outputs ``>= 0``):
        ``-inf`` when it exceeds `level` everywhere, ``inf`` when it never does.
        """
        if not self.increasing:
            raise ValueError(f"{self.name} is not an increasing function of one model output")
        _, factor, slope = self.terms[0]
        w = factor * slope
        if self.c50 is None:
            return level / w
        if self.gamma is None:
            return level * self.c50 / w
        frac = level if self.emax is None else (level - self.e0) / self.emax
        if frac < 0.0:
            return -np.inf
        if frac >= 1.0:
            return np.inf
        return self.c50 * (frac / (1.0 - frac)) ** (1.0 / self.gamma) / w


def pd_outputs(bundle: PDBundle) -> list[PDOutput]:
    """The PD variables of `bundle`, each as a function of the model's outputs."""
    out: list[PDOutput] = []
    for ep in bundle.endpoints:
        n = ep.name
        where = "effect-site" if ep.effect_site is not None else "plasma"
        for inp in ep.inputs:
            _, oname, factor = bundle.drivers[n][inp.name]
            out.append(
                PDOutput(
                    f"{n}_conc_{inp.name}",
                    n,
                    "ng/mL",
                    f"{inp.name} {where} concentration driving {n} "
                    f"(as {inp.name} ng/mL, molar mass {inp.molar_mass:g} g/mol)",
                    ((oname, factor, 1.0),),
                    molar_mass=inp.molar_mass,
                )
            )
        out += _linear_outputs(ep, bundle) if ep.effect == "linear" else _emax_outputs(ep, bundle)
    return out


def _linear_outputs(ep: PDEndpoint, bundle: PDBundle) -> list[PDOutput]:
    n = ep.name
    terms = []
    out = []
    for inp in ep.inputs:
        p = ep.parameters[inp.slope]
        if p.missing:
            continue
        _, oname, factor = bundle.drivers[n][inp.name]
        terms.append((oname, factor, p.value))
        if len(ep.inputs) > 1:
            out.append(
                PDOutput(
                    f"{n}_contribution_{inp.name}",
                    n,
                    ep.effect_unit,
                    f"contribution of {inp.name} to {ep.effect_long_name} "
                    f"(slope {p.value:g} {p.unit})",
                    ((oname, factor, p.value),),
                )
            )
    if len(terms) == len(ep.inputs):
        out.append(PDOutput(n, n, ep.effect_unit, ep.effect_long_name, tuple(terms)))
    return out


def _emax_outputs(ep: PDEndpoint, bundle: PDBundle) -> list[PDOutput]:
    n = ep.name
    p = ep.parameters
    c50 = p["c50"]
    variants = (
        [("", c50.value)]
        if c50.value is not None
        else [("_at_min_c50", c50.low), ("_at_max_c50", c50.high)]
    )
    gamma, emax = p["gamma"].value, p["emax"].value
    e0 = p["e0"].value if "e0" in p and p["e0"].value is not None else 0.0
    _, oname, factor = bundle.drivers[n][ep.inputs[0].name]
    terms = ((oname, factor, 1.0),)
    out = []
    for suffix, c50v in variants:
        c50_ng = c50v * 1000.0
        what = f"C50 = {c50_ng:.4g} ng/mL" + (
            f" (the {'lowest' if suffix == '_at_min_c50' else 'highest'} published C50)"
            if suffix
            else ""
        )
        out.append(
            PDOutput(
                f"{n}_conc_over_c50{suffix}",
                n,
                "1",
                f"driving concentration / C50 for {ep.effect_long_name}, {what}; "
                "the effect is half maximal at 1 whatever gamma",
                terms,
                c50=c50_ng,
            )
        )
        if gamma is None:
            continue
        out.append(
            PDOutput(
                f"{n}_fraction_of_emax{suffix}",
                n,
                "1",
                f"C^gamma / (C50^gamma + C^gamma), gamma = {gamma:g}, {what}",
                terms,
                c50=c50_ng,
                gamma=gamma,
            )
        )
        if emax is not None:
            out.append(
                PDOutput(
                    f"{n}{suffix}",
                    n,
                    ep.effect_unit,
                    f"{ep.effect_long_name}, {what}",
                    terms,
                    c50=c50_ng,
                    gamma=gamma,
                    emax=emax,
                    e0=e0,
                )
            )
    return out


def add_pd_variables(ds, bundle: PDBundle):
    """Add the PD variables of `bundle` to a dataset simulated with ``bundle.model``."""
    ds.attrs.update(bundle.base.provenance_attrs())
    ds.attrs["pd_endpoints"] = ", ".join(e.name for e in bundle.endpoints)
    for ep in bundle.endpoints:
        for inp in ep.inputs:
            analyte, oname, _ = bundle.drivers[ep.name][inp.name]
            if oname in ds and ep.effect_site is not None:
                ds[oname].attrs.update(
                    long_name=f"{analyte} effect-site concentration of PD endpoint {ep.name} "
                    f"(model units)",
                    pd_endpoint=ep.name,
                )
    for po in pd_outputs(bundle):
        vals = po.value(*[ds[o].values for o, _, _ in po.terms])
        attrs = {"units": po.units, "long_name": po.long_name, "pd_endpoint": po.endpoint}
        ds[po.name] = ("time", np.broadcast_to(vals, ds.time.shape).astype(float), attrs)
        if po.concentration:
            # Exact cumulative AUC: the driver is the model output times a constant.
            oname, factor, _ = po.terms[0]
            ds[f"auc_{po.name}"] = (
                "time",
                ds[f"auc_{oname}"].values * factor,
                {
                    "units": "ng*h/mL",
                    "long_name": f"cumulative AUC of {po.name} from the start",
                    "pd_endpoint": po.endpoint,
                },
            )
    for ep in bundle.endpoints:
        n = ep.name
        if ep.valid_range is not None:
            lo, hi = (v * 1000.0 for v in ep.valid_range)
            c = ds[f"{n}_conc_{ep.inputs[0].name}"].values
            ds[f"{n}_in_valid_range"] = (
                "time",
                ((c >= lo) & (c <= hi)).astype(np.int8),
                {
                    "units": "1",
                    "long_name": f"1 where the driving concentration is within {lo:g}-{hi:g} "
                    f"ng/mL, the range in which {n} was characterised",
                    "pd_endpoint": n,
                },
            )
        ds.attrs[f"pd_{n}"] = _attrs_line(ep, bundle.base)
    return ds


def pd_attrs(bundle: PDBundle) -> dict[str, str]:
    """Result attributes of the endpoints of `bundle`: the PK model's provenance (not the
    augmented model's), the endpoint list and one provenance line per endpoint."""
    out = dict(bundle.base.provenance_attrs())
    out["pd_endpoints"] = ", ".join(e.name for e in bundle.endpoints)
    for ep in bundle.endpoints:
        out[f"pd_{ep.name}"] = _attrs_line(ep, bundle.base)
    return out


def _attrs_line(ep: PDEndpoint, spec: ModelSpec) -> str:
    parts = [
        ep.citation,
        f"sampling {ep.sampling_site}",
        f"estimated with PK model: {ep.pk_model}",
        f"simulated with {spec.name} ({spec.sampling_site})",
        f"verification: {ep.verification_summary()}",
    ]
    if ep.effect_site is not None:
        parts.append(f"effect site {ep.effect_site.name} = {ep.effect_site.text}")
    else:
        parts.append("no effect site (driven by the plasma concentration)")
    if ep.missing_parameters:
        parts.append(f"NOT PUBLISHED (not used): {', '.join(ep.missing_parameters)}")
    if ep.user_values:
        parts.append(
            "USER-SUPPLIED (not literature): "
            + ", ".join(f"{k}={v}" for k, v in ep.user_values.items())
        )
    return "; ".join(parts)


# ----------------------------------------------------------------------------- display


def list_rows() -> list[tuple[str, str, str, str, str, str]]:
    """Rows (name, drug, sampling, effect, verification, source) of the shipped endpoints."""
    rows = []
    for name in available_pd():
        e = load_pd(name)
        rows.append(
            (
                name,
                e.drug,
                e.sampling_site,
                e.effect,
                e.verification_summary(),
                e.citation.split(".")[0],
            )
        )
    return rows


def describe(name) -> list[str]:
    """Lines showing one endpoint with every number's unit, source and tag."""
    e = load_pd(name)
    out = [f"{e.name}: {e.title} (PD endpoint)"]
    for label, val in (
        ("drug", e.drug),
        ("citation", e.citation),
        ("doi", e.doi or "none"),
        ("population", e.population),
        ("sampling site", e.sampling_site),
        ("estimated with PK model", e.pk_model),
        ("closest shipped PK model", e.library_pk_model or "none"),
        ("effect", f"{e.effect} -> {e.effect_long_name} [{e.effect_unit}]"),
        ("verification", e.verification_summary()),
        ("file", str(e.file)),
    ):
        out.append(f"  {label}: {val}")
    out += [f"  note: {n}" for n in e.notes]
    out.append("\ninputs:")
    for i in e.inputs:
        out.append(f"  {i.name}: analyte {i.analyte}, concentrations as {i.molar_mass:g} g/mol")
    out.append("\nparameters:")
    for p in e.all_numbers():
        if p is e.effect_site:
            ke0 = math.log(2) / p.value if e.effect_site_kind == "time" else p.value
            val = f"{p.text} (ke0 = {ke0 / 60:.4g} 1/min)"
        elif p.missing:
            val = "MISSING in the source (not used; may be user-supplied)"
        elif p.low is not None:
            val = f"{p.text} (published range)"
        else:
            val = p.text + (f" {p.unit}" if p.unit and p.unit not in p.text else "")
        out.append(f"  {p.name:<10} {val}")
        out.append(f"             [{TAGS[p.tag]}] {p.source}")
        if p.note:
            out.append(f"             note: {p.note}")
    if e.valid_range is not None:
        lo, hi = (v * 1000 for v in e.valid_range)
        out.append(f"\nvalid concentration range: {lo:g}-{hi:g} ng/mL ({e.valid_range_source})")
    return out
