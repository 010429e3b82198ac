"""Opening a round on the hub, so that a site's run can be started before its round begins.

In deployed mode the coordinator books round ``r + 1``'s site runs while round ``r`` trains:
each site's worker picks its run up and starts it, and the run waits here until the
coordinator *opens* the round by writing ``rounds/<r>/open.json`` (the round's fit
instructions and the coordinator's ticket). Starting a Prefect run (worker poll, process
start, engine) then overlaps the previous round instead of adding to this one.

A ticket names one coordinator attempt; tickets sort by the time they were issued. A waiting
run goes on only when the round is opened under its own ticket. A marker under a newer ticket
means its coordinator was replaced (killed, then run again): the run is superseded and ends.
A marker under an older ticket is left over from an earlier attempt: the run keeps waiting.
The marker holds no site data: a round number, a ticket, the strategy's instructions.

A site has replied once its update manifest is on the hub (written after its update), so the
coordinator watches the round's ``sites/`` prefix (:func:`read_replies`, one listing per poll)
instead of waiting for each site's Prefect run to finish: it goes on as soon as the last
update lands, while the runs are still reporting their end.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from fedchem.federation.manifest import FitInstructions, RoundOpen, SiteUpdateManifest
from fedchem.storage.hub import HubLayout, HubStore

__all__ = [
    "RoundNotOpened",
    "RoundSuperseded",
    "await_round_open",
    "new_ticket",
    "open_round",
    "read_replies",
]


class RoundSuperseded(RuntimeError):
    """A newer coordinator attempt opened the round: this run's coordinator is gone."""


class RoundNotOpened(TimeoutError):
    """The round was not opened under this run's ticket in time."""


def new_ticket(now: float | None = None) -> str:
    """A ticket for one coordinator attempt: sorts by issue time (ns), unique by a random tail."""
    ns = int((time.time() if now is None else now) * 1e9)
    return f"{ns:020d}-{uuid.uuid4().hex[:12]}"


def open_round(
    hub: HubStore, run_id: str, rnd: int, ticket: str, fit: FitInstructions
) -> RoundOpen:
    """Open round ``rnd`` for the runs booked under ``ticket`` (after round ``rnd - 1`` was
    committed: the waiting runs start from that global model)."""
    doc = RoundOpen(
        run_id=run_id, round=rnd, ticket=ticket, fit=fit,
        opened_at=datetime.now(UTC).isoformat(),
    )  # fmt: skip
    hub.put_json(HubLayout(run_id).round_open(rnd), doc.model_dump(mode="json"))
    return doc


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

    Raises :class:`RoundSuperseded` when a newer ticket opened it, :class:`RoundNotOpened`
    after ``timeout_s`` (the coordinator stopped, or was replaced and never got this far).
    Every waiting run polls: one HEAD per ``poll_s`` (on moto, ~10 ms of CPU between client
    and server; at 0.1 s, three waiting runs took a quarter of a core from the round they
    wait behind).
    """
    path = HubLayout(run_id).round_open(rnd)
    deadline = time.monotonic() + timeout_s
    while True:
        if hub.exists(path):
            doc = RoundOpen.model_validate(hub.get_json(path))
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
    hub: HubStore, run_id: str, rnd: int, sites: list[str]
) -> dict[str, SiteUpdateManifest | str]:
    """The update manifests of round ``rnd`` now on the hub, for those of ``sites`` that have
    one: one listing, then one read per manifest found. A manifest that cannot be read as one
    comes back as the reason (the site replied, with nothing usable)."""
    layout = HubLayout(run_id)
    present = set(hub.list_files(f"{layout.round_dir(rnd)}/sites"))
    found = [s for s in sites if layout.site_manifest(rnd, s) in present]

    def read(site: str) -> SiteUpdateManifest | str:
        try:
            return SiteUpdateManifest.model_validate(hub.get_json(layout.site_manifest(rnd, site)))
        except (ValueError, OSError) as exc:  # not JSON, not a manifest, gone again
            return f"unreadable update manifest ({type(exc).__name__})"

    return dict(zip(found, hub.map(read, found), strict=True))
