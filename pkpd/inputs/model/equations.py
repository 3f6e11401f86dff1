"""The ``[ode]`` section of a model file: states, intermediates, derivatives and outputs
read into an :class:`~pkpd.inputs.model.schema.OdeSystem`.

A model file with an ``[ode]`` section writes its right-hand side as equations (schema in
``models/README.md``)::

    [ode]
    dose_state = "central"
    [ode.states.central]
    initial = 0
    unit = "mg"
    [ode.intermediates]
    cp = "central / V1"
    [ode.derivatives]
    central = "rate - Vmax * cp / (Km + cp) - Q2 * (cp - peripheral / V2)"
    [ode.outputs.cp]
    expression = "cp"
    concentration = true

Parameters, covariates, variability, residual error and provenance are those of any
model file (:mod:`pkpd.inputs.model.reader`). Each equation is checked and translated by
:func:`pkpd.inputs.model.expressions.parse_expression`.
"""

from __future__ import annotations

from pkpd.errors import UnitError
from pkpd.inputs.model.expressions import (
    GENERATED_NAMES,
    GENERATED_PREFIXES,
    NAME_RE,
    RATE,
    RESERVED,
    TAFD,
    TIME,
    parse_expression,
)
from pkpd.inputs.model.schema import OdeOutput, OdeState, OdeSystem
from pkpd.inputs.units import parse_quantity

__all__ = ["read_ode"]


def read_ode(ctx, ode: dict, params: dict, covariates: dict) -> OdeSystem:
    """Validate the ``[ode]`` table against the model's parameters and covariates."""
    ctx.keys(
        ode,
        "ode",
        {"states", "intermediates", "derivatives", "outputs", "dose_state", "stiff", "notes"},
        {"states", "derivatives", "outputs", "dose_state"},
    )
    stiff = ode.get("stiff", False)
    if not isinstance(stiff, bool):
        raise ctx.err("ode.stiff", f"expected true or false, got {stiff!r}")
    states_t = ctx.table(ode, "ode.states")
    if not states_t:
        raise ctx.err("ode.states", "at least one state is required")
    eq = _Equations(ctx, params, covariates, list(states_t))
    states = eq.states(states_t)
    intermediates = eq.intermediates(ctx.table(ode, "ode.intermediates", required=False))
    derivatives = eq.derivatives(ctx.table(ode, "ode.derivatives"))
    dose = ctx.string(ode, "ode", "dose_state")
    if dose not in eq.state_names:
        raise ctx.err("ode.dose_state", f"{dose!r} is not a state ({', '.join(eq.state_names)})")
    if RATE not in eq.closure(eq.deps[f"d/dt {dose}"]):
        raise ctx.err(
            f"ode.derivatives.{dose}",
            f"the dose state's derivative must contain the infusion input `{RATE}` "
            "(mg/h), or infusions would be ignored",
        )
    outputs = eq.outputs(ctx.table(ode, "ode.outputs"))
    unused = [p for p in params if p not in eq.closure(eq.used_all)]
    if unused:
        raise ctx.err(
            f"parameters.{unused[0]}", "defined but not used by any [ode] equation (a typo?)"
        )
    all_used = eq.closure(eq.used_all)
    return OdeSystem(
        file=ctx.file,
        states=states,
        intermediates=intermediates,
        derivatives=derivatives,
        outputs=outputs,
        dose_state=dose,
        stiff=stiff,
        param_names=list(params),
        covariate_names=[c for c in covariates if c in eq.numeric_cov and c in all_used],
        # The right-hand side depends on time through `t` or `tafd` (a non-autonomous
        # system: Rodas4 then differentiates in t).
        uses_time=bool({TIME, TAFD} & all_used),
        uses_tafd=TAFD in all_used,
        rate_dependent=frozenset(n for n, _, _ in intermediates if RATE in eq.closure(eq.deps[n])),
    )


