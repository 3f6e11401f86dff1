"""The dataset variables of results: one table of name, dimensions, unit and long name.

Every module that builds a result :class:`xarray.Dataset` (one patient, cohort chunks and
their assembly) takes a variable's dimensions and attributes from :data:`VARIABLES`, so a
name means the same thing, with the same unit, wherever it appears. A name in braces
(``auc_{output}``) is a family of variables; the caller fills the braces of the name, the
unit and the long name (``variable("auc_{output}", values, output="cp")``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PCA_SUMMARY", "VARIABLES", "Variable", "single_variable", "variable", "variable_attrs"]


@dataclass(frozen=True)
class Variable:
    """Dimensions and attributes of a dataset variable (or of a family of them).

    `units` None: the variable has no unit attribute (an index, a label, a status);
    ``"{units}"``: the unit of the outputs it holds, given by the caller. `long_name`
    None: no long name.
    """

    dims: tuple[str, ...]
    units: str | None
    long_name: str | None

    def attrs(self, **fields) -> dict:
        """The ``units`` and ``long_name`` attributes, braces filled from `fields`."""
        out = {}
        if self.units is not None:
            out["units"] = self.units.format(**fields)
        if self.long_name is not None:
            out["long_name"] = self.long_name.format(**fields)
        return out


_TIME = ("time",)
_PO = ("patient", "output")

VARIABLES: dict[str, Variable] = {
    # ---- one patient (pkpd.simulate), dimension time
    "time": Variable(_TIME, "h", "time"),
    "{output}": Variable(_TIME, "ng/mL", "{long_name}"),
    "auc_{output}": Variable(_TIME, "ng*h/mL", "cumulative AUC of {output} from the start"),
    "amount_{compartment}": Variable(_TIME, "mg", "amount of {analyte} in {compartment}"),
    "dose_given": Variable(_TIME, "mg", "cumulative amount administered"),
    "eliminated_{analyte}": Variable(
        _TIME, "mg", "cumulative amount of {analyte} eliminated or converted to a metabolite"
    ),
    # ---- cohorts (pkpd.simulate_cohort), dimension patient
    "patient": Variable(("patient",), None, "patient index"),
    "output_units": Variable(("output",), None, "unit of each output"),
    "{covariate}": Variable(("patient",), None, "covariate {covariate}"),
    "{event}": Variable(("patient",), "h", "time of event {event}"),
    "cmax": Variable(_PO, "{units}", "maximum concentration"),
    "tmax": Variable(_PO, "h", "time of maximum concentration"),
    "cmax_at_bolus": Variable(
        _PO,
        None,
        "Cmax is the instantaneous-bolus mixing peak (dose / V1 of the dosing compartment), "
        "which no sample measures",
    ),
    "auc": Variable(
        (*_PO, "window"),
        "ng*h/mL",
        "area under the concentration curve (NaN for outputs that are not concentrations)",
    ),
    "status": Variable(("patient",), None, "solver status (0 = success)"),
    "c_at": Variable((*_PO, "at"), "{units}", "concentration at named times"),
    "time_above": Variable(("patient", "threshold"), "h", "time above threshold"),
    "threshold_output": Variable(("threshold",), None, "output of each threshold"),
    "threshold_level": Variable(
        ("threshold",), "{units}", "threshold level (ng/mL for concentrations)"
    ),
    "threshold_units": Variable(("threshold",), None, "unit of each threshold level"),
    "time_within": Variable(("patient", "range"), "h", "time within range (low <= c <= high)"),
    "range_output": Variable(("range",), None, "output of each range"),
    "range_low": Variable(
        ("range",), "{units}", "low bound of each range (ng/mL for concentrations)"
    ),
    "range_high": Variable(
        ("range",), "{units}", "high bound of each range (ng/mL for concentrations)"
    ),
    "range_units": Variable(("range",), None, "unit of each range's bounds"),
    "param_{parameter}": Variable(("patient",), "{units}", "individual {parameter}"),
    # ---- a PCA pump (pkpd.running.pca): cohorts per patient, one patient over time
    "pca_demands": Variable(
        ("patient",), "1", "PCA demands over the pump's whole run (start to stop)"
    ),
    "pca_deliveries": Variable(("patient",), "1", "PCA demand boluses delivered (whole run)"),
    "pca_refused_lockout": Variable(("patient",), "1", "PCA demands refused: lockout interval"),
    "pca_refused_limit": Variable(("patient",), "1", "PCA demands refused: dose limit"),
    "pca_refused_empty": Variable(("patient",), "1", "PCA demands refused: reservoir empty"),
    "pca_dose": Variable(
        ("patient",), "mg", "amount the PCA pump delivered over its whole run (boluses, background)"
    ),
    "pca_dose_at": Variable(
        ("patient", "at"), "mg", "amount the PCA pump delivered by each named time"
    ),
    "pca_drug": Variable(("pca_drug",), None, "drugs of the PCA reservoir"),
    "pca_drug_dose": Variable(
        ("patient", "pca_drug"),
        "mg",
        "amount of each reservoir drug the PCA pump delivered over its whole run",
    ),
    "pca_drug_dose_at": Variable(
        ("patient", "pca_drug", "at"),
        "mg",
        "amount of each reservoir drug the PCA pump delivered by each named time",
    ),
    "pca_lockout_hours": Variable(
        ("patient",), "h", "time the PCA pump spent in lockout (whole run)"
    ),
    "pca_reservoir_empty": Variable(
        ("patient",), "h", "time the PCA reservoir first could not supply the pump (NaN: never)"
    ),
    "pca_pain_initial": Variable(
        ("patient",), "NRS 0-10", "pain without drug at the PCA pump's start (demand model)"
    ),
    "pca_c50": Variable(("patient",), "ng/mL", "concentration relieving half of the pain"),
    "pca_delivered": Variable(_TIME, "mg", "cumulative amount delivered by the PCA pump"),
    "pca_start": Variable(("patient",), "h", "when the PCA pump started"),
    "pain_trajectory": Variable(
        ("patient", "time"), "NRS 0-10", "pain under the drug on board (demand model, by {output})"
    ),
    "pain_band": Variable(
        ("quantile", "time"),
        "NRS 0-10",
        "percentiles of pain over patients whose PCA runs (5 % of them at least)",
    ),
    "pca_delivery_time": Variable(("pca_delivery",), "h", "time of each PCA demand bolus"),
    "pca_delivery_conc": Variable(
        ("pca_delivery",), "ng/mL", "concentration relieving pain just before each PCA bolus"
    ),
    "pain": Variable(_TIME, "NRS 0-10", "pain under the drug on board (PCA demand model)"),
    "trajectory": Variable(("patient", "traj_output", "time"), "{units}", "concentration{note}"),
    "trajectory_bolus_time": Variable(
        ("patient", "bolus"), "h", "time of a bolus on the trajectory grid (NaN: none)"
    ),
    "trajectory_{side}_bolus": Variable(
        ("patient", "traj_output", "bolus"),
        "ng/mL",
        "output just {when} the bolus at trajectory_bolus_time (without residual error)",
    ),
    "amount": Variable(
        ("patient", "compartment", "time"), "mg", "amount of drug in each compartment"
    ),
    "band": Variable(
        ("quantile", "band_output", "band_time"), "{units}", "percentiles over patients"
    ),
    "band_time": Variable(("band_time",), "h", None),
}


def variable_attrs(key: str, extra: dict | None = None, **fields) -> dict:
    """The attributes of variable `key` of :data:`VARIABLES` (then `extra`)."""
    return {**VARIABLES[key].attrs(**fields), **(extra or {})}


def variable(key: str, values, extra: dict | None = None, **fields) -> tuple:
    """``(dims, values, attrs)`` of variable `key` of :data:`VARIABLES`, for a Dataset."""
    return (VARIABLES[key].dims, values, variable_attrs(key, extra, **fields))


def single_variable(key: str, values, extra: dict | None = None, **fields) -> tuple:
    """:func:`variable` of one patient: the cohort variable `key` without its ``patient``
    dimension (``auc``, ``c_at``, ``time_above`` of :func:`pkpd.simulate`)."""
    dims = tuple(d for d in VARIABLES[key].dims if d != "patient")
    return (dims, values, variable_attrs(key, extra, **fields))


#: The PCA pump's per-patient variables a comparison summarises: name, units, long name.
PCA_SUMMARY = (
    ("pca_demands", "1", "PCA demands"),
    ("pca_deliveries", "1", "PCA demand boluses delivered"),
    ("pca_refused_lockout", "1", "PCA demands refused in lockout"),
    ("pca_refused_limit", "1", "PCA demands refused at a limit"),
    ("pca_dose", "mg", "PCA amount delivered (whole run)"),
)
