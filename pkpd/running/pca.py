"""A regimen's PCA pump, per patient: demands, deliveries and the event rows they make.

The pump of a `[pca]` regimen (:class:`pkpd.inputs.pca.PCA`) is driven by each patient's
demands, which depend on their pain, hence on their own concentrations: the deliveries are
found by the closed loop of :mod:`pkpd.engine.pca` (exact propagation with the patient's own
parameters between decision times) and then given to the metrics kernel as event-table
rows, so every metric, band and trajectory sees exactly the doses the loop delivered.

Random numbers (see :mod:`pkpd.running.cohort`): each block of patients has two streams of
its own, one for the demand model's patient parameters (pain at the start, c50) and one
for the candidate times of the demand process. The stream is drawn column by column (the
k-th candidate of every patient of the block, then the (k+1)-th), so a patient's first
candidates do not depend on how many are drawn: regimens compared side by side with one
seed give every patient the same pain, c50 and candidate stream (common random numbers).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from pkpd.engine.pca import COUNT_NAMES, PCA_OK, PCA_STREAM_SHORT, pca_kernel
from pkpd.errors import RegimenError
from pkpd.inputs.demand import DemandModel, load_demand
from pkpd.inputs.model import ModelSpec, load_model
from pkpd.inputs.pca import PCA, ReservoirDrug, prefix, split_names
from pkpd.inputs.regimen import Regimen
from pkpd.running.tci import merge

__all__ = [
    "COUNT_NAMES",
    "PCADraws",
    "PCAResult",
    "check",
    "companions",
    "draw",
    "event_bytes",
    "further_model",
    "prefix",
    "pump_times",
    "replay",
    "run",
    "single",
    "split_names",
    "stream_length",
]


@dataclass
class PCADraws:
    """The random draws of the patients' demand: pain at the start (NRS), c50 (mg/L), the
    candidates' standard exponential gaps and acceptance uniforms, each ``(n, Kc)``."""

    p0: np.ndarray
    c50: np.ndarray
    gaps: np.ndarray
    uniform: np.ndarray

    def __getitem__(self, sl) -> PCADraws:
        return PCADraws(self.p0[sl], self.c50[sl], self.gaps[sl], self.uniform[sl])

    @classmethod
    def concat(cls, parts) -> PCADraws:
        return cls(*(np.concatenate([getattr(p, k) for p in parts])
                     for k in ("p0", "c50", "gaps", "uniform")))  # fmt: skip


@dataclass
class PCAResult:
    """What the pump did for each patient (arrays over patients)."""

    counts: np.ndarray  # (n, 5) int64: COUNT_NAMES
    delivery_t: np.ndarray  # (n, Kb) h, inf after the last
    delivery_c: np.ndarray  # (n, Kb) mg/L just before each delivery
    demand_t: np.ndarray  # (n, Kc) h, inf after the last
    bolus: np.ndarray  # (n,) mg per demand bolus
    background: np.ndarray  # (n,) mg/h
    t_on: np.ndarray  # (n,) h
    t_off: np.ndarray  # (n,) h
    bg_end: np.ndarray  # (n,) h: when the background stopped (stop or reservoir dry)
    t_empty: np.ndarray  # (n,) h, inf if the reservoir never failed a demand or ran dry
    p0: np.ndarray  # (n,) NRS
    c50: np.ndarray  # (n,) mg/L
    lockout: float

    def delivered(self, t) -> np.ndarray:
        """Cumulative amount (mg) the pump delivered by times `t` (h), ``(n, len(t))``
        (a bolus at `t` is included)."""
        t = np.atleast_1d(np.asarray(t, dtype=float))
        tt = t[None, :] if t.ndim == 1 else t
        n_b = (self.delivery_t[:, None, :] <= tt[:, :, None]).sum(axis=2)
        run = np.clip(np.minimum(tt, self.bg_end[:, None]) - self.t_on[:, None], 0, None)
        return n_b * self.bolus[:, None] + run * self.background[:, None]

    def lockout_hours(self) -> np.ndarray:
        """Hours each patient's pump spent in lockout (after a delivery, until the stop)."""
        dt = np.clip(self.t_off[:, None] - self.delivery_t, 0, self.lockout)
        return np.where(np.isfinite(self.delivery_t), dt, 0.0).sum(axis=1)


