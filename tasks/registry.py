"""Registry tasks of the coordinator: which round to publish, and publishing it."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fedchem.config import ChemConfig, FederationConfig, PublishConfig
from fedchem.demo.base_model import BaseModelConfig, publish_public_base, train_public_base
from fedchem.federation.commits import committed_rounds
from fedchem.federation.publish import publish_round
from fedchem.messages import EvalReport, PrepareReport, SiteCalibration
from fedchem.registry.store import Registry
from fedchem.storage.hub import HubLayout, HubStore

__all__ = ["publish_model", "publish_public_base_model", "round_to_publish"]


@task(cache_policy=NO_CACHE)
def round_to_publish(config: FederationConfig, target: PublishConfig) -> int:
    """The round asked for, else the best by the sites' validation, else the last committed."""
    hub = HubStore(config.hub_url)
    committed = committed_rounds(hub, config.run_id)
    if len(committed) < 2:
        raise ValueError(f"run {config.run_id} has no committed round to publish")
    if target.round is not None:
        if target.round >= len(committed):
            raise ValueError(f"round {target.round} of run {config.run_id} is not committed")
        return target.round
    best_path = HubLayout(config.run_id).best()
    best = hub.get_json(best_path).get("round") if hub.exists(best_path) else None
    return int(best) if best else committed[-1].round


@task(cache_policy=NO_CACHE)
def publish_model(
    config: FederationConfig,
    target: PublishConfig,
    rnd: int,
    reports: list[PrepareReport],
    calibrations: list[SiteCalibration],
    evals: list[EvalReport] | None = None,
) -> int:
    version = publish_round(
        HubStore(config.hub_url),
        Registry(target.registry),
        target.model_name,
        config.run_id,
        rnd,
        chem=config.chem,
        model=config.model,
        tasks=config.tasks,
        private_tasks=config.private_tasks(),
        strategy=config.strategy.name,
        reports=reports,
        calibrations=calibrations,
        evals=evals or [],
        alias=target.alias,
        parent=target.parent,
    )
    get_run_logger().info(
        "published %s:%d (round %d of run %s, %d site calibration(s))%s",
        target.model_name,
        version,
        rnd,
        config.run_id,
        len(calibrations),
        f"; {target.alias} -> {version}" if target.alias else "",
    )
    return version


@task(cache_policy=NO_CACHE)
def publish_public_base_model(
    cfg: BaseModelConfig, chem: ChemConfig, key_file: Path, workdir: Path, registry: str
) -> dict[str, object]:
    """Train the public base model (public data only) and register it; its name, version and
    held-out score come back (aggregates: the data is public anyway)."""
    base = train_public_base(cfg, chem, key_file, workdir)
    version = publish_public_base(Registry(registry), base, name=cfg.name)
    get_run_logger().info(
        "public base model %s:%d: mean ROC-AUC %.3f on its public test fold",
        cfg.name,
        version,
        base.metrics["test_mean_roc_auc"],
    )
    return {"name": cfg.name, "version": version, **base.metrics}
