"""Orchestration overhead per round: deployed mode (a process worker per site) vs local mode.

Overhead of a round = round wall time (round start to commit, ``round_seconds`` in the round
manifest) minus the slowest site's own step (``site_seconds``: load data, train, evaluate,
upload). The baseline, in the same run on the same prepared sites: the coordinator in local
mode (sites as subflows in one process). Prints both and the ratio.

    .venv/bin/python benchmarks/bench_deployed_round.py --sites 3 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import s3fs
import yaml

from fedchem.config import ChemConfig, FederationConfig, ModelConfig, PrepareConfig, load_config
from fedchem.demo.sites import bundled_dataset
from fedchem.stack import REPO, S3_KEY, S3_SECRET, Stack, stack_down, stack_up


def _prefect(stack: Stack, *args: str) -> None:
    exe = str(Path(sys.executable).with_name("prefect"))
    res = subprocess.run([exe, *args], env=stack.env(), cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stdout[-3000:] + res.stderr[-3000:])


def _overheads(manifests: list[dict], site_manifests: list[list[dict]]) -> list[float]:
    return [
        m["round_seconds"] - max(s["site_seconds"] for s in sites)
        for m, sites in zip(manifests, site_manifests, strict=True)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--molecules", type=int, default=1500)
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="fedchem-bench-deploy-"))
    data = base / "data.csv"
    pd.read_csv(bundled_dataset()).head(args.molecules).to_csv(data, index=False)
    chem = ChemConfig(fp_size=2048)
    t0 = time.perf_counter()
    stack = stack_up(base / "stack", data, n_sites=args.sites, rounds=args.rounds, chem=chem)
    print(f"stack up in {time.perf_counter() - t0:.1f}s: {stack.sites}, worker poll 1 s")
    try:
        for site in stack.sites:
            _prefect(stack, "deployment", "run", f"site-prepare/{site}-prepare", "--watch")
        doc = yaml.safe_load((base / "stack" / "prefect.yaml").read_text())
        cfg = next(d for d in doc["deployments"] if d["name"] == "coordinator")["parameters"]
        config = {**cfg["config"], "run_id": "bench-deployed", "model": {"hidden": 256}}
        t0 = time.perf_counter()
        _prefect(stack, "deployment", "run", "coordinator/coordinator", "--watch",
                 "--params", json.dumps({"config": config}))  # fmt: skip
        print(f"deployed coordinator run: {time.perf_counter() - t0:.1f}s for {args.rounds} rounds")
        fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET,
                               client_kwargs={"endpoint_url": stack.s3_endpoint})  # fmt: skip
        root = "fedchem-hub/hub/runs/bench-deployed/rounds"
        rounds = [json.loads(fs.cat(f"{root}/{r:04d}/manifest.json"))
                  for r in range(1, args.rounds + 1)]  # fmt: skip
        sites = [[json.loads(fs.cat(f"{root}/{r:04d}/sites/{s}/manifest.json"))
                  for s in stack.sites] for r in range(1, args.rounds + 1)]  # fmt: skip
        deployed = _overheads(rounds, sites)

        # baseline: local mode on the same prepared sites, in this process
        os.environ.update(
            {k: v for k, v in stack.env().items() if k.startswith(("AWS_", "PREFECT_"))}
        )
        from flows.coordinator import coordinator

        site_cfgs = [load_config(base / "stack" / "sites" / s / "site.yaml", PrepareConfig).site
                     for s in stack.sites]  # fmt: skip
        local_cfg = FederationConfig.model_validate(
            {
                **config,
                "run_id": "bench-local",
                "mode": "local",
                "sites": [s.model_dump(mode="json") for s in site_cfgs],
            }
        )
        assert local_cfg.model == ModelConfig(hidden=256)
        committed = coordinator(local_cfg)
        lroot = "fedchem-hub/hub/runs/bench-local/rounds"
        lsites = [[json.loads(fs.cat(f"{lroot}/{r:04d}/sites/{s}/manifest.json"))
                   for s in stack.sites] for r in range(1, args.rounds + 1)]  # fmt: skip
        local = _overheads([m.model_dump() for m in committed[1:]], lsites)
    finally:
        stack_down(base / "stack")
    slowest = [max(s["site_seconds"] for s in r) for r in sites]
    print(f"per round, deployed: wall {np.mean([m['round_seconds'] for m in rounds]):.2f}s, "
          f"slowest site step {np.mean(slowest):.2f}s, overhead {np.mean(deployed):.2f}s "
          f"(min {min(deployed):.2f}, max {max(deployed):.2f}; target <= 3 s)")  # fmt: skip
    print(f"per round, local mode (subflows, same process): overhead {np.mean(local):.2f}s")
    print(f"ratio deployed / local overhead: {np.mean(deployed) / np.mean(local):.1f}x")


if __name__ == "__main__":
    main()