def _reservoir(pca: PCA, spec: ModelSpec):
    """The reservoir's entry for the patients' drug (the drug the demand model relieves
    with and the loop runs on); the other drugs are companions (:func:`companions`)."""
    drug = pca.drug_for(spec.drug)
    if drug is None:
        raise RegimenError(
            f"the PCA reservoir holds {', '.join(repr(d.drug) for d in pca.drugs)} but the "
            f"patients are simulated with {spec.name!r} ({spec.drug}): the reservoir must hold "
            "the model's drug"
        )
    return drug


def companions(pca: PCA, spec: ModelSpec) -> list[ReservoirDrug]:
    """The reservoir's drugs other than the patients' model's, in the file's order; each
    must name its PK model (``model = ...``)."""
    main = _reservoir(pca, spec)
    if main.model is not None and load_model(main.model).name != spec.name:
        raise RegimenError(
            f"the PCA reservoir names model {main.model!r} for {main.drug} but the patients are "
            f"simulated with {spec.name!r}: leave the patients' drug without a model, or "
            "simulate with that model"
        )
    out = [d for d in pca.drugs if d is not main]
    for d in out:
        if d.model is None:
            raise RegimenError(
                f"the PCA reservoir also holds {d.drug!r}: name its PK model (`model = ...` "
                f"in its [[pca.drug]] table, or 'model <name>' after it on one line), or "
                f"leave it out; the patients are simulated with {spec.name!r} ({spec.drug})"
            )
    return out


def further_model(drug: ReservoirDrug) -> ModelSpec:
    """The PK model a further drug of the reservoir names, refused unless it is a linear
    model of that drug."""
    spec = load_model(drug.model)
    if spec.drug.strip().lower() != drug.drug.strip().lower():
        raise RegimenError(f"PCA drug {drug.drug!r}: model {spec.name!r} is a model of {spec.drug}")
    if not spec.is_linear:
        raise RegimenError(
            f"PCA drug {drug.drug!r}: model {spec.name!r} is an [ode] model; the drugs of a "
            "PCA reservoir are solved exactly (linear models)"
        )
    return spec


def replay(result: PCAResult, drug: ReservoirDrug, pca: PCA, weight) -> tuple[tuple, PCAResult]:
    """A companion drug's pump for the same patients: the deliveries and background of
    `result` (the loop of the patients' drug), each carrying `drug`'s amount in the same
    volume of the reservoir. Returns the event table ``(t, rate, bolus)`` (the pump's rows
    only) and the companion's :class:`PCAResult` (its amounts, the same times and counts).

    Without an interaction model the patient's system is block-diagonal (each drug's
    compartments are driven by the pump alone), so each drug solved with these rows is the
    exact solution of the union."""
    weight = np.broadcast_to(np.asarray(weight, dtype=float), result.t_on.shape)
    conc = _concentrations(pca, drug, weight)  # mg/L
    r = dataclasses.replace(result, bolus=conc * pca.bolus, background=conc * pca.background,
                            delivery_c=np.full_like(result.delivery_c, np.nan))  # fmt: skip
    n = weight.size
    empty = np.zeros((n, 0))
    return _with_pump(empty, empty, empty, r), r


def _concentrations(pca: PCA, drug: ReservoirDrug, weight: np.ndarray) -> np.ndarray:
    """`drug`'s concentration in the reservoir for each patient (mg/L), refused for a per-kg
    amount without every patient's weight."""
    if (
        drug.amount is not None
        and drug.amount.per_kg
        and not (np.all(np.isfinite(weight)) and np.all(weight > 0))
    ):
        raise RegimenError(
            f"the PCA reservoir's amount of {drug.drug} is per kg: every patient needs a weight"
        )
    return np.array([drug.concentration_for(w, pca.volume) for w in weight])


def check(regimen: Regimen, spec: ModelSpec) -> DemandModel | None:
    """The regimen's demand model, after refusing what cannot run with `spec`'s patients."""
    pca = regimen.pca
    if pca is None:
        return None
    demand = load_demand(pca.demand)
    if not spec.is_linear:
        raise RegimenError(
            f"model {spec.name!r} is an [ode] model: a PCA pump runs on the exact solution "
            "of linear models"
        )
    companions(pca, spec)  # the reservoir holds the model's drug; the others name a model
    if demand.drug.strip().lower() != spec.drug.strip().lower():
        raise RegimenError(
            f"demand model {demand.name!r} relieves pain with {demand.drug} but the patients "
            f"are simulated with {spec.name!r} ({spec.drug})"
        )
    if demand.output not in spec.output_names:
        raise RegimenError(
            f"demand model {demand.name!r} reads output {demand.output!r}, which model "
            f"{spec.name!r} does not have (outputs: {', '.join(spec.output_names)})"
        )
    return demand


