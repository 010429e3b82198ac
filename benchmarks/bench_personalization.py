"""Every model at every site over training seeds: federated, personalized, local-only, pooled.

    .venv/bin/python benchmarks/bench_personalization.py [--datasets tox21 lipophilicity biogen]
        [--seeds 0 1 2] [--rounds 10] [--out DIR]

For each dataset and training seed, ``fedchem demo`` through the demo flow (the split is the
demo's, seed 0; the training seed varies): the federated model, each site's personalization
of it (as it is, heads, or heads and last layer fine-tuned on the site's own rows, chosen on
its validation fold), each site's local-only model and the pooled model (everyone's rows in
one place: the bound a federation is measured against), all scored on each site's own test
fold. Prints, per dataset, mean ± standard deviation over the seeds per site and model, what
each site chose, and at how many sites personalized is at least as good as pooled in the mean
and in every seed (ROC-AUC: higher; RMSE: lower). Appends every run's per-site numbers to
``<out>/runs.jsonl`` and deletes the run's files unless ``--keep``; a run already there is not
run again (an interrupted benchmark resumes), and the tables read every run there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from fedchem.config import DemoConfig

MODELS = ("federated", "personalized", "local", "pooled")


def _fmt(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["tox21", "lipophilicity", "biogen"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument(
        "--out", help="runs.jsonl (and kept runs) here (default: a temporary directory)"
    )
    ap.add_argument("--keep", action="store_true", help="keep each run's files")
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from fedchem.flows.demo import demo_from_config  # Prefect, after its settings

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fedchem-personal-"))
    root.mkdir(parents=True, exist_ok=True)
    log = root / "runs.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for name in args.datasets:
        for seed in args.seeds:
            if any(r["dataset"] == name and r["train_seed"] == seed for r in done):
                continue
            cfg = DemoConfig(dataset=name, seed=0, rounds=args.rounds, train={"seed": seed})
            start = time.perf_counter()
            run_dir = root / f"{name}-t{seed}"
            rep = demo_from_config(cfg, run_dir, f"personal-{name}-t{seed}")
            if not args.keep:
                shutil.rmtree(run_dir)
            metric = "roc_auc" if "roc_auc" in rep["metrics"] else "rmse"
            row: dict[str, dict[str, float]] = {}
            for m in MODELS:
                for site, v in rep[m]["per_site"].items():
                    row.setdefault(site, {})[m] = v[metric]
            record = {
                "dataset": name,
                "train_seed": seed,
                "metric": metric,
                "per_site": row,
                "overall": {m: rep[m]["overall"][metric] for m in MODELS},
                "personalized": rep["meta"]["personalized"],
            }
            done.append(record)
            with log.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            print(
                f"{name} seed {seed}: "
                + ", ".join(f"{m} {rep[m]['overall'][metric]:.3f}" for m in MODELS)
                + f" ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        runs = [r for r in done if r["dataset"] == name and r["train_seed"] in args.seeds]
        if not runs:
            continue
        metric = runs[0]["metric"]
        # scores[model][site] -> one value a seed; choices[site] -> the options chosen
        scores: dict[str, dict[str, list[float]]] = {m: {} for m in MODELS}
        choices: dict[str, Counter[str]] = {}
        for r in runs:
            for site, vals in r["per_site"].items():
                for m in MODELS:
                    scores[m].setdefault(site, []).append(vals[m])
            for site, c in r["personalized"].items():
                choices.setdefault(site, Counter())[c["choice"]] += 1
        n_seeds = len(runs)
        higher = metric == "roc_auc"

        def at_least(a: float, b: float, higher: bool = higher) -> bool:
            return a >= b if higher else a <= b

        sites = sorted(scores["federated"])
        print(f"\n{name}, {metric} on each site's test fold ({n_seeds} seeds):\n")
        print("| site | " + " | ".join(MODELS) + " | chosen | personalized ≥ pooled |")
        print("|---" * (len(MODELS) + 3) + "|")
        wins: dict[str, int] = {"personalized": 0, "federated": 0, "every seed": 0}
        for site in sites:
            mean = {m: statistics.mean(scores[m][site]) for m in MODELS}
            seeds_ok = sum(
                at_least(a, b)
                for a, b in zip(scores["personalized"][site], scores["pooled"][site], strict=True)
            )
            wins["personalized"] += at_least(mean["personalized"], mean["pooled"])
            wins["federated"] += at_least(mean["federated"], mean["pooled"])
            wins["every seed"] += seeds_ok == n_seeds
            chosen = ", ".join(f"{k} {v}" for k, v in choices[site].most_common())
            print(
                f"| {site} | "
                + " | ".join(_fmt(scores[m][site]) for m in MODELS)
                + f" | {chosen} | "
                f"{'yes' if at_least(mean['personalized'], mean['pooled']) else 'no'} "
                f"(seeds {seeds_ok}/{n_seeds}) |"
            )
        overall = {
            m: [statistics.mean(v[i] for v in scores[m].values()) for i in range(n_seeds)]
            for m in MODELS
        }
        print("| **mean over sites** | " + " | ".join(_fmt(overall[m]) for m in MODELS) + " | | |")
        n = len(sites)
        print(
            f"\n{name}: at least as good as pooled (mean over seeds): personalized at "
            f"{wins['personalized']}/{n} sites (in every seed: {wins['every seed']}/{n}), "
            f"federated at {wins['federated']}/{n} (the baseline, side by side); ratio "
            f"{wins['personalized'] / max(wins['federated'], 1):.2f}\n",
            flush=True,
        )
    print(f"runs.jsonl in {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
