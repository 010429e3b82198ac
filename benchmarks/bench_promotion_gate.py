"""The promotion gate's decisions against what the test folds say, the new rule beside the old.

    .venv/bin/python benchmarks/bench_promotion_gate.py [--seeds 0 1 2 3 4] [--dataset tox21]
        [--rounds 10] [--out DIR]

For each seed, ``fedchem demo --cycles 2`` twice through the demo flow (the product's path:
Prefect flows, signed rounds, the registry): once with the held-back rows arriving as
measured, once with their values shuffled within each assay (the drill: a candidate trained on
them must never be promoted). Cycle 2's candidate is judged by the confidence rule (the
default: each site's paired bootstrap interval on its validation fold) and, on the same
numbers, by the threshold rule (the gate before: each site's validation mean against a fixed
0.01). What neither gate sees decides whether it was right: candidate and production on the
same molecules of each site's test fold. A candidate is *better* when it is better on test at
most sites, *worse* when it is worse at most, *mixed* otherwise.

Prints one line a run and a table of counts, old gate against new (promotions of better
candidates, promotions of worse or shuffled ones), and the ratio of right decisions. Each run
appends its cycle-2 record to ``<out>/runs.jsonl`` and its files (1.6 GB a run: every
round's models) are deleted unless ``--keep``; a run already in ``runs.jsonl`` is not run
again (an interrupted benchmark resumes), and the table counts every run there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fedchem.config import DemoConfig


def _truth(cycle: dict[str, Any]) -> tuple[str, int, float]:
    """better / worse / mixed by the sites' test-fold paired differences, how many sites are
    better, and the molecule-weighted mean difference."""
    diffs = [(p["difference"], p["n_molecules"]) for p in cycle["test_paired"].values()]
    better = sum(d > 0 for d, _ in diffs)
    worse = sum(d < 0 for d, _ in diffs)
    mean = sum(d * n for d, n in diffs) / sum(n for _, n in diffs)
    label = "better" if better > len(diffs) / 2 else "worse" if worse > len(diffs) / 2 else "mixed"
    return label, better, mean


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--dataset", default="tox21")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument(
        "--out", help="runs.jsonl (and kept runs) here (default: a temporary directory)"
    )
    ap.add_argument("--keep", action="store_true", help="keep each run's files")
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from fedchem.flows.demo import demo_from_config  # Prefect, after its settings

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fedchem-gate-"))
    root.mkdir(parents=True, exist_ok=True)
    log = root / "runs.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for seed in args.seeds:
        for arrivals in ("measured", "shuffled"):
            if any(r["seed"] == seed and r["arrivals"] == arrivals for r in done):
                continue
            cfg = DemoConfig(
                dataset=args.dataset,
                seed=seed,
                rounds=args.rounds,
                cycles=2,
                arrivals=arrivals,
                personalize=False,
                train={"seed": seed},
            )
            start = time.perf_counter()
            run_dir = root / f"{arrivals}-s{seed}"
            report = demo_from_config(cfg, run_dir, f"gate-{arrivals}-s{seed}")
            cycle: dict[str, Any] = report["meta"]["cycles"][1]
            if not args.keep:
                shutil.rmtree(run_dir)
            label, better, mean = _truth(cycle)
            truth = "shuffled" if arrivals == "shuffled" else label
            row = {
                "seed": seed,
                "arrivals": arrivals,
                "truth": truth,
                "sites_better_on_test": better,
                "test_change": mean,
                "new": cycle["outcome"],
                "old": "promoted" if cycle["threshold_rule"]["promote"] else "refused",
                "valid_overall": cycle["overall"],
                "seconds": time.perf_counter() - start,
            }
            done.append(row)
            with log.open("a") as fh:
                fh.write(json.dumps({**row, "cycle": cycle}) + "\n")
            o = cycle["overall"]
            print(
                f"seed {seed} {arrivals:8s}: test better at {better}/{len(cycle['test_paired'])} "
                f"sites (mean {mean:+.4f}) -> {truth:8s} | new: {row['new']:19s} "
                f"(valid {o['change']:+.4f} [{o['lower']:+.4f}, {o['upper']:+.4f}]) | old: "
                f"{row['old']} | {row['seconds']:.0f} s",
                flush=True,
            )
    rows = [r for r in done if r["seed"] in args.seeds]
    print()
    print(
        "| candidate (by the test folds) | runs | old gate: promoted | new gate: promoted | "
        "new: not enough evidence | new: refused |"
    )
    print("|---|---|---|---|---|---|")
    for truth in ("better", "mixed", "worse", "shuffled"):
        group = [r for r in rows if r["truth"] == truth]
        if not group:
            continue
        print(
            f"| {truth} | {len(group)} | {sum(r['old'] == 'promoted' for r in group)} | "
            f"{sum(r['new'] == 'promoted' for r in group)} | "
            f"{sum(r['new'] == 'not enough evidence' for r in group)} | "
            f"{sum(r['new'] == 'refused' for r in group)} |"
        )

    def right(r: dict[str, Any], gate: str) -> bool:
        # right: promote a better candidate; keep production otherwise
        return (r[gate] == "promoted") == (r["truth"] == "better")

    old_right = sum(right(r, "old") for r in rows)
    new_right = sum(right(r, "new") for r in rows)
    print(
        f"\nright decisions: old gate {old_right}/{len(rows)}, new gate {new_right}/{len(rows)} "
        f"(ratio new/old {new_right / max(old_right, 1):.2f}); shuffled promoted: old "
        f"{sum(r['old'] == 'promoted' for r in rows if r['truth'] == 'shuffled')}, new "
        f"{sum(r['new'] == 'promoted' for r in rows if r['truth'] == 'shuffled')}"
    )
    print(f"runs.jsonl in {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
