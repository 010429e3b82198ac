"""Small updates: bytes per site per round and the model's score, each codec against fp32.

    .venv/bin/python benchmarks/bench_compression.py [--rounds 10] [--seeds 0 1 2]

The demo's Tox21 split (4 sites, the demo's model and training settings), prepared once; then,
in the same run on the same prepared sites, the same federation for each codec (``none``: the
fp32 weights, today's path and the baseline; ``fp16``, ``bf16``, ``int8``: the delta with
error feedback) through the library's round driver (signed rounds, in process). Prints, per
codec, the bytes a site sends a round (mean over sites and rounds, from the manifests), their
ratio to fp32, and the mean over sites of the test-fold ROC-AUC of the last round's model,
with its difference from fp32 (per seed and the mean).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from fedchem.config import ChemConfig, FederationConfig
from fedchem.data.prepare import prepare_site
from fedchem.demo.sites import bundled_dataset, split_into_sites
from fedchem.federation.commits import committed_rounds
from fedchem.federation.coordinator import start_run
from fedchem.federation.driver import CoordinatorSteps, InProcessSites, run_rounds
from fedchem.federation.site import evaluate_global_at_site
from fedchem.storage.hub import HubLayout, HubStore

CODECS = ("none", "fp16", "bf16", "int8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    chem = ChemConfig()
    with tempfile.TemporaryDirectory(prefix="fedchem-bench-codec-") as tmp:
        root = Path(tmp)
        split = split_into_sites(bundled_dataset(), "smiles", 4, root / "sites", seed=0)
        stats = [prepare_site(s, chem, split.tasks).label_stats for s in split.sites]
        sent: dict[str, list[float]] = {c: [] for c in CODECS}
        auc: dict[str, list[float]] = {c: [] for c in CODECS}
        for seed in args.seeds:
            for codec in CODECS:
                config = FederationConfig(
                    run_id=f"codec-{codec}-s{seed}",
                    hub_url=str(root / "hub"),
                    sites=split.sites,
                    tasks=split.tasks,
                    rounds=args.rounds,
                    chem=chem,
                    trust=split.trust,
                    compression=codec,
                    train={"seed": seed},
                )
                hub = HubStore(config.hub_url)
                steps = CoordinatorSteps(config, hub)
                first = start_run(hub, config, stats, trust=steps.trust)
                run_rounds(config, steps, InProcessSites(config, hub), [first])
                layout = HubLayout(config.run_id)
                sizes = [
                    hub.get_json(layout.site_manifest(m.round, s))["update_bytes"]
                    for m in committed_rounds(hub, config.run_id)[1:]
                    for s in m.sites
                ]
                sent[codec].append(statistics.mean(sizes))
                scores = [
                    evaluate_global_at_site(
                        s, hub, config.run_id, args.rounds, chem, config.model
                    ).summary["mean_roc_auc"]
                    for s in split.sites
                ]
                auc[codec].append(statistics.mean(scores))
                print(
                    f"seed {seed} {codec:5s}: {sent[codec][-1] / 1e6:.2f} MB a site a round, "
                    f"test ROC-AUC {auc[codec][-1]:.4f}",
                    flush=True,
                )
        base_b, base_a = statistics.mean(sent["none"]), statistics.mean(auc["none"])
        print("\ncodec | MB a site a round | ratio to fp32 | mean test ROC-AUC | vs fp32")
        for c in CODECS:
            b, a = statistics.mean(sent[c]), statistics.mean(auc[c])
            print(f"{c} | {b / 1e6:.2f} | {b / base_b:.3f} | {a:.4f} | {a - base_a:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
