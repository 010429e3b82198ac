"""Tasks that run at a site. They log counts only: never SMILES, ids or labels."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
)
from fedchem.federation import parallel, steps
from fedchem.federation import site as site_lib
from fedchem.federation.rounds import RoundSuperseded, RoundWithdrawn, await_round_open
from fedchem.messages import (
    EvalReport,
    RoundOpen,
    SiteCalibration,
    SiteRefusal,
    SiteUpdateManifest,
)
from fedchem.storage.hub import HubStore
from fedchem.tasks.progress import ArtifactProgress
from fedchem.trust.redact import SiteDataFilter, site_strings
from fedchem.trust.site import PolicyRefused
from fedchem.trust.sovereign import own_site

if TYPE_CHECKING:
    from fedchem.messages import PrepareReport

__all__ = [
    "at_sites",
    "await_round",
    "calibrate_for_serving",
    "evaluate_baselines",
    "evaluate_global",
    "guard_site_logs",
    "prepare",
    "prepare_sites",
    "publish_prepare_report",
    "train_local_baseline",
    "train_round",
]


def guard_site_logs(site: SiteConfig) -> None:
    """Every log line this process's flow and task runs send to the orchestrator passes the
    site's filter: its SMILES and compound ids replaced (:mod:`fedchem.trust.redact`)."""
    private = site_strings(site.measurements)
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            mine = [f for f in handler.filters if isinstance(f, SiteDataFilter)]
            if any(f.site == site.name and f.private == private for f in mine):
                continue
            for f in mine:
                if f.site == site.name:  # the site's data changed: its strings with it
                    handler.removeFilter(f)
            handler.addFilter(SiteDataFilter(site.name, private))


def _own(site: SiteConfig | SiteRef, **locations: Any) -> SiteConfig:
    """The site's own config (:func:`~fedchem.trust.sovereign.own_site`), its logs guarded."""
    own = own_site(site, **locations)
    guard_site_logs(own)
    return own


def _not_refused(task: object, run: object, state: object) -> bool:
    """Retry a transient failure, never a refusal (it would only be refused again)."""
    try:
        state.result()  # type: ignore[attr-defined]
    except PolicyRefused:
        return False
    except Exception:
        return True
    return True


@task(cache_policy=NO_CACHE)
def prepare(
    site: SiteConfig | SiteRef,
    chem: ChemConfig,
    tasks: list[TaskSpec] | None,
    hub_url: str | None = None,
) -> PrepareReport:
    """Prepare the site's own data (:func:`fedchem.federation.steps.prepare`)."""
    own = _own(site, hub_url=hub_url)
    report = steps.prepare(
        site,
        chem,
        tasks,
        hub_url,
        progress=ArtifactProgress(
            f"prepare-{own.name}", own.name + ": featurized {done}/{total} partitions"
        ),
    )
    _log_prepared(own.name, report)
    return report


def _log_prepared(site: str, report: PrepareReport) -> None:
    """A prepared site's counts and warnings (aggregate words only: fold shares, counts)."""
    logger = get_run_logger()
    for warning in report.warnings:
        logger.warning("site %s: %s", site, warning)
    logger.info(
        "site %s: %d rows in, %d accepted, %d quarantined; %d molecules (cache %s)",
        site,
        report.rows_in,
        report.rows_accepted,
        report.rows_quarantined,
        report.n_molecules,
        "hit" if report.cache_hit else "miss",
    )


@task(
    retries=3,
    retry_delay_seconds=[1, 4, 10],
    retry_condition_fn=_not_refused,
    cache_policy=NO_CACHE,
)
def publish_prepare_report(
    hub_url: str, report: PrepareReport, site: SiteConfig | SiteRef | None = None
) -> str:
    """Put the site's counts on the hub, signed
    (:func:`fedchem.federation.steps.publish_prepare_report`)."""
    if site is not None:
        _own(site, hub_url=hub_url)
    return steps.publish_prepare_report(hub_url, report, site)


