"""Tasks that run at a site. They log counts only: never SMILES, ids or labels."""

from __future__ import annotations

import logging
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
from fedchem.federation import baselines
from fedchem.federation import site as site_lib
from fedchem.federation.rounds import RoundSuperseded, RoundWithdrawn, await_round_open
from fedchem.messages import (
    EvalReport,
    RoundOpen,
    SiteCalibration,
    SiteRefusal,
    SiteUpdateManifest,
)
from fedchem.storage.hub import HubLayout, HubStore, json_bytes
from fedchem.tasks.progress import ArtifactProgress
from fedchem.trust.ledger import SITE_SCOPE, Ledger
from fedchem.trust.redact import SiteDataFilter, site_strings
from fedchem.trust.site import PolicyRefused, SiteGuard, site_signer
from fedchem.trust.sovereign import check_featurizer, own_site

if TYPE_CHECKING:
    from fedchem.messages import PrepareReport

__all__ = [
    "await_round",
    "calibrate_for_serving",
    "evaluate_baselines",
    "evaluate_global",
    "guard_site_logs",
    "prepare",
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
    """Prepare the site's own data; the site's config, not the caller's (``hub_url``: the
    hub the report will go to, checked before anything runs)."""
    from fedchem.data.prepare import (
        prepare_site,  # RDKit + Dask: only the preparing step needs them
    )

    site = _own(site, hub_url=hub_url)  # on its worker: its own config file only
    check_featurizer(site, chem)
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


def _ledger(site: SiteConfig, hub: HubStore, scope: str) -> Ledger | None:
    """The site's ledger in ``scope`` (a copy kept under its workdir); None without a key."""
    signer = site_signer(site)
    return None if signer is None else Ledger(hub, scope, signer, site.workdir / "ledger")


def _record_reports(site: SiteConfig, hub_url: str, run_id: str, reports: list[EvalReport]) -> None:
    """Evaluation reports leave the site as flow results, not hub objects: their hashes go
    into the site's ledger all the same (what left, and when)."""
    ledger = _ledger(site, HubStore(hub_url), run_id)
    for r in reports if ledger is not None else []:
        assert ledger is not None
        data = json_bytes(r.model_dump(mode="json"))
        ledger.append("eval-report", data=data, note=f"{r.model} on {r.fold}")


@task(
    retries=3,
    retry_delay_seconds=[1, 4, 10],
    retry_condition_fn=_not_refused,
    cache_policy=NO_CACHE,
)
def publish_prepare_report(
    hub_url: str, report: PrepareReport, site: SiteConfig | SiteRef | None = None
) -> str:
    """Put the site's counts on the hub (the coordinator's only view of site data); signed
    and recorded in the site's ledger when ``site`` (its own config) has a signing key."""
    path = HubLayout.site_prepared(report.site)
    hub = HubStore(hub_url)
    own = _own(site, hub_url=hub_url) if site is not None else None
    signer = site_signer(own) if own is not None else None
    if own is None or signer is None:
        hub.put_json(path, report.model_dump(mode="json"))
        return path
    report = signer.sign("prepare-report", report)
    data = json_bytes(report.model_dump(mode="json"))
    Ledger(hub, SITE_SCOPE, signer, own.workdir / "ledger").append(
        "prepare-report", path=path, data=data
    )
    hub.put_bytes(path, data)
    return path


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
    site = _own(site, hub_url=hub_url)
    report = site_lib.evaluate_global_at_site(
        site, HubStore(hub_url), run_id, rnd, chem, model, select
    )
    _record_reports(site, hub_url, run_id, [report])
    return report


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
    site = _own(site, hub_url=publish_to[0] if publish_to is not None else None)
    if publish_to is not None:  # before training: the policy may not let the model leave
        SiteGuard.load(site).check_share_local_models()
    report, arrays = baselines.train_local_only(site, chem, model, train, epochs, label_stats)
    if publish_to is not None:
        hub_url, run_id = publish_to
        hub = HubStore(hub_url)
        baselines.publish_baseline(hub, run_id, site.name, arrays, _ledger(site, hub, run_id))
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
    site = _own(site, hub_url=hub_url)
    hub = HubStore(hub_url)
    reports = [
        baselines.evaluate_baseline_at_site(site, hub, run_id, owner, chem, model)
        for owner in owners
    ]
    _record_reports(site, hub_url, run_id, reports)
    return reports


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

    site = _own(site, hub_url=hub_url)
    hub = HubStore(hub_url)
    result = calibrate_site(site, hub, run_id, rnd, chem, model, private_tasks)
    signer, path = site_signer(site), HubLayout(run_id).site_calibration(site.name)
    message = result.message if signer is None else signer.sign("calibration", result.message)
    data = json_bytes(message.model_dump(mode="json"))
    ledger = _ledger(site, hub, run_id)
    if ledger is not None:
        ledger.append("calibration", round=rnd, path=path, data=data)
    hub.put_bytes(path, data)
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
