"""Demand models: when a patient on a PCA pump presses the button (``models/demand/``).

A demand model states three things, each number with its source and verification tag:

* **pain without analgesic** over the postoperative course, on the 0-10 numeric rating scale
  (NRS), from the pump's start: ``base(t) = floor + (p0 - floor) exp(-ln 2 (t - t_on) /
  half_life)``, with ``p0`` normal across patients (mean `pain_initial`, SD
  `pain_initial_sd`, kept within 0-10);
* **relief by the drug on board**: ``pain = base (1 - emax C^gamma / (c50^gamma +
  C^gamma))``, with `C` the concentration of one output of the patient's PK model and
  ``c50`` log-normal across patients (median `c50`, coefficient of variation `c50_cv`);
* **demand hazard**: presses per hour at pain `P`, ``hazard_max P^hill / (pain50^hill +
  P^hill)``.

The closed loop (:mod:`pkpd.engine.pca`) simulates the demand stream exactly by thinning.

File layout (see ``models/README.md``)::

    schema_version = 1
    [demand]   name, title, citation, surgery, notes
    [relief]   drug, output, pk_model (the model the relief parameters go with)
    [parameters.<name>]   value, source, tag (and note for assumed values)

with the parameters of :data:`PARAMETERS`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from pkpd.errors import RegimenError
from pkpd.inputs.files import read_library_file
from pkpd.inputs.reader import LITERATURE_TAGS, Provenance, Reader

__all__ = ["PARAMETERS", "DemandModel", "available_demands", "demand_dir", "load_demand"]

#: name -> (quantity kind, description): the parameters every demand model states.
PARAMETERS = {
    "pain_initial": ("dimensionless", "mean pain without drug at the pump's start (NRS 0-10)"),
    "pain_initial_sd": ("dimensionless", "SD of that pain across patients (NRS)"),
    "pain_floor": ("dimensionless", "pain without drug that the course tends to (NRS)"),
    "pain_half_life": ("time", "half-life of the decline of pain without drug"),
    "emax": ("dimensionless", "largest fraction of the pain the drug relieves (0-1]"),
    "c50": ("concentration", "median concentration relieving half of emax"),
    "c50_cv": ("dimensionless", "coefficient of variation of c50 across patients (log-normal)"),
    "gamma": ("dimensionless", "steepness of the relief curve"),
    "hazard_max": ("rate_constant", "demand hazard at the highest pain (presses per hour)"),
    "pain50": ("dimensionless", "pain at which the hazard is half its maximum (NRS)"),
    "hill": ("dimensionless", "steepness of the hazard in pain"),
}


def demand_dir() -> Path:
    """Directory of the shipped demand models (package ``pkpd.models.demand``)."""
    return Path(str(resources.files("pkpd.models.demand")))


def available_demands() -> list[str]:
    """Names of the shipped demand models."""
    return sorted(p.stem for p in demand_dir().glob("*.toml"))


@dataclass(frozen=True)
class DemandModel:
    """A patient's demand for PCA boluses (see the module docstring); values in internal
    units (h, mg/L, 1/h)."""

    name: str
    title: str
    drug: str
    output: str
    values: dict[str, float]
    provenance: dict[str, Provenance]
    citation: str = ""
    surgery: str = ""
    pk_model: str = ""
    notes: tuple[str, ...] = ()
    file: str | None = None
    #: Each value as the file writes it (with its unit), for display.
    texts: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float:
        return self.values[key]

    def describe(self) -> list[str]:
        """Lines of ``pkpd models show``: what the model is, and each value's source."""
        out = [f"{self.name}: {self.title}",
               f"  relief by: {self.output} of {self.pk_model or 'a model of ' + self.drug} "
               f"({self.drug})", f"  surgery: {self.surgery}", f"  citation: {self.citation}",
               f"  assumed (not literature) values: {', '.join(self.assumed) or 'none'}",
               f"  file: {self.file}", "  parameters:"]  # fmt: skip
        for k, (_kind, what) in PARAMETERS.items():
            prov = self.provenance[k]
            out.append(f"    {k} = {self.texts.get(k, self.values[k])} [{prov.tag}]: {what}")
            out.append(f"      source: {prov.source}")
            if prov.note:
                out.append(f"      note: {prov.note}")
        return out + [f"  note: {n}" for n in self.notes]

    @property
    def assumed(self) -> list[str]:
        """Parameters tagged assumed."""
        return [k for k, p in self.provenance.items() if p.tag == "assumed"]

    def patient_parameters(self, rng: np.random.Generator, n: int):
        """Per-patient ``(p0, c50)`` (NRS, mg/L) drawn from `rng` (p0 first, then c50)."""
        v = self.values
        p0 = np.clip(v["pain_initial"] + v["pain_initial_sd"] * rng.standard_normal(n), 0, 10)
        omega = math.sqrt(math.log1p(v["c50_cv"] ** 2))
        c50 = v["c50"] * np.exp(omega * rng.standard_normal(n))
        return p0, c50

    def typical(self):
        """``(p0, c50)`` of the typical patient (the means, no variability)."""
        return np.array([self.values["pain_initial"]]), np.array([self.values["c50"]])

    def hazard(self, pain):
        """Demand hazard (1/h) at `pain` (NRS)."""
        v = self.values
        q = np.asarray(pain, dtype=float) ** v["hill"]
        return v["hazard_max"] * q / (v["pain50"] ** v["hill"] + q)

    def pain(self, t_since_start, conc, p0, c50):
        """Pain (NRS) at `t_since_start` (h) under concentration `conc` (mg/L)."""
        v = self.values
        k = math.log(2.0) / v["pain_half_life"]
        base = v["pain_floor"] + (p0 - v["pain_floor"]) * np.exp(-k * np.maximum(t_since_start, 0))
        c = np.maximum(conc, 0.0) ** v["gamma"]
        return base * (1.0 - v["emax"] * c / (c50 ** v["gamma"] + c))