class _Equations:
    """The names an ``[ode]`` section defines, in order, and what each equation uses.

    Names are claimed once (parameters, covariates, states, then intermediates in file
    order); an equation may use the names known when it is read, so an intermediate may
    use earlier intermediates only.
    """

    def __init__(self, ctx, params: dict, covariates: dict, state_names: list[str]):
        self.ctx = ctx
        self.taken: dict[str, str] = {}
        for p in params:
            self.claim(p, f"parameters.{p}")
        self.numeric_cov = {c for c, v in covariates.items() if not v.categorical}
        for c in covariates:
            self.claim(c, f"covariates.{c}")
        self.base_known = set(params) | self.numeric_cov
        self.state_names = state_names
        for s in state_names:
            self.claim(s, f"ode.states.{s}")
        self.known = self.base_known | set(state_names) | {TIME, TAFD, RATE}
        self.used_all: set[str] = set()
        self.deps: dict[str, set[str]] = {}

    def claim(self, name, key) -> None:
        ctx = self.ctx
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ctx.err(key, f"{name!r} is not a valid name (letters, digits, _; a letter first)")
        if name in RESERVED:
            raise ctx.err(key, f"{name!r} is reserved ({', '.join(sorted(RESERVED))})")
        if name in self.taken:
            raise ctx.err(key, f"{name!r} is already defined as {self.taken[name]}")
        self.taken[name] = key

    def parse(self, text, known: set[str], key: str) -> tuple[str, set[str]]:
        src, used = parse_expression(text, known, file=self.ctx.file, key=key)
        self.used_all |= used
        return src, used

    def closure(self, names) -> set[str]:
        """`names` and, transitively, the names the intermediates among them use."""
        out, todo = set(), list(names)
        while todo:
            n = todo.pop()
            if n in out:
                continue
            out.add(n)
            todo.extend(self.deps.get(n, ()))
        return out

    def states(self, states_t: dict) -> list[OdeState]:
        ctx = self.ctx
        states = []
        for s, key, d in ctx.entries(states_t, "ode.states", "expected a table with `initial`"):
            ctx.keys(d, key, {"initial", "unit", "description"})
            init = d.get("initial", 0.0)
            src, _ = self.parse(init, self.base_known, f"{key}.initial")
            states.append(
                OdeState(
                    s,
                    src,
                    str(init),
                    ctx.string(d, key, "unit", required=False, default=""),
                    ctx.string(d, key, "description", required=False, default=s),
                )
            )
        return states

    def intermediates(self, inter_t: dict) -> list[tuple[str, str, str]]:
        intermediates = []
        for n, text in inter_t.items():
            key = f"ode.intermediates.{n}"
            self.claim(n, key)
            src, used = self.parse(text, self.known, key)
            intermediates.append((n, src, str(text)))
            self.deps[n] = used
            self.known = self.known | {n}  # later equations may use it; earlier ones may not
        return intermediates

    def derivatives(self, der_t: dict) -> dict[str, tuple[str, str]]:
        derivatives = {}
        for s, text in der_t.items():
            key = f"ode.derivatives.{s}"
            if s not in self.state_names:
                raise self.ctx.err(key, f"{s!r} is not a state ({', '.join(self.state_names)})")
            src, used = self.parse(text, self.known, key)
            derivatives[s] = (src, str(text))
            self.deps[f"d/dt {s}"] = used
        for s in self.state_names:
            if s not in derivatives:
                raise self.ctx.err(
                    f"ode.derivatives.{s}", "missing: every state needs a derivative"
                )
        return derivatives

    def outputs(self, outs_t: dict) -> list[OdeOutput]:
        ctx = self.ctx
        if not outs_t:
            raise ctx.err("ode.outputs", "at least one output is required")
        outputs = []
        for o, key, d in ctx.entries(outs_t, "ode.outputs", "expected a table with `expression`"):
            ctx.keys(d, key, {"expression", "concentration", "unit", "long_name"}, {"expression"})
            conc, unit = _output_kind(ctx, o, key, d)
            src, used = parse_expression(
                d["expression"], self.known, file=ctx.file, key=f"{key}.expression"
            )
            if RATE in self.closure(used):
                raise ctx.err(
                    f"{key}.expression",
                    f"an output is a function of the state; it may not depend on `{RATE}`",
                )
            self.used_all |= used
            outputs.append(
                OdeOutput(
                    o,
                    src,
                    str(d["expression"]),
                    conc,
                    "ng/mL" if conc else unit,
                    ctx.string(d, key, "long_name", required=False, default=o),
                )
            )
        return outputs


def _output_kind(ctx, o: str, key: str, d: dict) -> tuple[bool, str]:
    """``(concentration, unit)`` of output `o`: its name, flag and unit checked."""
    if not NAME_RE.fullmatch(o):
        raise ctx.err(key, f"{o!r} is not a valid output name")
    if o in GENERATED_NAMES or o.startswith(GENERATED_PREFIXES):
        raise ctx.err(
            key,
            f"{o!r} is taken by a variable the dataset generates (`time`, `dose_given`, "
            "`auc_<output>`, `state_<state>`); choose another output name",
        )
    conc = d.get("concentration", False)
    if not isinstance(conc, bool):
        raise ctx.err(f"{key}.concentration", f"expected true or false, got {conc!r}")
    unit = ctx.string(d, key, "unit", required=False, default="")
    if not conc and unit and _is_concentration_unit(unit):
        raise ctx.err(
            f"{key}.unit",
            f"{unit!r} is a concentration unit but `concentration` is false: set "
            "`concentration = true` (the expression in mg/L, reported in ng/mL with its "
            "AUC) or give a unit that is not a concentration",
        )
    if conc and unit and unit not in ("mg/L", "ng/mL"):
        raise ctx.err(
            f"{key}.unit",
            f"{unit!r}: a concentration output is an expression in mg/L (reported in "
            "ng/mL); leave `unit` out or set it to 'mg/L'",
        )
    return conc, unit


def _is_concentration_unit(unit: str) -> bool:
    """True when `unit` reads as a mass or molar concentration (``ng/mL``, ``nmol/L``)."""
    try:
        parse_quantity(f"1 {unit}", "concentration", molar_mass=1.0)
    except UnitError:
        return False
    return True
