"""The typed objects of a cohort run: the request, the plan its chunks share, a chunk's result.

:func:`pkpd.simulate_cohort` takes keywords and builds a :class:`CohortRequest` (frozen: what
was asked); :func:`pkpd.running.cohort.run_cohort` validates it into a :class:`CohortSetup`
(frozen: what every chunk needs, picklable for Dask), and each chunk returns a
:class:`ChunkResult`. Nothing is passed as a positional list or a dict of strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pkpd.engine.solvers import registry
from pkpd.inputs.model import ModelSpec
from pkpd.inputs.regimen import Regimen

__all__ = [
    "BLOCK",
    "ChunkResult",
    "CohortRequest",
    "CohortSetup",
    "Companion",
    "Range",
    "Threshold",
]

#: Patients per random-number block (the unit of reproducibility).
BLOCK = 1024


@dataclass(frozen=True)
class CohortRequest:
    """What a cohort run was asked for: the keywords of :func:`pkpd.simulate_cohort`.

    Values are as given (names, paths or loaded objects; text quantities); the run
    validates them. :func:`pkpd.simulate_cohort` documents what to simulate; how and where
    it runs:

    chunk_size, threads
        Patients per kernel call (rounded up to a multiple of :data:`BLOCK`) and numba threads.
    out : str or Path, optional
        Write the result: ``.nc`` (NetCDF, written at the end) or ``.zarr`` (written chunk by
        chunk, so trajectories larger than memory stream to disk). Always atomic.
    dask : None, "local" or str
        Run the chunks as tasks on ``dask.distributed``: a local cluster (``"local"``) or
        a scheduler address.
    progress : bool, optional
        Progress bar on stderr (default: when stderr is a terminal).
    raise_on_failure : bool or "all"
        Raise :class:`~pkpd.errors.SimulationError` if any patient failed (otherwise they
        are flagged in ``status`` and counted in ``attrs["n_failed"]``); ``"all"``: only
        when every patient failed (nothing to summarise; the command line does this).
        Nothing is written then.
    memory_limit : int, optional
        Bytes allowed (default: 80 % of the available memory).
    estimate_only : bool
        Validate the request and return its memory estimate (a dict of bytes, see
        :func:`pkpd.running.cohort.estimate_memory`) instead of simulating; nothing is
        refused or written.
    """

    model: Any
    regimen: Any
    population: Any = None
    n: int | None = None
    seed: int = 0
    until: Any = None
    every: Any = "1 min"
    windows: dict[str, tuple[str, str]] | None = None
    at: dict[str, str] | None = None
    thresholds: dict[str, list] | None = None
    ranges: dict[str, list] | None = None
    trajectories: list[str] | bool | None = None
    trajectory_every: Any = None
    bands: bool = True
    band_every: Any = None
    iiv: bool = True
    residual: bool = False
    chunk_size: int = 8 * BLOCK
    threads: int | None = None
    out: Any = None
    dask: Any = None
    progress: bool | None = None
    raise_on_failure: bool | str = False
    memory_limit: int | None = None
    method: str = "auto"
    rtol: Any = None
    atol: Any = None
    amounts: bool = False
    trajectory_dtype: str = "float32"
    extra_columns: str = "error"
    estimate_only: bool = False
    pd: Any = None
    pd_parameters: dict | None = None
    racemic: bool = False


@dataclass(frozen=True)
class Threshold:
    """One time-above-threshold metric.

    `value` is what the kernels compare with (mg/L for a concentration, the output's own
    unit otherwise); `level` and `units` are the same threshold in the reporting unit
    (ng/mL for a concentration); `label` is the text for people (``"cp > 100 ng/mL"``).
    A threshold on a PD variable (:class:`pkpd.inputs.pd.PDOutput`, an increasing function
    of one model output) is compared by the kernels on that model output, `kernel_output`,
    at the level where the PD variable equals `level` (`value`, mg/L).
    """

    output: str
    value: float
    level: float
    units: str
    label: str
    kernel_output: str | None = None

    @property
    def recorded_output(self) -> str:
        """The model output the kernels compare with `value`."""
        return self.kernel_output or self.output


@dataclass(frozen=True)
class Range:
    """One time-within-a-range metric: the time with `output` in ``[low, high]``.

    `low` and `high` are the two :class:`Threshold` bounds (same output, same recorded
    output, ``low.value < high.value``). The kernels integrate the time above each bound
    with the same crossings, so that the time within is their difference: the sets
    ``{c >= high}`` and ``{c >= low}`` are nested, and the difference is the measure of
    ``{low <= c < high}`` exactly (a flat stretch at exactly `high`, of measure zero for
    any solution that is not constant there, counts as above).
    """

    output: str
    low: Threshold
    high: Threshold
    label: str


@dataclass(frozen=True)
class CohortSetup:
    """Everything a chunk needs; picklable, so chunks can run as Dask tasks."""

    spec: ModelSpec
    regimen: Regimen
    population: Any  # Population or CovariateTable
    seed: int
    n: int
    grid: np.ndarray
    windows: dict[str, tuple[str, str]]
    at: dict[str, str]
    thresholds: list[Threshold]
    store_out: list[str]
    store_stride: int
    iiv: bool
    residual: bool
    keep_in_memory: bool
    band_outputs: list[str]
    band_stride: int
    omega_blocks: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    #: A solver of :data:`pkpd.engine.solvers.registry.SOLVERS` ("exact": linear models);
    #: `auto_stiff`: rerun the patients for whom Dopri5 detects stiffness with Rodas4
    #: (method="auto", :func:`pkpd.engine.solvers.registry.resolve`).
    method: str = "exact"
    rtol: float = 1e-6
    atol: float = 1e-9
    auto_stiff: bool = False
    #: Keep the amount in every compartment (mg) next to the trajectories (exact path).
    amounts: bool = False
    #: dtype of kept trajectories and amounts: "float32" (default) or "float64".
    traj_dtype: str = "float32"
    #: PD variables (:class:`pkpd.inputs.pd.PDOutput`), functions of the model's outputs,
    #: reported as further outputs; `pd_store`: those whose trajectories are kept (computed
    #: from the kept model outputs); `pd_bands`: those with percentile bands.
    pd_outputs: tuple = ()
    pd_store: list[str] = field(default_factory=list)
    pd_bands: list[str] = field(default_factory=list)
    #: Attributes of the result from the PD endpoints and the racemic conversion.
    extra_attrs: dict = field(default_factory=dict)
    #: Time-within-range metrics; their bounds are integrated after `thresholds`.
    ranges: tuple = ()
    #: The PCA pump's demand model (:class:`pkpd.inputs.demand.DemandModel`), checked
    #: against `spec` once when the cohort is planned; ``None`` without a pump.
    demand: Any = None
    #: The further drugs of a PCA reservoir (:class:`Companion`), each solved with its own
    #: model on the deliveries of the patients' drug's pump.
    companions: tuple = ()
    #: Random-number purposes of the random effects and residual errors (a companion drug
    #: has its own, so its patients' random effects are independent of the main model's).
    eta_purpose: str = "eta"
    residual_purpose: str = "residual"

    @property
    def kernel_thresholds(self) -> list[Threshold]:
        """The levels the kernels integrate the time above: `thresholds`, then the low and
        high bound of every range (``t_above`` columns in this order)."""
        return [*self.thresholds, *(b for r in self.ranges for b in (r.low, r.high))]

    @property
    def output_names(self) -> list[str]:
        return self.spec.output_names

    @property
    def adaptive(self) -> bool:
        """The solver is adaptive (not the exact kernel)."""
        return registry.SOLVERS[self.method].adaptive


@dataclass
class ChunkResult:
    """What one chunk of patients ``start..stop-1`` returns (plain numpy arrays, picklable).

    Metrics are in internal units (mg/L), as the kernels compute them; kept trajectories
    (`trajectory`, `amount`) are in reporting units. The run moves the large optional
    arrays out (sets them to None) once it has stored them elsewhere.
    """

    start: int
    stop: int
    covariates: dict[str, np.ndarray]
    anchors: dict[str, np.ndarray]
    theta: np.ndarray  # (n, n_par)
    cmax: np.ndarray  # (n, n_out)
    tmax: np.ndarray  # (n, n_out)
    auc: np.ndarray  # (n, n_out, n_windows)
    t_above: np.ndarray  # (n, n_thresholds)
    c_at: np.ndarray  # (n, n_out, n_at)
    status: np.ndarray  # (n,)
    #: (n, n_out) bool: Cmax is the jump of an instantaneous bolus of the event table.
    at_bolus: np.ndarray | None = None
    #: Adaptive solvers: per-patient counters (:data:`pkpd.engine.solvers.STAT_NAMES`).
    solver_stats: np.ndarray | None = None
    #: Linear models with boluses: the trajectory grid time of each bolus event and the
    #: stored outputs just before and after it (``(n, n_store, K)``).
    bolus_time: np.ndarray | None = None
    pre_bolus: np.ndarray | None = None
    post_bolus: np.ndarray | None = None
    #: ``[ode]`` models: boluses on the trajectory grid whose limits are not recorded.
    boluses_without_limits: int = 0
    #: Streaming bands: the chunk's histogram counts.
    band_counts: np.ndarray | None = None
    #: Kept trajectories (n, n_store, n_time) and amounts, unless written in place.
    trajectory: np.ndarray | None = None
    amount: np.ndarray | None = None
    #: Kept trajectories of PD variables (n, n_pd_store, n_time), unless written in place.
    pd_trajectory: np.ndarray | None = None
    #: A PCA regimen: per-patient results of the pump (:func:`pkpd.running.cohort._pca_summary`).
    pca: dict | None = None
    #: The companion drugs' results for the same patients (one per :attr:`CohortSetup.companions`).
    companions: list | None = None


@dataclass(frozen=True)
class Companion:
    """A further drug of a PCA reservoir: its entry (:class:`pkpd.inputs.pca.ReservoirDrug`),
    the prefix of its outputs and parameters in the result (``"s_ketamine_"``), and the set-up
    of its own run (its model; the main run's patients, grid, windows and times)."""

    drug: Any
    prefix: str
    setup: CohortSetup
