"""A privacy audit of what a federation releases, and what DP-SGD's recipe leaves of the model.

One public base model (bundled ChEMBL, ``fedchem.demo.base_model``) and the demo's Tox21 split
over 4 sites; then federations of 10 rounds that start from the base's trunk: without DP (all
trained, and heads only), with record-level DP at epsilon 8, 3 and 1 (delta 1e-5, the recipe
that ``privacy.level: record`` fills in: heads only, batch 512, clip 4, heads at the base
rate), and without DP under secure aggregation. For each, side by side in this process run:

- **utility**: every site's test ROC-AUC of the last global model, against each site's
  non-private local-only model (the same budget, from scratch: what a site gets alone);
- **membership inference** against the released model, at every site (members: its training
  molecules; non-members: a random quarter of its molecules kept out of every run, in the
  same folds: drawn as the members were, so that the attack measures membership, not the
  scaffold split's shift): the *loss-threshold* attack (a molecule is called a
  member when its loss is below the threshold that calls 1 % of non-members) and a
  *shadow-model* (reference-model) attack (the attacker trains a model as the federation
  would, non-privately, on another site's molecules it knows; a molecule whose loss under the
  released model is lower than under the shadow is called a member): the true-positive rate
  at the threshold that calls 1 % of non-members (1 % is chance; the worst site is shown);
- **the column attack** on site-a's round-1 update (the sign test of ``bench_secagg``: which
  fingerprint columns does the site's data hold?): precision against the share of columns
  present (equal: nothing learnt). Under secure aggregation the coordinator reads the sum.

Run: ``python benchmarks/bench_privacy_audit.py [--seeds 0 1 2] [--base-epochs 10]``;
``--dataset biogen`` (or ``lipophilicity``): the utility table on a regression set, in RMSE.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_secagg import _sign_test
from libloop import Sites, config_for, prepare_sites

from fedchem.config import (
    DemoConfig,
    FederationConfig,
    ModelConfig,
    SiteConfig,
    TrainConfig,
    WarmStart,
)
from fedchem.data.dataset import SiteDataset
from fedchem.data.prepare import prepare_site
from fedchem.demo.base_model import BaseModelConfig, publish_public_base, train_public_base
from fedchem.demo.sites import bundled_dataset, split_into_sites
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
#: the utility metric (``--dataset``: ROC-AUC on Tox21; RMSE, lower is better, on Biogen)
METRIC = {"key": "mean_roc_auc", "name": "ROC-AUC", "higher": True}


def per_molecule_loss(model: torch.nn.Module, ds: SiteDataset) -> np.ndarray:
    """Mean binary cross-entropy over each molecule's labels (what the attacker computes)."""
    p = np.clip(predict(model, ds), 1e-6, 1 - 1e-6)
    y = ds.y
    ok = np.isfinite(y)
    bce = np.where(ok, -(np.nan_to_num(y) * np.log(p) + (1 - np.nan_to_num(y)) * np.log(1 - p)), 0)
    return bce.sum(1) / np.maximum(ok.sum(1), 1)


HELD_OUT = 0.25


@dataclass
class Audited:
    """The demo's sites, each without a random quarter of its molecules (kept aside,
    prepared with the same key: the attacks' non-members, drawn as the members were)."""

    sites: Sites
    held_out: list[SiteConfig]


def prepare_audited(root: Path, seed: int = 0) -> Audited:
    split = split_into_sites(bundled_dataset(), "smiles", 4, root / "sites", seed)
    rng = np.random.default_rng(seed)
    held_out = []
    for site in split.sites:
        rows = pd.read_csv(site.measurements, dtype=str, keep_default_na=False)
        ids = rows["compound_id"].unique()
        out_ids = set(rng.choice(ids, size=int(len(ids) * HELD_OUT), replace=False))
        out = rows["compound_id"].isin(out_ids)
        rows[~out].to_csv(site.measurements, index=False)
        d = root / "held-out" / site.name
        d.mkdir(parents=True)
        rows[out].to_csv(d / "measurements.csv", index=False)
        held_out.append(
            site.model_copy(
                update={
                    "name": f"{site.name}-out",
                    "measurements": d / "measurements.csv",
                    "workdir": d / "work",
                }
            )
        )
    chem = DemoConfig().chem
    reports = [prepare_site(s, chem, split.tasks) for s in split.sites]
    for s in held_out:
        prepare_site(s, chem, split.tasks)
    return Audited(Sites(split, chem, [r.label_stats for r in reports]), held_out)


