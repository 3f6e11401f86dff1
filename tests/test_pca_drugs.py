"""Several drugs in one PCA reservoir: exactness, reproducibility and what the result holds.

The cohort solves each further drug of the reservoir with its own model on the deliveries
that the loop of the patients' drug found (:func:`pkpd.running.pca.replay`). The check here
is independent of that route: for each patient it builds the *union* system (the two models'
compartment matrices side by side, one input vector carrying both drugs in their reservoir
proportions, block_diag from scipy) and propagates it with scipy's matrix exponential over
the pump's switches and deliveries, integrating the outputs (AUC) in the same exponential
(Van Loan). Values at named times and AUCs of both drugs must agree to 1e-9.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import pkpd
from pkpd.errors import PkpdError
from pkpd.inputs.model import load_model
from pkpd.running import cohort
from pkpd.running import tci as pump
from pkpd.running.request import CohortRequest

SUF = "gepts1995_sufentanil"
KET = "fanta2015_otto2021"
DEMAND = "spine_fusion_sufentanil_demand"
# Sufentanil 4 ug/kg (at most 250 ug) and S-ketamine 50 mg in 40 mL (so that some patients
# run it dry), 2-mL boluses, 8-min lockout, 1 mL/h background, at most 6 mL per 4 h (room
# for one bolus over the background).
VOL = 0.04  # L
PUMP = (
    "PCA sufentanil 4 ug/kg max 250 ug, S-ketamine 50 mg model " + KET + " in 40 mL "
    "bolus 2 mL lockout 8 min background 1 mL/h limit 6 mL per 4 h from 1 h until 31 h "
    "demand " + DEMAND
)
AT = {"t3": "3 h", "t12": "12 h", "t30": "30 h", "t34": "34 h"}
WINDOWS = {"day": ("1 h", "25 h"), "all": ("0 h", "34 h")}
KW = dict(population="spine_fusion_china", until="34 h", at=AT, windows=WINDOWS, bands=False)


def _pump_result(n, seed):
    """The pump of patients 0..n-1 as the cohort runs it (its deliveries and background)."""
    setup = cohort._plan(CohortRequest(SUF, PUMP, n=n, seed=seed, **KW)).setup
    _, _, cov, eta, anchors = cohort._chunk_draws(setup, 0, n)
    theta = cohort._theta(setup.spec, cov, eta)
    w = np.asarray(cov["weight"], dtype=float)
    ev = tuple(np.ascontiguousarray(a) for a in pump.event_arrays(setup.regimen, w, anchors, cov))
    return cohort._run_pca(setup, theta, w, anchors, ev, 0, n)[1], w


def _union(ds, i, specs, prefixes):
    """Patient `i`'s union system from the cohort's individual parameters: compartment
    matrix, input of 1 L of the reservoir (mg per L of each drug, per compartment) and
    output map, block-diagonal over the drugs."""
    blocks, inputs, outs = [], [], []
    w = float(ds.weight[i])
    conc = {SUF: min(4e-3 * w, 0.25) / VOL, KET: 50.0 / VOL}  # mg/L in the reservoir
    for spec, p in zip(specs, prefixes, strict=True):
        theta = np.array([float(ds[f"param_{p}{name}"][i]) for name in spec.param_names])
        M, b, C = spec.system(theta)
        nc = spec.n_comp
        blocks.append(M[:nc, :nc])
        inputs.append(conc[spec.name] * b[:nc])
        outs.append(C)
    return (
        scipy.linalg.block_diag(*blocks),
        np.concatenate(inputs),
        scipy.linalg.block_diag(*outs),
    )


def _solve_union(A, u, C, deliveries, bolus_l, rate_l, t_on, bg_end, times):
    """Amounts and output integrals of the union at sorted `times` (h): state ``[x, 1, z]``
    with ``x' = A x + rate u`` while the background runs and ``z' = C x``; each delivery
    adds ``bolus_l u``. Returns ``(C x, z)`` at each time, in mg/L and mg*h/L."""
    nc, no = A.shape[0], C.shape[0]
    N = nc + 1 + no

    def segment(rate, h):
        G = np.zeros((N, N))
        G[:nc, :nc] = A
        G[:nc, nc] = rate * u
        G[nc + 1 :, :nc] = C
        return scipy.linalg.expm(G * h)

    events = sorted(
        [(t, "bolus") for t in deliveries]
        + [(t_on, "on"), (bg_end, "off")]
        + [(t, "out") for t in times]
    )
    y = np.zeros(N)
    y[nc] = 1.0
    t, rate, out = 0.0, 0.0, []
    for te, kind in events:
        if te > t:
            y = segment(rate, te - t) @ y
            t = te
        if kind == "bolus":
            y[:nc] += bolus_l * u
        elif kind == "on":
            rate = rate_l
        elif kind == "off":
            rate = 0.0
        else:
            out.append((C @ y[:nc], y[nc + 1 :].copy()))
    return out


def test_each_drug_of_the_reservoir_is_the_exact_solution_of_the_union_system():
    n, seed = 24, 11
    ds = pkpd.simulate_cohort(SUF, PUMP, n=n, seed=seed, **KW)
    res, w = _pump_result(n, seed)
    assert res.counts[:, 1].sum() > 50  # the patients pressed and got boluses
    assert np.isfinite(res.t_empty).any() and (res.counts[:, 3] > 0).any()  # dry; limits hit
    specs = [load_model(SUF), load_model(KET)]
    prefixes = ["", "s_ketamine_"]
    outputs = [*specs[0].output_names, *("s_ketamine_" + o for o in specs[1].output_names)]
    assert list(ds.output.values) == outputs
    times = [3.0, 12.0, 30.0, 34.0]
    for i in range(n):
        A, u, C = _union(ds, i, specs, prefixes)
        d = res.delivery_t[i][np.isfinite(res.delivery_t[i])]
        sol = _solve_union(A, u, C, d, 0.002, 0.001, res.t_on[i], res.bg_end[i], times)
        c_exact = np.stack([s[0] for s in sol], axis=1) * 1e3  # ng/mL (output, at)
        np.testing.assert_allclose(ds.c_at.values[i], c_exact, rtol=1e-9, atol=1e-12)
        # AUC over the windows: differences of the integrals at their bounds.
        z = {t: s[1] for t, s in zip(times, sol, strict=True)}
        z1 = _solve_union(A, u, C, d, 0.002, 0.001, res.t_on[i], res.bg_end[i], [1.0, 25.0])
        day = (z1[1][1] - z1[0][1]) * 1e3
        np.testing.assert_allclose(ds.auc.sel(window="day").values[i], day, rtol=1e-9)
        np.testing.assert_allclose(ds.auc.sel(window="all").values[i], z[34.0] * 1e3, rtol=1e-9)
    # Each drug's delivered amount: boluses and background of its own concentration.
    n_del = res.counts[:, 1]
    run = np.clip(np.minimum(31.0, res.bg_end) - res.t_on, 0, None)
    suf = np.minimum(4e-3 * w, 0.25) / VOL
    for drug, conc in (("sufentanil", suf), ("S-ketamine", np.full(n, 50.0 / VOL))):
        expected = conc * (0.002 * n_del + 0.001 * run)
        np.testing.assert_allclose(ds.pca_drug_dose.sel(pca_drug=drug), expected, rtol=1e-12)
    np.testing.assert_array_equal(ds.pca_drug_dose.sel(pca_drug="sufentanil"), ds.pca_dose)
    # The reservoir holds 50 mg of S-ketamine: no patient got more.
    assert float(ds.pca_drug_dose.sel(pca_drug="S-ketamine").max()) <= 50.0 + 1e-9


def test_the_drugs_random_effects_are_independent_and_reproducible_across_chunks():
    kw = dict(KW, at={"t12": "12 h"}, windows=None, seed=3)
    a = pkpd.simulate_cohort(SUF, PUMP, n=1100, chunk_size=1024, **kw)
    b = pkpd.simulate_cohort(SUF, PUMP, n=1100, chunk_size=4096, threads=1, **kw)
    for v in ("cmax", "c_at", "param_s_ketamine_CL", "pca_drug_dose", "status"):
        np.testing.assert_array_equal(a[v].values, b[v].values)
    # The further drug's random effects come from a stream of their own: the same model run
    # as the main one (same seed, same patients) draws other etas, uncorrelated with them.
    main = pkpd.simulate_cohort(KET, "1 mg bolus at 0 h", n=1100, **kw)
    typical = pkpd.simulate_cohort(KET, "1 mg bolus at 0 h", n=1100, iiv=False, **kw)
    np.testing.assert_array_equal(main.weight.values, a.weight.values)
    eta_c = np.log(a.param_s_ketamine_CL.values / typical.param_CL.values)
    eta_m = np.log(main.param_CL.values / typical.param_CL.values)
    assert eta_c.std() > 0.1 and eta_m.std() > 0.1
    assert abs(np.corrcoef(eta_c, eta_m)[0, 1]) < 0.12  # 1,100 patients: SE 0.03
    # The main drug's results do not change when a further drug joins the reservoir.
    alone = PUMP.replace(", S-ketamine 50 mg model " + KET, "")
    c = pkpd.simulate_cohort(SUF, alone, n=1100, **kw)
    for v in ("pca_deliveries", "pca_dose"):
        np.testing.assert_array_equal(a[v].values, c[v].values)
    np.testing.assert_array_equal(a.cmax.sel(output="ce").values, c.cmax.sel(output="ce").values)


def test_thresholds_trajectories_and_bands_of_a_further_drug():
    ds = pkpd.simulate_cohort(
        SUF, PUMP, n=50, seed=2, population="spine_fusion_china", until="34 h",
        thresholds={"ce": ["0.05 ng/mL"], "s_ketamine_cp": ["20 ng/mL", "40 ng/mL"]},
        ranges={"s_ketamine_cp": ["10..40 ng/mL"]},
        trajectories=["ce", "s_ketamine_cp"], at={"t12": "12 h"},
    )  # fmt: skip
    assert list(ds.threshold_output.values) == ["ce", "s_ketamine_cp", "s_ketamine_cp"]
    assert list(ds.range_output.values) == ["s_ketamine_cp"]
    assert list(ds.traj_output.values) == ["ce", "s_ketamine_cp"]
    assert list(ds.band_output.values) == ["ce", "s_ketamine_cp"]
    traj = ds.trajectory.sel(traj_output="s_ketamine_cp")
    # The kept trajectory agrees with the exact value at the named time (on the grid).
    np.testing.assert_allclose(
        traj.sel(time=12.0).values, ds.c_at.sel(output="s_ketamine_cp", at="t12"), rtol=1e-6
    )
    # Time above 40 ng/mL is within the time above 20; time within 10..40 is consistent.
    ta = ds.time_above.values
    assert np.all(ta[:, 2] <= ta[:, 1] + 1e-12)
    # Its bands are the exact percentiles of its kept trajectories, at the band times.
    med = ds.band.sel(band_output="s_ketamine_cp", quantile=0.5).values
    at_bands = traj.sel(time=ds.band_time.values).values.astype(float)
    np.testing.assert_allclose(med, np.quantile(at_bands, 0.5, axis=0), rtol=1e-12)


def test_a_further_drug_needs_its_model_and_the_model_of_that_drug(tmp_path):
    no_model = PUMP.replace(" model " + KET, "")
    with pytest.raises(PkpdError, match="name its PK model"):
        pkpd.simulate_cohort(SUF, no_model, n=10, **KW)
    wrong = PUMP.replace("model " + KET, "model lamminsalo2019_oxycodone")
    with pytest.raises(PkpdError, match="is a model of oxycodone"):
        pkpd.simulate_cohort(SUF, wrong, n=10, **KW)
    with pytest.raises(PkpdError, match="is a model of oxycodone"):
        pkpd.simulate(SUF, wrong, {"weight": 70})
    # The patients' drug may name its model only if it is the one they are simulated with.
    named = PUMP.replace("max 250 ug,", "max 250 ug model " + SUF + ",")
    assert pkpd.simulate_cohort(SUF, named, n=5, **KW).sizes["patient"] == 5
    other = PUMP.replace("max 250 ug,", "max 250 ug model " + KET + ",")
    with pytest.raises(PkpdError, match="names model 'fanta2015_otto2021' for sufentanil"):
        pkpd.simulate_cohort(SUF, other, n=5, **KW)


def test_the_shipped_multimodal_reservoir_reads_back_and_runs_to_zarr(tmp_path):
    from pkpd.inputs.pca import parse_pca
    from pkpd.inputs.regimen import load_regimen

    reg = load_regimen("spine_fusion_multimodal_pca")
    drugs = [(d.drug, d.model) for d in reg.pca.drugs]
    assert drugs == [("sufentanil", None), ("S-ketamine", KET),
                     ("dexmedetomidine", "hannivoort2015_dexmedetomidine")]  # fmt: skip
    assert parse_pca(reg.pca.text()) == reg.pca  # the one-line form round-trips
    kw = dict(
        population="spine_fusion_china",
        until="54 h",
        seed=4,
        chunk_size=1024,
        trajectories=["ce", "dexmedetomidine_cp"],
        at={"d1": "end_of_surgery + 24 h"},
    )
    mem = pkpd.simulate_cohort(SUF, "spine_fusion_multimodal_pca", n=1030, **kw)
    disk = pkpd.simulate_cohort(
        SUF, "spine_fusion_multimodal_pca", n=1030, out=tmp_path / "m.zarr", **kw
    )
    assert list(mem.pca_drug.values) == ["sufentanil", "S-ketamine", "dexmedetomidine"]
    assert "dexmedetomidine_cp" in mem.output.values and "s_ketamine_cp" in mem.output.values
    # (bands differ by design: exact in memory, streamed with a Zarr store)
    for v in ("cmax", "c_at", "trajectory", "pca_drug_dose_at", "param_s_ketamine_CL"):
        np.testing.assert_array_equal(mem[v].values, disk[v].values)
    assert list(disk.band_output.values) == list(mem.band_output.values) == kw["trajectories"]
    # 50 mg and 200 ug in 200 mL: the S-ketamine amount is 250 times the dexmedetomidine one.
    dose = mem.pca_drug_dose
    np.testing.assert_allclose(
        dose.sel(pca_drug="S-ketamine"), 250 * dose.sel(pca_drug="dexmedetomidine"), rtol=1e-12
    )


def test_the_command_reports_each_drug_and_compare_and_design_sweep_them(tmp_path):
    from click.testing import CliRunner

    from pkpd.cli import main

    run = CliRunner().invoke
    base = ["--patients", "200", "--population", "spine_fusion_china", "--until", "54h"]
    r = run(main, ["simulate", SUF, "spine_fusion_multimodal_pca", *base,
                   "--threshold", "s_ketamine_cp=10ng/mL"])  # fmt: skip
    assert r.exit_code == 0, r.output
    for text in ("and S-ketamine from the PCA reservoir: model fanta2015_otto2021",
                 "dexmedetomidine_cp: Cmax median", "time s_ketamine_cp > 10 ng/mL",
                 "PCA amount of S-ketamine delivered (whole run): median",
                 "PCA demand follows sufentanil alone"):  # fmt: skip
        assert text in r.output, text
    tmpl = PUMP.replace("S-ketamine 50 mg", "S-ketamine {ket}")
    r = run(main, ["design", SUF, "--template", tmpl, "--var", "ket=25 mg,50 mg", *base])
    assert r.exit_code == 0, r.output
    rows = [ln.split() for ln in r.output.splitlines() if ln.strip().startswith("ket=")]
    assert [row[-1] for row in rows] and "S-ketamine (mg)" in r.output
    # Twice the S-ketamine in the reservoir: twice its median amount, the same sufentanil.
    assert float(rows[1][-1]) == pytest.approx(2 * float(rows[0][-1]), rel=1e-9)
    assert rows[0][-2] == rows[1][-2]
    r = run(main, ["compare", SUF, PUMP, PUMP.replace("50 mg", "100 mg"), *base])
    assert r.exit_code == 0, r.output
    assert "PCA amount of S-ketamine delivered (whole run) (mg)" in r.output


def test_one_patient_gets_each_drug_of_the_reservoir_exactly():
    pump = PUMP.replace("in 40 mL", "in 200 mL").replace(" limit 6 mL per 4 h", "")
    cov = {"weight": 70.0, "age": 50.0}
    ds = pkpd.simulate(SUF, pump, cov, until="34 h", seed=2, at=AT,
                       thresholds={"s_ketamine_cp": ["5 ng/mL"]})  # fmt: skip
    d = ds.pca_delivery_time.values
    assert d.size > 5 and ds.attrs["pca_refused_empty"] == 0
    specs = [load_model(SUF), load_model(KET)]
    blocks, inputs, outs = [], [], []
    for spec, conc in zip(specs, (0.25 / 0.2 if 4e-3 * 70 > 0.25 else 4e-3 * 70 / 0.2,
                                  50.0 / 0.2), strict=True):  # fmt: skip
        theta = spec.individual_parameters(spec.covariate_values(cov), None, warn=False)
        M, b, C = spec.system(theta)
        nc = spec.n_comp
        blocks.append(M[:nc, :nc])
        inputs.append(conc * b[:nc])
        outs.append(C)
    A, u = scipy.linalg.block_diag(*blocks), np.concatenate(inputs)
    C = scipy.linalg.block_diag(*outs)
    times = [3.0, 12.0, 30.0, 34.0]
    sol = _solve_union(A, u, C, d, 0.002, 0.001, 1.0, 31.0, times)
    exact = np.stack([s[0] for s in sol], axis=1) * 1e3
    names = ["cp", "ce", "s_ketamine_cp", "s_ketamine_cp_norketamine"]
    assert list(ds.output.values) == names
    np.testing.assert_allclose(ds.c_at.values, exact, rtol=1e-9, atol=1e-12)
    # The time series on the output grid, too.
    grid = [float(t) for t in ds.time.values if t in (12.0, 30.0)]
    for t, s in zip(grid, _solve_union(A, u, C, d, 0.002, 0.001, 1.0, 31.0, grid), strict=True):
        for name, c in zip(names, s[0] * 1e3, strict=True):
            assert float(ds[name].sel(time=t)) == pytest.approx(c, rel=1e-9)
    assert float(ds.dose_given_s_ketamine[-1]) == pytest.approx(
        50.0 / 0.2 * (0.002 * d.size + 0.001 * 30.0), rel=1e-12
    )
    assert list(ds.threshold_output.values) == ["s_ketamine_cp"]


def test_the_report_shows_each_drug_and_counts_as_counts(tmp_path):
    import html
    import re

    from pkpd.output.report import render_report

    ds = pkpd.simulate_cohort(SUF, PUMP, n=60, **KW)
    text = html.unescape(re.sub(r"<[^>]+>", " ", render_report(ds)))
    text = re.sub(r"\s+", " ", text)
    demands = float(np.median(ds.pca_demands.values))
    assert re.search(rf"pca_demands PCA demands [^%]*? count {demands:g} \(", text)
    assert "pca_drug_dose [S-ketamine]" in text and "cmax [s_ketamine_cp]" in text


def test_an_unknown_output_is_named_with_the_further_drugs_outputs():
    for kw in ({"trajectories": ["ketamine_cp"]}, {"thresholds": {"ketamine_cp": ["1 ng/mL"]}}):
        with pytest.raises(PkpdError, match=r"'ketamine_cp'.*further drugs: s_ketamine_cp, "):
            pkpd.simulate_cohort(SUF, PUMP, n=10, **{**KW, **kw})
