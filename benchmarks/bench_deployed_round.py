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
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import s3fs
import yaml
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterTags,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from fedchem.config import ChemConfig, FederationConfig, ModelConfig, PrepareConfig, load_config
from fedchem.demo.sites import bundled_dataset
from fedchem.deployments.stack import WORKER_TYPES, Stack, stack_down, stack_up


def _prefect(stack: Stack, *args: str) -> None:
    exe = str(Path(sys.executable).with_name("prefect"))
    res = subprocess.run(
        [exe, *args], env=stack.env(), cwd=stack.dir, capture_output=True, text=True
    )
    if res.returncode != 0:
        raise RuntimeError(res.stdout[-3000:] + res.stderr[-3000:])


def _overheads(manifests: list[dict], site_manifests: list[list[dict]]) -> list[float]:
    return [
        m["round_seconds"] - max(s["site_seconds"] for s in sites)
        for m, sites in zip(manifests, site_manifests, strict=True)
    ]


def _t(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _fetch_timeline(stack: Stack, run_id: str) -> dict[str, Any]:
    """The site runs of ``run_id`` with their state histories, and the coordinator's tasks,
    read with Prefect's client (timestamps as ISO strings, the shape ``_phases`` reads)."""
    with (
        temporary_settings(
            {
                PREFECT_API_URL: stack.api_url,
                PREFECT_API_AUTH_STRING: stack.env()["PREFECT_API_AUTH_STRING"],
            }
        ),
        get_client(sync_client=True) as client,
    ):
        site_runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"run:{run_id}"]))
        )
        runs = [
            {
                "name": r.name,
                "created": r.created.isoformat() if r.created else None,
                "parent_task_run_id": str(r.parent_task_run_id or ""),
                "states": [
                    {"type": st.type.value, "timestamp": st.timestamp.isoformat()}
                    for st in client.read_flow_run_states(r.id)
                ],
            }
            for r in site_runs
        ]
        (coordinator,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"federation/{run_id}"]))
        )
        task_runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[coordinator.id]))
        )
    tasks = [
        {"name": t.name, "end_time": t.end_time.isoformat() if t.end_time else None}
        for t in task_runs
    ]
    linked = sum(bool(r["parent_task_run_id"]) for r in runs)
    print(f"{linked} of {len(runs)} site runs linked to the coordinator's run (UI nesting)")
    return {"runs": runs, "tasks": tasks}


def _phases(timeline: dict[str, Any], site_manifests: list[list[dict]]) -> dict[str, float]:
    """Where a deployed round's time goes (means over rounds and sites).

    A site run is booked (created) by the coordinator's ``book-round-NN`` task, a round ahead
    unless ``--book-ahead 0``; its worker polls it (Pending), starts it (Running); it waits
    on the hub until ``open-round-NN`` and then does the site's own step (``site_seconds``).
    The critical path of a round: committed -> next round opened -> the sites' updates on
    the hub -> committed (the coordinator does not wait for the runs to report Completed).
    """
    by_name = {r["name"]: r for r in timeline["runs"]}
    tasks = {t["name"]: t for t in timeline["tasks"] if t["end_time"]}
    aggregates = sorted(
        (t for t in timeline["tasks"] if t["name"].startswith("aggregate") and t["end_time"]),
        key=lambda t: _t(t["end_time"]),
    )
    acc: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        acc.setdefault(key, []).append(value)

    committed_before = _t(next(t for n, t in tasks.items() if n.startswith("start"))["end_time"])
    for r, sites in enumerate(site_manifests, start=1):
        opened = _t(tasks[f"open-round-{r:02d}"]["end_time"])
        ends = []
        for m in sites:
            run = by_name[f"round-{r:02d}/{m['site']}"]
            states = {s["type"]: _t(s["timestamp"]) for s in run["states"]}
            created = _t(run["created"])
            add(
                "off the critical path when booked ahead: created -> Pending (1 s poll)",
                states["PENDING"] - created,
            )
            add(
                "  Pending -> Running (process start, engine, flow load)",
                states["RUNNING"] - states["PENDING"],
            )
            add(
                "  share of site runs Running before their round opened",
                float(states["RUNNING"] <= opened),
            )
            add(
                "round opened -> site Completed, less the site's own step",
                states["COMPLETED"] - opened - m["site_seconds"],
            )
            ends.append(states["COMPLETED"])
        agg = aggregates[r - 1]  # rounds commit in order
        add("previous round committed -> this round opened", opened - committed_before)
        add(
            "last site Completed -> round committed (< 0: before the runs reported their end)",
            _t(agg["end_time"]) - max(ends),
        )
        committed_before = _t(agg["end_time"])
    return {k: float(np.mean(v)) for k, v in acc.items()}


