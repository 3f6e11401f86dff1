"""NONMEM-style event tables: the dose/observation format of NONMEM, nlmixr2/rxode2,
mrgsolve and Pumas.

One row per event, columns ``ID, TIME, AMT, RATE, EVID, CMT, DV, MDV`` then covariates:

* ``ID``: patient, 1-based (cohort patient index + 1); ``TIME`` in h.
* Doses (``EVID 1``, ``MDV 1``, ``DV 0``): ``AMT`` in mg; ``RATE`` in mg/h, 0 for an
  instantaneous bolus; an infusion (or a bolus given over an injection time) is one record
  ``AMT = rate * duration``, ``RATE = rate`` starting at ``TIME``; a rate change is a new
  record. Overlapping infusions are separate records (they add up, as in NONMEM).
* Observations (``EVID 0``, ``MDV 0``): ``DV`` is the model's first output (``cp``, the
  parent's concentration in the sampled compartment) in ng/mL with the model's residual
  error drawn from the cohort's residual stream (reproducible from the seed).
* ``CMT``: 1 + the position of the compartment in the model's ``[compartments]`` (the
  order of ``pkpd models show``, listed in the sidecar); doses and the observations of
  ``cp`` both carry the dosing (central) compartment's number.
* Rows sorted by ``ID``, ``TIME``, then doses before observations at the same time (an
  observation at the time of a bolus sees it, as a NONMEM record after the dose does).
* Covariates: ``WT`` (kg), ``AGE`` (year), ``HT`` (cm), ``BMI`` (kg/m^2), ``SEX`` (0 male,
  1 female), any other model covariate in upper case (a categorical one as the 0-based
  index of its level in the model's list); the sidecar records the coding.

:func:`read_events` reads such a table back as per-patient regimens and covariates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pkpd.errors import PkpdError
from pkpd.inputs.regimen import Bolus, Infusion, Regimen
from pkpd.inputs.units import Parsed
from pkpd.output.io import plain

__all__ = [
    "NONMEM_COLUMNS",
    "EventPatient",
    "dose_records",
    "nonmem_table",
    "read_events",
    "simulate_events",
    "write_nonmem",
    "write_predictions",
]

NONMEM_COLUMNS = ("ID", "TIME", "AMT", "RATE", "EVID", "CMT", "DV", "MDV")
#: Column names of the usual covariates (the others: the model's name in upper case).
COVARIATE_COLUMNS = {"weight": "WT", "age": "AGE", "height": "HT", "bmi": "BMI", "sex": "SEX"}
SEX_CODES = {"male": 0, "female": 1}


class EventTableError(PkpdError, ValueError):
    """A NONMEM-style event table cannot be read or written."""


def dose_records(regimen: Regimen, weight: float | None, anchors: dict | None = None):
    """``(TIME, AMT, RATE)`` of each dose of `regimen` for one patient (mg, mg/h, h)."""
    reg = regimen.resolve(anchors)
    w = 1.0 if weight is None else float(weight)
    out = []
    for d in reg.doses:
        if isinstance(d, Bolus):
            amt = d.amount.scaled(w)
            out.append((d.at, amt, amt / d.duration if d.duration > 0 else 0.0))
        else:
            rate = d.rate_value().scaled(w)
            out.append((d.start, rate * (d.stop - d.start), rate))
    return out


def _code(spec, name: str, values) -> np.ndarray:
    if name == "sex":
        return np.array([SEX_CODES[str(v)] for v in values], dtype=np.int64)
    cov = spec.covariates.get(name)
    if cov is not None and cov.categorical:
        return np.array([cov.levels.index(str(v)) for v in values], dtype=np.int64)
    return np.asarray(values, dtype=np.float64)


def observation_step(observe) -> float:
    """The largest grid step (h) on which every observation time lies (whole seconds)."""
    secs = [round(t * 3600) for t in observe]
    for t, s in zip(observe, secs, strict=True):
        if t < 0 or not math.isclose(s, t * 3600, abs_tol=1e-6):
            raise EventTableError(
                f"--observe: {t:g} h: expected non-negative times in whole seconds"
            )
    g = 0
    for s in secs:
        g = math.gcd(g, s)
    return (g or 3600) / 3600


def check_model(spec) -> str:
    """The observed output (DV) of `spec`; an error if the model declares no residual
    error for it."""
    out = spec.output_names[0]
    if out not in spec.residual:
        raise EventTableError(
            f"model {spec.name!r} declares no residual error for `{out}`: a NONMEM table's "
            "DV needs one (choose a model with a [residual] table)"
        )
    return out


def nonmem_table(model, regimen, population, n, seed, observe, *, iiv=True, threads=None):
    """Simulate the cohort of ``(model, regimen, population, n, seed)`` and return its
    NONMEM-style event table (module docstring) as a pandas DataFrame, with
    ``df.attrs["metadata"]`` for the sidecar.

    The patients are those of :func:`pkpd.simulate_cohort` with the same arguments (the
    draws depend only on the seed and the patient index); the observations are its
    trajectory of the first output at the times `observe` (h) with ``residual=True``.
    """
    import pandas as pd

    from pkpd.inputs.model import load_model
    from pkpd.inputs.regimen import load_regimen
    from pkpd.running.cohort import simulate_cohort

    spec = load_model(model)
    reg = load_regimen(regimen)
    observe = np.array(sorted(set(float(t) for t in observe)))
    if observe.size == 0:
        raise EventTableError("--observe: expected at least one observation time")
    out = check_model(spec)
    step = observation_step(observe)
    ds = simulate_cohort(
        spec, reg, population, n, seed, until=f"{max(observe[-1], step)} h",
        every=f"{step} h", trajectories=[out], trajectory_dtype="float64", bands=False,
        residual=True, iiv=iiv, threads=threads, raise_on_failure="all",
    )  # fmt: skip
    t = ds.time.values
    idx = np.searchsorted(t, observe)
    if np.any(idx >= t.size) or not np.allclose(t[np.minimum(idx, t.size - 1)], observe):
        raise EventTableError(f"--observe: times {observe} are not on the simulated grid")
    dv = ds.trajectory.sel(traj_output=out).values[:, idx]
    anchor_names = sorted(reg.anchor_names)
    cov_names = [
        str(c) for c in ds.coords
        if ds[c].dims == ("patient",) and c != "patient" and c not in anchor_names
    ]  # fmt: skip
    cov_cols = {
        COVARIATE_COLUMNS.get(c, c.upper()): _code(spec, c, ds[c].values) for c in cov_names
    }
    cmt = spec.dose_index + 1
    rows = []
    weight = ds.weight.values if "weight" in ds.coords else None
    for i in range(ds.sizes["patient"]):
        anchors = {a: float(ds[a].values[i]) for a in anchor_names}
        w = None if weight is None else float(weight[i])
        for time, amt, rate in dose_records(reg, w, anchors):
            rows.append((i + 1, time, amt, rate, 1, cmt, 0.0, 1, i))
        for j, time in enumerate(observe):
            rows.append((i + 1, time, 0.0, 0.0, 0, cmt, float(dv[i, j]), 0, i))
    rows.sort(key=lambda r: (r[0], r[1], -r[4]))
    arr = list(zip(*rows, strict=True))
    frame = pd.DataFrame(
        {
            "ID": np.array(arr[0], dtype=np.int64),
            "TIME": np.array(arr[1], dtype=np.float64),
            "AMT": np.array(arr[2], dtype=np.float64),
            "RATE": np.array(arr[3], dtype=np.float64),
            "EVID": np.array(arr[4], dtype=np.int64),
            "CMT": np.array(arr[5], dtype=np.int64),
            "DV": np.array(arr[6], dtype=np.float64),
            "MDV": np.array(arr[7], dtype=np.int64),
        }
    )
    pat = np.array(arr[8], dtype=np.int64)
    for col, vals in cov_cols.items():
        frame[col] = vals[pat]
    levels = {
        COVARIATE_COLUMNS.get(c, c.upper()): list(spec.covariates[c].levels)
        for c in cov_names
        if c in spec.covariates and spec.covariates[c].categorical and c != "sex"
    }
    frame.attrs["metadata"] = {
        "format": "NONMEM-style event table (ID, TIME, AMT, RATE, EVID, CMT, DV, MDV)",
        "units": {"TIME": "h", "AMT": "mg", "RATE": "mg/h", "DV": "ng/mL", "WT": "kg",
                  "AGE": "year", "HT": "cm", "BMI": "kg/m^2"},
        "DV": f"{out} with the model's residual error ({spec.residual[out].type})",
        "CMT": {str(k + 1): name for k, name in enumerate(spec.comp_names)},
        "dosing_compartment": cmt,
        "SEX": {"0": "male", "1": "female"},
        "levels": levels,
        "order": "ID, TIME, then doses (EVID 1) before observations (EVID 0)",
        "attrs": {k: plain(v) for k, v in ds.attrs.items()},
    }  # fmt: skip
    return frame


@dataclass(frozen=True)
class EventPatient:
    """One patient of an event table: its regimen, covariates and observation times."""

    id: object
    regimen: Regimen
    covariates: dict
    times: np.ndarray


def _find(columns, names) -> str | None:
    low = {str(c).lower(): c for c in columns}
    for n in names:
        if n.lower() in low:
            return low[n.lower()]
    return None


def read_events(path, model) -> list[EventPatient]:
    """Read a NONMEM-style event table (module docstring) as one :class:`EventPatient`
    per ``ID``, in file order.

    Doses are ``EVID 1`` rows (``RATE 0``: a bolus; ``RATE > 0``: an infusion of ``AMT``
    at ``RATE`` mg/h); ``EVID 0`` rows give the observation times. Other EVIDs (2: other
    event, 3: reset, 4: reset and dose), ``ADDL``/``II``, ``SS`` and modelled rates
    (``RATE`` -1/-2) are refused. Covariate columns are matched to the model's covariate
    names case-insensitively (``WT``/``HT`` for weight/height); each must be constant
    within a patient.
    """
    import pandas as pd

    from pkpd.inputs.model import load_model

    spec = load_model(model)
    path = Path(path)
    where = str(path)
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise EventTableError(f"{where}: cannot read the event table: {exc}") from None
    c_id, c_time, c_amt, c_evid = [_column(df, n, where) for n in ("ID", "TIME", "AMT", "EVID")]
    c_rate, c_cmt = _column(df, "RATE", where, False), _column(df, "CMT", where, False)
    for unsupported, why in (("ADDL", "additional doses"), ("II", "interdose intervals"),
                             ("SS", "steady-state doses")):  # fmt: skip
        c = _column(df, unsupported, where, False)
        if c is not None and np.any(pd.to_numeric(df[c], errors="coerce").fillna(0) != 0):
            raise EventTableError(
                f"{where}: column `{c}` ({why}) is not supported: write every dose as its "
                "own EVID 1 row"
            )
    numeric = {}
    for c in (c_time, c_amt, c_evid, c_rate, c_cmt):
        if c is None:
            continue
        v = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
        bad = np.nonzero(~np.isfinite(v))[0]
        if bad.size:
            raise EventTableError(
                f"{where}: row {bad[0] + 2}: column `{c}`: {df[c].iloc[bad[0]]!r} is not a "
                "finite number"
            )
        numeric[c] = v
    _check_evid(numeric[c_evid], c_evid, where)
    rate = numeric[c_rate] if c_rate is not None else np.zeros(len(df))
    amt, time = numeric[c_amt], numeric[c_time]
    dose = numeric[c_evid] == 1
    cmt = (c_cmt, numeric[c_cmt]) if c_cmt is not None else None
    _check_doses(spec, dose, amt, rate, cmt, where)
    cov_cols = _covariate_columns(spec, df.columns, where)
    patients = []
    for pid in pd.unique(df[c_id]):
        rows = np.nonzero((df[c_id] == pid).to_numpy())[0]
        who = f"{where}: ID {pid}"
        doses = _patient_doses(rows[dose[rows]], amt, time, rate, who)
        cov = _patient_covariates(spec, df, rows, cov_cols, where, who)
        obs = np.unique(time[rows[~dose[rows]]])
        text = "; ".join(d.text() for d in doses)
        patients.append(
            EventPatient(plain(pid), Regimen(tuple(doses), name=f"ID {pid}", _text=text), cov, obs)
        )
    if not patients:
        raise EventTableError(f"{where}: no rows")
    return patients


def _column(df, name: str, where: str, required: bool = True) -> str | None:
    """The column of the event table `df` named `name` (any case); None, or an error when
    `required`, without one."""
    c = _find(df.columns, (name,))
    if c is None and required:
        raise EventTableError(
            f"{where}: no column `{name}` (expected NONMEM columns "
            f"{', '.join(NONMEM_COLUMNS)}; found {', '.join(map(str, df.columns))})"
        )
    return c


def _check_evid(evid: np.ndarray, column: str, where: str) -> None:
    """Only observations (EVID 0) and doses (EVID 1): other events and resets are refused."""
    other = sorted(set(evid.tolist()) - {0.0, 1.0})
    if other:
        row = int(np.nonzero(~np.isin(evid, (0.0, 1.0)))[0][0]) + 2
        raise EventTableError(
            f"{where}: row {row}: column `{column}`: EVID {other[0]:g} is not supported "
            "(expected 0: observation, 1: dose; EVID 2, 3 and 4 events and resets are not "
            "modelled)"
        )


def _check_doses(spec, dose: np.ndarray, amt: np.ndarray, rate: np.ndarray, cmt, where: str):
    """Dose rows need AMT > 0 and a given rate (RATE >= 0), and go to the model's dosing
    compartment when there is a CMT column (`cmt`: its name and values, or None)."""
    for cond, what in (
        (dose & (rate < 0), "RATE -1/-2 (modelled rate or duration) is not supported"),
        (dose & (amt <= 0), "a dose needs AMT > 0 (mg)"),
    ):
        if np.any(cond):
            row = int(np.nonzero(cond)[0][0]) + 2
            raise EventTableError(f"{where}: row {row}: {what}")
    if cmt is not None:
        c_cmt, values = cmt
        number = spec.dose_index + 1
        wrong = dose & (values != number)
        if np.any(wrong):
            row = int(np.nonzero(wrong)[0][0]) + 2
            raise EventTableError(
                f"{where}: row {row}: column `{c_cmt}`: doses go to compartment {number} "
                f"({spec.dose_compartment}) of model {spec.name!r}, got {values[row - 2]:g}"
            )


def _covariate_columns(spec, columns, where: str) -> dict[str, str]:
    """The columns of the model's covariates, by name or the usual NONMEM column (any
    case); every covariate the model uses needs one."""
    cov_cols = {}
    for name in spec.covariates:
        c = _find(columns, [name, COVARIATE_COLUMNS.get(name, name)])
        if c is not None:
            cov_cols[name] = c
    missing = sorted(set(spec.used_covariates) - set(cov_cols))
    if missing:
        m = missing[0]
        raise EventTableError(
            f"{where}: model {spec.name!r} uses the covariate `{m}`: expected a column "
            f"`{COVARIATE_COLUMNS.get(m, m.upper())}` (or `{m}`, any case)"
        )
    return cov_cols


def _patient_doses(rows: np.ndarray, amt, time, rate, who: str) -> list:
    """The doses of one patient's dose `rows`: a bolus of AMT mg (RATE 0) or an infusion
    of AMT mg at RATE mg/h; a patient without any is refused (`who` names it)."""
    doses = []
    for r in rows:
        a, t0 = float(amt[r]), float(time[r])
        if rate[r] == 0:
            doses.append(Bolus(Parsed(a, False, "dose", f"{a!r} mg"), t0))
        else:
            q = float(rate[r])
            doses.append(Infusion(t0, t0 + a / q, rate=Parsed(q, False, "rate", f"{q!r} mg/h")))
    if not doses:
        raise EventTableError(f"{who}: no dose (EVID 1) row")
    return doses


def _patient_covariates(spec, df, rows: np.ndarray, cov_cols: dict, where: str, who: str):
    """One patient's covariates (its `rows` of `df`), decoded; each must be constant
    within the patient (`who` names it)."""
    cov = {}
    for name, c in cov_cols.items():
        vals = df[c].iloc[rows]
        if vals.nunique(dropna=False) != 1:
            raise EventTableError(
                f"{who}: column `{c}` changes within the patient "
                "(time-varying covariates are not supported)"
            )
        cov[name] = _decode(spec, name, vals.iloc[0], where, c)
    return cov


def _decode(spec, name, value, where, column):
    cov = spec.covariates[name]
    if name == "sex" or cov.categorical:
        levels = list(cov.levels) if cov.categorical else ["male", "female"]
        if name == "sex" and str(value).strip().lower() in ("m", "f", "male", "female"):
            return {"m": "male", "f": "female"}.get(str(value).strip().lower()[0])
        try:
            k = float(value)
        except ValueError:
            if str(value) in levels:
                return str(value)
            k = -1
        codes = SEX_CODES if name == "sex" else {lv: i for i, lv in enumerate(levels)}
        inv = {v: k2 for k2, v in codes.items()}
        if k in inv:
            return inv[int(k)]
        raise EventTableError(
            f"{where}: column `{column}`: {value!r} is not a level of `{name}` (expected "
            f"{', '.join(f'{v} ({lv})' for lv, v in codes.items())})"
        )
    try:
        return float(value)
    except ValueError:
        raise EventTableError(
            f"{where}: column `{column}`: {value!r} is not a number ({name})"
        ) from None


def write_nonmem(frame, path) -> None:
    """Write an event table (:func:`nonmem_table`) as CSV with its JSON sidecar
    ``PATH.meta.json`` (units, CMT numbering, covariate coding, the cohort's attributes),
    both or neither."""
    from pkpd.output import io as result_io

    path = Path(path)
    meta = dict(frame.attrs.get("metadata", {}))
    meta["columns"] = [str(c) for c in frame.columns]

    with result_io.atomic_outputs() as stage:
        stage(
            path,
            lambda tmp: result_io.write_table(
                tmp, [str(c) for c in frame.columns], [frame[c].to_numpy() for c in frame]
            ),
        )
        stage(result_io.csv_metadata_path(path), lambda tmp: result_io.write_json(meta, tmp))


def simulate_events(model, patients: list[EventPatient], **kwargs) -> list:
    """Simulate each patient of :func:`read_events` with :func:`pkpd.simulate` at its
    observation times (its default grid when it has none), one by one: the patients of an
    event table have their own doses, which the cohort engine (one regimen, per-patient
    anchors and per-kg scaling only) cannot run together. Keyword arguments go to
    :func:`pkpd.simulate` (``eta``, ``method``, ...)."""
    from pkpd.running.simulate import simulate

    return [
        simulate(model, p.regimen, covariates=p.covariates,
                 times=p.times if p.times.size else None, **kwargs)
        for p in patients
    ]  # fmt: skip


def write_predictions(patients, results, path, meta_path) -> None:
    """One CSV of every patient's outputs at its times: ``ID, time [h], cp [ng/mL], ...``
    (the time-indexed variables of each result), with a JSON sidecar; both or neither."""
    from pkpd.output import io as result_io

    first = results[0]
    names = [v for v in first.data_vars if first[v].dims == ("time",)]
    header = ["ID", "time [h]"] + [f"{v} [{first[v].attrs.get('units', '')}]" for v in names]
    ids = np.concatenate(
        [np.full(ds.sizes["time"], p.id) for p, ds in zip(patients, results, strict=True)]
    )
    cols = [ids, np.concatenate([ds.time.values for ds in results])]
    cols += [np.concatenate([ds[v].values for ds in results]).astype(np.float64) for v in names]
    meta = {
        "columns": [{"name": "ID"}, {"name": "time", "units": "h"}]
        + [{"name": v, "units": str(first[v].attrs.get("units", ""))} for v in names],
        "patients": {str(p.id): {"regimen": p.regimen.text, "covariates": p.covariates}
                     for p in patients},
        "attrs": {k: plain(v) for k, v in first.attrs.items()
                  if k not in ("regimen", "covariates")},
    }  # fmt: skip

    with result_io.atomic_outputs() as stage:
        stage(Path(path), lambda tmp: result_io.write_table(tmp, header, cols))
        stage(Path(meta_path), lambda tmp: result_io.write_json(meta, tmp))
