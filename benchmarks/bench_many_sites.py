"""Many sites: simulation overhead per site per round, subflows vs Dask worker processes.

    .venv/bin/python benchmarks/bench_many_sites.py --sites 16 100 --rounds 2

Bundled Tox21 is dealt into N sites and prepared once (the library's prepare, as the test
fixtures do); then, in the same run on the same prepared sites, the Prefect coordinator flow
runs the same federation twice: its sites' steps as subflows one after another (today's
path, the baseline) and in a local Dask cluster (``simulation.engine: dask``, one worker
process per core). Both go through the same round driver and hub protocol, signed.

Overhead per site per round = (the round's wall time, ``round_seconds`` in its manifest,
minus the sites' own work, ``site_seconds`` in their manifests: summed for the sequential
path, summed over the number of workers for the parallel one) / N. Prints both and the ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from fedchem.config import (
    ChemConfig,
    DeploymentConfig,
    FederationConfig,
    ModelConfig,
    SimulationConfig,
    TrainConfig,
)
from fedchem.data.prepare import prepare_site
from fedchem.demo.sites import bundled_dataset, split_into_sites
from fedchem.federation.commits import committed_rounds
from fedchem.messages import SiteUpdateManifest
from fedchem.storage.hub import HubLayout, HubStore


def overheads(hub: HubStore, run_id: str, n_sites: int, parallel: int) -> list[float]:
    out = []
    for m in committed_rounds(hub, run_id)[1:]:
        work = sum(
            SiteUpdateManifest.model_validate(
                hub.get_json(HubLayout(run_id).site_manifest(m.round, s))
            ).site_seconds
            for s in m.sites
        )
        assert m.round_seconds is not None
        out.append((m.round_seconds - work / parallel) / n_sites)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, nargs="+", default=[16, 100])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from fedchem.flows.coordinator import coordinator
    from fedchem.tasks.site import publish_prepare_report

    chem = ChemConfig(fp_size=1024)
    with tempfile.TemporaryDirectory(prefix="fedchem-bench-sites-") as tmp:
        root = Path(tmp)
        data = root / "tox21.csv"
        pd.read_csv(bundled_dataset()).to_csv(data, index=False)
        for n in args.sites:
            t = time.perf_counter()
            split = split_into_sites(data, "smiles", n, root / f"sites-{n}", seed=0)
            for site in split.sites:  # the counts go to the hub, signed, as site_prepare does
                report = prepare_site(site, chem, split.tasks)
                publish_prepare_report.fn(str(root / f"hub-{n}"), report, site)
            print(f"{n} sites: dealt and prepared in {time.perf_counter() - t:.0f} s")
            seconds = {}
            for engine in ("subflows", "dask"):
                config = FederationConfig(
                    run_id=f"sites-{n}-{engine}",
                    hub_url=str(root / f"hub-{n}"),
                    sites=split.sites,
                    tasks=split.tasks,
                    rounds=args.rounds,
                    chem=chem,
                    model=ModelConfig(hidden=64),
                    train=TrainConfig(batch_size=128),
                    trust=split.trust,
                    simulation=SimulationConfig(engine=engine, workers=args.workers),
                    # a site whose molecules share one scaffold has nothing to train on
                    deployment=DeploymentConfig(min_sites=math.ceil(0.9 * n)),
                )
                t = time.perf_counter()
                coordinator(config)
                wall = time.perf_counter() - t
                hub = HubStore(config.hub_url)
                per = overheads(hub, config.run_id, n, 1 if engine == "subflows" else args.workers)
                seconds[engine] = sum(per) / len(per)
                print(
                    f"   {engine:8s}: {wall:.1f} s for {args.rounds} rounds; overhead per site "
                    f"per round {seconds[engine]:.3f} s (rounds: "
                    + ", ".join(f"{x:.3f}" for x in per)
                    + ")"
                )
            print(
                f"   Dask / subflows overhead: {seconds['dask'] / seconds['subflows']:.3f} "
                f"(target: <= 0.05 s a site a round; Flower 0.05)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
