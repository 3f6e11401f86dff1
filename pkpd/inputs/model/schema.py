"""The records of a model file: vocabularies, provenance, parameters, covariates,
variability, residual error, outputs, and the two kinds of structure.

A model's structure is one of two types:

* :class:`LinearStructure`: compartments and flows, compiled into the small integer/float
  tables that :func:`pkpd.engine.solvers.linear_system.fill_system` turns into the system
  matrix (:mod:`pkpd.inputs.model.linear`);
* :class:`OdeSystem`: the equations of an ``[ode]`` section, translated into a generated
  numba module (:mod:`pkpd.inputs.model.equations`, :mod:`pkpd.inputs.model.codegen`).

Both answer :attr:`comp_names`, :attr:`n_comp` and :attr:`n_aug`, which
:class:`pkpd.inputs.model.ModelSpec` reports for either kind.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pkpd.engine.solvers.registry import ADAPTIVE
from pkpd.errors import ModelError, SimulationError
from pkpd.inputs.model import codegen
from pkpd.inputs.reader import LITERATURE_TAGS
from pkpd.inputs.reader import SAMPLING_SITES as SAMPLING_SITES  # re-exported
from pkpd.inputs.reader import TAGS as _ALL_TAGS

# One vocabulary for every library file (pkpd.inputs.reader); model files take the
# literature subset (no 'illustrative' placeholders).
TAGS = {t: _ALL_TAGS[t] for t in LITERATURE_TAGS}
ROLES = ("parent", "metabolite")
# Multiplicative forms (power, linear, exponential, categorical) and one additive hinge,
# additive_above: P + slope * max(0, x - reference) (slope stored in `coefficient`, in the
# parameter's internal unit per covariate unit).
COVARIATE_TYPES = ("power", "linear", "exponential", "categorical", "additive_above")
# Parameter kinds accepted in each structural slot (see units.KINDS).
PARAM_KINDS = ("volume", "clearance", "rate_constant", "time", "dimensionless")
# Nonlinear [ode] models also take amounts (mg), amount rates such as a Vmax (mg/h) and
# concentrations such as a Km or an EC50 (mg/L).
ODE_PARAM_KINDS = (*PARAM_KINDS, "concentration", "rate", "amount")


@dataclass(frozen=True)
class Source:
    """Provenance of one number: citation text, table/page, verification tag."""

    reference: str
    tag: str
    note: str = ""

    @property
    def tag_text(self) -> str:
        return TAGS[self.tag]


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


# ----------------------------------------------------------------------------- linear


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


@dataclass(frozen=True, eq=False)
class LinearStructure:
    """Compartments and flows of a linear model and the tables compiled from them
    (:func:`pkpd.inputs.model.linear.compile_structure`) for
    :func:`pkpd.engine.solvers.linear_system.fill_system`."""

    compartments: dict[str, Compartment]
    flows: list[Flow]
    comps_i: np.ndarray  # (n_comp, 3): volume parameter, analyte, is effect site
    flows_i: np.ndarray  # (n_flows, 5): source, destination, kind, parameter, fraction parameter
    flows_f: np.ndarray  # (n_flows, 3): scale, constant fraction, molar-mass ratio
    effects_i: np.ndarray  # (n_effect, 4): effect site, linked compartment, ke0 parameter, kind
    outputs_i: np.ndarray  # (n_out, 2): compartment, output is the state itself
    dose_index: int
    n_aug: int  # augmented state: amounts, dose given, eliminated per analyte, AUC per output

    @property
    def comp_names(self) -> list[str]:
        return list(self.compartments)

    @property
    def n_comp(self) -> int:
        return len(self.compartments)


# ----------------------------------------------------------------------------- [ode]


@dataclass(frozen=True)
class OdeState:
    name: str
    initial: str  # generated source (over parameters and covariates)
    initial_text: str
    unit: str
    description: str


@dataclass(frozen=True)
class OdeOutput:
    name: str
    source: str
    text: str
    concentration: bool
    unit: str
    long_name: str


@dataclass
class OdeSystem:
    """A validated ``[ode]`` section and its generated, compiled code.

    Augmented state: ``y = [states..., dose_given, auc_<output> for each concentration
    output]``, so dose given and exposure are integrated by the same solver.
    """

    file: Path | None
    states: list[OdeState]
    intermediates: list[tuple[str, str, str]]  # (name, source, text)
    derivatives: dict[str, tuple[str, str]]  # state -> (source, text)
    outputs: list[OdeOutput]
    dose_state: str
    stiff: bool
    param_names: list[str]
    covariate_names: list[str]  # numeric covariates used by the equations
    uses_time: bool  # the equations read `t` or `tafd`
    rate_dependent: frozenset = frozenset()  # intermediates that depend on `rate`
    #: The equations read `tafd`: the parameter vector ends with the first dose time.
    uses_tafd: bool = False
    source: str = ""
    hash: str = ""
    _module: Any = None

    @property
    def n_states(self) -> int:
        return len(self.states)

    @property
    def n_aug(self) -> int:
        """Augmented state size: states, dose given, one AUC per concentration output."""
        return self.n_states + 1 + sum(o.concentration for o in self.outputs)

    @property
    def comp_names(self) -> list[str]:
        """The state names (a model's ``compartment`` coordinate)."""
        return [s.name for s in self.states]

    @property
    def n_comp(self) -> int:
        return self.n_states

    def auc_outputs(self) -> list[OdeOutput]:
        return [o for o in self.outputs if o.concentration]

    # ---- parameters -------------------------------------------------------------

    def parameter_vector(
        self, theta: np.ndarray, covariates: dict, first_dose: float | None = None
    ) -> np.ndarray:
        """``p = [theta..., covariate values...]`` for the generated functions, then the
        time of the patient's first dose (h; ``inf`` without doses, see
        :func:`pkpd.inputs.model.solve.first_dose_time`) when the equations use ``tafd``."""
        vals = []
        for c in self.covariate_names:
            v = covariates.get(c)
            if v is None:
                raise ModelError(
                    f"{self.file}: covariate `{c}` is used in [ode] and has no default: pass it"
                )
            vals.append(float(v))
        if self.uses_tafd:
            if first_dose is None:
                raise ModelError(
                    f"{self.file}: the equations use `tafd` (time after the first dose): "
                    "the time of the first dose is required"
                )
            vals.append(float(first_dose))
        return np.ascontiguousarray(np.concatenate([np.asarray(theta, float), vals]))

    def bolus_map(self) -> np.ndarray:
        """A bolus adds to the dose state and to the dose-given accumulator."""
        b = np.zeros(self.n_aug)
        b[[s.name for s in self.states].index(self.dose_state)] = 1.0
        b[self.n_states] = 1.0
        return b

    # ---- generated code ------------------------------------------------------------

    def generate(self) -> str:
        """Python source of the numba module (deterministic: same model, same text)."""
        return codegen.generate(self)

    def module(self):
        """The generated module, written to the cache folder and imported once."""
        if self._module is None:
            self.source = self.generate()
            self.hash = hashlib.sha256(self.source.encode()).hexdigest()[:20]
            self._module = codegen.import_generated(self.source, self.hash)
        return self._module

    def kernels(self):
        """``(solve_dopri5_into, solve_rodas_into)`` of the kernel protocol, one per
        adaptive solver of :mod:`pkpd.engine.solvers.registry`."""
        m = self.module()
        return tuple(getattr(m, info.ode_kernel) for info in ADAPTIVE.values())

    def initial_state(self, p: np.ndarray) -> np.ndarray:
        y0 = np.zeros(self.n_aug)
        self.module().initial_into(p, y0)
        if not np.all(np.isfinite(y0)):
            bad = [s.name for s, v in zip(self.states, y0, strict=False) if not np.isfinite(v)]
            raise SimulationError(f"{self.file}: non-finite initial value of state(s) {bad}")
        return y0

    def evaluate_outputs(self, t: np.ndarray, Y: np.ndarray, p: np.ndarray) -> np.ndarray:
        O = np.zeros((t.shape[0], len(self.outputs)))
        self.module().outputs_into(np.ascontiguousarray(t), np.ascontiguousarray(Y), p, O)
        return O