@task(cache_policy=NO_CACHE)
def await_round(
    site: SiteConfig | SiteRef, hub_url: str, run_id: str, rnd: int, ticket: str, timeout_s: float
) -> RoundOpen | str:
    """Wait until the coordinator opens round ``rnd`` under ``ticket``: its opening (fit
    instructions and plan), or why the run ends without training (a newer coordinator
    attempt opened the round, or the round was withdrawn). A hub the site's config does not
    name is refused before it is read."""
    _own(site, hub_url=hub_url)
    try:
        return await_round_open(HubStore(hub_url), run_id, rnd, ticket, timeout_s)
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
    opened: RoundOpen,
    step: str | None = None,
    timeout_s: float = 1800.0,
) -> SiteUpdateManifest | SiteRefusal | None:
    """Train the round under the site's own policy (from its own config: fail-closed without
    one). A round the policy does not allow is refused: the refusal, with its clause, goes to
    the hub and is returned, and nothing is trained. A securely aggregated round goes in
    steps (``step``: one of them; None: all, waiting for the coordinator between them)."""
    site = _own(site, hub_url=hub_url)
    logger = get_run_logger()
    manifest = site_lib.take_part(
        site, HubStore(hub_url), opened, chem, model, train, step, timeout_s
    )
    if manifest is None:  # a secure-aggregation step that sends no update
        logger.info("round %d site %s: secure-aggregation step %s done", rnd, site.name, step)
        return None
    if isinstance(manifest, SiteRefusal):
        logger.warning(
            "round %d site %s: refused by its policy: %s (%s)",
            rnd,
            site.name,
            manifest.clause,
            manifest.reason,
        )
        return manifest
    dp = (
        f"; DP {manifest.dp.level}, epsilon {manifest.dp.epsilon_run:.3f} this run, "
        f"{manifest.dp.epsilon_total:.3f} in all"
        if manifest.dp is not None
        else ""
    )
    logger.info(
        "round %d site %s: %d examples, loss %.4f, %.1fs on %s%s",
        rnd,
        site.name,
        manifest.n_examples,
        manifest.train_loss,
        manifest.train_seconds,
        manifest.device,
        dp,
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
    _own(site, hub_url=hub_url)
    return steps.evaluate_global(site, hub_url, run_id, rnd, chem, model, select)


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
    """The site's local-only model (:func:`fedchem.federation.steps.train_local_baseline`)."""
    _own(site, hub_url=publish_to[0] if publish_to is not None else None)
    return steps.train_local_baseline(site, chem, model, train, epochs, label_stats, publish_to)


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
    _own(site, hub_url=hub_url)
    return steps.evaluate_baselines(site, hub_url, run_id, owners, chem, model)


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
    own = _own(site, hub_url=hub_url)
    message, version = steps.calibrate_for_serving(
        site, hub_url, run_id, rnd, chem, model, private_tasks, model_name
    )
    get_run_logger().info(
        "site %s: calibrated round %d on %d validation molecules (%d tasks); its part is "
        "version %d of its own registry",
        own.name,
        rnd,
        message.n_valid,
        len(message.tasks),
        version,
    )
    return message


@task(cache_policy=NO_CACHE, task_run_name="{step} at {n_sites} sites")
def at_sites(
    step: str,
    n_sites: int,
    fn: Callable[..., Any],
    calls: list[tuple[str, tuple[Any, ...]]],
    dask_address: str | None,
    workers: int | None = None,
) -> list[Any]:
    """Many sites: one step at every site in one task run, each site's call in a Dask worker
    (:func:`fedchem.federation.parallel.at_sites`), not a subflow per site. A site that
    failed is named with the error's type (its message stays in the worker's log)."""
    results = parallel.at_sites(step, fn, calls, dask_address, workers)
    failed = [r for r in results if isinstance(r, parallel.SiteStepFailed)]
    logger = get_run_logger()
    logger.info("%s: %d of %d sites done", step, n_sites - len(failed), n_sites)
    for f in failed:
        logger.warning("%s", f)
    return results


@task(cache_policy=NO_CACHE, task_run_name="prepare {n_sites} sites")
def prepare_sites(
    sites: list[SiteConfig],
    n_sites: int,
    chem: ChemConfig,
    tasks: list[TaskSpec] | None,
    hub_url: str,
) -> list[PrepareReport]:
    """Many sites: each prepared in turn in one task run (each with its own Dask pool for its
    partitions), its counts published, signed; no subflow per site."""
    out = []
    for site in sites:
        own = _own(site, hub_url=hub_url)
        report = steps.prepare(site, chem, tasks, hub_url)
        steps.publish_prepare_report(hub_url, report, site)
        _log_prepared(own.name, report)
        out.append(report)
    return out