def stream_length(demand: DemandModel, hours: float) -> int:
    """Candidates to draw per patient so that a stream of rate ``hazard_max`` covers
    `hours` but with probability below 1e-15 (Poisson tail: mean + 9 SD + 20)."""
    m = demand["hazard_max"] * max(hours, 0.0)
    return math.ceil(m + 9.0 * math.sqrt(m) + 20.0)


def event_bytes(regimen: Regimen) -> int:
    """Bytes per patient of the pump's arrays in a chunk (for the memory estimate): the
    demand stream (two draws and the demand times per candidate, twice for the blocks a
    chunk draws whole), the deliveries and the event rows they add, with a margin of half
    for event times that vary."""
    if regimen.pca is None:
        return 0
    try:
        pca = regimen.resolve().pca
    except RegimenError:  # an event without a default: the cohort draws it
        pca = regimen.pca
    hours = max(pca.stop - pca.start, 1.0)
    kc = stream_length(load_demand(pca.demand), hours)
    kb = hours / pca.lockout + 2
    return int(1.5 * 8 * (2 * 2 * kc + kc + 2 * kb + 6 * (kb + 2)))


def draw(demand: DemandModel, rng_patient, rng_stream, n: int, n_candidates: int) -> PCADraws:
    """One block's draws (see the module docstring: column by column)."""
    p0, c50 = demand.patient_parameters(rng_patient, n)
    gaps = np.empty((n, n_candidates))
    uni = np.empty((n, n_candidates))
    for k in range(n_candidates):
        gaps[:, k] = rng_stream.standard_exponential(n)
        uni[:, k] = rng_stream.random(n)
    return PCADraws(p0, c50, gaps, uni)


def single(regimen: Regimen, spec: ModelSpec, demand: DemandModel, theta, weight, ev, seed=0):
    """One patient's pump (:func:`pkpd.simulate`): the demand model's typical patient (its
    mean pain at the start and median c50) and a demand stream drawn from `seed`.

    Returns ``((t, rate, bolus), result)`` with one-dimensional event arrays."""
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise RegimenError(f"`seed` must be a non-negative integer, got {seed!r}")
    on, off = _times(regimen.pca, {}, 1)
    kc = stream_length(demand, float(off[0] - on[0]))
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed))))
    p0, c50 = demand.typical()
    stream = draw(demand, rng, rng, 1, kc)
    draws = PCADraws(p0, c50, stream.gaps, stream.uniform)
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    table = tuple(np.atleast_2d(np.asarray(a, dtype=float)) for a in (ev.t, ev.rate, ev.bolus))
    (t, rate, bolus), result = run(regimen, spec, demand, theta, weight, {}, table, draws)
    return (t[0], rate[0], bolus[0]), result


def _times(pca: PCA, anchors: dict, n: int):
    def at(anchor, off):
        if anchor is None:
            return np.full(n, float(off))
        return np.broadcast_to(np.asarray(anchors[anchor], dtype=float), (n,)) + off

    on, off = at(pca.start_anchor, pca.start), at(pca.stop_anchor, pca.stop)
    if np.any(off <= on):
        bad = int(np.nonzero(off <= on)[0][0])
        raise RegimenError(
            f"the PCA stops at {off[bad]:g} h for patient index {bad}, not after it starts "
            f"({on[bad]:g} h), once the event times are drawn"
        )
    return on, off


def pump_times(pca: PCA, anchors: dict | None, n: int):
    """Per-patient start and stop of the pump (h)."""
    return _times(pca, anchors or {}, n)


