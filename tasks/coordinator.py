"""Coordinator tasks: they read and write the hub, which holds models and manifests only."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from fedchem.config import FederationConfig
from fedchem.federation import coordinator as coord
from fedchem.federation.commits import committed_rounds, record_best_round
from fedchem.federation.consistency import ConsistencyError, check_consistency
from fedchem.federation.driver import CoordinatorSteps
from fedchem.federation.publish import write_domain_support
from fedchem.federation.rounds import SiteReplies
from fedchem.messages import PrepareReport, RoundManifest
from fedchem.policy import TrustConfig
from fedchem.registry.model import load_weights
from fedchem.registry.store import Registry
from fedchem.storage.hub import HubLayout, HubStore
from fedchem.trust.coordinator import CoordinatorTrust
from fedchem.trust.signing import SignatureRejected

__all__ = [
    "aggregate",
    "artifact_key",
    "read_prepare_reports",
    "record_best",
    "report_round",
    "start",
]


def _is_permanent(state: Any) -> bool:
    try:
        state.result()
    except (ConsistencyError, SignatureRejected):
        return True
    except Exception:
        return False
    return False


@task(
    retries=3,
    retry_delay_seconds=[1, 4, 10],
    cache_policy=NO_CACHE,
    retry_condition_fn=lambda task, run, state: not _is_permanent(state),
)
def read_prepare_reports(
    hub_url: str, sites: list[str], trust: TrustConfig | None = None
) -> list[PrepareReport]:
    """The sites' preparation reports; in a signed federation each must be signed by its
    site's pinned key."""
    hub = HubStore(hub_url)
    paths = [HubLayout.site_prepared(s) for s in sites]
    missing = [s for s, there in zip(sites, hub.map(hub.exists, paths), strict=True) if not there]
    if missing:
        raise RuntimeError(f"sites without published preparation: {missing}; run site_prepare")
    reports = [PrepareReport.model_validate(doc) for doc in hub.map(hub.get_json, paths)]
    if trust is not None:
        keys = CoordinatorTrust.from_config(trust, need_key=False).keys
        for site, report in zip(sites, reports, strict=True):
            keys.verify("prepare-report", report, site)  # SignatureRejected: not transient
    check_consistency(reports)  # a disagreement is not transient: no retry helps
    return reports


@task(cache_policy=NO_CACHE)
def start(config: FederationConfig, reports: list[PrepareReport]) -> list[RoundManifest]:
    """The run's committed rounds: round 0 is committed now if the run is new; a run already
    on the hub (same run id, same settings) resumes after its last committed round."""
    hub = HubStore(config.hub_url)
    init = None
    if config.init_from is not None and not hub.exists(HubLayout(config.run_id).round_manifest(0)):
        reg = Registry(config.init_from.registry)
        name, version = reg.resolve(config.init_from.model)
        init = load_weights(reg.read(name, version, "model.safetensors"))
        get_run_logger().info("run %s starts from %s:%d", config.run_id, name, version)
    trust = coord.coordinator_trust(config)
    coord.start_run(hub, config, [r.label_stats for r in reports], init, trust)
    # the sites' supported columns, united
    write_domain_support(hub, config.run_id, reports, trust)
    committed = committed_rounds(hub, config.run_id)
    if len(committed) > 1:
        get_run_logger().warning(
            "run %s resumes after committed round %d (global %s)",
            config.run_id,
            committed[-1].round,
            committed[-1].global_sha256[:12],
        )
    return committed


@task(cache_policy=NO_CACHE)
def aggregate(
    steps: CoordinatorSteps,
    rnd: int,
    replies: SiteReplies,
    missing: dict[str, str],
    started_at: float,
) -> RoundManifest:
    """Screen the round's updates, aggregate the accepted ones, commit; the round's quorum is
    decided here, on the accepted updates (below it the round is recorded as failed)."""
    manifest = steps.aggregate(rnd, replies, missing, started_at)
    logger = get_run_logger()
    for site, why in manifest.rejected.items():
        logger.warning("round %d: update of %s rejected: %s", rnd, site, why)
    if manifest.dp:
        logger.info(
            "round %d: site-level DP, noise multiplier %.3g, clip %g: epsilon %.3f at delta %g",
            rnd,
            manifest.dp["noise_multiplier"],
            manifest.dp["clip"],
            manifest.dp["epsilon_run"],
            manifest.dp["delta"],
        )
    if manifest.outcome == "failed":
        logger.error("round %d failed: %s", rnd, manifest.reason)
        return manifest
    logger.info(
        "round %d committed (%s): %d sites, %d examples, global %s, valid %s",
        rnd,
        manifest.aggregation,
        len(manifest.sites),
        sum(manifest.n_examples.values()),
        manifest.global_sha256[:12],
        {k: round(v, 4) for k, v in manifest.valid_score.items()},
    )
    return manifest


@task(cache_policy=NO_CACHE)
def record_best(config: FederationConfig, committed: list[RoundManifest]) -> dict[str, Any]:
    """Keep the best round by the sites' validation scores (``runs/<run>/best.json``), in the
    coordinator's ledger in a signed federation."""
    hub, trust = HubStore(config.hub_url), coord.coordinator_trust(config)
    doc = record_best_round(hub, config.run_id, committed, trust)
    get_run_logger().info("best round by validation: %s", doc)
    return doc


def artifact_key(run_id: str, suffix: str) -> str:
    """An artifact key (lowercase letters, digits, dashes) for this run."""
    slug = "".join(c if c.isalnum() else "-" for c in run_id.lower()).strip("-")
    return f"fedchem-{slug}-{suffix}"[:120]


def _epsilon(manifest: RoundManifest, site: str) -> dict[str, float]:
    """The round's epsilon for a site's row: record level its own, site level the round's."""
    if site in manifest.site_epsilon:
        return {"epsilon": round(manifest.site_epsilon[site], 3)}
    if "epsilon_run" in manifest.dp:
        return {"epsilon": round(manifest.dp["epsilon_run"], 3)}
    return {}


@task(cache_policy=NO_CACHE)
def report_round(config: FederationConfig, manifest: RoundManifest, progress: UUID) -> None:
    """The UI's view of a committed round: a table of the sites' validation aggregates, and
    the run's progress bar."""
    rnd = manifest.round
    create_table_artifact(
        key=artifact_key(config.run_id, f"round-{rnd:02d}"),
        table=[
            {
                "site": s,
                "examples": manifest.n_examples.get(s, 0),
                **{k: round(v, 4) for k, v in manifest.valid_summary.get(s, {}).items()},
                **_epsilon(manifest, s),
            }
            for s in config.site_names
            if s in manifest.valid_summary
        ]
        + [{"site": f"missing: {s}", "examples": 0} for s in manifest.missing]
        + [{"site": f"rejected: {s}", "examples": 0} for s in manifest.rejected],
        description=f"round {rnd} of {config.run_id}: site validation metrics (aggregates)",
    )
    update_progress_artifact(progress, 100.0 * rnd / config.rounds)
