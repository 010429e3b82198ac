"""A privacy audit of what a federation releases, and what DP-SGD's recipe leaves of the model.

One public base model (bundled ChEMBL, ``fedchem.demo.base_model``) and the demo's Tox21 split
over 4 sites; then federations of 10 rounds that start from the base's trunk: without DP (all
trained, and heads only), with record-level DP at epsilon 8, 3 and 1 (delta 1e-5, the recipe
that ``privacy.level: record`` fills in: heads only, batch 512, clip 4, heads at the base
rate), and without DP under secure aggregation. For each, side by side in this process run:

- **utility**: every site's test ROC-AUC of the last global model, against each site's
  non-private local-only model (the same budget, from scratch: what a site gets alone);
- **membership inference** against the released model, at every site (members: its training
  molecules; non-members: its test fold): the *loss-threshold* attack (a molecule is called a
  member when its loss is below the threshold that calls 1 % of non-members) and a
  *shadow-model* attack (the attacker trains a model as the federation would, non-privately,
  on another site's molecules it knows, learns a threshold there at 1 % FPR and applies it):
  the true-positive rate at 1 % false-positive rate (1 % is chance; the worst site is shown);
- **the column attack** on site-a's round-1 update (the sign test of ``bench_secagg``: which
  fingerprint columns does the site's data hold?): precision against the share of columns
  present (equal: nothing learnt). Under secure aggregation the coordinator reads the sum.

Run: ``python benchmarks/bench_privacy_audit.py [--seeds 0 1 2] [--base-epochs 10]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_secagg import _sign_test
from libloop import Sites, config_for, prepare_sites

from fedchem.config import FederationConfig, ModelConfig, TrainConfig, WarmStart
from fedchem.data.dataset import SiteDataset
from fedchem.demo.base_model import BaseModelConfig, publish_public_base, train_public_base
from fedchem.federation.baselines import train_local_only
from fedchem.federation.coordinator import start_run
from fedchem.federation.driver import CoordinatorSteps, InProcessSites, run_rounds
from fedchem.federation.site import (
    evaluate_global_at_site,
    global_model_at_site,
    load_site_dataset,
    model_for,
)
from fedchem.model.state import load_arrays
from fedchem.model.train import predict, train_epochs
from fedchem.policy import PrivacyConfig, SecAggPlan
from fedchem.registry.model import load_weights
from fedchem.registry.store import Registry
from fedchem.storage.hub import HubLayout, HubStore

ROUNDS = 10
FPR = 0.01


def per_molecule_loss(model: torch.nn.Module, ds: SiteDataset) -> np.ndarray:
    """Mean binary cross-entropy over each molecule's labels (what the attacker computes)."""
    p = np.clip(predict(model, ds), 1e-6, 1 - 1e-6)
    y = ds.y
    ok = np.isfinite(y)
    bce = np.where(ok, -(np.nan_to_num(y) * np.log(p) + (1 - np.nan_to_num(y)) * np.log(1 - p)), 0)
    return bce.sum(1) / np.maximum(ok.sum(1), 1)


def tpr_at(member_loss: np.ndarray, nonmember_loss: np.ndarray, threshold: float) -> float:
    return float(np.mean(member_loss < threshold))


def threshold_at_fpr(nonmember_loss: np.ndarray) -> float:
    return float(np.quantile(nonmember_loss, FPR))


def configs(sites: Sites, root: Path, registry: str, seed: int) -> dict[str, FederationConfig]:
    warm = WarmStart(registry=registry, model="public-base@public", parts="trunk")
    base = config_for(sites, str(root / "hub"), "x", ROUNDS).model_dump(mode="json")
    out = {}

    def make(name: str, **over: Any) -> None:
        doc = {**base, "run_id": f"{name}-s{seed}", "init_from": warm}
        doc.update(train=TrainConfig(seed=seed), model=ModelConfig(), privacy=PrivacyConfig())
        doc.update(over)
        out[name] = FederationConfig.model_validate(doc)

    make("no DP, all trained")
    make("no DP, heads only", train=TrainConfig(seed=seed, trainable="head", lr=0.01))
    for eps in (8.0, 3.0, 1.0):
        make(f"DP eps={eps:g}", privacy=PrivacyConfig(level="record", target_epsilon=eps))
    make("no DP, secure aggregation", secure_aggregation=SecAggPlan())
    return out


def federate(sites: Sites, config: FederationConfig) -> tuple[HubStore, float, dict[str, float]]:
    hub = HubStore(config.hub_url)
    steps = CoordinatorSteps(config, hub)
    assert config.init_from is not None
    reg = Registry(config.init_from.registry)
    init = load_weights(reg.read(*reg.resolve(config.init_from.model), "model.safetensors"))
    first = start_run(hub, config, sites.label_stats, init=init, trust=steps.trust)
    t0 = time.perf_counter()
    out = run_rounds(config, steps, InProcessSites(config, hub), [first])
    if out.failed:
        raise RuntimeError(f"{config.run_id}: rounds {out.failed} failed")
    return hub, time.perf_counter() - t0, dict(out.rounds[-1].site_epsilon or {})


def shadow_threshold(sites: Sites, config: FederationConfig, init: dict[str, np.ndarray]) -> float:
    """The attacker's threshold, learnt on a shadow model it trains non-privately on site-d's
    training molecules (it knows them) and calibrated at 1 % FPR on site-d's test fold."""
    site = sites.split.sites[-1]
    ds = load_site_dataset(site)
    chem = sites.chem
    train = ds.without_folds([chem.test_fold, chem.valid_fold])
    model = model_for(ds, config.model, init)
    train_epochs(model, train, config.train, ROUNDS * config.train.local_epochs, seed=7)
    return threshold_at_fpr(per_molecule_loss(model, ds.folds([chem.test_fold])))


