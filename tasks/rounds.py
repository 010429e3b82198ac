"""Round tasks of the coordinator: start the sites' runs, open the round, collect the replies.

Replies always come from the hub (``fedchem.federation.rounds``); Prefect only says how each
site's run is doing, read through its client in one request for all sites.
"""

from __future__ import annotations

import time
from typing import Any, cast
from uuid import UUID

from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelled, Cancelling

from fedchem.config import FederationConfig
from fedchem.federation.coordinator import coordinator_trust
from fedchem.federation.driver import CoordinatorSteps, refusal_verifier
from fedchem.federation.rounds import RunState, SiteReplies, collect_replies, withdraw_round
from fedchem.messages import FitInstructions
from fedchem.storage.hub import HubLayout, HubStore

__all__ = [
    "await_replies",
    "await_running",
    "book_site_runs",
    "ended_runs",
    "open_site_round",
    "stop_site_runs",
    "withdraw_site_rounds",
]


def _states(client: SyncPrefectClient, ids: list[UUID]) -> dict[UUID, State | None]:
    if not ids:
        return {}
    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    return {r.id: r.state for r in runs}


def ended_runs(runs: dict[str, str]) -> set[str]:
    """The sites of ``runs`` (site -> flow run id) whose runs are in a final state (one API
    read)."""
    ids = {site: UUID(run_id) for site, run_id in runs.items()}
    with get_client(sync_client=True) as client:
        states = _states(client, list(ids.values()))
    return {s for s, i in ids.items() if (st := states.get(i)) is not None and st.is_final()}


def _run_state(state: State | None) -> RunState:
    if state is None:
        return RunState("no state", False)
    return RunState(state.name or state.type.value.title(), state.is_final())


def _held(state: State | None) -> bool:
    """Whether a worker took the run (a Scheduled or Late one waits for any worker)."""
    return state is not None and state.type != StateType.SCHEDULED


# a run that went wrong: stopped at its deadline, or ended without completing (one still
# Running has replied and is finishing: its site is well)
_WENT_WRONG = {StateType.CANCELLING, StateType.CANCELLED, StateType.CRASHED, StateType.FAILED}


def _cancel(client: SyncPrefectClient, run_id: UUID, state: State | None) -> None:
    """A run not started yet is Cancelled at once; a running one is asked to stop (its worker
    stops it), so that no update of it is read for this round."""
    started = state is not None and state.type not in (StateType.SCHEDULED, StateType.PENDING)
    client.set_flow_run_state(run_id, Cancelling() if started else Cancelled(), force=True)


def _params(config: FederationConfig, rnd: int, site: str, ticket: str) -> dict[str, Any]:
    """A booked site run's parameters: settings and the ticket (the fit instructions come with
    the round's opening), no site data (the site's worker resolves its own config)."""
    dep = config.deployment
    return {
        "site": {"name": site},
        "hub_url": config.hub_url,
        "run_id": config.run_id,
        "round": rnd,
        "chem": config.chem.model_dump(mode="json"),
        "model": config.model.model_dump(mode="json"),
        "train": config.train.model_dump(mode="json"),
        "ticket": ticket,
        # booked rounds ahead: wait at most through the rounds before and their commits
        "open_timeout_s": (dep.book_ahead + 1) * dep.round_deadline_s + 60,
    }


