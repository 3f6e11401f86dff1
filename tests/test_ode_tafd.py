"""`tafd`, the time after the patient's first dose, in ``[ode]`` equations (issue 14).

Checked against closed forms: a state whose derivative is `tafd` is ``max(t - T, 0)^2 / 2``
for a first dose at T, for one patient and for each patient of a cohort whose regimen
starts at an event drawn per patient; and against time invariance: a regimen moved by T
gives the same solution moved by T (Flint 2017, one patient in ``test_flint2017.py``,
each patient of a cohort here).
"""

from __future__ import annotations

import copy
import textwrap

import numpy as np
import pytest

import pkpd
from pkpd.errors import ModelError
from pkpd.inputs.model import ModelSpec, first_dose_time
from pkpd.inputs.population import CovariateTable
from pkpd.running.cohort import simulate_cohort

SRC = {"source": "test fixture", "tag": "assumed"}
TOL = {"rtol": 1e-10, "atol": 1e-13}

# A one-compartment model with a `clock` state integrating tafd, and tafd as an output.
CLOCK = {
    "schema_version": 1,
    "model": {
        "name": "tafd_clock",
        "drug": "S-ketamine",
        "citation": "test fixture",
        "population": "test fixture",
        "sampling_site": "not reported",
    },
    "parameters": {"V1": {"value": "10 L", **SRC}, "CL": {"value": "5 L/h", **SRC}},
    "ode": {
        "dose_state": "central",
        "states": {"central": {"initial": 0, "unit": "mg"}, "clock": {"initial": 0}},
        "derivatives": {"central": "rate - CL * central / V1", "clock": "tafd"},
        "outputs": {
            "cp": {"expression": "central / V1", "concentration": True},
            "time_after_first_dose": {"expression": "tafd", "unit": "h"},
            "clock_value": {"expression": "clock", "unit": "h^2"},
        },
    },
}


def _clock(edit=None):
    data = copy.deepcopy(CLOCK)
    if edit:
        edit(data)
    return ModelSpec.from_dict(data, file="clock.toml")


# ----------------------------------------------------------------------------- schema


