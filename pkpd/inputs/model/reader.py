"""Model files to validated records: the file-level checks, the sections every model
has (metadata, analytes, covariates, parameters, variability, residual error) and the
dispatch to the structure of either kind (:mod:`pkpd.inputs.model.linear` for compartments
and flows, :mod:`pkpd.inputs.model.equations` for an ``[ode]`` section).

Every error names the file, the key, the offending value and what was expected.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from pkpd.errors import ModelError
from pkpd.inputs.model import linear
from pkpd.inputs.model.equations import read_ode
from pkpd.inputs.model.schema import (
    COVARIATE_TYPES,
    ODE_PARAM_KINDS,
    PARAM_KINDS,
    ROLES,
    SAMPLING_SITES,
    TAGS,
    Covariate,
    CovariateEffect,
    Output,
    Parameter,
    ResidualError,
    Source,
    VariabilityBlock,
)
from pkpd.inputs.units import parse_quantity

__all__ = ["read_model"]

#: Top-level tables of a linear model file and of an ``[ode]`` model file.
_LINEAR_TOP = {
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
_ODE_TOP = {
    "schema_version",
    "model",
    "analytes",
    "covariates",
    "parameters",
    "variability",
    "residual",
    "ode",
}


def read_model(data: dict, file) -> dict:
    """Validate a parsed model file (see ``models/README.md``): the keyword arguments of a
    :class:`~pkpd.inputs.model.ModelSpec`, its structure of either kind included."""
    if isinstance(data, dict) and "ode" in data:
        return _read_ode_model(data, file)  # nonlinear models: equations, not flows
    return _read_linear_model(data, file)


def _read_linear_model(data: dict, file) -> dict:
    ctx = _Ctx(file if file is not None else "<model>")
    ctx.keys(
        data,
        "",
        _LINEAR_TOP,
        {"schema_version", "model", "analytes", "parameters", "compartments"},
    )
    _check_names(ctx, data)
    meta = read_metadata(ctx, data)
    analytes = read_analytes(ctx, ctx.table(data, "analytes"))
    parent = next(a for a, v in analytes.items() if v["role"] == "parent")
    covariates = read_covariates(ctx, ctx.table(data, "covariates", required=False))
    parameters = read_parameters(ctx, ctx.table(data, "parameters"), covariates)
    compartments, flows, outputs, dose = linear.read_structure(
        ctx, data, parameters, analytes, parent
    )
    variability = read_variability(ctx, data.get("variability", []), parameters)
    residual = read_residual(ctx, ctx.table(data, "residual", required=False), outputs, analytes)
    structure = linear.compile_structure(compartments, flows, parameters, analytes, outputs, dose)
    return _spec_fields(
        file,
        data,
        meta,
        analytes=analytes,
        parameters=parameters,
        covariates=covariates,
        variability=variability,
        residual=residual,
        outputs=outputs,
        dose_compartment=dose,
        parent=parent,
        structure=structure,
    )


def _read_ode_model(data: dict, file) -> dict:
    """A model file with an ``[ode]`` section: metadata, covariates, parameters,
    variability and residual error are read as for linear models; the structure is the
    ``[ode]`` section."""
    ctx = _Ctx(file if file is not None else "<model>")
    for k in ("compartments", "flows", "chains"):
        if k in data:
            raise ctx.err(k, "a model with an [ode] section writes its structure as equations")
    ctx.keys(data, "", _ODE_TOP, {"schema_version", "model", "parameters", "ode"})
    _check_names(ctx, data)
    meta = read_metadata(ctx, data)
    drug = meta["drug"]
    if "analytes" in data:
        analytes = read_analytes(ctx, ctx.table(data, "analytes"))
    else:
        analytes = {"drug": {"role": "parent", "molar_mass": None, "description": drug}}
    parent = next(a for a, v in analytes.items() if v["role"] == "parent")
    covariates = read_covariates(ctx, ctx.table(data, "covariates", required=False))
    parameters = read_parameters(
        ctx, ctx.table(data, "parameters"), covariates, kinds=ODE_PARAM_KINDS
    )
    ode = read_ode(ctx, ctx.table(data, "ode"), parameters, covariates)
    outputs = [Output(o.name, ode.dose_state, parent, o.long_name, False) for o in ode.outputs]
    variability = read_variability(ctx, data.get("variability", []), parameters)
    residual = read_residual(ctx, ctx.table(data, "residual", required=False), outputs, analytes)
    return _spec_fields(
        file,
        data,
        meta,
        analytes=analytes,
        parameters=parameters,
        covariates=covariates,
        variability=variability,
        residual=residual,
        outputs=outputs,
        dose_compartment=ode.dose_state,
        parent=parent,
        structure=ode,
    )


def _spec_fields(file, data: dict, meta: dict, **parts) -> dict:
    """The keyword arguments of a ``ModelSpec``: file, metadata, the validated parts and
    the parsed file as read (``raw``)."""
    return {"file": Path(file) if file is not None else None, **meta, **parts, "raw": data}


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


# ----------------------------------------------------------------------------- sections


def read_metadata(ctx, data) -> dict:
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


def read_analytes(ctx, tab):
    if not tab:
        raise ctx.err("analytes", "at least one analyte (the parent drug) is required")
    out = {}
    for name, key, d in ctx.entries(tab, "analytes", "expected a table"):
        ctx.keys(d, key, {"role", "molar_mass", "description", "source", "tag", "note"}, {"role"})
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


def read_covariates(ctx, tab):
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
                        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
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


def read_parameters(ctx, tab, covariates, kinds=PARAM_KINDS):
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
        val = d["value"]
        parsed, kind = _read_value(ctx, d, key, kinds)
        wexp = _read_weight_exponent(ctx, d, key, parsed, covariates)
        if parsed.per_kg and "weight" not in covariates:
            raise ctx.err(f"{key}.value", f"{val!r} is per kg: declare `covariates.weight`")
        effects = [
            _read_effect(ctx, ce, f"{key}.covariates[{i}]", covariates, kind, parsed.per_kg)
            for i, ce in enumerate(d.get("covariates", []))
        ]
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


def _read_value(ctx, d: dict, key: str, kinds):
    """The parameter's value in internal units and its kind: the declared `kind`, or the
    first of `kinds` the value reads as."""
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
    return parsed, kind


def _read_weight_exponent(ctx, d: dict, key: str, parsed, covariates) -> float:
    if "weight_exponent" not in d:
        return 0.0
    wexp = ctx.number(d, key, "weight_exponent")
    if parsed.per_kg:
        raise ctx.err(
            f"{key}.weight_exponent",
            f"{d['value']!r} is already per kg (linear in weight); remove `weight_exponent`",
        )
    if "weight" not in covariates or covariates["weight"].reference is None:
        raise ctx.err(
            f"{key}.weight_exponent",
            "needs a `covariates.weight` table with a `reference` weight",
        )
    ref = covariates["weight"].reference
    if ref <= 0:  # (weight / reference) ** exponent
        raise ctx.err(
            "covariates.weight.reference",
            f"{ref:g} must be > 0: it is the reference weight of `{key}.weight_exponent`",
        )
    return wexp


def _read_effect(ctx, ce, ekey: str, covariates, kind=None, per_kg=False) -> CovariateEffect:
    """One entry of a parameter's ``covariates`` list (`kind`, `per_kg`: the parameter's)."""
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
            "slope",
            "factors",
            "source",
            "tag",
            "note",
        },
        {"covariate", "type"},
    )
    cname = ctx.string(ce, ekey, "covariate")
    if cname not in covariates:
        raise ctx.err(f"{ekey}.covariate", f"{cname!r} is not declared under `covariates`")
    ctype = ctx.string(ce, ekey, "type")
    if ctype not in COVARIATE_TYPES:
        raise ctx.err(f"{ekey}.type", f"{ctype!r}; expected one of {', '.join(COVARIATE_TYPES)}")
    cov = covariates[cname]
    src = _source(ctx, ce, ekey)
    if ctype == "categorical":
        return _categorical_effect(ctx, ce, ekey, cov, src)
    if cov.categorical:
        raise ctx.err(
            f"{ekey}.type",
            f"covariate {cname!r} is categorical; use type = 'categorical'",
        )
    refv = ctx.number(ce, ekey, "reference")
    if ctype == "additive_above":
        return _additive_above(ctx, ce, ekey, cname, refv, kind, per_kg, src)
    if "slope" in ce:
        raise ctx.err(
            f"{ekey}.slope",
            f"only an 'additive_above' effect takes `slope`; a {ctype!r} effect takes "
            "`coefficient`",
        )
    coef = ctx.number(ce, ekey, "coefficient")
    if ctype == "power" and refv <= 0:
        raise ctx.err(f"{ekey}.reference", f"{refv!r} must be > 0 for a power model")
    return CovariateEffect(cname, ctype, refv, coef, source=src)


def _additive_above(ctx, ce, ekey, cname, refv, kind, per_kg, src) -> CovariateEffect:
    """``P + slope * max(0, x - reference)``: `slope` is a quantity in the parameter's own
    unit, per unit of the covariate (e.g. ``"-2.19 L/h"`` per year of age above 60)."""
    if "coefficient" in ce:
        raise ctx.err(
            f"{ekey}.coefficient",
            "an 'additive_above' effect takes `slope` (a quantity in the parameter's unit, "
            "per unit of the covariate, e.g. '-2.19 L/h'), not `coefficient`",
        )
    if "slope" not in ce:
        raise ctx.err(
            f"{ekey}.slope",
            "missing: an 'additive_above' effect needs `slope` (e.g. '-2.19 L/h')",
        )
    if per_kg or kind is None:
        raise ctx.err(
            f"{ekey}.type",
            "'additive_above' needs a parameter with a fixed unit (not a per-kg value)",
        )
    slope = parse_quantity(ce["slope"], kind, file=ctx.file, key=f"{ekey}.slope").value
    if not math.isfinite(slope):
        raise ctx.err(f"{ekey}.slope", f"{ce['slope']!r} is not finite")
    return CovariateEffect(cname, "additive_above", refv, slope, source=src)


def _categorical_effect(ctx, ce, ekey: str, cov: Covariate, src) -> CovariateEffect:
    cname = cov.name
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
    return CovariateEffect(
        cname,
        "categorical",
        factors={k: float(v) for k, v in factors.items()},
        source=src,
    )


def read_variability(ctx, blocks, params):
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
                raise ctx.err(f"{key}.cv_percent", f"expected {n} positive number(s), got {cv!r}")
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


def read_residual(ctx, tab, outputs, analytes):
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
