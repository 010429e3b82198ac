"""Coordinator tasks: they read and write the hub, which holds models and manifests only."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from prefect import get_client, get_run_logger, task
from prefect.artifacts import create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import State, StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelled, Cancelling

from fedchem.chem.consistency import ConsistencyError
from fedchem.config import FederationConfig
from fedchem.data.prepare import PrepareReport
from fedchem.federation import coordinator as coord
from fedchem.federation.manifest import FitInstructions, RoundManifest, SiteUpdateManifest
from fedchem.federation.rounds import open_round, read_replies
from fedchem.federation.strategies import build_strategy
from fedchem.storage.hub import HubLayout, HubStore

__all__ = [
    "aggregate",
    "artifact_key",
    "await_replies",
    "await_running",
    "book_site_runs",
    "cancel_site_runs",
    "open_site_round",
    "read_prepare_reports",
    "record_best",
    "report_round",
    "start",
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
    paths = [HubLayout.site_prepared(s) for s in sites]
    missing = [s for s, there in zip(sites, hub.map(hub.exists, paths), strict=True) if not there]
    if missing:
        raise RuntimeError(f"sites without published preparation: {missing}; run site_prepare")
    reports = [PrepareReport.model_validate(doc) for doc in hub.map(hub.get_json, paths)]
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


def _params(config: FederationConfig, rnd: int, site: str, ticket: str) -> dict[str, Any]:
    """A booked site run's parameters: settings and the ticket, no fit (that comes with the
    round's opening) and no site data (the site's worker resolves its own config)."""
    return {
        "site": {"name": site}, "hub_url": config.hub_url, "run_id": config.run_id,
        "round": rnd, "chem": config.chem.model_dump(mode="json"),
        "model": config.model.model_dump(mode="json"),
        "train": config.train.model_dump(mode="json"), "ticket": ticket,
        # booked rounds ahead: wait at most through the rounds before and their commits
        "open_timeout_s": (config.deployment.book_ahead + 1) * config.deployment.round_deadline_s
        + 60,
    }  # fmt: skip


def _cancel(client: SyncPrefectClient, run_id: UUID, state: State | None) -> None:
    """A run not started yet is Cancelled at once; a running one is asked to stop (its worker
    kills it), so that no update of it is read for this round."""
    started = state is not None and state.type not in (StateType.SCHEDULED, StateType.PENDING)
    client.set_flow_run_state(run_id, Cancelling() if started else Cancelled(), force=True)


def _final(state: State | None) -> bool:
    return state is not None and state.is_final()


def _name(state: State | None) -> str:
    return str(state.name) if state is not None else "no state"


def _states(client: SyncPrefectClient, ids: list[UUID]) -> dict[UUID, State | None]:
    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    return {r.id: r.state for r in runs}


@task(cache_policy=NO_CACHE)
def book_site_runs(
    config: FederationConfig, rnd: int, ticket: str, booked: dict[str, str] | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """Create round ``rnd``'s run of every site (its own deployment on its own pool) that has
    no live one in ``booked``; the runs wait until the round is opened under ``ticket``.

    Returns (site -> flow run id, site -> why its run could not be created). A booked run that
    already ended before its round opened (its worker died, an operator cancelled it) is
    booked again.
    """
    booked, rebook = dict(booked or {}), set()
    if booked:
        with get_client(sync_client=True) as client:
            states = _states(client, [UUID(v) for v in booked.values()])
        for site, run_id in list(booked.items()):
            state = states.get(UUID(run_id))
            if state is None or _final(state):
                get_run_logger().warning(
                    "round %d: %s's booked run ended before the round opened (%s); booking "
                    "again", rnd, site, _name(state),
                )  # fmt: skip
                del booked[site]
                rebook.add(site)

    failed = {}
    for site in config.site_names:  # in turn: run_deployment links each run to this task
        if site in booked:
            continue
        try:
            run = run_deployment(
                config.deployment.site_round.format(site=site),
                parameters=_params(config, rnd, site, ticket), timeout=0,
                flow_run_name=f"round-{rnd:02d}/{site}",
                tags=["fedchem", f"site:{site}", f"round:{rnd}", f"run:{config.run_id}"],
                # one run per site, round and booking of this coordinator attempt: a retried
                # task gets the run it already created
                idempotency_key=f"{config.run_id}/{rnd}/{site}/{ticket}"
                + ("/again" if site in rebook else ""),
            )  # fmt: skip
        except Exception as exc:  # no deployment, server unreachable: this site is missing
            failed[site] = f"not started: {type(exc).__name__}: {exc}"
            continue
        booked[site] = str(run.id)
    return booked, failed


@task(cache_policy=NO_CACHE)
def open_site_round(config: FederationConfig, rnd: int, ticket: str, fit: FitInstructions) -> None:
    """The go for round ``rnd``: its booked runs start training from the last global model."""
    open_round(HubStore(config.hub_url), config.run_id, rnd, ticket, fit)


@task(cache_policy=NO_CACHE)
def await_running(config: FederationConfig, booked: dict[str, str], deadline: float) -> None:
    """Wait until every booked run is running or has ended (one API read per poll)."""
    ids = [UUID(run_id) for run_id in booked.values()]
    with get_client(sync_client=True) as client:
        while True:
            states = _states(client, ids)
            running = all(
                _final(s) or (s is not None and s.type == StateType.RUNNING)
                for s in (states.get(i) for i in ids)
            )  # fmt: skip
            left = deadline - time.time()
            if running or left <= 0:
                return
            time.sleep(min(config.deployment.poll_interval_s, left))


@task(cache_policy=NO_CACHE)
def await_replies(
    config: FederationConfig, rnd: int, booked: dict[str, str], deadline: float
) -> tuple[list[SiteUpdateManifest], dict[str, str]]:
    """Wait for round ``rnd``'s replies until every booked site replied or its run ended, or
    the round's deadline passed. Returns the manifests and, per missing site, why.

    A site has replied when its update manifest is on the hub (``read_replies``: one listing
    per ``poll_interval_s``), so the round goes on while the runs still report their end. The
    runs' states are read once a second, to notice a run that ended without replying; a run
    still going at the deadline is cancelled, and its update, should it arrive later, is
    never read.
    """
    hub, poll = HubStore(config.hub_url), config.deployment.poll_interval_s
    ids = {site: UUID(run_id) for site, run_id in booked.items()}
    replies: dict[str, SiteUpdateManifest | str] = {}
    ended: dict[str, str] = {}  # site -> its run's final state, ended with no reply
    states: dict[UUID, State | None] = {}
    next_states = 0.0
    with get_client(sync_client=True) as client:
        while True:
            if time.time() >= next_states:  # before the listing: a run that ended with a
                states = _states(client, list(ids.values()))  # reply has it listed below
                next_states = time.time() + max(poll, 1.0)
                ended = {site: _name(states.get(i)) for site, i in ids.items()
                         if _final(states.get(i))}  # fmt: skip
            waiting = [site for site in ids if site not in replies]
            replies.update(read_replies(hub, config.run_id, rnd, waiting))
            waiting = [site for site in ids if site not in replies and site not in ended]
            left = deadline - time.time()
            if not waiting or left <= 0:
                break
            time.sleep(min(poll, left))
        missing = {}
        if waiting:  # the deadline passed: a fresh look, then what still goes is cancelled
            states = _states(client, [ids[site] for site in waiting])
            for site in waiting:
                state = states.get(ids[site])
                if _final(state):
                    ended[site] = _name(state)
                else:
                    _cancel(client, ids[site], state)
                    missing[site] = f"missed the deadline ({_name(state)}); cancelled"
            late = [site for site in waiting if site in ended]  # ended just now: replied?
            replies.update(read_replies(hub, config.run_id, rnd, late))
    for site in ids:
        reply = replies.get(site)
        if isinstance(reply, str):
            missing[site] = reply
        elif reply is None and site not in missing:
            outcome = ended[site]
            missing[site] = "completed without a manifest" if outcome == "Completed" else outcome
    return [r for s in ids if isinstance(r := replies.get(s), SiteUpdateManifest)], missing


@task(cache_policy=NO_CACHE)
def cancel_site_runs(run_ids: list[str]) -> None:
    """Cancel runs booked for rounds that will not open (the federation stopped)."""
    with get_client(sync_client=True) as client:
        states = _states(client, [UUID(v) for v in run_ids])
        for run_id, state in states.items():
            if not _final(state):
                _cancel(client, run_id, state)


@task(cache_policy=NO_CACHE)
def record_best(hub_url: str, run_id: str, committed: list[RoundManifest]) -> dict[str, Any]:
    """Keep the best round by the sites' validation scores (``runs/<run>/best.json``)."""
    doc = coord.record_best_round(HubStore(hub_url), run_id, committed)
    get_run_logger().info("best round by validation: %s", doc)
    return doc


def artifact_key(run_id: str, suffix: str) -> str:
    """An artifact key (lowercase letters, digits, dashes) for this run."""
    slug = "".join(c if c.isalnum() else "-" for c in run_id.lower()).strip("-")
    return f"fedchem-{slug}-{suffix}"[:120]


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
            }
            for s in config.site_names
            if s in manifest.valid_summary
        ]
        + [{"site": f"missing: {s}", "examples": 0} for s in manifest.missing]
        + [{"site": f"rejected: {s}", "examples": 0} for s in manifest.rejected],
        description=f"round {rnd} of {config.run_id}: site validation metrics (aggregates)",
    )
    update_progress_artifact(progress, 100.0 * rnd / config.rounds)