def test_first_dose_time_is_the_first_bolus_or_infusion_start():
    t = np.array([[0.0, 1.0, 3.0, 5.0], [0.0, 2.0, 2.0, 9.0], [1.0, 2.0, 3.0, 4.0]])
    rate = np.array([[0.0, 2.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    bolus = np.array([[0.0, 0.0, 5.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(first_dose_time(t, rate, bolus), [1.0, 2.0, np.inf])
    assert first_dose_time(t[0], rate[0], bolus[0]) == 1.0
    assert first_dose_time(np.zeros(0), np.zeros(0), np.zeros(0)) == np.inf
    # the event tables a regimen builds: a bolus at 30 h before an infusion from 31 h
    ev = pkpd.load_regimen("2 mg/h from 31 h to 40 h; 5 mg bolus at 30 h").event_table(None)
    assert first_dose_time(ev.t, ev.rate, ev.bolus) == 30.0


def test_tafd_is_reserved_and_only_the_models_using_it_carry_it():
    def rename(d):
        d["parameters"]["tafd"] = d["parameters"].pop("CL")

    with pytest.raises(ModelError, match=r"`parameters\.tafd`: 'tafd' is reserved"):
        _clock(rename)

    def init(d):
        d["ode"]["states"]["clock"]["initial"] = "tafd"

    with pytest.raises(ModelError, match=r"`ode\.states\.clock\.initial`.*unknown name 'tafd'"):
        _clock(init)
    m = _clock()
    assert m.ode.uses_tafd and m.ode.uses_time
    assert m.ode.parameter_vector(m.theta_typical, {}, 3.0).tolist() == [10.0, 5.0, 3.0]
    with pytest.raises(ModelError, match=r"clock\.toml: the equations use `tafd`"):
        m.ode.parameter_vector(m.theta_typical, {})
    # Models that do not use tafd: no extra parameter, no line of generated code.
    for name in ("fanta2015_mm_s_ketamine", "s_ketamine_pain_turnover"):
        ode = pkpd.load_model(name).ode
        assert not ode.uses_tafd and "tafd" not in ode.generate(), name
        theta = pkpd.load_model(name).theta_typical
        cov = {c: 70.0 for c in ode.covariate_names}
        assert ode.parameter_vector(theta, cov, 5.0).size == theta.size + len(cov)


# ----------------------------------------------------------------------------- one patient


@pytest.mark.parametrize("method", ["dopri5", "rodas"])
def test_tafd_is_zero_before_the_first_dose_and_t_minus_its_time_after(method):
    """Closed form: clock(t) = max(t - T, 0)^2 / 2 with T the first dose (a bolus at 30 h
    here; an infusion from 31 h) and the simulation starting at 0 h."""
    t = np.linspace(0.0, 60.0, 121)
    ds = pkpd.simulate(
        _clock(), "5 mg bolus at 30 h; 2 mg/h from 31 h to 40 h", times=t, method=method, **TOL
    )
    tafd = np.maximum(t - 30.0, 0.0)
    np.testing.assert_array_equal(ds.time_after_first_dose.values, tafd)
    np.testing.assert_allclose(ds.clock_value.values, tafd**2 / 2, rtol=1e-9, atol=1e-12)
    # the regimen at 0 h: the same, 30 h earlier
    ds0 = pkpd.simulate(
        _clock(), "5 mg bolus at 0 h; 2 mg/h from 1 h to 10 h", times=t[t >= 30] - 30,
        method=method, **TOL,
    )  # fmt: skip
    np.testing.assert_allclose(ds.cp.values[t >= 30], ds0.cp.values, rtol=1e-9)
    assert np.all(ds.cp.values[t < 30] == 0.0)


# ----------------------------------------------------------------------------- cohorts

ANCHORED = """
[regimen]
name = "anchored_start"
description = "test fixture: a loading bolus and an infusion from an event drawn per patient"
source = "test fixture"

[[bolus]]
amount = "{bolus}"
at = "start_of_sedation"

[[infusion]]
rate = "{rate}"
start = "start_of_sedation + 1 h"
stop = "start_of_sedation + 13 h"

[anchors.start_of_sedation]
default = "24 h"
distribution = "uniform"
range = ["2 h", "30 h"]
source = "test fixture"
tag = "illustrative"
"""


def _anchored(tmp_path, bolus, rate):
    path = tmp_path / "anchored.toml"
    path.write_text(textwrap.dedent(ANCHORED.format(bolus=bolus, rate=rate)))
    return path


def test_cohort_tafd_counts_from_each_patients_first_dose(tmp_path):
    """Each patient's first dose at its own drawn time T_i: clock_i(t) = max(t - T_i, 0)^2
    / 2 and time_after_first_dose_i(t) = max(t - T_i, 0) on the stored grid."""
    n = 12
    ds = simulate_cohort(
        _clock(), _anchored(tmp_path, "5 mg", "2 mg/h"), CovariateTable(covariates={}, n=n),
        seed=3, until="48 h",
        every="30 min", trajectories=["time_after_first_dose", "clock_value", "cp"],
        trajectory_dtype="float64", bands=False, progress=False, **TOL,
    )  # fmt: skip
    assert np.all(ds.status.values == 0)
    start = ds.start_of_sedation.values
    assert np.unique(start).size == n and start.min() >= 2 and start.max() <= 30
    t = ds.time.values
    tafd = np.maximum(t[None, :] - start[:, None], 0.0)
    traj = ds.trajectory
    np.testing.assert_allclose(traj.sel(traj_output="time_after_first_dose"), tafd, atol=1e-12)
    np.testing.assert_allclose(traj.sel(traj_output="clock_value"), tafd**2 / 2, rtol=1e-9,
                               atol=1e-9)  # fmt: skip
    assert np.all(traj.sel(traj_output="cp").values[tafd == 0] == 0.0)


def test_flint_cohort_each_patient_is_its_regimen_at_0_h_moved_to_its_first_dose(tmp_path):
    """Flint 2017 with a start drawn per patient in 2-30 h: every patient's trajectories
    are those of the same patient (covariates, random effects) simulated alone with the
    regimen at 0 h, read T_i hours earlier; nothing before T_i."""
    n = 6
    rng = np.random.default_rng(14)
    pop = CovariateTable(
        covariates={"weight": rng.uniform(4.0, 30.0, n), "age": rng.uniform(0.1, 10.0, n)}, n=n
    )
    spec = pkpd.load_model("flint2017_s_ketamine_children")
    outs = ["cp", "cp_norketamine", "cl_norketamine"]
    ds = simulate_cohort(
        spec, _anchored(tmp_path, "1 mg/kg", "1 mg/kg/h"), pop, seed=5, until="60 h",
        every="1 h", trajectories=outs, trajectory_dtype="float64", bands=False,
        progress=False, method="rodas", **TOL,
    )  # fmt: skip
    assert np.all(ds.status.values == 0)
    t = ds.time.values
    at_zero = "1 mg/kg bolus at 0 h; 1 mg/kg/h from 1 h to 13 h"
    for i in range(n):
        cov = {"weight": float(ds.weight[i]), "age": float(ds.age[i])}
        theta = np.array([float(ds[f"param_{p}"][i]) for p in spec.param_names])
        eta = dict(zip(spec.param_names, np.log(theta / spec.individual_parameters(cov)),
                       strict=True))  # fmt: skip
        start = float(ds.start_of_sedation[i])
        after = t >= start
        alone = pkpd.simulate(spec, at_zero, cov, eta=eta, times=t[after] - start,
                              method="rodas", **TOL)  # fmt: skip
        for o in outs:
            traj = ds.trajectory.sel(traj_output=o).values[i]
            c = alone[o].values
            np.testing.assert_allclose(traj[after], c, rtol=1e-7, atol=1e-9 * c.max(),
                                       err_msg=f"{i} {o}")  # fmt: skip
            if o != "cl_norketamine":
                assert np.all(traj[~after] == 0.0), (i, o)
        # before the first dose the clearance stays at its value at the first dose
        clsnk = float(ds.param_CLSNK[i])
        np.testing.assert_allclose(ds.trajectory.sel(traj_output="cl_norketamine")[i][~after],
                                   clsnk, rtol=1e-15)  # fmt: skip