def configs(sites: Sites, root: Path, registry: str, seed: int) -> dict[str, FederationConfig]:
    warm = WarmStart(registry=registry, model="public-base@public", parts="trunk")
    base = config_for(sites, str(root / "hub"), "x", ROUNDS).model_dump(mode="json")
    out = {}

    def make(name: str, **over: Any) -> None:
        slug = "".join(c if c.isalnum() or c in ".-" else "-" for c in name)
        doc = {**base, "run_id": f"{slug}-s{seed}", "init_from": warm}
        doc.update(train=TrainConfig(seed=seed), model=ModelConfig(), privacy=PrivacyConfig())
        doc.update(over)
        out[name] = FederationConfig.model_validate(doc)

    make("no DP, from scratch (the demo)", init_from=None)
    make("no DP, all trained")
    make("no DP, heads only", train=TrainConfig(seed=seed, trainable="head", lr=0.01))
    for eps in (8.0, 3.0, 1.0):
        make(f"DP eps={eps:g}", privacy=PrivacyConfig(level="record", target_epsilon=eps))
    make("no DP, secure aggregation", secure_aggregation=SecAggPlan())
    return out


def federate(sites: Sites, config: FederationConfig) -> tuple[HubStore, float, dict[str, float]]:
    hub = HubStore(config.hub_url)
    steps = CoordinatorSteps(config, hub)
    init = None
    if config.init_from is not None:
        reg = Registry(config.init_from.registry)
        init = load_weights(reg.read(*reg.resolve(config.init_from.model), "model.safetensors"))
    first = start_run(hub, config, sites.label_stats, init=init, trust=steps.trust)
    t0 = time.perf_counter()
    out = run_rounds(config, steps, InProcessSites(config, hub), [first])
    if out.failed:
        raise RuntimeError(f"{config.run_id}: rounds {out.failed} failed")
    return hub, time.perf_counter() - t0, dict(out.rounds[-1].site_epsilon or {})


def shadow_model(
    sites: Sites, config: FederationConfig, init: dict[str, np.ndarray], index: int
) -> torch.nn.Module:
    """A shadow (reference) model the attacker trains as the federation would, non-privately,
    on the training molecules of a site it knows (``index``): how hard each molecule is
    anyway, without it being a member."""
    site = sites.split.sites[index]
    ds = load_site_dataset(site)
    train = ds.without_folds([sites.chem.test_fold, sites.chem.valid_fold])
    model = model_for(ds, config.model, init)
    train_epochs(model, train, config.train, ROUNDS * config.train.local_epochs, seed=7)
    return model


def tpr_at_fpr(member_score: np.ndarray, nonmember_score: np.ndarray) -> float:
    """True-positive rate at the threshold that calls 1 % of non-members members (higher
    score: more likely a member)."""
    return float(np.mean(member_score > np.quantile(nonmember_score, 1 - FPR)))


def audit(aud: Audited, name: str, config: FederationConfig, hub: HubStore) -> dict[str, Any]:
    sites = aud.sites
    chem = sites.chem
    layout = HubLayout(config.run_id)
    g0 = load_arrays(hub.get_bytes(layout.global_model(0)))
    auc = {}
    for site in sites.split.sites:
        rep = evaluate_global_at_site(site, hub, config.run_id, ROUNDS, chem, config.model)
        auc[site.name] = float(rep.summary[METRIC["key"]])
    if not aud.held_out:  # utility only
        return {"name": name, "auc": auc}
    n = len(sites.split.sites)
    shadows = {i: shadow_model(sites, config, g0, i) for i in (n - 1, n - 2)}
    loss_tpr, shadow_tpr = {}, {}
    for i, site in enumerate(sites.split.sites):
        ds = load_site_dataset(site)
        model, _ = global_model_at_site(site, hub, config.run_id, ROUNDS, ds, config.model)
        ref = shadows[n - 1] if i != n - 1 else shadows[n - 2]  # never trained on this site
        held_in = ds.without_folds([chem.test_fold, chem.valid_fold])
        out = load_site_dataset(aud.held_out[i])  # the same folds as members: iid with them
        held_out = out.without_folds([chem.test_fold, chem.valid_fold])
        members, non = per_molecule_loss(model, held_in), per_molecule_loss(model, held_out)
        loss_tpr[site.name] = tpr_at_fpr(-members, -non)
        # the reference attack: lower loss than the shadow model gives the same molecule
        members_ref = per_molecule_loss(ref, held_in) - members
        non_ref = per_molecule_loss(ref, held_out) - non
        shadow_tpr[site.name] = tpr_at_fpr(members_ref, non_ref)
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
        out[site.name] = float(rep.summary[METRIC["key"]])
    return out


