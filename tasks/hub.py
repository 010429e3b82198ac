"""Coordinator tasks: they read and write the hub, which holds models and manifests only."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fedchem.chem.consistency import ConsistencyError
from fedchem.config import FederationConfig, StrategyConfig
from fedchem.data.prepare import PrepareReport
from fedchem.federation import coordinator as coord
from fedchem.federation.manifest import RoundManifest, SiteUpdateManifest
from fedchem.federation.strategies import build_strategy
from fedchem.storage.hub import HubLayout, HubStore

__all__ = ["aggregate", "read_prepare_reports", "start"]


def _is_consistency_error(state: Any) -> bool:
    try:
        state.result()
    except ConsistencyError:
        return True
    except Exception:
        return False
    return False


@task(
    retries=3, retry_delay_seconds=[1, 4, 10], cache_policy=NO_CACHE,
    retry_condition_fn=lambda task, run, state: not _is_consistency_error(state),
)  # fmt: skip
def read_prepare_reports(hub_url: str, sites: list[str]) -> list[PrepareReport]:
    hub = HubStore(hub_url)
    missing = [s for s in sites if not hub.exists(HubLayout.site_prepared(s))]
    if missing:
        raise RuntimeError(f"sites without published preparation: {missing}; run site_prepare")
    reports = [
        PrepareReport.model_validate(hub.get_json(HubLayout.site_prepared(s))) for s in sites
    ]
    coord.check_consistency(reports)  # a disagreement is not transient: no retry helps
    return reports


@task(cache_policy=NO_CACHE)
def start(config: FederationConfig, reports: list[PrepareReport]) -> RoundManifest:
    return coord.start_run(HubStore(config.hub_url), config, [r.label_stats for r in reports])


@task(cache_policy=NO_CACHE)
def aggregate(
    hub_url: str, run_id: str, rnd: int, replies: list[SiteUpdateManifest],
    strategy: StrategyConfig, failures: list[str],
) -> RoundManifest:  # fmt: skip
    manifest = coord.aggregate_round(
        HubStore(hub_url), run_id, rnd, replies, build_strategy(strategy), failures
    )
    get_run_logger().info(
        "round %d committed (%s): %d sites, %d examples, global %s, valid %s",
        rnd, manifest.aggregation, len(manifest.sites), sum(manifest.n_examples.values()),
        manifest.global_sha256[:12],
        {k: round(v, 4) for k, v in manifest.valid_score.items()},
    )  # fmt: skip
    return manifest