def _commit_to_commit(timeline: dict[str, Any], n_rounds: int) -> list[float]:
    """Round wall time measured between commits (the start task's end for round 1): it
    includes all the coordinator does between rounds (checks, artifacts, booking)."""
    ends = sorted(
        _t(t["end_time"])
        for t in timeline["tasks"]
        if t["name"].startswith(("start", "aggregate")) and t["end_time"]
    )
    return list(np.diff(ends[: n_rounds + 1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--molecules", type=int, default=1500)
    ap.add_argument(
        "--worker",
        choices=WORKER_TYPES,
        default="fedchem",
        help="fedchem's worker (runs forked warm) or Prefect's process worker (a fresh "
        "interpreter per flow run)",
    )
    ap.add_argument(
        "--book-ahead",
        type=int,
        default=1,
        help="rounds of site runs created ahead (0: at round start)",
    )
    ap.add_argument(
        "--database",
        choices=["postgres", "sqlite"],
        default="postgres",
        help="the Prefect server on a PostgreSQL server of the stack's own, or on SQLite",
    )
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="fedchem-bench-deploy-"))
    data = base / "data.csv"
    pd.read_csv(bundled_dataset()).head(args.molecules).to_csv(data, index=False)
    chem = ChemConfig(fp_size=2048)
    t0 = time.perf_counter()
    stack = stack_up(
        base / "stack",
        data,
        n_sites=args.sites,
        rounds=args.rounds,
        chem=chem,
        worker=args.worker,
        postgres=args.database == "postgres",
    )
    print(f"stack up in {time.perf_counter() - t0:.1f}s: {stack.sites}, worker poll 1 s")
    try:
        for site in stack.sites:
            _prefect(stack, "deployment", "run", f"site-prepare/{site}-prepare", "--watch")
        doc = yaml.safe_load((base / "stack" / "prefect.yaml").read_text())
        cfg = next(d for d in doc["deployments"] if d["name"] == "coordinator")["parameters"]
        config = {**cfg["config"], "run_id": "bench-deployed", "model": {"hidden": 256}}
        config["deployment"] = {**config["deployment"], "book_ahead": args.book_ahead}
        t0 = time.perf_counter()
        _prefect(
            stack,
            "deployment",
            "run",
            "coordinator/coordinator",
            "--watch",
            "--params",
            json.dumps({"config": config}),
        )
        print(f"deployed coordinator run: {time.perf_counter() - t0:.1f}s for {args.rounds} rounds")
        creds = stack.credentials("operator")
        fs = s3fs.S3FileSystem(
            key=creds.access_key,
            secret=creds.secret_key,
            client_kwargs={"endpoint_url": stack.s3_endpoint},
        )
        root = "fedchem-hub/hub/runs/bench-deployed/rounds"
        rounds = [
            json.loads(fs.cat(f"{root}/{r:04d}/manifest.json")) for r in range(1, args.rounds + 1)
        ]
        sites = [
            [json.loads(fs.cat(f"{root}/{r:04d}/sites/{s}/update.json")) for s in stack.sites]
            for r in range(1, args.rounds + 1)
        ]
        deployed = _overheads(rounds, sites)
        timeline = _fetch_timeline(stack, "bench-deployed")
        (base / "timeline.json").write_text(json.dumps({"timeline": timeline, "sites": sites}))
        phases = _phases(timeline, sites)
        walls = _commit_to_commit(timeline, args.rounds)

        # baseline: local mode on the same prepared sites, in this process
        os.environ.update(
            {k: v for k, v in stack.env().items() if k.startswith(("AWS_", "PREFECT_"))}
        )
        from fedchem.flows.coordinator import coordinator

        site_cfgs = [
            load_config(base / "stack" / "sites" / s / "site.yaml", PrepareConfig).site
            for s in stack.sites
        ]
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
        lsites = [
            [json.loads(fs.cat(f"{lroot}/{r:04d}/sites/{s}/update.json")) for s in stack.sites]
            for r in range(1, args.rounds + 1)
        ]
        local = _overheads([m.model_dump() for m in committed[1:]], lsites)
    finally:
        stack_down(base / "stack")
    slowest = [max(s["site_seconds"] for s in r) for r in sites]
    print(
        f"per round, deployed: wall {np.mean([m['round_seconds'] for m in rounds]):.2f}s, "
        f"slowest site step {np.mean(slowest):.2f}s, overhead {np.mean(deployed):.2f}s "
        f"(min {min(deployed):.2f}, max {max(deployed):.2f}; target <= 3 s)"
    )
    between = [w - s for w, s in zip(walls, slowest, strict=True)]
    print(
        f"  measured commit to commit: wall {np.mean(walls):.2f}s, overhead "
        f"{np.mean(between):.2f}s (per round: {', '.join(f'{x:.2f}' for x in between)})"
    )
    booking = f"booked {args.book_ahead} rounds ahead" if args.book_ahead else "booked per round"
    print(
        f"where a deployed round's time goes ({booking}, "
        f"{args.worker} workers, {args.database}; "
        "means over rounds and sites):"
    )
    for k, v in phases.items():
        print(f"  {k:<58} {v:6.2f}s")
    print(f"per round, local mode (subflows, same process): overhead {np.mean(local):.2f}s")
    print(f"ratio deployed / local overhead: {np.mean(deployed) / np.mean(local):.1f}x")


if __name__ == "__main__":
    main()
