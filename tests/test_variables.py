"""The one table of dataset variables (pkpd.running.variables) is what results carry."""

import re
import warnings

import pytest

from pkpd import simulate, simulate_cohort
from pkpd.running.variables import VARIABLES, variable

MODEL = "fanta2015_otto2021"
REGIMEN = "0.5 mg/kg bolus at 0 h; 0.25 mg/kg/h from 0 h to 2 h"


def _entry(name: str):
    """The table entry of a variable name (a family such as ``auc_{output}`` included;
    names that are a bare family, ``{output}``, match nothing here)."""
    if name in VARIABLES:
        return VARIABLES[name]
    for key, var in VARIABLES.items():
        if key.startswith("{"):
            continue
        if re.fullmatch(re.sub(r"\\\{\w+\\\}", ".+", re.escape(key)), name):
            return var
    return None


def _check(ds) -> int:
    checked = 0
    for name in ds.variables:
        var = _entry(str(name))
        if var is None:
            continue
        assert ds[name].dims == var.dims, name
        if var.units is None:
            assert "units" not in ds[name].attrs, name
        elif "{" not in var.units:
            assert ds[name].attrs["units"] == var.units, name
        if var.long_name is not None and "{" not in var.long_name:
            assert ds[name].attrs["long_name"] == var.long_name, name
        checked += 1
    return checked


def test_one_patient_and_cohort_datasets_follow_the_table():
    one = simulate(MODEL, REGIMEN, {"weight": 70}, until="4 h", every="10 min")
    assert _check(one) >= 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = simulate_cohort(
            MODEL, REGIMEN, "healthy_volunteers", n=20, seed=1, until="4 h", every="10 min",
            thresholds={"cp": "100 ng/mL"}, trajectories=["cp"], amounts=True, progress=False,
        )  # fmt: skip
    assert _check(ds) >= 12
    for name in ("cmax", "tmax", "auc", "status", "time_above", "trajectory", "amount", "band"):
        assert name in ds


def test_a_family_fills_its_braces():
    dims, values, attrs = variable("auc_{output}", [1.0], output="cp")
    assert dims == ("time",) and values == [1.0]
    assert attrs == {"units": "ng*h/mL", "long_name": "cumulative AUC of cp from the start"}
    with pytest.raises(KeyError):
        variable("no_such_variable", [])
