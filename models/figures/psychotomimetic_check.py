"""Figures and numbers of the psychotomimetic risk model's documentation (models/README.md).

Run from the repository root after `pkpd risk refit psychotomimetic`:

    .venv/bin/python models/figures/psychotomimetic_check.py

It prints the calibration summary, the fit under the other reading of the source (4/60 and
12/60), the sensitivity to the assumed emergence time, the predictions for the shipped and
typical regimens with their validity flags, and draws
``models/figures/psychotomimetic_calibration.png`` (the posterior curve against the awake
exposure, the calibration arms, and the second-source checks).
Research software, not a clinical dosing device.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import warnings
from pathlib import Path

import numpy as np

import pkpd
from pkpd.analysis import risk as R
from pkpd.analysis import risk_domain as D
from pkpd.inputs.units import parse_quantity

HERE = Path(__file__).resolve().parent
N_PRED = 10_000
# Second sources (reference doc 5.2, 4; the PD file models/pd/simons2022_drug_high.toml):
SIMONS_C50 = 71.3  # ng/mL S-ketamine, drug high C50 0.3 nmol/mL (arterial)
BOWDLE = (50.0, 200.0)  # ng/mL racemic ketamine, venous: psychedelic VAS linear, no threshold


def summary(rm) -> None:
    f = rm.fit
    print(f"fit {f['date']}, {f['n_virtual']} virtual patients per arm, seed {f['seed']}")
    for k, q in f["summary"].items():
        mom = f"mean {q['mean']:.3g} sd {q['sd']:.3g}, " if "mean" in q else ""
        print(f"  {k}: {mom}median {q['q500']:.3g}, 95% {q['q025']:.3g} to {q['q975']:.3g}")
    print(f"  exposure range (1-99%): {f['exposure_range_ng_ml']}")
    for a in f["arms"]:
        print(
            f"  {a['arm']}: observed {a['events']}/{a['n']} ({100 * a['observed']:.1f}%, CP "
            f"{100 * a['observed_cp_lo']:.1f}-{100 * a['observed_cp_hi']:.1f}), predicted "
            f"{100 * a['predicted_mean']:.1f}% ({100 * a['predicted_lo']:.1f}-"
            f"{100 * a['predicted_hi']:.1f}), median awake exposure "
            f"{a['exposure_median_ng_ml']:.3g}"
        )


def variant(rm, label, model_changes=None, **arm_changes) -> None:
    """Refit (not written) with changed fit arms or model fields; prints the summary."""
    alt = copy.deepcopy(rm)
    for k, v in (model_changes or {}).items():
        setattr(alt, k, v)
    arms = []
    for a in alt.arms:
        if a.use == "fit":
            ch = {k: v(a) if callable(v) else v for k, v in arm_changes.items()}
            a = dataclasses.replace(a, **ch)
        arms.append(a)
    alt.arms = arms
    alt.fit = None
    res = R.calibrate(alt)
    s = res.summary()
    print(f"{label}:")
    for k in ("gamma", "c50_ng_ml", "background"):
        q = s[k]
        print(f"  {k}: median {q['q500']:.3g}, 95% {q['q025']:.3g} to {q['q975']:.3g}")
    for a in res.arms:
        print(
            f"  {a['arm']} {a['events']}/{a['n']}: predicted {100 * a['predicted_mean']:.1f}% "
            f"({100 * a['predicted_lo']:.1f}-{100 * a['predicted_hi']:.1f})"
        )
    return res


def predictions(rm) -> None:
    anchors = pkpd.load_regimen("lumbar_fusion_esketamine").anchors
    regs = {
        "lumbar_fusion_esketamine": "lumbar_fusion_esketamine",
        "lumbar_fusion_esketamine_high": "lumbar_fusion_esketamine_high",
        "0.2 mg/kg + 0.125 mg/kg/h to end of surgery (no postoperative infusion)":
            "0.2 mg/kg bolus at 0 h; 0.125 mg/kg/h from 0 h to end_of_surgery",
        "0.5 mg/kg + 0.25 mg/kg/h to end of surgery":
            "0.5 mg/kg bolus at 0 h; 0.25 mg/kg/h from 0 h to end_of_surgery",
        "0.001 mg/kg + 0.001 mg/kg/h to end of surgery":
            "0.001 mg/kg bolus at 0 h; 0.001 mg/kg/h from 0 h to end_of_surgery",
        "2 mg/kg over 4 h (no surgery: awake)": "2 mg/kg over 4 h from 0 h",
        "0.25 mg/kg bolus (no surgery: awake)": "0.25 mg/kg bolus at 0 h",
    }  # fmt: skip
    for label, text in regs.items():
        reg = pkpd.load_regimen(text)
        if "end_of_surgery" in reg.anchor_names and not reg.anchors:
            reg = dataclasses.replace(reg, anchors=anchors)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pkpd.simulate_cohort(
                rm.pk_model, reg, "spine_fusion_china", n=N_PRED, seed=1, every="5 min",
                until=f"{max(reg.end_time, 4.0) + 24:g} h", bands=False, progress=False,
                **R.required_cohort_kwargs(rm),
            )  # fmt: skip
            out = R.apply_risk(ds, rm, regimen=reg)
        inc = out["incidence_psychotomimetic"]
        q90 = inc.attrs["quantile_values"][list(inc.attrs["quantile_levels"]).index(0.9)]
        lo = float(out["incidence_psychotomimetic_lo"])
        hi = float(out["incidence_psychotomimetic_hi"])
        print(
            f"  {label}: {100 * float(inc):.1f}% ({100 * lo:.1f}-{100 * hi:.1f}), q90 "
            f"{100 * q90:.1f}%, "
            f"outside range {100 * inc.attrs['fraction_outside_calibration_exposure']:.0f}%, "
            f"within domain: {'yes' if inc.attrs['within_domain'] else 'no'}"
        )
    for rule in ("mean", "q90", "upper"):
        print(f"  resolution floor ({rule}): {100 * D.resolution_floor(rm, rule):.2f}%")


def figure(rm, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = rm.draws
    x = np.geomspace(1.0, 1000.0, 300)
    curves = np.array([rm.probability(x, a, g, p0) for a, g, p0 in d])
    med, lo, hi = (np.quantile(curves, q, axis=0) for q in (0.5, 0.025, 0.975))
    fig, ax = plt.subplots(figsize=(8.0, 5.2), layout="constrained")
    ax.fill_between(x, lo, hi, color="tab:blue", alpha=0.25, label="posterior 95% band")
    ax.plot(x, med, color="tab:blue", lw=2, label="posterior median")
    xr_lo, xr_hi = rm.fit["exposure_range_ng_ml"]
    ax.axvspan(xr_lo, xr_hi, color="0.85", zorder=0, label="calibration exposure range (1-99%)")
    p0 = d[:, 2]
    ax.axhspan(np.quantile(p0, 0.025), np.quantile(p0, 0.975), color="tab:green", alpha=0.15,
               label="background p0, 95%")  # fmt: skip
    for a in rm.fit["arms"]:
        xm = a["exposure_median_ng_ml"]
        y = a["observed"]
        ax.errorbar(
            xm, y, yerr=[[y - a["observed_cp_lo"]], [a["observed_cp_hi"] - y]], fmt="o",
            color="black", capsize=4,
        )  # fmt: skip
        ax.annotate(f"{a['arm']}\n{a['events']}/{a['n']}", (xm, y), textcoords="offset points",
                    xytext=(8, -4), fontsize=9)  # fmt: skip
    ax.axvline(SIMONS_C50, color="tab:red", ls="--", lw=1.5,
               label="Simons 2022 drug-high C50 (71 ng/mL)")  # fmt: skip
    ax.axvspan(*BOWDLE, ymin=0.0, ymax=0.04, color="tab:orange", alpha=0.8,
               label="Bowdle 1998: psychedelic VAS linear, 50-200 ng/mL (racemic)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlim(1.0, 1000.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("peak venous S-ketamine while awake (ng/mL, fanta2015_otto2021)")
    ax.set_ylabel("probability of psychiatric symptoms")
    ax.set_title("psychotomimetic risk model: calibration and second-source checks")
    ax.legend(loc="upper left", fontsize=8.5, framealpha=0.9)
    fig.text(0.005, 0.005, "research software,\nnot a clinical dosing device", ha="left",
             va="bottom", fontsize=7, color="0.4")  # fmt: skip
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    rm = R.load_risk("psychotomimetic")
    summary(rm)
    if "--quick" not in sys.argv:
        variant(rm, "other reading of the source: 4/60 and 12/60",
                n=60, events=lambda a: 2 * a.events)  # fmt: skip
        for med in ("90 min", "180 min"):
            em = dataclasses.replace(
                rm.arms[0].emergence, params=(parse_quantity(med, "time").value, 1.287),
                default=parse_quantity(med, "time").value,
            )  # fmt: skip
            variant(rm, f"emergence median {med} instead of 131 min", emergence=em)
        variant(rm, "slope prior box gamma in [0, 5] instead of [0, 20]",
                {"prior_gamma": (0.0, 5.0)})  # fmt: skip
    print("predictions (10,000 patients of spine_fusion_china, posterior mean and 95% interval):")
    predictions(rm)
    figure(rm, HERE / "psychotomimetic_calibration.png")
    print(f"wrote {HERE / 'psychotomimetic_calibration.png'}")


if __name__ == "__main__":
    main()
