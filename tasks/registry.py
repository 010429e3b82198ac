"""Registry tasks of the coordinator: which round to publish, and publishing it."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fedchem.config import FederationConfig, PublishConfig
from fedchem.federation.commits import committed_rounds
from fedchem.federation.publish import publish_round
from fedchem.messages import EvalReport, PrepareReport, SiteCalibration
from fedchem.registry.store import Registry
from fedchem.storage.hub import HubLayout, HubStore

__all__ = ["publish_model", "round_to_publish"]


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
