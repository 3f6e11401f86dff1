"""Helpers of tools/mutation.sh for cosmic-ray sessions (sampling and the score table).

python tools/mutation_tool.py sample SESSION.sqlite N SEED
    Keep a random sample of N pending mutants (numpy Generator seeded with SEED) and
    mark every other pending one as skipped, so a run fits a time budget.
python tools/mutation_tool.py summary SESSION.sqlite [...]
    One line per session: module, sampled, killed, survived, timeout, incompetent,
    and the score (killed + timeout) / (killed + survived + timeout) in percent (cosmic-ray
    counts a timeout as killed; it is shown apart here; incompetent mutants, which do
    not run at all, are left out of the score).
python tools/mutation_tool.py survivors SESSION.sqlite
    The diff of every surviving mutant.
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult


def sample(path: str, n: int, seed: int) -> None:
    with use_db(path, WorkDB.Mode.open) as db:
        # Job ids are random UUIDs: order by what the mutation is, so that a seed draws
        # the same mutants of the same source in every run.
        items = sorted(
            db.pending_work_items,
            key=lambda it: [
                (str(m.module_path), m.start_pos, m.end_pos, m.operator_name, m.occurrence)
                for m in it.mutations
            ],
        )
        pending = [item.job_id for item in items]
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(pending), size=min(n, len(pending)), replace=False)
        keep = {pending[i] for i in chosen}
        drop = [j for j in pending if j not in keep]
        if drop:
            db.set_multiple_results(
                drop, WorkResult(output="not sampled", worker_outcome=WorkerOutcome.SKIPPED)
            )
        print(f"{path}: {len(pending)} mutants, {len(keep)} sampled (seed {seed})")


def _outcome(result) -> str:
    if result.worker_outcome == WorkerOutcome.SKIPPED:
        return "skipped"
    if result.worker_outcome != WorkerOutcome.NORMAL:
        return "incompetent"
    if result.test_outcome == TestOutcome.SURVIVED:
        return "survived"
    if result.test_outcome == TestOutcome.INCOMPETENT:
        return "incompetent"
    return "timeout" if result.output == "timeout" else "killed"


def summary(paths: list[str]) -> None:
    cols = ("killed", "survived", "timeout", "incompetent")
    print("| module | mutants | sampled | run | " + " | ".join(cols) + " | score |")
    print("|---" * (len(cols) + 5) + "|")
    for path in paths:
        with use_db(path, WorkDB.Mode.open) as db:
            items = {i.job_id: i for i in db.work_items}
            count = Counter(_outcome(r) for _, r in db.results)
            pending = db.num_work_items - db.num_results
            module = str(next(iter(items.values())).mutations[0].module_path) if items else "?"
        db_total = len(items)
        sampled = db_total - count["skipped"]
        run = sampled - pending
        scored = count["killed"] + count["survived"] + count["timeout"]
        score = 100.0 * (count["killed"] + count["timeout"]) / scored if scored else float("nan")
        vals = " | ".join(str(count[c]) for c in cols)
        print(f"| {module} | {db_total} | {sampled} | {run} | {vals} | {score:.0f} % |")


def survivors(path: str) -> None:
    with use_db(path, WorkDB.Mode.open) as db:
        items = {i.job_id: i for i in db.work_items}
        for job_id, r in db.results:
            if _outcome(r) == "survived":
                m = items[job_id].mutations[0]
                print(f"## {m.module_path}:{m.start_pos[0]} {m.operator_name} ({job_id})")
                print(r.diff)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "sample":
        sample(args[0], int(args[1]), int(args[2]))
    elif cmd == "summary":
        summary(args)
    elif cmd == "survivors":
        survivors(args[0])
    else:
        raise SystemExit(__doc__)
