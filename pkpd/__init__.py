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

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ketamine-pkpd")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

from .cohort import simulate_cohort
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
from .model import ModelSpec, available_models, load_model
from .pd import available_pd, load_pd
from .population import CovariateTable, Population, load_population
from .regimen import Bolus, Infusion, Regimen, load_regimen
from .simulate import DISCLAIMER, simulate, summarize
from .stereo import racemic_to_s_ketamine

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
    "racemic_to_s_ketamine",
    "simulate",
    "simulate_cohort",
    "summarize",
]
