"""The main job: a simulated federation on a public dataset, compared with local and pooled.

Sites are written out as contract-conformant files, prepared through ``site-prepare``, trained
through ``coordinator`` (which runs ``site-round`` per site and round), then the final global
model, each site's local-only model and the pooled model are scored at each site; with shared
heads, every site also scores every other site's local model (the cross-site matrix).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow

from fedchem.config import (
    ChemConfig,
    DemoConfig,
    DeploymentConfig,
    FederationConfig,
    ModelConfig,
    PublishConfig,
    SimulationConfig,
    SiteConfig,
    TrainConfig,
)
from fedchem.demo.sites import MANY_SITES, model_name, resolve_dataset
from fedchem.federation import steps
from fedchem.federation.continual import decide_promotion
from fedchem.federation.finetune import FinetuneConfig
from fedchem.federation.parallel import SiteStepFailed, sites_engine
from fedchem.flows.continual import continual
from fedchem.flows.coordinator import coordinator
from fedchem.flows.publish import publish
from fedchem.flows.site_cross_evaluate import site_cross_evaluate
from fedchem.flows.site_evaluate import site_evaluate
from fedchem.flows.site_local_baseline import site_local_baseline
from fedchem.flows.site_prepare import site_prepare
from fedchem.flows.site_validate import site_validate
from fedchem.messages import EvalReport, RoundManifest
from fedchem.policy import PrivacyConfig, PromotionPolicy, SecAggPlan
from fedchem.strategy_config import FedAvgMConfig, StrategyConfig
from fedchem.tasks.demo import make_sites, pooled_baseline, release_rows, report
from fedchem.tasks.serve import personalize_at_site
from fedchem.tasks.site import at_sites, prepare_sites
from fedchem.types import Codec

#: the full cross-site matrix up to this many sites; above, each site scores a sample
CROSS_SITE_FULL, CROSS_SITE_SAMPLE = 16, 3


@flow(name="demo", flow_run_name="demo/{run_id}")
def demo(
    dataset: Path,
    smiles_col: str,
    n_sites: int,
    rounds: int,
    out: Path,
    seed: int,
    run_id: str,
    chem: ChemConfig,
    model: ModelConfig,
    train: TrainConfig,
    strategy: StrategyConfig = FedAvgMConfig(),  # noqa: B008 (frozen pydantic model)
    heads: Literal["shared", "private"] = "shared",
    task_split: Literal["shared", "disjoint"] = "shared",
    continuous_as: Literal["regression", "classification"] = "regression",
    cycles: int = 1,
    hold_back: float = 0.3,
    privacy: PrivacyConfig = PrivacyConfig(),  # noqa: B008 (frozen pydantic model)
    secure_aggregation: bool = False,
    compression: Codec = "none",
    simulation: SimulationConfig = SimulationConfig(),  # noqa: B008 (frozen pydantic model)
    promotion: PromotionPolicy = PromotionPolicy(),  # noqa: B008 (frozen pydantic model)
    arrivals: Literal["measured", "shuffled"] = "measured",
    personalize: bool = True,
) -> dict[str, Any]:
    # the cross-site matrix needs local models on the hub: only with shared heads, so that no
    # private head ever leaves its site, and not with secure aggregation (whose point is that
    # no single site's model is readable)
    cross_site = heads == "shared" and n_sites > 1 and not secure_aggregation
    with sites_engine(simulation, n_sites) as address:
        split = make_sites(
            dataset,
            smiles_col,
            n_sites,
            out / "sites",
            seed,
            task_split,
            continuous_as,
            cycles,
            hold_back if cycles > 1 else 0.0,
        )
        hub_url = str((out / "hub").resolve())
        if address is None:
            prepared = [
                site_prepare(site=s, chem=chem, tasks=split.tasks, hub_url=hub_url)
                for s in split.sites
            ]
        else:  # many sites: no subflow per site
            prepared = prepare_sites(split.sites, n_sites, chem, split.tasks, hub_url)
        config = FederationConfig(
            run_id=run_id,
            hub_url=hub_url,
            sites=split.sites,
            tasks=split.tasks,
            rounds=rounds,
            chem=chem,
            model=model,
            train=train,
            strategy=strategy,
            heads=heads,
            trust=split.trust,  # every update, opening and commit signed; every party's ledger
            privacy=privacy,
            secure_aggregation=SecAggPlan() if secure_aggregation else None,
            compression=compression,
            simulation=simulation,  # as configured (the run's YAML below)
            # many sites: a round commits with 90 % of them (a site whose molecules all share a
            # scaffold has all of them in its test and validation folds, nothing to train on)
            deployment=DeploymentConfig(
                min_sites=math.ceil(0.9 * n_sites) if n_sites > MANY_SITES else None
            ),
        )
        # the run's federation YAML (its pinned keys, its hub): what `fedchem audit verify` checks
        (out / "federation.yaml").write_text(
            yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        )
        # the coordinator's Dask sites use the demo's cluster (one for every step)
        sim = (
            simulation
            if address is None
            else simulation.model_copy(update={"dask_address": address})
        )
        run_config = config.model_copy(update={"simulation": sim})
        committed = coordinator(run_config)
        budget = rounds * train.local_epochs
        stats = [p.label_stats for p in prepared]
        publish_to = (hub_url, run_id) if cross_site else None
        if address is None:
            federated = [
                site_evaluate(
                    site=s,
                    hub_url=hub_url,
                    run_id=run_id,
                    round=rounds,
                    chem=chem,
                    model=model,
                    select=train.select,
                )
                for s in split.sites
            ]
            local = [
                site_local_baseline(
                    site=s,
                    chem=chem,
                    model=model,
                    train=train,
                    epochs=budget,
                    label_stats=p.label_stats,
                    publish_to=publish_to,
                )
                for s, p in zip(split.sites, prepared, strict=True)
            ]
        else:  # many sites: each step one task, the sites' calls in Dask workers
            federated = _every(
                "evaluate",
                steps.evaluate_global,
                [(s, (s, hub_url, run_id, rounds, chem, model, train.select)) for s in split.sites],
                address,
            )
            local = _every(
                "local-baseline",
                steps.train_local_baseline,
                [
                    (s, (s, chem, model, train, budget, p.label_stats, publish_to))
                    for s, p in zip(split.sites, prepared, strict=True)
                ],
                address,
            )
        evals = {
            "federated": federated,
            "local": local,
            "pooled": pooled_baseline(split.sites, chem, model, train, budget, stats),
        }
        # the chosen round becomes a registered model: the hosted part in <out>/registry, each
        # site's part (its private heads, its calibration) in <out>/sites/<site>/registry
        target = PublishConfig(registry=str(out / "registry"), model_name=model_name(dataset))
        version = publish(run_config, target, evals=evals["federated"])
        personalized = []
        if personalize and n_sites <= CROSS_SITE_FULL:
            # each site makes the federated model its own, chosen on its validation fold
            personalized = [
                personalize_at_site(
                    s,
                    target.registry,
                    f"{target.model_name}:{version}",
                    FinetuneConfig(seed=train.seed),
                )
                for s in split.sites
            ]
            evals["personalized"] = [p.test for p in personalized]
        names = [s.name for s in split.sites]
        cross = []
        # above CROSS_SITE_FULL sites, each site scores a seeded sample of the others' models
        sample = CROSS_SITE_SAMPLE if n_sites > CROSS_SITE_FULL else None
        rng = random.Random(seed)
        if cross_site:
            owners = {}
            for s in split.sites:
                others = [n for n in names if n != s.name]
                owners[s.name] = (
                    sorted(rng.sample(others, sample)) if sample is not None else others
                )
            if address is None:
                for s in split.sites:
                    cross += site_cross_evaluate(
                        site=s,
                        hub_url=hub_url,
                        run_id=run_id,
                        owners=owners[s.name],
                        chem=chem,
                        model=model,
                    )
            else:
                calls = [
                    (s, (s, hub_url, run_id, owners[s.name], chem, model)) for s in split.sites
                ]
                cross = [
                    r
                    for rs in _every("cross-evaluate", steps.evaluate_baselines, calls, address)
                    for r in rs
                ]
        meta = {
            "dataset": dataset.name,
            "smiles_col": smiles_col,
            "sites": n_sites,
            "rounds": rounds,
            "local_epochs": train.local_epochs,
            "seed": seed,
            "train_seed": train.seed,
            "run_id": run_id,
            "strategy": strategy.model_dump(),
            "heads": heads,
            "molecules_per_site": split.molecules_per_site,
            "task_split": task_split,
            "tasks_per_site": split.tasks_per_site,
            "continuous_as": continuous_as,
            "prepared": {
                p.site: {
                    "rows_in": p.rows_in,
                    "accepted": p.rows_accepted,
                    "quarantined": p.rows_quarantined,
                    "fold_shares": p.fold_shares,
                    "warnings": p.warnings,
                }
                for p in prepared
            },
            "budget_epochs": budget,
            "registered": f"{target.model_name}:{version}",
            "registry": target.registry,
            "select": train.select,
            "privacy": _privacy_spent(privacy, committed[-1]),
            "secure_aggregation": secure_aggregation,
            "cross_site_sample": sample if cross_site else None,
            "compression": compression,
            "personalized": {
                p.site: {
                    "choice": p.choice,
                    "metric": p.metric,
                    "valid": p.valid,
                    "gain_lower": p.gain_lower,
                }
                for p in personalized
            },
        }
        meta["cycles"] = [_cycle_one(version, evals["federated"])]
        for c in range(2, cycles + 1):
            meta["cycles"].append(
                _later_cycle(run_config, target, c, split.sites, promotion, arrivals)
            )
        return report(evals, meta, out, cross)


def _every(
    step: str,
    fn: Callable[..., Any],
    calls: list[tuple[SiteConfig, tuple[Any, ...]]],
    address: str | None,
) -> list[Any]:
    """``fn`` at every site in Dask workers (one task run); a site that failed fails the demo,
    as its subflow would."""
    results = at_sites(step, len(calls), fn, [(s.name, args) for s, args in calls], address)
    for r in results:
        if isinstance(r, SiteStepFailed):
            raise r
    return results


def demo_from_config(cfg: DemoConfig, out: Path, run_id: str) -> dict[str, Any]:
    """The demo flow with a ``DemoConfig``'s settings (``fedchem demo``, the benchmarks)."""
    dataset, smiles_col = resolve_dataset(cfg.dataset, cfg.smiles_col)
    report: dict[str, Any] = demo(
        dataset=dataset,
        smiles_col=smiles_col,
        n_sites=cfg.sites,
        rounds=cfg.rounds,
        out=out,
        seed=cfg.seed,
        run_id=run_id,
        chem=cfg.chem,
        model=cfg.model,
        train=cfg.train,
        strategy=cfg.strategy,
        heads=cfg.heads,
        task_split=cfg.task_split,
        continuous_as=cfg.continuous_as,
        cycles=cfg.cycles,
        hold_back=cfg.hold_back,
        privacy=cfg.privacy,
        secure_aggregation=cfg.secure_aggregation,
        compression=cfg.compression,
        simulation=cfg.simulation,
        promotion=cfg.promotion,
        arrivals=cfg.arrivals,
        personalize=cfg.personalize,
    )
    return report


