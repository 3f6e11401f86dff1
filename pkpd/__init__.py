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

from ._lazy import when_imported
from ._version import __version__
from .disclaimer import DISCLAIMER
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

# The rest of the face lives in modules that load numba, scipy and xarray: it is imported
# on the first access to any of these names (PEP 562), so that ``import pkpd`` and the
# ``pkpd`` command start without the scientific stack (issue 15). Name -> its module.
_API = {
    "ModelSpec": "pkpd.inputs.model",
    "available_models": "pkpd.inputs.model",
    "load_model": "pkpd.inputs.model",
    "available_pd": "pkpd.inputs.pd",
    "load_pd": "pkpd.inputs.pd",
    "CovariateTable": "pkpd.inputs.population",
    "Population": "pkpd.inputs.population",
    "load_population": "pkpd.inputs.population",
    "Bolus": "pkpd.inputs.regimen",
    "Infusion": "pkpd.inputs.regimen",
    "Regimen": "pkpd.inputs.regimen",
    "load_regimen": "pkpd.inputs.regimen",
    "racemic_to_s_ketamine": "pkpd.inputs.stereo",
    "TCI": "pkpd.inputs.tci",
    "patient_table": "pkpd.output.patient_table",
    "simulate_cohort": "pkpd.running.cohort",
    "simulate": "pkpd.running.simulate",
    "summarize": "pkpd.running.simulate",
}

# ``import pkpd`` registers the ``ds.pkpd`` accessor: now if xarray is loaded, else as soon
# as it is (a dataset cannot exist before).
when_imported("xarray", lambda: importlib.import_module("pkpd.output.accessor"))

__all__ = [
    "DISCLAIMER",
    "TCI",
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
    "tci_performance": "pkpd.analysis.tci_performance",
}


#: The layer subpackages, bound with their modules by the first access to one of them.
_LAYERS = ("analysis", "engine", "inputs", "output", "running")


def _load_api() -> None:
    """Import the modules of the face (what ``import pkpd`` did eagerly before issue 15)."""
    for name, module in _API.items():
        globals()[name] = getattr(importlib.import_module(module), name)


def __getattr__(name):
    if name in _LAZY_MODULES:
        module = importlib.import_module(_LAZY_MODULES[name])
        globals()[name] = module
        return module
    if name in _API:
        _load_api()
        return globals()[name]
    if name in _LAYERS:
        # ``pkpd.running.simulate`` and the like after a bare ``import pkpd``: the eager
        # imports of the face used to bind these subpackages and their modules.
        _load_api()
        return importlib.import_module(f"pkpd.{name}")
    raise AttributeError(f"module 'pkpd' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_MODULES) | set(_API))
