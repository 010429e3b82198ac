"""A round on the hub: the coordinator's go, the sites' replies. The one path of every reply.

However a site's run was started (a subflow in the one-machine simulation, a deployment on the
site's own work pool), a round goes the same way through the hub:

1. The coordinator *opens* round ``r`` by writing ``rounds/<r>/open.json``: the round's fit
   instructions and the coordinator attempt's ticket. A site's run waits for it
   (:func:`await_round_open`), so in deployed mode runs can be booked ahead and started while
   the round before trains.
2. The site trains from round ``r - 1``'s committed model and publishes its update, then its
   update manifest (the manifest last: a site has replied once its manifest is there).
3. The coordinator collects the replies from the hub (:func:`collect_replies`: one listing per
   poll) while watching the runs' states, so that a run that ended without replying is noticed
   and one still going at the deadline is named.

A ticket names one coordinator attempt; tickets sort by the time they were issued. A waiting
run goes on only when the round is opened under its own ticket. A marker under a newer ticket
means its coordinator was replaced (killed, then run again): the run is superseded and ends. A
marker under an older ticket is left over from an earlier attempt: the run keeps waiting. A
marker *withdrawn* under its own ticket means the federation stopped before the round: the run
ends at once (:func:`withdraw_round`). The marker holds no site data: a round number, a
ticket, the strategy's instructions.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fedchem.messages import (
    FitInstructions,
    RoundOpen,
    RoundPlan,
    SiteRefusal,
    SiteUpdateManifest,
)
from fedchem.storage.hub import HubLayout, HubStore

__all__ = [
    "RoundNotOpened",
    "RoundSuperseded",
    "RoundWithdrawn",
    "RunState",
    "SiteReplies",
    "await_round_open",
    "collect_replies",
    "new_ticket",
    "open_round",
    "read_replies",
    "withdraw_round",
]


class RoundSuperseded(RuntimeError):
    """A newer coordinator attempt opened the round: this run's coordinator is gone."""


class RoundWithdrawn(RuntimeError):
    """The coordinator withdrew the round this run was booked for: the federation stopped."""


class RoundNotOpened(TimeoutError):
    """The round was not opened under this run's ticket in time."""


def new_ticket(now: float | None = None) -> str:
    """A ticket for one coordinator attempt: sorts by issue time (ns), unique by a random tail."""
    ns = int((time.time() if now is None else now) * 1e9)
    return f"{ns:020d}-{uuid.uuid4().hex[:12]}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


#: signs a coordinator message of a kind (the coordinator's key); None: unsigned
Sign = Callable[[str, RoundOpen], RoundOpen]


def open_round(
    hub: HubStore,
    run_id: str,
    rnd: int,
    ticket: str,
    fit: FitInstructions,
    plan: RoundPlan | None = None,
    sign: Sign | None = None,
) -> tuple[RoundOpen, bytes]:
    """Open round ``rnd`` for the runs booked under ``ticket`` (after round ``rnd - 1`` was
    committed: the waiting runs start from that global model). ``plan``: what the sites'
    policies are checked against; ``sign``: the coordinator's signature. Returns the opening
    and the bytes written."""
    doc = RoundOpen(run_id=run_id, round=rnd, ticket=ticket, fit=fit, opened_at=_now(), plan=plan)
    if sign is not None:
        doc = sign("round-open", doc)
    return doc, hub.put_json(HubLayout(run_id).round_open(rnd), doc.model_dump(mode="json"))


def withdraw_round(
    hub: HubStore, run_id: str, rnd: int, ticket: str, sign: Sign | None = None
) -> tuple[RoundOpen, bytes]:
    """Tell the runs booked for round ``rnd`` under ``ticket`` that it will not run."""
    doc = RoundOpen(
        run_id=run_id,
        round=rnd,
        ticket=ticket,
        fit=FitInstructions(),
        opened_at=_now(),
        withdrawn=True,
    )
    if sign is not None:
        doc = sign("round-open", doc)
    return doc, hub.put_json(HubLayout(run_id).round_open(rnd), doc.model_dump(mode="json"))


def await_round_open(
    hub: HubStore,
    run_id: str,
    rnd: int,
    ticket: str,
    timeout_s: float,
    poll_s: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
) -> RoundOpen:
    """Wait until round ``rnd`` is opened under ``ticket``; return the coordinator's go.

    Raises :class:`RoundSuperseded` when a newer ticket opened it, :class:`RoundWithdrawn` when
    its own withdrew it, :class:`RoundNotOpened` after ``timeout_s`` (the coordinator stopped
    without a word, or was replaced and never got this far). Every waiting run polls: one HEAD
    per ``poll_s``.
    """
    path = HubLayout(run_id).round_open(rnd)
    deadline = time.monotonic() + timeout_s
    while True:
        if hub.exists(path):
            doc = RoundOpen.model_validate(hub.get_json(path))
            if doc.ticket == ticket and doc.withdrawn:
                raise RoundWithdrawn(
                    f"round {rnd} of run {run_id} was withdrawn by the coordinator attempt "
                    f"that booked this run ({ticket}): the federation stopped before it"
                )
            if doc.ticket == ticket:
                return doc
            if doc.ticket > ticket:
                raise RoundSuperseded(
                    f"round {rnd} of run {run_id} was opened by a newer coordinator attempt "
                    f"({doc.ticket}) than the one that booked this run ({ticket})"
                )
        if time.monotonic() >= deadline:
            raise RoundNotOpened(
                f"round {rnd} of run {run_id} was not opened by coordinator attempt {ticket} "
                f"within {timeout_s:.0f}s; the coordinator stopped or failed before this round"
            )
        sleep(poll_s)