def _privacy_spent(privacy: PrivacyConfig, last: RoundManifest) -> dict[str, Any]:
    """The federation's DP and the epsilon it spent (the baselines are not private)."""
    out: dict[str, Any] = {"level": privacy.level}
    if privacy.level == "site":
        out.update(last.dp)
    elif privacy.level == "record":
        out.update(delta=privacy.delta, clip=privacy.clip, epsilon_per_site=last.site_epsilon)
    return out


def _cycle_one(version: int, federated: list[EvalReport]) -> dict[str, Any]:
    return {
        "cycle": 1,
        "version": version,
        "decision": "the first version: production",
        "promoted": True,
        "test": {r.site: r.summary for r in federated},
    }


def _later_cycle(
    config: FederationConfig,
    target: PublishConfig,
    c: int,
    sites: list[SiteConfig],
    promotion: PromotionPolicy,
    arrivals: Literal["measured", "shuffled"],
) -> dict[str, Any]:
    """Cycle ``c``: the held-back rows arrive, a warm-started candidate, the decision; then
    candidate and production on the same molecules of each site's test fold (what the decision
    could not see: whether it was right), and what the threshold rule would have decided."""
    released = release_rows(sites, c, arrivals == "shuffled")
    decision = continual(
        config, target.model_copy(update={"alias": "candidate"}), f"cycle-{c}", promotion
    )
    name, cand, prod = target.model_name, decision["candidate"], decision["production"]
    refs = [f"{name}:{cand}", f"{name}:{prod}"]
    if config.simulation.uses_dask(len(sites)):  # one task run, the sites in Dask workers
        calls = [(s, (s, target.registry, refs, "test", promotion)) for s in sites]
        test = {
            s.name: r[0]
            for s, r in zip(
                sites,
                _every(
                    "validate-test",
                    steps.validate_registered,
                    calls,
                    config.simulation.dask_address,
                ),
                strict=True,
            )
        }
    else:
        test = {
            s.name: site_validate(
                site=s, registry=target.registry, refs=refs, fold="test", compare=promotion
            )
            for s in sites
        }
    valid = decision["per_site"]
    metric = decision["metric"] or "mean_roc_auc"
    threshold = decide_promotion(
        {s: {metric: float(r["production"])} for s, r in valid.items()},
        {s: {metric: float(r["candidate"])} for s, r in valid.items()},
        promotion.model_copy(update={"rule": "threshold", "metric": metric}),
    )
    return {
        "cycle": c,
        "version": cand,
        "production": prod,
        "arrivals": arrivals,
        "promoted": decision["promote"],
        "outcome": decision["outcome"],
        "decision": decision["reason"],
        "rule": decision["rule"],
        "metric": metric,
        "per_site": valid,
        "overall": decision["overall"],
        "threshold_rule": {"promote": threshold.promote, "reason": threshold.reason},
        "rows_added": released,
        "test": {s: r[refs[0]].summary for s, r in test.items()},
        "test_production": {s: r[refs[1]].summary for s, r in test.items()},
        "test_paired": {s: r[refs[0]].paired for s, r in test.items()},
    }
