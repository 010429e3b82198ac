"""Tasks that run at a site. They log counts only: never SMILES, ids or labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fedchem.config import (
    ChemConfig,
    ModelConfig,
    Selection,
    SiteConfig,
    SiteRef,
    TaskSpec,
    TrainConfig,
    resolve_site,
)
from fedchem.federation import baselines
from fedchem.federation import site as site_lib
from fedchem.federation.rounds import RoundSuperseded, RoundWithdrawn, await_round_open
from fedchem.messages import EvalReport, FitInstructions, SiteCalibration, SiteUpdateManifest
from fedchem.storage.hub import HubLayout, HubStore
from fedchem.tasks.progress import ArtifactProgress

if TYPE_CHECKING:
    from fedchem.messages import PrepareReport

__all__ = [
    "await_round",
    "calibrate_for_serving",
    "evaluate_baselines",
    "evaluate_global",
    "prepare",
    "publish_prepare_report",
    "train_local_baseline",
    "train_round",
]


@task(cache_policy=NO_CACHE)
def prepare(
    site: SiteConfig | SiteRef, chem: ChemConfig, tasks: list[TaskSpec] | None
) -> PrepareReport:
    from fedchem.data.prepare import (
        prepare_site,  # RDKit + Dask: only the preparing step needs them
    )

    site = resolve_site(site)  # deployed: the site's own config, from its worker's environment
    report = prepare_site(
        site,
        chem,
        tasks,
        progress=ArtifactProgress(
            f"prepare-{site.name}", site.name + ": featurized {done}/{total} partitions"
        ),
    )
    logger = get_run_logger()
    for warning in report.warnings:  # aggregate words only (fold shares, counts)
        logger.warning("site %s: %s", site.name, warning)
    logger.info(
        "site %s: %d rows in, %d accepted, %d quarantined; %d molecules (cache %s)",
        site.name,
        report.rows_in,
        report.rows_accepted,
        report.rows_quarantined,
        report.n_molecules,
        "hit" if report.cache_hit else "miss",
    )
    return report


@task(retries=3, retry_delay_seconds=[1, 4, 10], cache_policy=NO_CACHE)
def publish_prepare_report(hub_url: str, report: PrepareReport) -> str:
    """Put the site's counts on the hub (the coordinator's only view of site data)."""
    path = HubLayout.site_prepared(report.site)
    HubStore(hub_url).put_json(path, report.model_dump(mode="json"))
    return path


@task(cache_policy=NO_CACHE)
def await_round(
    hub_url: str, run_id: str, rnd: int, ticket: str, timeout_s: float
) -> FitInstructions | str:
    """Wait until the coordinator opens round ``rnd`` under ``ticket``: its fit instructions,
    or why the run ends without training (a newer coordinator attempt opened the round, or
    the round was withdrawn)."""
    try:
        return await_round_open(HubStore(hub_url), run_id, rnd, ticket, timeout_s).fit
    except (RoundSuperseded, RoundWithdrawn) as exc:
        get_run_logger().warning("%s", exc)
        return f"{'superseded' if isinstance(exc, RoundSuperseded) else 'withdrawn'}: {exc}"


@task(cache_policy=NO_CACHE)
def train_round(
    site: SiteConfig | SiteRef,
    hub_url: str,
    run_id: str,
    rnd: int,
    chem: ChemConfig,
    model: ModelConfig,
    train: TrainConfig,
    fit: FitInstructions,
) -> SiteUpdateManifest:
    site = resolve_site(site)
    manifest = site_lib.run_site_round(
        site, HubStore(hub_url), run_id, rnd, chem, model, train, fit
    )
    get_run_logger().info(
        "round %d site %s: %d examples, loss %.4f, %.1fs on %s",
        rnd,
        site.name,
        manifest.n_examples,
        manifest.train_loss,
        manifest.train_seconds,
        manifest.device,
    )
    return manifest


@task(cache_policy=NO_CACHE)
def evaluate_global(
    site: SiteConfig | SiteRef,
    hub_url: str,
    run_id: str,
    rnd: int,
    chem: ChemConfig,
    model: ModelConfig,
    select: Selection = "last",
) -> EvalReport:
    site = resolve_site(site)
    return site_lib.evaluate_global_at_site(
        site, HubStore(hub_url), run_id, rnd, chem, model, select
    )


@task(cache_policy=NO_CACHE)
def train_local_baseline(
    site: SiteConfig,
    chem: ChemConfig,
    model: ModelConfig,
    train: TrainConfig,
    epochs: int,
    label_stats: dict[str, dict[str, float]],
    publish_to: tuple[str, str] | None = None,
) -> EvalReport:
    """The site's local-only model; ``publish_to=(hub_url, run_id)`` also puts its weights on
    the hub for the cross-site evaluation (shared heads only)."""
    report, arrays = baselines.train_local_only(site, chem, model, train, epochs, label_stats)
    if publish_to is not None:
        hub_url, run_id = publish_to
        baselines.publish_baseline(HubStore(hub_url), run_id, site.name, arrays)
    return report


@task(cache_policy=NO_CACHE)
def evaluate_baselines(
    site: SiteConfig,
    hub_url: str,
    run_id: str,
    owners: list[str],
    chem: ChemConfig,
    model: ModelConfig,
) -> list[EvalReport]:
    """Other sites' published local-only models, scored on this site's test fold."""
    hub = HubStore(hub_url)
    return [
        baselines.evaluate_baseline_at_site(site, hub, run_id, owner, chem, model)
        for owner in owners
    ]


@task(cache_policy=NO_CACHE)
def calibrate_for_serving(
    site: SiteConfig | SiteRef,
    hub_url: str,
    run_id: str,
    rnd: int,
    chem: ChemConfig,
    model: ModelConfig,
    private_tasks: list[str],
    model_name: str,
) -> SiteCalibration:
    """The site's calibration of round ``rnd``'s model: counts to the hub, its exact scores
    and private heads to its own registry (they stay at the site)."""
    from fedchem.federation.calibration import calibrate_site, publish_site_part
    from fedchem.registry.store import Registry

    site = resolve_site(site)
    hub = HubStore(hub_url)
    result = calibrate_site(site, hub, run_id, rnd, chem, model, private_tasks)
    hub.put_json(
        HubLayout(run_id).site_calibration(site.name), result.message.model_dump(mode="json")
    )
    version = publish_site_part(Registry(site.registry_url()), model_name, result)
    get_run_logger().info(
        "site %s: calibrated round %d on %d validation molecules (%d tasks); its part is "
        "version %d of its own registry",
        site.name,
        rnd,
        result.message.n_valid,
        len(result.message.tasks),
        version,
    )
    return result.message
