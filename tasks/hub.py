"""Coordinator tasks: they read and write the hub, which holds models and manifests only."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from prefect.states import Cancelling

from fedchem.chem.consistency import ConsistencyError
from fedchem.config import FederationConfig
from fedchem.data.prepare import PrepareReport
from fedchem.federation import coordinator as coord
from fedchem.federation.manifest import FitInstructions, RoundManifest, SiteUpdateManifest
from fedchem.federation.strategies import build_strategy
from fedchem.storage.hub import HubLayout, HubStore

__all__ = [
    "aggregate",
    "collect_replies",
    "read_prepare_reports",
    "record_best",
    "start",
    "trigger_site_round",
]


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
def start(config: FederationConfig, reports: list[PrepareReport]) -> list[RoundManifest]:
    """The run's committed rounds: round 0 is committed now if the run is new; a run already
    on the hub (same run id, same settings) resumes after its last committed round."""
    hub = HubStore(config.hub_url)
    coord.start_run(hub, config, [r.label_stats for r in reports])
    committed = coord.committed_rounds(hub, config.run_id)
    if len(committed) > 1:
        get_run_logger().warning(
            "run %s resumes after committed round %d (global %s)",
            config.run_id, committed[-1].round, committed[-1].global_sha256[:12],
        )  # fmt: skip
    return committed


@task(cache_policy=NO_CACHE)
def aggregate(
    config: FederationConfig, rnd: int, replies: list[SiteUpdateManifest],
    missing: dict[str, str], started_at: float | None = None,
) -> RoundManifest:  # fmt: skip
    """Screen the round's updates, aggregate the accepted ones, commit (or fail the quorum)."""
    manifest = coord.aggregate_round(
        HubStore(config.hub_url), config.run_id, rnd, replies, build_strategy(config.strategy),
        missing, started_at, members=config.site_names, quorum=config.quorum(),
        faults=config.faults,
    )  # fmt: skip
    logger = get_run_logger()
    for site, why in manifest.rejected.items():
        logger.warning("round %d: update of %s rejected: %s", rnd, site, why)
    logger.info(
        "round %d committed (%s): %d sites, %d examples, global %s, valid %s",
        rnd, manifest.aggregation, len(manifest.sites), sum(manifest.n_examples.values()),
        manifest.global_sha256[:12],
        {k: round(v, 4) for k, v in manifest.valid_score.items()},
    )  # fmt: skip
    return manifest


@task(cache_policy=NO_CACHE)
def trigger_site_round(
    config: FederationConfig, rnd: int, site: str, fit: FitInstructions, deadline: float
) -> tuple[str, str]:
    """Run ``site``'s own round deployment and wait until it ends or the round's deadline.

    Returns (site, final state name or why not). A run still going at the deadline is
    cancelled: its update, should it arrive later, is never read for this round.
    """
    name = config.deployment.site_round.format(site=site)
    params = {
        "site": {"name": site}, "hub_url": config.hub_url, "run_id": config.run_id,
        "round": rnd, "chem": config.chem.model_dump(mode="json"),
        "model": config.model.model_dump(mode="json"),
        "train": config.train.model_dump(mode="json"), "fit": fit.model_dump(mode="json"),
    }  # fmt: skip
    timeout = max(deadline - time.time(), 1.0)
    try:
        run = run_deployment(
            name, parameters=params, timeout=timeout,
            poll_interval=config.deployment.poll_interval_s,
            flow_run_name=f"round-{rnd:02d}/{site}",
            tags=["fedchem", f"site:{site}", f"round:{rnd}", f"run:{config.run_id}"],
            # one site run per round per coordinator run: a resumed coordinator asks again,
            # and the site answers with the update it already published
            idempotency_key=f"{config.run_id}/{rnd}/{site}/{flow_run.id}",
        )  # fmt: skip
    except Exception as exc:  # no deployment, server unreachable: this site is missing
        return site, f"not started: {type(exc).__name__}: {exc}"
    state = run.state
    if state is None or not state.is_final():
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelling(), force=True)
        return site, f"missed the deadline ({state.name if state else 'no state'}); cancelled"
    return site, state.name


@task(cache_policy=NO_CACHE)
def collect_replies(
    hub_url: str, run_id: str, rnd: int, outcomes: list[tuple[str, str]]
) -> tuple[list[SiteUpdateManifest], dict[str, str]]:
    """Manifests of the sites whose run completed (read from the hub); the rest, with why."""
    hub, layout = HubStore(hub_url), HubLayout(run_id)
    replies, missing = [], {}
    for site, outcome in outcomes:
        path = layout.site_manifest(rnd, site)
        if outcome == "Completed" and hub.exists(path):
            replies.append(SiteUpdateManifest.model_validate(hub.get_json(path)))
        else:
            missing[site] = outcome if outcome != "Completed" else "completed without a manifest"
    return replies, missing


@task(cache_policy=NO_CACHE)
def record_best(hub_url: str, run_id: str, committed: list[RoundManifest]) -> dict[str, Any]:
    """Keep the best round by the sites' validation scores (``runs/<run>/best.json``)."""
    doc = coord.record_best_round(HubStore(hub_url), run_id, committed)
    get_run_logger().info("best round by validation: %s", doc)
    return doc
