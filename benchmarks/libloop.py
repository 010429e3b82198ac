"""A federation in one process (no Prefect), through the library's round driver
(``fedchem.federation.driver.run_rounds`` with ``InProcessSites``): what the trust and privacy
benchmarks compare settings with, every setting on the same prepared sites. At the end every
site scores the last global model on its own test fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from fedchem.config import ChemConfig, DemoConfig, FederationConfig, SiteConfig
from fedchem.data.prepare import prepare_site
from fedchem.demo.sites import DemoSplit, resolve_dataset, split_into_sites
from fedchem.federation.coordinator import start_run
from fedchem.federation.driver import CoordinatorSteps, InProcessSites, run_rounds
from fedchem.federation.site import evaluate_global_at_site
from fedchem.messages import RoundManifest
from fedchem.policy import PrivacyConfig
from fedchem.storage.hub import HubStore


@dataclass
class Sites:
    split: DemoSplit
    chem: ChemConfig
    label_stats: list[dict[str, dict[str, float]]]


def prepare_sites(
    out: Path, n_sites: int = 4, head: int | None = None, seed: int = 0, dataset: str = "tox21"
) -> Sites:
    """The demo's split of a bundled set, Tox21 by default (``head``: its first rows only),
    prepared."""
    data, smiles_col = resolve_dataset(dataset, None)
    if head is not None:
        small = out / f"{dataset}-head.csv"
        pd.read_csv(data).head(head).to_csv(small, index=False)
        data = small
    split = split_into_sites(data, smiles_col, n_sites, out / "sites", seed)
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


def unsigned(site: SiteConfig) -> SiteConfig:
    """The site with a policy of its own that takes unsigned rounds and no signing key: the
    "signatures off" side of a comparison (the same policy clauses otherwise)."""
    assert site.policy_file is not None
    policy = yaml.safe_load(Path(site.policy_file).read_text())
    policy.update(require_signatures=False, coordinator_key=None)
    path = Path(site.policy_file).with_name("policy-unsigned.yaml")
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return site.model_copy(update={"policy_file": path, "signing_key_file": None})


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
        sites=sites.split.sites if signed else [unsigned(s) for s in sites.split.sites],
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
    """Run ``config`` (signed when it has ``trust``) through the round driver; score the last
    round at every site."""
    hub = HubStore(config.hub_url)
    steps = CoordinatorSteps(config, hub)
    first = start_run(hub, config, sites.label_stats, trust=steps.trust)
    outcome = run_rounds(config, steps, InProcessSites(config, hub), [first])
    result = Result(outcome.rounds[1:], outcome.round_seconds)
    if score:
        for site in config.sites:
            assert isinstance(site, SiteConfig)
            rep = evaluate_global_at_site(
                site, hub, config.run_id, config.rounds, config.chem, config.model
            )
            if "mean_roc_auc" in rep.summary:  # a tiny site may have no task with both classes
                result.test_roc_auc[site.name] = rep.summary["mean_roc_auc"]
    return result