def audit(sites: Sites, name: str, config: FederationConfig, hub: HubStore) -> dict[str, Any]:
    chem = sites.chem
    layout = HubLayout(config.run_id)
    g0 = load_arrays(hub.get_bytes(layout.global_model(0)))
    shadow = shadow_threshold(sites, config, g0)
    auc, loss_tpr, shadow_tpr = {}, {}, {}
    for site in sites.split.sites:
        ds = load_site_dataset(site)
        model, _ = global_model_at_site(site, hub, config.run_id, ROUNDS, ds, config.model)
        members = per_molecule_loss(model, ds.without_folds([chem.test_fold, chem.valid_fold]))
        non = per_molecule_loss(model, ds.folds([chem.test_fold]))
        loss_tpr[site.name] = tpr_at(members, non, threshold_at_fpr(non))
        shadow_tpr[site.name] = tpr_at(members, non, shadow)
        rep = evaluate_global_at_site(site, hub, config.run_id, ROUNDS, chem, config.model)
        auc[site.name] = float(rep.summary["mean_roc_auc"])
    site = sites.split.sites[0]
    ds = load_site_dataset(site)
    present = np.zeros(ds.fp_size, dtype=bool)
    present[np.unique(ds.without_folds([chem.test_fold, chem.valid_fold]).indices)] = True
    base = g0["input.weight"].astype(np.float64)
    if config.secure_aggregation is None:
        read = load_arrays(hub.get_bytes(layout.site_update(1, site.name)))["input.weight"]
    else:  # the masked update says nothing; the coordinator learns the round's sum
        read = load_arrays(hub.get_bytes(layout.global_model(1)))["input.weight"]
    column = _sign_test(read.astype(np.float64), base, present)
    return {
        "name": name,
        "auc": auc,
        "loss_tpr": loss_tpr,
        "shadow_tpr": shadow_tpr,
        "column_precision": column["precision"],
        "column_recall": column["recall"],
        "present_share": float(present.mean()),
    }


def local_only(sites: Sites, config: FederationConfig) -> dict[str, float]:
    """Each site alone, non-private, from scratch with the demo's training and budget."""
    out = {}
    plain = config_for(sites, "unused", "local", ROUNDS)
    for site, stats in zip(sites.split.sites, sites.label_stats, strict=True):
        rep, _ = train_local_only(site, sites.chem, plain.model, plain.train, ROUNDS, stats)
        out[site.name] = float(rep.summary["mean_roc_auc"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--base-epochs", type=int, default=10)
    ap.add_argument("--only", nargs="*", help="settings by name (default: all)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        sites = prepare_sites(root)
        registry = str(root / "registry")
        key = sites.split.sites[0].key_file
        base = train_public_base(
            BaseModelConfig(epochs=args.base_epochs), sites.chem, key, root / "public"
        )
        publish_public_base(Registry(registry), base)
        print(
            f"public base: {base.metrics['molecules_train']} ChEMBL molecules, "
            f"{base.metrics['tasks']} targets, test ROC-AUC {base.metrics['test_mean_roc_auc']:.3f}"
            f", {time.perf_counter() - t0:.0f} s with the Tox21 sites' preparation",
            flush=True,
        )
        results: dict[str, list[dict[str, Any]]] = {}
        local: dict[str, float] = {}
        for seed in args.seeds:
            for name, config in configs(sites, root, registry, seed).items():
                if args.only and name not in args.only:
                    continue
                if not local:
                    local = local_only(sites, config)
                    print(f"local-only (non-private, alone): {local}", flush=True)
                hub, seconds, eps = federate(sites, config)
                got = audit(sites, name, config, hub) | {"seconds": seconds, "eps": eps}
                results.setdefault(name, []).append(got)
                print(
                    f"{name} seed {seed}: AUC {np.mean(list(got['auc'].values())):.4f} "
                    f"{ {k: round(v, 3) for k, v in got['auc'].items()} } "
                    f"loss-TPR max {max(got['loss_tpr'].values()):.3f} shadow-TPR max "
                    f"{max(got['shadow_tpr'].values()):.3f} column precision "
                    f"{got['column_precision']:.3f} (present {got['present_share']:.3f}) "
                    f"eps {eps} {seconds:.0f} s",
                    flush=True,
                )
        print(
            "\n| setting | mean ROC-AUC (seeds: mean ± sd) | sites ≥ local-only | "
            "MIA loss TPR@1%FPR (worst site) | MIA shadow TPR@1%FPR (worst site) | "
            "column attack precision (share present) |"
        )
        print("|---|---|---|---|---|---|")
        for name, runs in results.items():
            means = [np.mean(list(r["auc"].values())) for r in runs]
            beat = [sum(r["auc"][s] >= local[s] for s in local) for r in runs]
            loss = max(max(r["loss_tpr"].values()) for r in runs)
            shadow = max(max(r["shadow_tpr"].values()) for r in runs)
            col = np.mean([r["column_precision"] for r in runs])
            share = runs[0]["present_share"]
            print(
                f"| {name} | {np.mean(means):.4f} ± {np.std(means):.4f} (n={len(runs)}) | "
                f"{min(beat)}/{len(local)} | {loss:.3f} | {shadow:.3f} | {col:.3f} ({share:.3f}) |"
            )
        print(f"local-only mean ROC-AUC {np.mean(list(local.values())):.4f} {local}")


if __name__ == "__main__":
    main()
