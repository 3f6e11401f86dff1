"""Model files: load, validate and compile a PK/PD model of either kind.

A model's structure is one of two types: compartments and flows (a linear model, solved
exactly) or the equations of an ``[ode]`` section (a nonlinear model, solved by Dopri5 or
Rodas4 through generated code). The modules, bottom to top:

* :mod:`~pkpd.inputs.model.expressions`: ``[ode]`` equations checked against a whitelist
  and translated to Python source;
* :mod:`~pkpd.inputs.model.codegen`: the generated numba module, its on-disk cache and
  import;
* :mod:`~pkpd.inputs.model.schema`: the records of a model file and the two structure
  types, :class:`LinearStructure` and :class:`OdeSystem`;
* :mod:`~pkpd.inputs.model.linear`: compartments, flows and chains read and compiled into
  the tables of :func:`pkpd.engine.solvers.linear_system.fill_system`;
* :mod:`~pkpd.inputs.model.equations`: the ``[ode]`` section read into an
  :class:`OdeSystem`;
* :mod:`~pkpd.inputs.model.reader`: a model file (TOML) to validated records, either kind;
* :mod:`~pkpd.inputs.model.individual`: covariates, covariate equations, random effects
  and individual parameters;
* :mod:`~pkpd.inputs.model.spec`: :class:`ModelSpec` and :func:`load_model`;
* :mod:`~pkpd.inputs.model.solve`: ``[ode]`` models at run time (one patient, cohort
  kernel inputs, output units) and the outputs' limits at bolus times.

Every error names the file, the key, the offending value and what was expected.
"""

from pkpd.inputs.model.codegen import cache_dir
from pkpd.inputs.model.expressions import FUNCTIONS, MAX_DEPTH, parse_expression
from pkpd.inputs.model.individual import ADULT_AGE, PATIENT_COVARIATES
from pkpd.inputs.model.schema import (
    COVARIATE_TYPES,
    ROLES,
    SAMPLING_SITES,
    TAGS,
    Compartment,
    Covariate,
    CovariateEffect,
    Flow,
    LinearStructure,
    OdeOutput,
    OdeState,
    OdeSystem,
    Output,
    Parameter,
    ResidualError,
    Source,
    VariabilityBlock,
)
from pkpd.inputs.model.solve import (
    PEAK_ATTRS,
    bolus_on_grid,
    cohort_inputs,
    dataset_variables,
    first_dose_time,
    output_scales,
    record_bolus_limits,
    solve,
)
from pkpd.inputs.model.spec import ModelSpec, available_models, load_model, models_dir

__all__ = [
    "ADULT_AGE",
    "COVARIATE_TYPES",
    "FUNCTIONS",
    "MAX_DEPTH",
    "PATIENT_COVARIATES",
    "PEAK_ATTRS",
    "ROLES",
    "SAMPLING_SITES",
    "TAGS",
    "Compartment",
    "Covariate",
    "CovariateEffect",
    "Flow",
    "LinearStructure",
    "ModelSpec",
    "OdeOutput",
    "OdeState",
    "OdeSystem",
    "Output",
    "Parameter",
    "ResidualError",
    "Source",
    "VariabilityBlock",
    "available_models",
    "bolus_on_grid",
    "cache_dir",
    "cohort_inputs",
    "dataset_variables",
    "first_dose_time",
    "load_model",
    "models_dir",
    "output_scales",
    "parse_expression",
    "record_bolus_limits",
    "solve",
]
