"""ketamine-pkpd: perioperative ketamine and S-ketamine PK/PD simulation.

Research software for pharmacology and protocol design; **not a clinical dosing device**.

Quick start
-----------
>>> import pkpd
>>> ds = pkpd.simulate("fanta2015_otto2021",
...                    "0.2 mg/kg bolus at 0 h; 0.125 mg/kg/h from 0 h to 4 h",
...                    covariates={"weight": 70}, until="6 h")
>>> ds.cp.attrs["units"]
'ng/mL'
"""

import importlib

from ._version import __version__
from .errors import (
    CacheError,
    CovariateDefaultWarning,
    CovariateError,
    CovariateRangeWarning,
    ModelError,
    PkpdError,
    PkpdWarning,
    RegimenError,
    SamplingSiteWarning,
    SimulationError,
    UnitError,
)
from .inputs.model import ModelSpec, available_models, load_model
from .inputs.pd import available_pd, load_pd
from .inputs.population import CovariateTable, Population, load_population
from .inputs.regimen import Bolus, Infusion, Regimen, load_regimen
from .inputs.stereo import racemic_to_s_ketamine
from .output import accessor as _accessor  # noqa: F401 (registers ds.pkpd)
from .output.patient_table import patient_table
from .running.cohort import simulate_cohort
from .running.simulate import DISCLAIMER, simulate, summarize

__all__ = [
    "DISCLAIMER",
    "Bolus",
    "CacheError",
    "CovariateDefaultWarning",
    "CovariateError",
    "CovariateRangeWarning",
    "CovariateTable",
    "Infusion",
    "ModelError",
    "ModelSpec",
    "PkpdError",
    "PkpdWarning",
    "Population",
    "Regimen",
    "RegimenError",
    "SamplingSiteWarning",
    "SimulationError",
    "UnitError",
    "__version__",
    "available_models",
    "available_pd",
    "load_model",
    "load_pd",
    "load_population",
    "load_regimen",
    "patient_table",
    "racemic_to_s_ketamine",
    "simulate",
    "simulate_cohort",
    "summarize",
]

# The analysis and output modules, reachable from the face as ``pkpd.metrics``,
# ``pkpd.risk``, ``pkpd.design``, ``pkpd.plot``, ``pkpd.cohort`` and ``pkpd.solvers``
# (their homes are the layer folders). Imported on first use (PEP 562), so that
# ``import pkpd`` does not load matplotlib or the design machinery.
_LAZY_MODULES = {
    "metrics": "pkpd.analysis.metrics",
    "risk": "pkpd.analysis.risk",
    "design": "pkpd.analysis.design",
    "plot": "pkpd.output.plot",
    "report": "pkpd.output.report",
    "cohort": "pkpd.running.cohort",
    "solvers": "pkpd.engine.solvers",
}


def __getattr__(name):
    if name in _LAZY_MODULES:
        module = importlib.import_module(_LAZY_MODULES[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module 'pkpd' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_MODULES))