def read_replies(
    hub: HubStore,
    run_id: str,
    rnd: int,
    sites: list[str],
    verify: Callable[[SiteRefusal], str | None] | None = None,
) -> dict[str, SiteUpdateManifest | str]:
    """The update manifests of round ``rnd`` now on the hub, for those of ``sites`` that have
    one: one listing, then one read per manifest found. A manifest that cannot be read as one
    comes back as the reason (the site replied, with nothing usable), and so does a site's
    refusal (the clause of its policy). ``verify`` says why a refusal is not its site's (a
    bad signature); such a refusal is named as such."""
    layout = HubLayout(run_id)
    present = set(hub.list_files(f"{layout.round_dir(rnd)}/sites"))
    found = [s for s in sites if layout.site_manifest(rnd, s) in present]
    refused = [s for s in sites if s not in found and layout.site_refusal(rnd, s) in present]

    def read(site: str) -> SiteUpdateManifest | str:
        try:
            return SiteUpdateManifest.model_validate(hub.get_json(layout.site_manifest(rnd, site)))
        except (ValueError, OSError) as exc:  # not JSON, not a manifest, gone again
            return f"unreadable update manifest ({type(exc).__name__})"

    def read_refusal(site: str) -> str:
        try:
            refusal = SiteRefusal.model_validate(hub.get_json(layout.site_refusal(rnd, site)))
        except (ValueError, OSError) as exc:
            return f"unreadable refusal ({type(exc).__name__})"
        why = verify(refusal) if verify is not None else None
        if why is not None:
            return f"a refusal not signed by the site ({why})"[:300]
        if (refusal.run_id, refusal.round, refusal.site) != (run_id, rnd, site):
            return "a refusal of another round"
        return f"refused by its policy: {refusal.clause} ({refusal.reason})"[:400]

    out: dict[str, SiteUpdateManifest | str] = dict(zip(found, hub.map(read, found), strict=True))
    out.update(zip(refused, hub.map(read_refusal, refused), strict=True))
    return out


@dataclass(frozen=True)
class RunState:
    """What the orchestrator says of a site's run: its state's name, and whether it is final."""

    name: str
    final: bool


@dataclass
class SiteReplies:
    """A round's outcome at the hub: who replied, who is missing and why, who is still going
    at the deadline (the caller cancels those; their updates are never read for the round)."""

    replies: dict[str, SiteUpdateManifest] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    late: dict[str, str] = field(default_factory=dict)


def collect_replies(
    hub: HubStore,
    run_id: str,
    rnd: int,
    sites: list[str],
    states: Callable[[], Mapping[str, RunState]],
    deadline: float,
    poll_s: float = 0.25,
    states_every_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    verify: Callable[[SiteRefusal], str | None] | None = None,
) -> SiteReplies:
    """Wait for round ``rnd``'s replies until every site of ``sites`` replied or its run ended,
    or ``deadline`` (a ``clock()`` time) passed.

    A site has replied when its update manifest is on the hub (one listing per ``poll_s``);
    ``states()`` (site → :class:`RunState`, read at most every ``states_every_s``) tells when a
    run ended without replying. States are read before the listing, so a run that ended with
    a reply has it listed. At the deadline the states are read once more, and the replies of
    runs that ended meanwhile; a site whose run still goes is ``late``.
    """
    got: dict[str, SiteUpdateManifest | str] = {}
    ended: dict[str, str] = {}
    now: Mapping[str, RunState] = {}
    next_states = float("-inf")
    while True:
        if clock() >= next_states:
            now = states()
            next_states = clock() + max(poll_s, states_every_s)
            ended = {s: st.name for s, st in now.items() if st.final}
        got.update(read_replies(hub, run_id, rnd, [s for s in sites if s not in got], verify))
        waiting = [s for s in sites if s not in got and s not in ended]
        left = deadline - clock()
        if not waiting or left <= 0:
            break
        sleep(min(poll_s, left))
    out = SiteReplies()
    if waiting:  # the deadline passed: a fresh look at the runs, and at what they sent
        now = states()
        ended.update({s: now[s].name for s in waiting if s in now and now[s].final})
        got.update(read_replies(hub, run_id, rnd, [s for s in waiting if s in ended], verify))
        for s in waiting:
            if s not in got and s not in ended:
                out.late[s] = now[s].name if s in now else "no state"
    for s in sites:
        reply = got.get(s)
        if isinstance(reply, SiteUpdateManifest):
            out.replies[s] = reply
        elif isinstance(reply, str):
            out.missing[s] = reply
        elif s in out.late:
            out.missing[s] = f"missed the deadline ({out.late[s]}); cancelled"
        else:
            outcome = ended[s]  # the state's name only: a run's message could carry site data
            out.missing[s] = (
                "completed without a manifest"
                if outcome == "Completed"
                else f"site run {outcome.lower()}"
            )
    return out
