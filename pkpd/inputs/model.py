"""Model files: load, validate and compile a linear compartment PK/PD model.

A model is data: one TOML file per published model (schema in ``models/README.md``).
:func:`load_model` reads and validates it into a :class:`ModelSpec`, which

* converts every parameter to internal units once (h, mg, L),
* computes individual parameters from covariates and random effects
  (:meth:`ModelSpec.individual_parameters`, vectorised over patients),
* holds the model structure as small integer/float tables that the numba kernel
  :func:`pkpd.engine.solvers.linear_system.fill_system` turns into the system matrix, input map
  and output map, with no Python object in the loop.

Every error names the file, the key, the offending value and what was expected.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from pkpd.engine.solvers import linear_system as ls
from pkpd.errors import (
    CovariateDefaultWarning,
    CovariateError,
    CovariateRangeWarning,
    ModelError,
    UnitError,
)
from pkpd.inputs.units import parse_quantity

__all__ = ["ModelSpec", "available_models", "load_model", "models_dir"]

#: Patient descriptors a run accepts whether or not the model uses them (checked for
#: plausibility; ``weight`` also scales per-kg doses). A model's own covariates are
#: accepted too; any other name is an error.
PATIENT_COVARIATES = ("weight", "age", "sex", "height", "bmi")
#: A model whose studied age range ends below this (years) is paediatric.
ADULT_AGE = 18.0
_PAEDIATRIC_RE = re.compile(r"paediatric|pediatric|\bchildren\b|\binfants\b|\bneonates\b", re.I)

SAMPLING_SITES = ("arterial", "venous", "plasma (site not stated)", "not reported")
TAGS = {
    "paper": "verified in paper",
    "code": "verified in cited code",
    "code-unconfirmed": "read in public code that does not cite the paper's table",
    "derived": "derived from verified values",
    "assumed": "assumed (not a literature value)",
}
ROLES = ("parent", "metabolite")
COVARIATE_TYPES = ("power", "linear", "exponential", "categorical")
# Parameter kinds accepted in each structural slot (see units.KINDS).
_PARAM_KINDS = ("volume", "clearance", "rate_constant", "time", "dimensionless")
# Nonlinear [ode] models (pkpd/inputs/ode.py) also take amounts (mg), amount rates such as a
# Vmax (mg/h) and concentrations such as a Km or an EC50 (mg/L).
_ODE_PARAM_KINDS = (*_PARAM_KINDS, "concentration", "rate", "amount")


def models_dir() -> Path:
    """Directory of the shipped model files (the package `pkpd.models`).

    In the repository this is the top-level ``models/`` folder; pyproject maps it to
    ``pkpd.models`` so it ships inside the wheel.
    """
    return Path(str(resources.files("pkpd.models")))


def available_models() -> list[str]:
    """Names of the shipped models (file stems)."""
    return sorted(p.stem for p in models_dir().glob("*.toml"))


def load_model(name_or_path: str | Path) -> ModelSpec:
    """Load and validate a model by shipped name or by path to a TOML file.

    Parameters
    ----------
    name_or_path : str or Path
        A shipped model name (see :func:`available_models`) or a path to a ``.toml`` file.

    Returns
    -------
    ModelSpec

    Raises
    ------
    ModelError
        Unknown model name, unreadable or invalid file.
    """
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    from pkpd.inputs.files import read_library_file

    path, data = read_library_file(
        name_or_path, models_dir(), available_models, "model", ModelError
    )
    return ModelSpec.from_dict(data, file=path)


# ----------------------------------------------------------------------------- helpers


class _Ctx:
    """Location-aware validation helpers for one file."""

    def __init__(self, file):
        self.file = file

    def err(self, key: str, msg: str) -> ModelError:
        return ModelError(f"{self.file}: `{key}`: {msg}")

    def table(self, d: dict, key: str, required: bool = True) -> dict:
        v = d.get(key.rsplit(".", 1)[-1])
        if v is None:
            if required:
                raise self.err(key, "missing (expected a table)")
            return {}
        if not isinstance(v, dict):
            raise self.err(key, f"expected a table, got {type(v).__name__} {v!r}")
        return v

    def entries(self, tab: dict, prefix: str, msg: str = "expected a table"):
        """Yield ``(name, key, table)`` for each sub-table of `tab`, checking its type."""
        for name, d in tab.items():
            key = f"{prefix}.{name}"
            if not isinstance(d, dict):
                raise self.err(key, msg)
            yield name, key, d

    def keys(self, d: dict, key: str, allowed: set[str], required: set[str] = frozenset()):
        for k in d:
            if k not in allowed:
                raise self.err(
                    f"{key}.{k}" if key else k,
                    f"unknown key; expected one of {', '.join(sorted(allowed))}",
                )
        for k in required:
            if k not in d:
                raise self.err(f"{key}.{k}" if key else k, "missing (required)")

    def string(self, d: dict, key: str, k: str, required: bool = True, default=None) -> str:
        v = d.get(k, default)
        if v is None:
            if required:
                raise self.err(f"{key}.{k}", "missing (expected a string)")
            return default
        if not isinstance(v, str) or (required and not v.strip()):
            raise self.err(f"{key}.{k}", f"expected a non-empty string, got {v!r}")
        return v

    def number(self, d: dict, key: str, k: str, default=None) -> float:
        v = d.get(k, default)
        if v is None:
            raise self.err(f"{key}.{k}", "missing (expected a number)")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise self.err(f"{key}.{k}", f"expected a finite number, got {v!r}")
        return float(v)


# Names that become dataset variables and CSV columns (``cp_<analyte>``,
# ``amount_<compartment>``, ``param_<name>``): ASCII, matched whole (``$`` in a pattern
# would accept a trailing newline).
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _check_names(ctx: _Ctx, data: dict) -> None:
    """Refuse analyte, covariate, parameter, compartment, effect-site output and chain names
    that are not ASCII identifiers (letters, digits, _; a letter first)."""

    def check(name, key):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ctx.err(
                key, f"{name!r} is not a valid name (ASCII letters, digits, _; a letter first)"
            )

    for section in ("analytes", "covariates", "parameters", "compartments"):
        tab = data.get(section)
        if not isinstance(tab, dict):
            continue  # missing or malformed: the section's reader says so
        for name, d in tab.items():
            check(name, f"{section}.{name}")
            if section == "compartments" and isinstance(d, dict) and "output" in d:
                check(d["output"], f"compartments.{name}.output")
    chains = data.get("chains")
    for i, d in enumerate(chains if isinstance(chains, list) else []):
        if isinstance(d, dict) and "name" in d:
            check(d["name"], f"chains[{i}].name")


@dataclass(frozen=True)
class Source:
    """Provenance of one number: citation text, table/page, verification tag."""

    reference: str
    tag: str
    note: str = ""

    @property
    def tag_text(self) -> str:
        return TAGS[self.tag]


def _source(ctx: _Ctx, d: dict, key: str, required: bool = True) -> Source | None:
    if "source" not in d and "tag" not in d:
        if required:
            raise ctx.err(f"{key}.source", "missing: every number must cite its source")
        return None
    ref = ctx.string(d, key, "source")
    tag = ctx.string(d, key, "tag")
    if tag not in TAGS:
        raise ctx.err(
            f"{key}.tag", f"{tag!r} is not a verification tag; expected one of {', '.join(TAGS)}"
        )
    note = ctx.string(d, key, "note", required=False, default="")
    return Source(ref, tag, note)


@dataclass(frozen=True)
class CovariateEffect:
    covariate: str
    type: str
    reference: float = 0.0
    coefficient: float = 0.0
    factors: dict[str, float] = field(default_factory=dict)
    source: Source | None = None


@dataclass(frozen=True)
class Parameter:
    """A typical value in internal units with its covariate model and provenance."""

    name: str
    value: float
    unit_text: str
    kind: str
    per_kg: bool
    weight_exponent: float
    covariates: tuple[CovariateEffect, ...]
    description: str
    source: Source


@dataclass(frozen=True)
class Covariate:
    name: str
    unit: str
    reference: float | None
    range: tuple[float, float] | None
    levels: tuple[str, ...]
    default: Any
    description: str

    @property
    def categorical(self) -> bool:
        return bool(self.levels)


@dataclass(frozen=True)
class Compartment:
    name: str
    analyte: str
    type: str  # "mass" | "effect" | "transit"
    volume: str | None
    link: str | None = None
    ke0: str | None = None
    output: str | None = None


@dataclass(frozen=True)
class Flow:
    src: str
    dst: str | None
    kind: int
    param: str
    scale: float = 1.0
    fraction_param: str | None = None
    fraction: float = 1.0
    molar_ratio: bool = False


@dataclass(frozen=True)
class VariabilityBlock:
    parameters: tuple[str, ...]
    omega: np.ndarray | None  # None when the value is missing in the source
    source: Source


@dataclass(frozen=True)
class ResidualError:
    output: str
    type: str  # proportional | additive | combined | exponential
    proportional_sd: float = 0.0
    additive_sd: float = 0.0  # mg/L
    source: Source | None = None


@dataclass(frozen=True)
class Output:
    name: str
    compartment: str
    analyte: str
    long_name: str
    is_state: bool


# ----------------------------------------------------------------------------- ModelSpec


@dataclass
class ModelSpec:
    """A validated model: metadata, parameters, structure and compiled tables.

    Build with :func:`load_model`. The compiled tables (``comps_i``, ``flows_i``, ...)
    feed :func:`pkpd.engine.solvers.linear_system.fill_system`.
    """

    file: Path | None
    name: str
    drug: str
    title: str
    citation: str
    doi: str
    population: str
    sampling_site: str
    notes: tuple[str, ...]
    analytes: dict[str, dict]
    parameters: dict[str, Parameter]
    covariates: dict[str, Covariate]
    compartments: dict[str, Compartment]
    flows: list[Flow]
    variability: list[VariabilityBlock]
    residual: dict[str, ResidualError]
    outputs: list[Output]
    dose_compartment: str
    parent: str
    raw: dict = field(repr=False, default_factory=dict)
    #: The equations of a nonlinear model (an ``[ode]`` section, :mod:`pkpd.ode`);
    #: None for linear compartment models.
    ode: Any = field(repr=False, default=None)

    @property
    def is_linear(self) -> bool:
        """True for compartment models (exact solver), False for ``[ode]`` models."""
        return self.ode is None

    # ---- construction -------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict, file: Path | str | None = None) -> ModelSpec:
        """Validate a parsed model file (see ``models/README.md``) and compile it."""
        try:
            return cls._from_dict(data, file)
        except UnitError as exc:
            # parse_quantity already names the file and the key.
            raise ModelError(str(exc)) from None

    @classmethod
    def _from_dict(cls, data: dict, file: Path | str | None) -> ModelSpec:
        if isinstance(data, dict) and "ode" in data:
            from pkpd.inputs.ode import ode_spec_from_dict  # nonlinear models: equations, not flows

            return ode_spec_from_dict(cls, data, file)
        ctx = _Ctx(file if file is not None else "<model>")
        top = {
            "schema_version",
            "model",
            "analytes",
            "covariates",
            "parameters",
            "compartments",
            "flows",
            "chains",
            "variability",
            "residual",
        }
        ctx.keys(
            data, "", top, {"schema_version", "model", "analytes", "parameters", "compartments"}
        )
        _check_names(ctx, data)
        meta = cls._read_metadata(ctx, data)
        analytes = cls._read_analytes(ctx, ctx.table(data, "analytes"))
        parent = next(a for a, v in analytes.items() if v["role"] == "parent")
        covariates = cls._read_covariates(ctx, ctx.table(data, "covariates", required=False))
        parameters = cls._read_parameters(ctx, ctx.table(data, "parameters"), covariates)
        compartments, dose = cls._read_compartments(ctx, ctx.table(data, "compartments"), analytes)
        flows = cls._read_flows(ctx, data.get("flows", []), compartments)
        cls._expand_chains(ctx, data.get("chains", []), compartments, flows, analytes)
        used = cls._check_references(ctx, parameters, compartments, flows, analytes)
        unused = sorted(set(parameters) - used)
        if unused:
            raise ctx.err(
                f"parameters.{unused[0]}",
                "defined but not used by any compartment, flow or effect site (a typo?)",
            )
        outputs = cls._make_outputs(ctx, compartments, analytes, parent)
        variability = cls._read_variability(ctx, data.get("variability", []), parameters)
        residual = cls._read_residual(
            ctx, ctx.table(data, "residual", required=False), outputs, analytes
        )
        spec = cls(
            file=Path(file) if file is not None else None,
            **meta,
            analytes=analytes,
            parameters=parameters,
            covariates=covariates,
            compartments=compartments,
            flows=flows,
            variability=variability,
            residual=residual,
            outputs=outputs,
            dose_compartment=dose,
            parent=parent,
            raw=data,
        )
        spec._compile()
        # Positivity of the typical values as written (volumes > 0, rates >= 0).
        spec._check_theta(spec.theta_typical, "typical values")
        return spec

    @staticmethod
    def _read_metadata(ctx, data) -> dict:
        """`schema_version` and the [model] table, as keyword arguments of the spec
        (shared by compartment models and ``[ode]`` models)."""
        if isinstance(data["schema_version"], bool) or data["schema_version"] != 1:
            raise ctx.err("schema_version", f"{data['schema_version']!r} unsupported; expected 1")
        meta = ctx.table(data, "model")
        ctx.keys(
            meta,
            "model",
            {
                "name",
                "drug",
                "title",
                "citation",
                "doi",
                "population",
                "sampling_site",
                "notes",
                "description",
            },
            {"name", "drug", "citation", "population", "sampling_site"},
        )
        site = ctx.string(meta, "model", "sampling_site")
        if site not in SAMPLING_SITES:
            raise ctx.err(
                "model.sampling_site", f"{site!r}; expected one of {', '.join(SAMPLING_SITES)}"
            )
        notes = meta.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise ctx.err("model.notes", "expected a list of strings")
        return {
            "name": ctx.string(meta, "model", "name"),
            "drug": ctx.string(meta, "model", "drug"),
            "title": ctx.string(meta, "model", "title", required=False, default=""),
            "citation": ctx.string(meta, "model", "citation"),
            "doi": ctx.string(meta, "model", "doi", required=False, default=""),
            "population": ctx.string(meta, "model", "population"),
            "sampling_site": site,
            "notes": tuple(notes),
        }

    @staticmethod
    def _read_analytes(ctx, tab):
        if not tab:
            raise ctx.err("analytes", "at least one analyte (the parent drug) is required")
        out = {}
        for name, key, d in ctx.entries(tab, "analytes", "expected a table"):
            ctx.keys(
                d, key, {"role", "molar_mass", "description", "source", "tag", "note"}, {"role"}
            )
            role = ctx.string(d, key, "role")
            if role not in ROLES:
                raise ctx.err(f"{key}.role", f"{role!r}; expected one of {', '.join(ROLES)}")
            mm = None
            if "molar_mass" in d:
                mm = parse_quantity(
                    d["molar_mass"], "molar_mass", file=ctx.file, key=f"{key}.molar_mass"
                ).value
                if mm <= 0:
                    raise ctx.err(f"{key}.molar_mass", f"{d['molar_mass']!r} must be > 0")
                _source(ctx, d, key)
            out[name] = {"role": role, "molar_mass": mm, "description": d.get("description", name)}
        parents = [a for a, v in out.items() if v["role"] == "parent"]
        if len(parents) != 1:
            raise ctx.err(
                "analytes", f"exactly one analyte must have role = 'parent', found {len(parents)}"
            )
        return out

    @staticmethod
    def _read_covariates(ctx, tab):
        out = {}
        for name, key, d in ctx.entries(tab, "covariates", "expected a table"):
            ctx.keys(
                d,
                key,
                {
                    "unit",
                    "reference",
                    "range",
                    "levels",
                    "default",
                    "description",
                    "source",
                    "tag",
                    "note",
                },
            )
            levels = d.get("levels", [])
            if not isinstance(levels, list) or not all(isinstance(x, str) for x in levels):
                raise ctx.err(f"{key}.levels", f"expected a list of strings, got {levels!r}")
            unit = d.get("unit", "")
            ref = d.get("reference")
            rng = d.get("range")
            if levels:
                if ref is not None or rng is not None:
                    raise ctx.err(
                        key,
                        "a categorical covariate (with `levels`) takes no `reference` or `range`",
                    )
                default = d.get("default")
                if default is not None and default not in levels:
                    raise ctx.err(f"{key}.default", f"{default!r} is not one of {levels}")
            else:
                if not isinstance(unit, str):
                    raise ctx.err(f"{key}.unit", f"expected a string, got {unit!r}")
                if ref is not None:
                    ref = ctx.number(d, key, "reference")
                if rng is not None:
                    if (
                        not isinstance(rng, list)
                        or len(rng) != 2
                        or not all(
                            isinstance(v, int | float)
                            and not isinstance(v, bool)
                            and math.isfinite(v)
                            for v in rng
                        )
                        or rng[0] > rng[1]
                    ):
                        raise ctx.err(
                            f"{key}.range",
                            f"expected [low, high] numbers with low <= high, got {rng!r}",
                        )
                    rng = (float(rng[0]), float(rng[1]))
                    _source(ctx, d, key)
                default = d.get("default", ref)
            out[name] = Covariate(
                name, unit, ref, rng, tuple(levels), default, d.get("description", name)
            )
        return out

    @staticmethod
    def _read_parameters(ctx, tab, covariates, kinds=_PARAM_KINDS):
        out = {}
        for name, key, d in ctx.entries(
            tab, "parameters", "expected a table with `value`, `source` and `tag`"
        ):
            ctx.keys(
                d,
                key,
                {
                    "value",
                    "kind",
                    "weight_exponent",
                    "covariates",
                    "description",
                    "source",
                    "tag",
                    "note",
                },
                {"value"},
            )
            kind = d.get("kind")
            if kind is not None and kind not in kinds:
                raise ctx.err(f"{key}.kind", f"{kind!r}; expected one of {kinds}")
            parsed = None
            val = d["value"]
            try_kinds = [kind] if kind else list(kinds)
            for k in try_kinds:
                try:
                    parsed = parse_quantity(
                        val,
                        k,
                        allow_per_kg=k in ("volume", "clearance"),
                        file=ctx.file,
                        key=f"{key}.value",
                    )
                    kind = k
                    break
                except Exception as exc:  # try the next kind
                    last = exc
            if parsed is None:
                if (
                    (kind is not None and len(try_kinds) == 1)
                    or "unknown unit" in str(last)
                    or "cannot read" in str(last)
                ):
                    raise last
                raise ctx.err(
                    f"{key}.value",
                    f"{val!r}: expected a volume (L), clearance "
                    "(L/h), rate constant (1/h), time (h) or a plain number",
                )
            if not math.isfinite(parsed.value):
                raise ctx.err(f"{key}.value", f"{val!r} is not finite")
            wexp = 0.0
            if "weight_exponent" in d:
                wexp = ctx.number(d, key, "weight_exponent")
                if parsed.per_kg:
                    raise ctx.err(
                        f"{key}.weight_exponent",
                        f"{val!r} is already per kg (linear in weight); remove `weight_exponent`",
                    )
                if "weight" not in covariates or covariates["weight"].reference is None:
                    raise ctx.err(
                        f"{key}.weight_exponent",
                        "needs a `covariates.weight` table with a `reference` weight",
                    )
            if parsed.per_kg and "weight" not in covariates:
                raise ctx.err(f"{key}.value", f"{val!r} is per kg: declare `covariates.weight`")
            effects = []
            for i, ce in enumerate(d.get("covariates", [])):
                ekey = f"{key}.covariates[{i}]"
                if not isinstance(ce, dict):
                    raise ctx.err(ekey, "expected a table")
                ctx.keys(
                    ce,
                    ekey,
                    {
                        "covariate",
                        "type",
                        "reference",
                        "coefficient",
                        "factors",
                        "source",
                        "tag",
                        "note",
                    },
                    {"covariate", "type"},
                )
                cname = ctx.string(ce, ekey, "covariate")
                if cname not in covariates:
                    raise ctx.err(
                        f"{ekey}.covariate", f"{cname!r} is not declared under `covariates`"
                    )
                ctype = ctx.string(ce, ekey, "type")
                if ctype not in COVARIATE_TYPES:
                    raise ctx.err(
                        f"{ekey}.type", f"{ctype!r}; expected one of {', '.join(COVARIATE_TYPES)}"
                    )
                cov = covariates[cname]
                src = _source(ctx, ce, ekey)
                if ctype == "categorical":
                    if not cov.categorical:
                        raise ctx.err(
                            f"{ekey}.type",
                            f"covariate {cname!r} is continuous; 'categorical' needs `levels`",
                        )
                    factors = ce.get("factors")
                    if not isinstance(factors, dict) or not factors:
                        raise ctx.err(f"{ekey}.factors", "expected a table level = factor")
                    for lev, fac in factors.items():
                        if lev not in cov.levels:
                            raise ctx.err(
                                f"{ekey}.factors.{lev}",
                                f"not a level of {cname!r} ({', '.join(cov.levels)})",
                            )
                        if isinstance(fac, bool) or not isinstance(fac, int | float) or not fac > 0:
                            raise ctx.err(
                                f"{ekey}.factors.{lev}",
                                f"expected a positive multiplier, got {fac!r}",
                            )
                    effects.append(
                        CovariateEffect(
                            cname,
                            ctype,
                            factors={k: float(v) for k, v in factors.items()},
                            source=src,
                        )
                    )
                else:
                    if cov.categorical:
                        raise ctx.err(
                            f"{ekey}.type",
                            f"covariate {cname!r} is categorical; use type = 'categorical'",
                        )
                    refv = ctx.number(ce, ekey, "reference")
                    coef = ctx.number(ce, ekey, "coefficient")
                    if ctype == "power" and refv <= 0:
                        raise ctx.err(
                            f"{ekey}.reference", f"{refv!r} must be > 0 for a power model"
                        )
                    effects.append(CovariateEffect(cname, ctype, refv, coef, source=src))
            out[name] = Parameter(
                name=name,
                value=parsed.value,
                unit_text=str(val),
                kind=kind,
                per_kg=parsed.per_kg,
                weight_exponent=wexp,
                covariates=tuple(effects),
                description=d.get("description", ""),
                source=_source(ctx, d, key),
            )
        if not out:
            raise ctx.err("parameters", "no parameters defined")
        return out

    @staticmethod
    def _read_compartments(ctx, tab, analytes):
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
                    raise ctx.err(
                        f"{key}.dosing", "doses go into a compartment of the parent analyte"
                    )
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

    @staticmethod
    def _read_flows(ctx, flows, comps):
        if not isinstance(flows, list):
            raise ctx.err("flows", "expected an array of tables [[flows]]")
        out = []
        allowed = {
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
        for i, d in enumerate(flows):
            key = f"flows[{i}]"
            if not isinstance(d, dict):
                raise ctx.err(key, "expected a table")
            ctx.keys(d, key, allowed)
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

            def comp(k, d=d, key=key):
                c = d[k]
                if not isinstance(c, str) or c not in comps:
                    raise ctx.err(f"{key}.{k}", f"{c!r} is not a compartment ({', '.join(comps)})")
                if comps[c].type == "effect":
                    raise ctx.err(
                        f"{key}.{k}", f"{c!r} is an effect site; effect sites take no mass flows"
                    )
                return c

            if "between" in d:
                if {"from", "to", "fraction", "molar_ratio"} & set(d):
                    raise ctx.err(
                        key,
                        "`between` describes a two-way distribution flow; "
                        "it takes no `from`, `to`, `fraction` or `molar_ratio`",
                    )
                pair = d["between"]
                if not isinstance(pair, list) or len(pair) != 2:
                    raise ctx.err(f"{key}.between", f"expected two compartment names, got {pair!r}")
                a, b = (
                    comp(0, d=pair, key=f"{key}.between"),
                    comp(1, d=pair, key=f"{key}.between"),
                )
                if rk != "clearance":
                    raise ctx.err(
                        key,
                        "`between` needs an intercompartmental `clearance`; "
                        "give two one-way flows with `rate_constant` instead",
                    )
                if comps[a].analyte != comps[b].analyte:
                    raise ctx.err(
                        f"{key}.between", "distribution links compartments of one analyte"
                    )
                out.append(Flow(a, b, ls.FLOW_CLEARANCE, pname))
                out.append(Flow(b, a, ls.FLOW_CLEARANCE, pname))
                continue
            if "from" not in d:
                raise ctx.err(f"{key}.from", "missing (or use `between`)")
            src = comp("from")
            dst = comp("to") if "to" in d else None
            kind = {
                "clearance": ls.FLOW_CLEARANCE,
                "rate_constant": ls.FLOW_RATE_CONSTANT,
                "mean_transit_time": ls.FLOW_TRANSIT,
            }[rk]
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
            out.append(Flow(src, dst, kind, pname, scale, fparam, fconst, mr))
        return out

    @staticmethod
    def _expand_chains(ctx, chains, comps, flows, analytes):
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
                flows.extend(ModelSpec._read_flows(ctx, sub, comps))
            except ModelError as exc:
                raise ModelError(f"{exc} (in {key})") from None

    @staticmethod
    def _check_references(ctx, params, comps, flows, analytes):
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

    @staticmethod
    def _make_outputs(ctx, comps, analytes, parent):
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

    @staticmethod
    def _read_variability(ctx, blocks, params):
        if not isinstance(blocks, list):
            raise ctx.err("variability", "expected an array of tables [[variability]]")
        out, seen = [], set()
        for i, d in enumerate(blocks):
            key = f"variability[{i}]"
            if not isinstance(d, dict):
                raise ctx.err(key, "expected a table")
            ctx.keys(
                d,
                key,
                {
                    "parameters",
                    "omega",
                    "cv_percent",
                    "cv_convention",
                    "missing",
                    "source",
                    "tag",
                    "note",
                },
                {"parameters"},
            )
            names = d["parameters"]
            if not isinstance(names, list) or not names:
                raise ctx.err(f"{key}.parameters", "expected a list of parameter names")
            for p in names:
                if p not in params:
                    raise ctx.err(f"{key}.parameters", f"{p!r} is not a parameter")
                if p in seen:
                    raise ctx.err(f"{key}.parameters", f"{p!r} appears in two blocks")
                seen.add(p)
            src = _source(ctx, d, key)
            forms = [k for k in ("omega", "cv_percent", "missing") if k in d]
            if len(forms) != 1:
                raise ctx.err(
                    key,
                    "give exactly one of `omega` (variances, log scale), "
                    "`cv_percent`, or `missing = true`",
                )
            n = len(names)
            if "missing" in d:
                if d["missing"] is not True:
                    raise ctx.err(f"{key}.missing", "expected true")
                out.append(VariabilityBlock(tuple(names), None, src))
                continue
            if "cv_percent" in d:
                conv = d.get("cv_convention")
                if conv not in ("lognormal", "sqrt_omega2"):
                    raise ctx.err(
                        f"{key}.cv_convention",
                        f"{conv!r}; expected 'lognormal' "
                        "(CV = sqrt(exp(omega2) - 1)) or 'sqrt_omega2' "
                        "(CV = sqrt(omega2)), as the source defines CV%",
                    )
                cv = d["cv_percent"]
                cvs = cv if isinstance(cv, list) else [cv]
                if len(cvs) != n or not all(isinstance(c, int | float) and c > 0 for c in cvs):
                    raise ctx.err(
                        f"{key}.cv_percent", f"expected {n} positive number(s), got {cv!r}"
                    )
                c = np.asarray(cvs, float) / 100.0
                var = np.log1p(c**2) if conv == "lognormal" else c**2
                omega = np.diag(var)
            else:
                om = d["omega"]
                if n == 1 and isinstance(om, int | float) and not isinstance(om, bool):
                    om = [[om]]
                try:
                    omega = np.asarray(om, dtype=float)
                except (TypeError, ValueError) as exc:
                    raise ctx.err(f"{key}.omega", f"expected a {n}x{n} matrix, got {om!r}") from exc
                if omega.shape != (n, n) or not np.all(np.isfinite(omega)):
                    raise ctx.err(
                        f"{key}.omega",
                        f"expected a finite {n}x{n} matrix (one row per parameter), got {om!r}",
                    )
                if not np.allclose(omega, omega.T, rtol=0, atol=0):
                    raise ctx.err(f"{key}.omega", "matrix is not symmetric")
                if np.any(np.diag(omega) <= 0) or np.min(np.linalg.eigvalsh(omega)) <= 0:
                    raise ctx.err(f"{key}.omega", "matrix is not positive definite")
            out.append(VariabilityBlock(tuple(names), omega, src))
        return out

    @staticmethod
    def _read_residual(ctx, tab, outputs, analytes):
        names = {o.name: o for o in outputs}
        out = {}
        for oname, d in tab.items():
            key = f"residual.{oname}"
            if oname not in names:
                raise ctx.err(key, f"no output named {oname!r} ({', '.join(names)})")
            ctx.keys(
                d,
                key,
                {"type", "proportional_sd", "additive_sd", "sd", "source", "tag", "note"},
                {"type"},
            )
            rtype = d["type"]
            mm = analytes[names[oname].analyte]["molar_mass"]

            def add(k, d=d, key=key, mm=mm):
                return parse_quantity(
                    d[k], "concentration", molar_mass=mm, file=ctx.file, key=f"{key}.{k}"
                ).value

            if rtype == "proportional":
                r = ResidualError(oname, rtype, proportional_sd=ctx.number(d, key, "sd"))
            elif rtype == "exponential":
                r = ResidualError(oname, rtype, proportional_sd=ctx.number(d, key, "sd"))
            elif rtype == "additive":
                r = ResidualError(oname, rtype, additive_sd=add("sd"))
            elif rtype == "combined":
                r = ResidualError(
                    oname,
                    rtype,
                    proportional_sd=ctx.number(d, key, "proportional_sd"),
                    additive_sd=add("additive_sd"),
                )
            else:
                raise ctx.err(
                    f"{key}.type",
                    f"{rtype!r}; expected proportional, additive, combined or exponential",
                )
            if r.proportional_sd < 0 or r.additive_sd < 0:
                raise ctx.err(key, "standard deviations must be >= 0")
            out[oname] = ResidualError(
                r.output, r.type, r.proportional_sd, r.additive_sd, _source(ctx, d, key)
            )
        return out

    # ---- compilation ---------------------------------------------------------------

    def _compile(self) -> None:
        self.param_names = list(self.parameters)
        pidx = {p: i for i, p in enumerate(self.param_names)}
        self.comp_names = list(self.compartments)
        cidx = {c: i for i, c in enumerate(self.comp_names)}
        self.analyte_names = list(self.analytes)
        aidx = {a: i for i, a in enumerate(self.analyte_names)}
        comps_i = np.zeros((len(self.comp_names), 3), dtype=np.int64)
        for i, c in enumerate(self.compartments.values()):
            comps_i[i] = (
                pidx[c.volume] if c.volume else -1,
                aidx[c.analyte],
                1 if c.type == "effect" else 0,
            )
        flows_i = np.zeros((len(self.flows), 5), dtype=np.int64)
        flows_f = np.zeros((len(self.flows), 3))
        for i, f in enumerate(self.flows):
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
                    self.analytes[self.compartments[f.dst].analyte]["molar_mass"]
                    / self.analytes[self.compartments[f.src].analyte]["molar_mass"]
                )
            flows_f[i] = (f.scale, f.fraction, ratio)
        effs = [c for c in self.compartments.values() if c.type == "effect"]
        effects_i = np.zeros((len(effs), 4), dtype=np.int64)
        for i, c in enumerate(effs):
            kind = ls.KE0_HALF_LIFE if self.parameters[c.ke0].kind == "time" else ls.KE0_RATE
            effects_i[i] = (cidx[c.name], cidx[c.link], pidx[c.ke0], kind)
        outputs_i = np.zeros((len(self.outputs), 2), dtype=np.int64)
        for i, o in enumerate(self.outputs):
            outputs_i[i] = (cidx[o.compartment], 1 if o.is_state else 0)
        self.comps_i, self.flows_i, self.flows_f = comps_i, flows_i, flows_f
        self.effects_i, self.outputs_i = effects_i, outputs_i
        self.dose_index = cidx[self.dose_compartment]
        self.n_comp = len(self.comp_names)
        self.n_states = self.n_comp + 1 + len(self.analyte_names) + len(self.outputs)
        self.theta_typical = np.array([p.value for p in self.parameters.values()])

    def system(self, theta: np.ndarray):
        """System matrix ``M`` (N, N), input map ``b`` (N,), output map ``C`` (n_out, n_comp).

        Concentrations ``C @ x[:n_comp]`` are in mg/L. See
        :mod:`pkpd.engine.solvers.linear_system` for the augmented state layout.
        """
        if self.ode is not None:
            raise ModelError(
                f"{self._loc()}a nonlinear [ode] model has no system matrix; simulate it "
                "with method='dopri5', 'rodas' or 'auto'"
            )
        N = self.n_states
        M = np.zeros((N, N))
        b = np.zeros(N)
        C = np.zeros((len(self.outputs), self.n_comp))
        ls.fill_system(
            np.ascontiguousarray(theta, dtype=np.float64),
            self.comps_i,
            self.flows_i,
            self.flows_f,
            self.effects_i,
            self.outputs_i,
            self.dose_index,
            len(self.analyte_names),
            M,
            b,
            C,
        )
        return M, b, C

    # ---- individual parameters ----------------------------------------------------

    @property
    def used_covariates(self) -> set[str]:
        """Covariates the parameters or the equations use (``weight`` for per-kg/allometric)."""
        used = {e.covariate for p in self.parameters.values() for e in p.covariates}
        if self.ode is not None:
            used |= set(self.ode.covariate_names)  # referenced in the equations
        if any(p.per_kg or p.weight_exponent for p in self.parameters.values()):
            used.add("weight")
        return used

    @property
    def paediatric(self) -> bool:
        """True for a model estimated in children: its studied age range ends below
        :data:`ADULT_AGE` years, or its ``population`` says paediatric / children."""
        age = self.covariates.get("age")
        if age is not None and age.range is not None and age.range[1] < ADULT_AGE:
            return True
        return bool(_PAEDIATRIC_RE.search(self.population))

    def accepted_covariates(self) -> list[str]:
        """Covariate names a patient may carry: the model's own, then the patient
        descriptors of :data:`PATIENT_COVARIATES` (weight also scales per-kg doses)."""
        return [*self.covariates, *(c for c in PATIENT_COVARIATES if c not in self.covariates)]

    def check_covariate_names(
        self, names, *, where: str = "", what: str = "covariate", also=(), hint: str = ""
    ) -> list[str]:
        """Raise :class:`CovariateError` for a name that differs from an accepted one only
        in case (or is close to one); return the names not accepted at all.

        `where` prefixes the message (e.g. a file name), `what` names the kind of thing
        (``"covariate"``, ``"column"``), `also` are further accepted names (e.g. ``id``).
        """
        import difflib

        accepted = [*self.accepted_covariates(), *also]
        lower = {a.lower(): a for a in accepted}
        unknown = []
        for n in names:
            if n in accepted:
                continue
            near = lower.get(str(n).strip().lower())
            case = " names are case-sensitive;" if near is not None else ""
            if near is None:
                close = difflib.get_close_matches(str(n), accepted, n=1, cutoff=0.8)
                near = close[0] if close else None
                unknown.append(n)
                if near is None:
                    continue
            raise CovariateError(
                f"{where}unknown {what} {n!r} for model {self.name!r}: did you mean `{near}`? "
                f"({case} expected one of {', '.join(accepted)}){hint}".replace("( ", "(")
            )
        return unknown

    def _unknown_covariates(self, names, where: str = "", what: str = "covariate", hint=""):
        unknown = self.check_covariate_names(names, where=where, what=what, hint=hint)
        if unknown:
            raise CovariateError(
                f"{where}unknown {what} {unknown[0]!r} for model {self.name!r}; expected one "
                f"of {', '.join(self.accepted_covariates())}{hint}"
            )

    def report_default(self, name: str, *, need=(), source: str = "", stacklevel: int = 2) -> Any:
        """The default of covariate `name`, which the caller did not supply, said loudly.

        Issues a :class:`CovariateDefaultWarning` naming the covariate and the value; raises
        :class:`CovariateError` when there is no default, or when the model is
        :attr:`paediatric` and the default is a continuous one (an adult reference such
        as the 70-kg allometric standard is not a child's weight). `need` names the
        covariates the regimen needs (``weight`` for per-kg doses); `source` says where the
        covariates were looked for (e.g. a population), for the message.
        """
        cov = self.covariates.get(name)
        for_ = " and its per-kg doses" if name in need else ""
        src = f" by {source}" if source else ""
        if cov is None or cov.default is None:
            raise CovariateError(
                f"{self._loc()}covariate `{name}` is required by the model{for_} and has no "
                f"default: it was not given{src}"
            )
        if cov.categorical or not isinstance(cov.default, int | float):
            value = repr(cov.default)
        else:
            value = f"{cov.default:g} {cov.unit}".strip()
        if self.paediatric and not cov.categorical:
            studied = ", ".join(
                f"{c.name} {c.range[0]:g}-{c.range[1]:g} {c.unit}".strip()
                for c in self.covariates.values()
                if c.range is not None
            )
            raise CovariateError(
                f"{self._loc()}covariate `{name}` was not given{src}: model {self.name!r} was "
                f"estimated in children{f' ({studied})' if studied else ''} and its default "
                f"{value} is an adult reference, not a child's value: pass `{name}`"
            )
        warnings.warn(
            f"model {self.name!r}: covariate `{name}` not given{src}: using the model default "
            f"{value} for the run{for_} (pass `{name}` to silence this)",
            CovariateDefaultWarning,
            stacklevel=stacklevel,
        )
        return cov.default

    def covariate_values(
        self,
        covariates: dict | None = None,
        *,
        warn: bool = True,
        stacklevel: int = 2,
        need=(),
    ) -> dict[str, Any]:
        """Complete and check a patient's covariates.

        Names must be those of the model's covariates or the patient descriptors
        :data:`PATIENT_COVARIATES` (an unknown name, or a wrong case such as ``Race``
        for ``race``, is a :class:`CovariateError`). A covariate the model uses (or one
        named in `need`, e.g. ``weight`` for per-kg doses) that is not given takes the
        model's `default` with a :class:`CovariateDefaultWarning` naming it (see
        :meth:`report_default`: an error for continuous covariates of a paediatric
        model, and where there is no default). Physiologically impossible values of age,
        weight, height and BMI (:data:`pkpd.inputs.population.PLAUSIBLE`) and unknown levels
        are errors; values outside the studied `range` issue a
        :class:`CovariateRangeWarning` (for arrays, one message counting the patients).

        `warn=False` is for callers that have reported the defaults and ranges already
        (a cohort checks its population once) or want reference values
        (:meth:`typical_theta`): no warnings and no default errors; names and values are
        still checked.
        """
        from pkpd.inputs.population import implausible

        given = dict(covariates or {})
        self._unknown_covariates(given)
        used = self.used_covariates | set(need)
        out = {}
        for name, cov in self.covariates.items():
            if name in given and given[name] is not None:
                v = given.pop(name)
            elif cov.default is not None:
                given.pop(name, None)
                if warn and name in used:
                    v = self.report_default(name, need=need, stacklevel=stacklevel + 1)
                else:
                    v = cov.default
            elif name not in used:
                continue  # declared for range checks only, and not given
            else:
                raise CovariateError(
                    f"{self._loc()}covariate `{name}` is required by the model "
                    "and has no default: pass it"
                )
            if cov.categorical:
                # One value or an array of patients (a cohort), of str or object dtype.
                a = np.asarray(v)
                vals = np.unique(a).tolist() if a.dtype.kind == "U" else a.ravel().tolist()
                bad = [x for x in vals if not (isinstance(x, str) and x in cov.levels)]
                if bad:
                    count = f" ({len(bad)} unknown levels)" if len(bad) > 1 else ""
                    raise CovariateError(
                        f"{self._loc()}covariate `{name}` = {bad[0]!r}{count}; expected one "
                        f"of {', '.join(cov.levels)}"
                    )
            else:
                try:
                    arr = np.asarray(v, dtype=float)
                except (TypeError, ValueError):
                    raise CovariateError(
                        f"{self._loc()}covariate `{name}` = {v!r}: expected a number "
                        f"({cov.unit or 'no unit'})"
                    ) from None
                why = implausible(name, arr)
                if why is None and not np.all(np.isfinite(arr)):
                    why = "expected a finite number"
                if why is None and name in ("weight", "height") and np.any(arr <= 0):
                    why = "expected a positive number"
                if why is not None:
                    shown = f" = {v!r}" if arr.ndim == 0 else ""
                    raise CovariateError(f"{self._loc()}covariate `{name}`{shown}: {why}")
                if warn and cov.range is not None:
                    self._range_warning(name, cov, arr, stacklevel + 1)
                v = arr if arr.ndim else float(arr)
            out[name] = v
        # Keep the other patient descriptors (e.g. weight for per-kg doses when the model
        # has none), checked as the model's own.
        for name, v in given.items():
            if v is None:
                continue
            if name == "sex":
                arr = np.asarray(v, dtype=object)
                bad = [x for x in arr.flat if x not in ("female", "male")]
                if bad:
                    raise CovariateError(
                        f"{self._loc()}covariate `sex` = {bad[0]!r}; expected 'female' or 'male'"
                    )
            else:
                why = implausible(name, v)
                if why is not None:
                    shown = f" = {v!r}" if np.ndim(v) == 0 else ""
                    raise CovariateError(f"{self._loc()}covariate `{name}`{shown}: {why}")
            out[name] = v
        if "weight" in need and out.get("weight") is None:
            raise CovariateError(
                f"{self._loc()}the regimen has per-kg doses: pass covariate `weight` (kg)"
            )
        return out

    def _range_warning(self, name: str, cov: Covariate, arr: np.ndarray, stacklevel: int):
        lo, hi = cov.range
        out = (arr < lo) | (arr > hi)
        if not out.any():
            return
        if arr.ndim:
            what = (
                f"{int(out.sum())} of {arr.size} patients have covariate `{name}` "
                f"({arr[out].min():.4g} to {arr[out].max():.4g} {cov.unit}) outside"
            )
        else:
            what = f"covariate `{name}` = {float(arr):g} {cov.unit} is outside"
        warnings.warn(
            f"model {self.name!r}: {what} the studied range [{lo:g}, {hi:g}] {cov.unit}; "
            "predictions are extrapolations",
            CovariateRangeWarning,
            stacklevel=stacklevel,
        )

    def individual_parameters(
        self,
        covariates: dict | None = None,
        eta: dict[str, float] | np.ndarray | None = None,
        *,
        warn: bool = True,
    ) -> np.ndarray:
        """Individual parameters in internal units, in :attr:`param_names` order.

        ``P = TV * (WT/WTref)^exponent * prod(covariate effects) * exp(eta)``; per-kg
        typical values are multiplied by the weight instead of the allometric term.

        Parameters
        ----------
        covariates : dict
            Covariate name -> value (scalar or array of patients).
        eta : dict or array, optional
            Random effects on the log scale, by parameter name, or an array of shape
            ``(..., n_par)``.

        Returns
        -------
        theta : ndarray, shape (n_par,) or (n_patients, n_par)
        """
        cov = self.covariate_values(covariates, warn=warn, stacklevel=3)
        cols = []
        for p in self.parameters.values():
            v = np.asarray(p.value, dtype=float)
            if p.per_kg:
                v = v * np.asarray(cov["weight"], dtype=float)
            if p.weight_exponent:
                wref = self.covariates["weight"].reference
                v = v * (np.asarray(cov["weight"], dtype=float) / wref) ** p.weight_exponent
            for e in p.covariates:
                x = cov[e.covariate]
                if e.type == "categorical":
                    xs = np.asarray(x, dtype=object)
                    fac = np.vectorize(lambda s, e=e: e.factors.get(s, 1.0), otypes=[float])
                    v = v * fac(xs)
                elif e.type == "power":
                    v = v * (np.asarray(x, float) / e.reference) ** e.coefficient
                elif e.type == "linear":
                    v = v * (1.0 + e.coefficient * (np.asarray(x, float) - e.reference))
                else:
                    v = v * np.exp(e.coefficient * (np.asarray(x, float) - e.reference))
            cols.append(v)
        theta = np.stack(np.broadcast_arrays(*cols), axis=-1)
        if eta is not None:
            if isinstance(eta, dict):
                unknown = set(eta) - set(self.parameters)
                if unknown:
                    raise ModelError(f"{self._loc()}eta for unknown parameter(s) {sorted(unknown)}")
                e = np.zeros(len(self.param_names))
                for k, val in eta.items():
                    e[self.param_names.index(k)] = val
            else:
                e = np.asarray(eta, dtype=float)
            theta = theta * np.exp(e)
        self._check_theta(theta, "individual parameters")
        return theta

    def _check_theta(self, theta, what):
        theta = np.atleast_2d(theta)
        for i, p in enumerate(self.parameters.values()):
            col = theta[:, i]
            if not np.all(np.isfinite(col)):
                raise ModelError(f"{self._loc()}`parameters.{p.name}`: non-finite {what}")
            if p.kind in ("volume", "time") and np.any(col <= 0):
                raise ModelError(
                    f"{self._loc()}`parameters.{p.name}` = {p.unit_text!r}: "
                    f"{what} must be > 0 (a {p.kind})"
                )
            if np.any(col < 0):
                raise ModelError(
                    f"{self._loc()}`parameters.{p.name}` = {p.unit_text!r}: {what} must be >= 0"
                )
            if (
                p.kind == "dimensionless"
                and np.any(col > 1)
                and any(f.fraction_param == p.name for f in self.flows)
            ):
                raise ModelError(f"{self._loc()}`parameters.{p.name}`: a fraction must be <= 1")

    def _loc(self) -> str:
        return f"{self.file}: " if self.file else f"model {self.name!r}: "

    # ---- provenance -----------------------------------------------------------------

    @property
    def assumed_parameters(self) -> list[str]:
        """Names of parameters whose value is assumed rather than from the literature."""
        return [p.name for p in self.parameters.values() if p.source.tag == "assumed"]

    def verification_summary(self) -> str:
        """One line such as ``"6 code-unconfirmed, 1 assumed"``."""
        counts: dict[str, int] = {}
        for p in self.parameters.values():
            counts[p.source.tag] = counts.get(p.source.tag, 0) + 1
        return ", ".join(f"{n} {t}" for t, n in counts.items())

    def provenance_attrs(self) -> dict[str, str]:
        """Dataset attributes recording the model and how far its numbers are verified."""
        return {
            "model": self.name,
            "model_title": self.title,
            "model_drug": self.drug,
            "model_citation": self.citation,
            "model_doi": self.doi,
            "model_population": self.population,
            "model_sampling_site": self.sampling_site,
            "model_verification": self.verification_summary(),
            "model_assumed_parameters": ", ".join(self.assumed_parameters) or "none",
            "model_covariate_ranges": "; ".join(
                f"{c.name} {c.range[0]:g}-{c.range[1]:g} {c.unit}"
                for c in self.covariates.values()
                if c.range
            )
            or "not reported",
        }

    def typical_theta(self) -> np.ndarray:
        """Typical parameter values (reference covariates, no random effects)."""
        return self.individual_parameters({}, warn=False)

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def molar_mass(self, analyte: str | None = None) -> float | None:
        return self.analytes[analyte or self.parent]["molar_mass"]
