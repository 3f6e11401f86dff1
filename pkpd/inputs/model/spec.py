"""The validated model: :class:`ModelSpec`, and loading a model file by name or path.

A model is data: one TOML file per published model (schema in ``models/README.md``).
:func:`load_model` reads and validates it (:mod:`pkpd.inputs.model.reader`) into a
:class:`ModelSpec`, which

* converts every parameter to internal units once (h, mg, L),
* computes individual parameters from covariates and random effects
  (:meth:`ModelSpec.individual_parameters`, :mod:`pkpd.inputs.model.individual`),
* holds the model's structure, one of two types: a
  :class:`~pkpd.inputs.model.schema.LinearStructure` (compartments and flows compiled into
  the tables of :func:`pkpd.engine.solvers.linear_system.fill_system`) or an
  :class:`~pkpd.inputs.model.schema.OdeSystem` (the equations of an ``[ode]`` section).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from pkpd.errors import ModelError, UnitError
from pkpd.inputs.files import read_library_file
from pkpd.inputs.model import linear
from pkpd.inputs.model.individual import IndividualParameters
from pkpd.inputs.model.reader import read_model
from pkpd.inputs.model.schema import (
    Compartment,
    Covariate,
    Flow,
    LinearStructure,
    OdeSystem,
    Output,
    Parameter,
    ResidualError,
    VariabilityBlock,
)

__all__ = ["ModelSpec", "available_models", "load_model", "models_dir"]


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
    path, data = read_library_file(
        name_or_path, models_dir(), available_models, "model", ModelError
    )
    return ModelSpec.from_dict(data, file=path)


def _linear_table(name: str, doc: str) -> property:
    """A read-only view of a compiled table of a linear model's structure (an
    AttributeError for ``[ode]`` models, which have none)."""

    def get(self):
        return getattr(self.structure, name) if self.is_linear else self._no_table(name)

    return property(get, doc=doc)


@dataclass
class ModelSpec(IndividualParameters):
    """A validated model: metadata, parameters, covariates, variability, residual error,
    outputs and the structure (:class:`LinearStructure` or :class:`OdeSystem`).

    Build with :func:`load_model` or :meth:`from_dict`. For a linear model the compiled
    tables (``comps_i``, ``flows_i``, ...) feed
    :func:`pkpd.engine.solvers.linear_system.fill_system`.
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
    variability: list[VariabilityBlock]
    residual: dict[str, ResidualError]
    outputs: list[Output]
    #: The compartment (linear) or state (``[ode]``) that boluses and infusions go into.
    dose_compartment: str
    parent: str
    #: Compartments and flows (linear models) or the ``[ode]`` equations.
    structure: LinearStructure | OdeSystem = field(repr=False)
    raw: dict = field(repr=False, default_factory=dict)
    param_names: list[str] = field(init=False, repr=False, compare=False)
    analyte_names: list[str] = field(init=False, repr=False, compare=False)
    theta_typical: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.param_names = list(self.parameters)
        self.analyte_names = list(self.analytes)
        self.theta_typical = np.array([p.value for p in self.parameters.values()])

    # ---- construction -------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict, file: Path | str | None = None) -> ModelSpec:
        """Validate a parsed model file (see ``models/README.md``) and compile it."""
        try:
            spec = cls(**read_model(data, file))
        except UnitError as exc:
            # parse_quantity already names the file and the key.
            raise ModelError(str(exc)) from None
        # Positivity of the typical values as written (volumes > 0, rates >= 0).
        spec._check_theta(spec.theta_typical, "typical values")
        return spec

    # ---- structure ------------------------------------------------------------------

    @property
    def is_linear(self) -> bool:
        """True for compartment models (exact solver), False for ``[ode]`` models."""
        return isinstance(self.structure, LinearStructure)

    @property
    def ode(self) -> OdeSystem | None:
        """The equations of a nonlinear model (an ``[ode]`` section); None for linear
        compartment models."""
        return None if self.is_linear else self.structure

    @property
    def compartments(self) -> dict[str, Compartment]:
        """Compartments of a linear model (none for an ``[ode]`` model)."""
        return self.structure.compartments if self.is_linear else {}

    @property
    def flows(self) -> list[Flow]:
        """Flows of a linear model (none for an ``[ode]`` model)."""
        return self.structure.flows if self.is_linear else []

    @property
    def comp_names(self) -> list[str]:
        """Compartment names (linear) or state names (``[ode]``)."""
        return self.structure.comp_names

    @property
    def n_comp(self) -> int:
        """Number of compartments (linear) or states (``[ode]``)."""
        return self.structure.n_comp

    @property
    def n_states(self) -> int:
        """Size of the augmented state the solvers integrate."""
        return self.structure.n_aug

    comps_i = _linear_table("comps_i", "Compartment table of fill_system.")
    flows_i = _linear_table("flows_i", "Flow table (integers) of fill_system.")
    flows_f = _linear_table("flows_f", "Flow table (floats) of fill_system.")
    effects_i = _linear_table("effects_i", "Effect-site table of fill_system.")
    outputs_i = _linear_table("outputs_i", "Output table of fill_system.")
    dose_index = _linear_table("dose_index", "Index of the dosing compartment.")

    def _no_table(self, name: str):
        raise AttributeError(f"{self._loc()}`{name}`: an [ode] model has no linear tables")

    def system(self, theta: np.ndarray):
        """System matrix ``M`` (N, N), input map ``b`` (N,), output map ``C`` (n_out, n_comp).

        Concentrations ``C @ x[:n_comp]`` are in mg/L. See
        :mod:`pkpd.engine.solvers.linear_system` for the augmented state layout.
        """
        if not self.is_linear:
            raise ModelError(
                f"{self._loc()}a nonlinear [ode] model has no system matrix; simulate it "
                "with method='dopri5', 'rodas' or 'auto'"
            )
        return linear.system_matrices(self.structure, theta, len(self.analyte_names))

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
            **(
                {"model_mass_equivalent_outputs": ", ".join(eq)}
                if (eq := self.mass_equivalent_outputs())
                else {}
            ),
        }

    def mass_equivalent_outputs(self) -> list[str]:
        """Metabolite outputs that the model carries in parent-drug mass equivalents
        (the metabolite's molar mass is the parent's: no molar correction), so that labels
        can say e.g. "S-ketamine-equivalent ng/mL" rather than a bare ng/mL."""
        return [
            o.name
            for o in self.outputs
            if o.analyte != self.parent
            and self.analytes[o.analyte]["molar_mass"] == self.molar_mass()
        ]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def molar_mass(self, analyte: str | None = None) -> float | None:
        return self.analytes[analyte or self.parent]["molar_mass"]