@task(cache_policy=NO_CACHE)
def book_site_runs(
    config: FederationConfig,
    rnd: int,
    ticket: str,
    booked: dict[str, str] | None = None,
    previous: dict[str, str] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Create round ``rnd``'s run of every site (its own deployment on its own pool) that has
    no live one in ``booked``; the runs wait until the round is opened under ``ticket``.

    Returns (site -> flow run id, site -> why its run could not be created). A booked run that
    already ended before its round opened (its worker died, an operator cancelled it) is
    booked again. So is one that a worker took while the same site's run of the round before
    (``previous``: site -> flow run id) did not complete: that worker may be gone with its
    runs, and nothing would move a run it held (it is asked to stop; the caller stops every
    run it booked before it ends). A run of the round before still Running is well: it
    replied and is finishing.
    """
    booked, rebook = dict(booked or {}), set()
    if booked:
        before = {s: r for s, r in (previous or {}).items() if s in booked}
        with get_client(sync_client=True) as client:
            states = _states(client, [UUID(v) for v in [*booked.values(), *before.values()]])
            for site, run_id in list(booked.items()):
                raw = states.get(UUID(run_id))
                state = _run_state(raw)
                last = states.get(UUID(before[site])) if site in before else None
                if state.final or state.name == "no state":
                    get_run_logger().warning(
                        "round %d: %s's booked run ended before the round opened (%s); "
                        "booking again",
                        rnd,
                        site,
                        state.name,
                    )
                elif last is not None and last.type in _WENT_WRONG and _held(raw):
                    get_run_logger().warning(
                        "round %d: %s's run of round %d did not complete (%s) and a worker holds "
                        "its booked run (%s); that run is stopped and booked again",
                        rnd,
                        site,
                        rnd - 1,
                        _run_state(last).name,
                        state.name,
                    )
                    _cancel(client, UUID(run_id), raw)
                else:
                    continue
                del booked[site]
                rebook.add(site)
    failed = {}
    for site in config.site_names:  # in turn: run_deployment links each run to this task
        if site in booked:
            continue
        try:
            run = run_deployment(
                config.deployment.site_round.format(site=site),
                parameters=_params(config, rnd, site, ticket),
                timeout=0,
                flow_run_name=f"round-{rnd:02d}/{site}",
                tags=["fedchem", f"site:{site}", f"round:{rnd}", f"run:{config.run_id}"],
                # one run per site, round and booking of this coordinator attempt: a retried
                # task gets the run it already created
                idempotency_key=f"{config.run_id}/{rnd}/{site}/{ticket}"
                + ("/again" if site in rebook else ""),
            )
        except Exception as exc:  # no deployment, server unreachable: this site is missing
            failed[site] = f"not started: {type(exc).__name__}: {exc}"
            continue
        # called from sync code, run_deployment returns the run (not a coroutine)
        booked[site] = str(cast(FlowRun, run).id)
    return booked, failed


@task(cache_policy=NO_CACHE)
def open_site_round(steps: CoordinatorSteps, rnd: int, ticket: str, fit: FitInstructions) -> None:
    """The go for round ``rnd``: the sites' runs start training from the last global model.

    The opening carries the round's plan (what the sites' policies check) and, in a signed
    federation, the coordinator's signature; it is recorded in the coordinator's ledger."""
    steps.open(rnd, ticket, fit)


@task(cache_policy=NO_CACHE)
def await_running(config: FederationConfig, runs: dict[str, str], deadline: float) -> None:
    """Wait until every run is running or has ended (one API read per poll)."""
    ids = [UUID(v) for v in runs.values()]
    with get_client(sync_client=True) as client:
        while True:
            states = _states(client, ids)
            running = all(
                (s := states.get(i)) is not None and (s.is_final() or s.is_running()) for i in ids
            )
            left = deadline - time.time()
            if running or left <= 0:
                return
            time.sleep(min(config.deployment.poll_interval_s, left))


@task(cache_policy=NO_CACHE)
def await_replies(
    config: FederationConfig, rnd: int, runs: dict[str, str], deadline: float
) -> SiteReplies:
    """Round ``rnd``'s replies from the hub, waiting until every site whose run is in ``runs``
    (site -> flow run id) replied or ended, or the deadline; a run still going then is
    cancelled (an update it sends later is never read). Returns the replies and, per missing
    site, why."""
    ids = {site: UUID(run_id) for site, run_id in runs.items()}
    with get_client(sync_client=True) as client:

        def states() -> dict[str, RunState]:
            by_id = _states(client, list(ids.values()))
            return {site: _run_state(by_id.get(i)) for site, i in ids.items()}

        out = collect_replies(
            HubStore(config.hub_url),
            config.run_id,
            rnd,
            list(ids),
            states,
            deadline,
            poll_s=config.deployment.poll_interval_s,
            verify=refusal_verifier(config),
        )
        if out.late:
            late = _states(client, [ids[s] for s in out.late])
            for site in out.late:
                _cancel(client, ids[site], late.get(ids[site]))
    return out


@task(cache_policy=NO_CACHE)
def withdraw_site_rounds(config: FederationConfig, rounds: list[int], ticket: str) -> None:
    """Rounds booked that will not run (the federation stopped): their waiting runs end."""
    hub, trust = HubStore(config.hub_url), coordinator_trust(config)
    sign = trust.sign if trust is not None else None
    for rnd in rounds:
        _, data = withdraw_round(hub, config.run_id, rnd, ticket, sign)
        if trust is not None:
            path = HubLayout(config.run_id).round_open(rnd)
            trust.ledger(hub, config.run_id).append("withdrawn", round=rnd, path=path, data=data)


@task(cache_policy=NO_CACHE)
def stop_site_runs(run_ids: list[str], grace_s: float, poll_s: float = 0.5) -> dict[str, str]:
    """Every run of ``run_ids`` ends in a final state before the coordinator does.

    A run not started is Cancelled; a running one is asked to stop (Cancelling: its worker
    stops it; a run waiting for a withdrawn round ends by itself). After ``grace_s`` a run
    still not final is marked Cancelled (the Prefect API refuses any later state of it).
    Returns run id -> final state name.
    """
    ids = [UUID(v) for v in run_ids]
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        for run_id, state in _states(client, ids).items():
            if state is None or not state.is_final():
                _cancel(client, run_id, state)
        deadline = time.monotonic() + grace_s
        while True:
            states = _states(client, ids)
            left = [i for i in ids if not ((s := states.get(i)) is not None and s.is_final())]
            if not left:
                break
            if time.monotonic() >= deadline:
                for run_id in left:
                    logger.warning(
                        "site run %s did not stop within %.0fs of its cancel; marked Cancelled",
                        run_id,
                        grace_s,
                    )
                    client.set_flow_run_state(
                        run_id,
                        Cancelled(message="the coordinator stopped; run not stopped"),
                        force=True,
                    )
                states = _states(client, ids)
                break
            time.sleep(poll_s)
    return {str(i): _run_state(states.get(i)).name for i in ids}