def run(regimen: Regimen, spec: ModelSpec, demand: DemandModel, theta, weight, anchors, ev,
        draws: PCADraws):  # fmt: skip
    """Run the pump for `n` patients whose other doses are the event table `ev`.

    Returns ``(events, result)``: the event table with the pump's deliveries and
    background added (``(t, rate, bolus)``, each ``(n, K)``), and a :class:`PCAResult`.
    """
    pca = regimen.pca
    theta = np.ascontiguousarray(theta, dtype=float)
    n = theta.shape[0]
    weight = np.asarray(weight, dtype=float)
    drug = _reservoir(pca, spec)
    conc = _concentrations(pca, drug, weight)  # mg/L
    bol, bg = conc * pca.bolus, conc * pca.background
    res_mg = conc * pca.volume if pca.volume is not None else np.full(n, np.inf)
    lim_w = np.array([lim.per for lim in pca.limits], dtype=float)
    lim_a = np.ascontiguousarray(
        np.array([[lim.volume for lim in pca.limits]] * n, dtype=float).reshape(n, -1)
        * conc[:, None]
    )
    on, off = _times(pca, anchors or {}, n)
    v = demand.values
    k = math.log(2.0) / v["pain_half_life"]
    pain_par = np.ascontiguousarray(
        np.stack([draws.p0, np.full(n, v["pain_floor"]), np.full(n, k)], axis=1)
    )
    relief = np.ascontiguousarray(
        np.stack([np.full(n, v["emax"]), draws.c50, np.full(n, v["gamma"])], axis=1)
    )
    hz = np.array([v["hazard_max"], v["pain50"], v["hill"]])
    lam = demand.hazard(np.maximum(draws.p0, v["pain_floor"]))
    kb = int(np.max(np.floor((off - on) / pca.lockout))) + 2
    kc = draws.gaps.shape[1]
    out_t, out_c = np.empty((n, kb)), np.empty((n, kb))
    dem_t = np.empty((n, kc))
    counts = np.zeros((n, len(COUNT_NAMES)), dtype=np.int64)
    t_empty, status = np.empty(n), np.zeros(n, dtype=np.int64)
    ev_t, ev_rate, ev_bolus = (np.ascontiguousarray(a, dtype=float) for a in ev)
    pca_kernel(
        theta, spec.comps_i, spec.flows_i, spec.flows_f, spec.effects_i, spec.outputs_i,
        spec.dose_index, len(spec.analyte_names), spec.output_names.index(demand.output),
        ev_t, ev_rate, ev_bolus, on, off, bol, bg, res_mg, pca.lockout, lim_w, lim_a,
        pain_par, relief, hz, lam, np.ascontiguousarray(draws.gaps),
        np.ascontiguousarray(draws.uniform), out_t, out_c, dem_t, counts, t_empty, status,
    )  # fmt: skip
    if np.any(status == PCA_STREAM_SHORT):
        raise RuntimeError("the PCA demand stream was drawn too short (a bug: see stream_length)")
    if np.any(status != PCA_OK):
        bad = int(np.nonzero(status != PCA_OK)[0][0])
        raise RegimenError(f"the PCA loop failed for patient index {bad} (non-finite state)")
    n_del = counts[:, 1]
    # Room was made for a delivery every lockout; keep the columns some patient used (the
    # event rows of the metrics kernel follow from them).
    used = max(int(n_del.max(initial=0)), 1)
    out_t, out_c = out_t[:, :used], out_c[:, :used]
    with np.errstate(divide="ignore", invalid="ignore"):
        dry = np.where(bg > 0, on + (res_mg - n_del * bol) / bg, np.inf)
    bg_end = np.minimum(off, dry)
    result = PCAResult(counts, out_t, out_c, dem_t, bol, bg, on, off, bg_end, t_empty,
                       draws.p0, draws.c50, pca.lockout)  # fmt: skip
    return _with_pump(ev_t, ev_rate, ev_bolus, result), result


def _with_pump(ev_t, ev_rate, ev_bolus, r: PCAResult):
    """The event table plus the pump's rows: its start (background on), each delivery,
    the background's end."""
    n, kb = r.delivery_t.shape
    t2 = np.empty((n, kb + 2))
    t2[:, 0] = r.t_on
    given = np.isfinite(r.delivery_t)
    t2[:, 1:-1] = np.where(given, r.delivery_t, r.bg_end[:, None])
    t2[:, -1] = r.bg_end
    b2 = np.zeros((n, kb + 2))
    b2[:, 1:-1] = np.where(given, r.bolus[:, None], 0.0)
    r2 = np.where(t2 < r.bg_end[:, None], r.background[:, None], 0.0)
    r2[:, -1] = 0.0
    if ev_t.shape[1] == 0:
        return t2, r2, b2
    K = ev_t.shape[1] + t2.shape[1]
    t, rate, bolus = np.empty((n, K)), np.empty((n, K)), np.empty((n, K))
    merge(ev_t, ev_rate, ev_bolus, t2, r2, b2, t, rate, bolus)
    return t, rate, bolus