_TOP = {"schema_version", "demand", "relief", "parameters"}


def load_demand(name_or_path) -> DemandModel:
    """Load and validate a demand model by shipped name or path to a ``.toml`` file."""
    if isinstance(name_or_path, DemandModel):
        return name_or_path
    path, data = read_library_file(
        name_or_path, demand_dir(), available_demands, "demand model", RegimenError
    )
    return demand_from_dict(data, file=str(path))


def demand_from_dict(data: dict, file=None) -> DemandModel:
    """Validate a parsed demand-model file (errors name the file and the key)."""
    r = Reader(file, RegimenError, tags=LITERATURE_TAGS)
    r.keys(data, "", _TOP, ("demand", "relief", "parameters"))
    r.schema_version(data)
    meta = r.table(data, "", "demand")
    r.keys(meta, "demand", {"name", "title", "citation", "surgery", "notes"}, ("name", "title"))
    name = r.string(meta, "demand", "name")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise r.err("demand.name", f"expected lower_case_with_underscores, got {name!r}")
    if file is not None:
        r.name_of_file(name, "demand.name")
    relief = r.table(data, "", "relief")
    r.keys(relief, "relief", {"drug", "output", "pk_model", "note"}, ("drug", "output"))
    params = r.table(data, "", "parameters")
    missing = sorted(set(PARAMETERS) - set(params))
    if missing:
        raise r.err(f"parameters.{missing[0]}", "missing: every demand model states "
                    f"{', '.join(PARAMETERS)}")  # fmt: skip
    values, prov, texts = {}, {}, {}
    for k, tab in params.items():
        key = f"parameters.{k}"
        if k not in PARAMETERS:
            raise r.err(key, f"unknown parameter; expected one of {', '.join(PARAMETERS)}")
        r.keys(tab, key, {"value", "source", "tag", "note"}, ("value", "source", "tag"))
        kind = PARAMETERS[k][0]
        values[k] = r.quantity(tab["value"], kind, f"{key}.value")
        texts[k] = str(tab["value"])
        prov[k] = r.provenance(tab, key)
    _check(r, values)
    notes = meta.get("notes", [])
    return DemandModel(
        name=name,
        title=r.string(meta, "demand", "title"),
        drug=r.string(relief, "relief", "drug"),
        output=r.string(relief, "relief", "output"),
        values=values,
        provenance=prov,
        citation=str(meta.get("citation", "")),
        surgery=str(meta.get("surgery", "")),
        pk_model=str(relief.get("pk_model", "")),
        notes=tuple(notes) if isinstance(notes, list) else (str(notes),),
        file=file,
        texts=texts,
    )


def _check(r: Reader, v: dict) -> None:
    def bad(k, expected):
        return r.err(f"parameters.{k}.value", f"{v[k]!r}: expected {expected}")

    for k in ("pain_initial", "pain_floor", "pain50"):
        if not 0 <= v[k] <= 10:
            raise bad(k, "a pain score within 0-10 (NRS)")
    for k in ("pain_initial_sd", "c50_cv"):
        if not v[k] >= 0:
            raise bad(k, ">= 0")
    for k in ("pain_half_life", "c50", "gamma", "hazard_max", "hill"):
        if not v[k] > 0:
            raise bad(k, "> 0")
    if not 0 < v["emax"] <= 1:
        raise bad("emax", "a fraction within (0, 1]")
