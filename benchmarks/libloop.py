"""A federation through the library calls the flows make, in one process (no Prefect): what the
trust and privacy benchmarks compare settings with, every setting on the same prepared sites.

Each round: the coordinator opens it (signed and recorded when trusted), every site trains
under its guard (policy, key, budget) and replies, the coordinator screens, aggregates and
commits; at the end every site scores the last global model on its own test fold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fedchem.config import ChemConfig, DemoConfig, FederationConfig
from fedchem.data.prepare import prepare_site
from fedchem.demo.sites import DemoSplit, bundled_dataset, split_into_sites
from fedchem.federation.coordinator import (
    aggregate_round,
    coordinator_trust,
    round_plan,
    start_run,
    strategy_for,
)
from fedchem.federation.rounds import new_ticket, open_round
from fedchem.federation.site import evaluate_global_at_site, run_site_round
from fedchem.messages import FitInstructions, RoundManifest
from fedchem.storage.hub import HubLayout, HubStore
from fedchem.trust.config import PrivacyConfig
from fedchem.trust.site import SiteGuard


@dataclass
class Sites:
    split: DemoSplit
    chem: ChemConfig
    label_stats: list[dict[str, dict[str, float]]]


def prepare_sites(out: Path, n_sites: int = 4, head: int | None = None, seed: int = 0) -> Sites:
    """The demo's split of bundled Tox21 (``head``: its first rows only), prepared."""
    data = bundled_dataset()
    if head is not None:
        small = out / "tox21-head.csv"
        pd.read_csv(data).head(head).to_csv(small, index=False)
        data = small
    split = split_into_sites(data, "smiles", n_sites, out / "sites", seed)
    chem = DemoConfig().chem
    reports = [prepare_site(s, chem, split.tasks) for s in split.sites]
    return Sites(split, chem, [r.label_stats for r in reports])


@dataclass
class Result:
    committed: list[RoundManifest]
    round_seconds: list[float] = field(default_factory=list)
    test_roc_auc: dict[str, float] = field(default_factory=dict)

    @property
    def mean_roc_auc(self) -> float:
        return sum(self.test_roc_auc.values()) / max(len(self.test_roc_auc), 1)


def config_for(
    sites: Sites,
    hub_url: str,
    run_id: str,
    rounds: int,
    privacy: PrivacyConfig | None = None,
    signed: bool = True,
    batch_size: int | None = None,
) -> FederationConfig:
    demo = DemoConfig()
    train = (
        demo.train
        if batch_size is None
        else demo.train.model_copy(update={"batch_size": batch_size})
    )
    return FederationConfig(
        run_id=run_id,
        hub_url=hub_url,
        sites=sites.split.sites,
        tasks=sites.split.tasks,
        rounds=rounds,
        chem=sites.chem,
        model=demo.model,
        train=train,
        strategy=demo.strategy,
        trust=sites.split.trust if signed else None,
        privacy=privacy or PrivacyConfig(),
    )


def federate(sites: Sites, config: FederationConfig, score: bool = True) -> Result:
    """Run ``config`` (signed when it has ``trust``); score the last round at every site."""
    hub = HubStore(config.hub_url)
    trust = coordinator_trust(config)
    start_run(hub, config, sites.label_stats, trust=trust)
    strategy, plan = strategy_for(config), round_plan(config)
    result = Result([])
    for rnd in range(1, config.rounds + 1):
        t0 = time.perf_counter()
        sign = trust.sign if trust is not None else None
        opened, data = open_round(
            hub, config.run_id, rnd, new_ticket(), FitInstructions(), plan, sign
        )
        if trust is not None:
            path = HubLayout(config.run_id).round_open(rnd)
            trust.ledger(hub, config.run_id).append("round-open", round=rnd, path=path, data=data)
        replies = []
        for site in sites.split.sites:
            guard = SiteGuard.load(site) if trust is not None else None
            replies.append(
                run_site_round(
                    site,
                    hub,
                    config.run_id,
                    rnd,
                    config.chem,
                    config.model,
                    config.train,
                    opened=opened,
                    guard=guard,
                )
            )
        result.committed.append(
            aggregate_round(
                hub,
                config.run_id,
                rnd,
                replies,
                strategy,
                members=config.site_names,
                quorum=config.quorum(),
                trust=trust,
                privacy=plan.privacy,
            )
        )
        result.round_seconds.append(time.perf_counter() - t0)
    if score:
        for site in sites.split.sites:
            rep = evaluate_global_at_site(
                site, hub, config.run_id, config.rounds, config.chem, config.model
            )
            if "mean_roc_auc" in rep.summary:  # a tiny site may have no task with both classes
                result.test_roc_auc[site.name] = rep.summary["mean_roc_auc"]
    return result
