"""Cohort scaling from 1e3 to 1e6 patients: wall time, patients/s and peak memory.

Each size runs in its own subprocess (so peak RSS is per run), after a warm-up run that
loads or compiles the numba kernel: the reference workload of test_bench_cohort.py with the
model's own variability, in summary mode (per-patient metrics only, `--mode summary`, the
issue's target 2) or with streaming percentile bands as well (`--mode bands`).

    .venv/bin/python benchmarks/scaling.py [--mode summary bands] [--sizes 1000 ... 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CODE = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
from pkpd.running.cohort import simulate_cohort
reg = "0.3 mg/kg bolus at 0 h; 0.2 mg/kg/h from 0 h to 4 h; 0.05 mg/kg/h from 4 h to 48 h"
kw = dict(until="48 h", every="1 min", progress=False, bands=sys.argv[2] == "bands")
simulate_cohort("fanta2015_otto2021", reg, "healthy_volunteers", 2048, seed=1, **kw)
n = int(sys.argv[1])
t = time.perf_counter()
ds = simulate_cohort("fanta2015_otto2021", reg, "healthy_volunteers", n, seed=1, **kw)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"n": n, "seconds": dt, "patients_per_s": n / dt, "peak_rss_MB": peak / 1e6}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000, 1000000])
    ap.add_argument("--mode", nargs="+", choices=["summary", "bands"], default=["summary", "bands"])
    args = ap.parse_args()
    print("| mode | patients | wall s | patients/s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for mode in args.mode:
        for n in args.sizes:
            r = subprocess.run([sys.executable, "-c", CODE, str(n), mode], capture_output=True,
                               text=True, check=True)  # fmt: skip
            d = json.loads(r.stdout.strip().splitlines()[-1])
            print(
                f"| {mode} | {d['n']:,} | {d['seconds']:.2f} | {d['patients_per_s']:,.0f} | "
                f"{d['peak_rss_MB']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