def print_table(results: dict[str, list[dict[str, Any]]], local: dict[str, float]) -> None:
    cols = " | ".join(local)
    better = ">=" if METRIC["higher"] else "<="
    print(
        f"\n| setting | mean {METRIC['name']} (mean ± sd over seeds) | {cols} | sites {better} "
        "local-only "
        "(worst seed) | MIA loss TPR@1%FPR (worst site) | MIA shadow TPR@1%FPR (worst site) | "
        "column attack precision (prior) |"
    )
    print("|---" * (6 + len(local)) + "|")
    for name, runs in results.items():
        means = [np.mean(list(r["auc"].values())) for r in runs]
        per_site = " | ".join(f"{np.mean([r['auc'][s] for r in runs]):.3f}" for s in local)
        beat = min(
            sum((r["auc"][s] - local[s]) * (1 if METRIC["higher"] else -1) >= 0 for s in local)
            for r in runs
        )
        attack = "— | — | —"
        if "loss_tpr" in runs[0]:
            loss = max(max(r["loss_tpr"].values()) for r in runs)
            shadow = max(max(r["shadow_tpr"].values()) for r in runs)
            col = np.mean([r["column_precision"] for r in runs])
            attack = f"{loss:.3f} | {shadow:.3f} | {col:.3f} ({runs[0]['present_share']:.3f})"
        print(
            f"| {name} | {np.mean(means):.4f} ± {np.std(means):.4f} (n={len(runs)}) | "
            f"{per_site} | {beat}/{len(local)} | {attack} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--base-epochs", type=int, default=10)
    ap.add_argument("--only", nargs="*", help="settings by name (default: all)")
    ap.add_argument(
        "--utility-only",
        action="store_true",
        help="the demo's whole split (no molecules kept out), ROC-AUC only: the utility table",
    )
    ap.add_argument(
        "--dataset",
        default="tox21",
        choices=["tox21", "biogen", "lipophilicity"],
        help="a bundled set; other than tox21 (classification): regression, RMSE, utility only",
    )
    args = ap.parse_args()
    if args.dataset != "tox21":
        METRIC.update(key="mean_rmse", name="RMSE", higher=False)
        args.utility_only = True
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        aud = (
            Audited(prepare_sites(root, dataset=args.dataset), [])
            if args.utility_only
            else prepare_audited(root)
        )
        sites = aud.sites
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
                got = audit(aud, name, config, hub) | {"seconds": seconds, "eps": eps}
                results.setdefault(name, []).append(got)
                print(
                    f"{name} seed {seed}: {METRIC['name']} "
                    f"{np.mean(list(got['auc'].values())):.4f} "
                    f"{ {k: round(v, 3) for k, v in got['auc'].items()} } "
                    f"eps { ({k: round(v, 2) for k, v in eps.items()}) } {seconds:.0f} s",
                    flush=True,
                )
                if "loss_tpr" in got:
                    print(
                        f"  loss-TPR {got['loss_tpr']} shadow-TPR {got['shadow_tpr']} column "
                        f"precision {got['column_precision']:.3f} (prior "
                        f"{got['present_share']:.3f})",
                        flush=True,
                    )
        print_table(results, local)
        print(f"local-only mean {METRIC['name']} {np.mean(list(local.values())):.4f} {local}")


if __name__ == "__main__":
    main()
