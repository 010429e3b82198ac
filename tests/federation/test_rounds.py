"""A round on the hub: a booked site run goes on under its own ticket only, and the replies
are collected from the hub while the runs' states say who ended without one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedchem.federation.rounds import (
    RoundNotOpened,
    RoundSuperseded,
    RoundWithdrawn,
    RunState,
    await_round_open,
    collect_replies,
    new_ticket,
    open_round,
    read_replies,
    withdraw_round,
)
from fedchem.messages import EvalReport, FitInstructions, SiteUpdateManifest
from fedchem.storage.hub import HubLayout, HubStore


@pytest.fixture
def hub(tmp_path: Path) -> HubStore:
    return HubStore(str(tmp_path / "hub"))


def test_tickets_sort_by_issue_time_and_are_unique() -> None:
    early, late = new_ticket(1_000.0), new_ticket(2_000.0)
    assert early < late
    assert new_ticket(1_000.0) != early  # same instant, different attempt


def test_a_run_waits_until_its_round_opens_and_takes_the_fit_from_it(hub: HubStore) -> None:
    ticket, fit = new_ticket(), FitInstructions(proximal_mu=0.1, lr_factor=0.5)
    polls: list[float] = []

    def sleep(s: float) -> None:  # the coordinator opens the round on the third poll
        polls.append(s)
        if len(polls) == 3:
            open_round(hub, "r1", 2, ticket, fit)

    doc = await_round_open(hub, "r1", 2, ticket, timeout_s=60, poll_s=0.05, sleep=sleep)
    assert len(polls) == 3 and doc.fit == fit and doc.ticket == ticket and doc.round == 2
    assert hub.exists(HubLayout("r1").round_open(2))


def test_a_marker_of_an_earlier_attempt_is_waited_past(hub: HubStore) -> None:
    """The previous coordinator opened this round, then died: its marker is not our go."""
    old, mine = new_ticket(1_000.0), new_ticket(2_000.0)
    open_round(hub, "r1", 3, old, FitInstructions(lr_factor=0.9))
    calls = 0

    def sleep(_: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            open_round(hub, "r1", 3, mine, FitInstructions(lr_factor=0.3))

    doc = await_round_open(hub, "r1", 3, mine, timeout_s=60, sleep=sleep)
    assert doc.ticket == mine and doc.fit.lr_factor == 0.3 and calls == 2


def test_a_run_of_a_replaced_coordinator_is_superseded(hub: HubStore) -> None:
    old, new = new_ticket(1_000.0), new_ticket(2_000.0)
    open_round(hub, "r1", 2, new, FitInstructions())
    with pytest.raises(RoundSuperseded, match="newer coordinator attempt"):
        await_round_open(hub, "r1", 2, old, timeout_s=60, sleep=lambda _: None)


def test_a_round_never_opened_times_out_naming_round_and_ticket(hub: HubStore) -> None:
    ticket = new_ticket()
    with pytest.raises(RoundNotOpened, match=rf"round 4 of run r1 .*{ticket}.* within 0s"):
        await_round_open(hub, "r1", 4, ticket, timeout_s=0.0, sleep=lambda _: None)


def test_replies_are_the_manifests_on_the_hub_and_an_unreadable_one_says_so(
    hub: HubStore,
) -> None:
    layout = HubLayout("r1")
    assert read_replies(hub, "r1", 2, ["a", "b", "c"]) == {}  # nothing written yet
    valid = EvalReport(site="a", model="m", fold="valid", n_molecules=5, per_task={}, summary={})
    sent = SiteUpdateManifest(
        run_id="r1",
        round=2,
        site="a",
        n_examples=5,
        n_labels=5,
        base_sha256="0" * 64,
        update_path=layout.site_update(2, "a"),
        update_sha256="1" * 64,
        train_loss=0.1,
        train_seconds=0.1,
        device="cpu",
        valid=valid,
    )
    hub.put_bytes(layout.site_update(2, "a"), b"weights")  # an update alone is no reply
    assert read_replies(hub, "r1", 2, ["a", "b", "c"]) == {}
    hub.put_json(layout.site_manifest(2, "a"), sent.model_dump(mode="json"))
    hub.put_bytes(layout.site_manifest(2, "b"), b"{not json")
    hub.put_json(layout.site_manifest(1, "c"), sent.model_dump(mode="json"))  # another round
    got = read_replies(hub, "r1", 2, ["a", "b", "c"])
    assert got["a"] == sent
    assert got["b"] == "unreadable update manifest (JSONDecodeError)"
    assert "c" not in got
    assert read_replies(hub, "r1", 2, ["c"]) == {}  # only the sites asked about


def test_a_withdrawn_round_ends_its_booked_run_and_only_that_one(hub: HubStore) -> None:
    mine, newer = new_ticket(1_000.0), new_ticket(2_000.0)
    withdraw_round(hub, "r1", 4, mine)
    with pytest.raises(RoundWithdrawn, match="round 4 of run r1 was withdrawn"):
        await_round_open(hub, "r1", 4, mine, timeout_s=5)
    # an earlier attempt's withdrawal is no word to a later attempt's run: it waits on
    later = new_ticket(1_500.0)
    withdraw_round(hub, "r1", 5, mine)
    with pytest.raises(RoundNotOpened):
        await_round_open(hub, "r1", 5, later, timeout_s=0.3, poll_s=0.05)
    open_round(hub, "r1", 5, newer, FitInstructions())
    with pytest.raises(RoundSuperseded):
        await_round_open(hub, "r1", 5, later, timeout_s=5)


def _reply(hub: HubStore, site: str, rnd: int = 2) -> SiteUpdateManifest:
    layout = HubLayout("r1")
    valid = EvalReport(site=site, model="m", fold="valid", n_molecules=5, per_task={}, summary={})
    m = SiteUpdateManifest(
        run_id="r1",
        round=rnd,
        site=site,
        n_examples=5,
        n_labels=5,
        base_sha256="0" * 64,
        update_path=layout.site_update(rnd, site),
        update_sha256="1" * 64,
        train_loss=0.1,
        train_seconds=0.1,
        device="cpu",
        valid=valid,
    )
    hub.put_json(layout.site_manifest(rnd, site), m.model_dump(mode="json"))
    return m


RUNNING, FAILED, COMPLETED = (
    RunState("Running", False),
    RunState("Failed", True),
    RunState("Completed", True),
)


def test_replies_on_the_hub_end_the_wait_while_the_runs_still_run(hub: HubStore) -> None:
    sent = {s: _reply(hub, s) for s in ("b", "a")}  # updates published, runs not ended yet
    calls: list[int] = []

    def states() -> dict[str, RunState]:
        calls.append(1)
        return {"a": RUNNING, "b": RUNNING}

    t0 = time.monotonic()
    out = collect_replies(hub, "r1", 2, ["a", "b"], states, time.time() + 30, poll_s=0.05)
    assert out.replies == sent and out.missing == {} and out.late == {}
    assert time.monotonic() - t0 < 5.0 and len(calls) == 1  # not the 30 s deadline


def test_every_way_a_site_can_miss_a_round_is_named(hub: HubStore) -> None:
    _reply(hub, "a")
    hub.put_bytes(HubLayout("r1").site_manifest(2, "e"), b"{not json")
    runs = {"a": RUNNING, "b": FAILED, "c": COMPLETED, "d": RUNNING, "e": COMPLETED}
    t0 = time.monotonic()
    out = collect_replies(hub, "r1", 2, list(runs), lambda: runs, time.time() + 0.6, poll_s=0.05)
    assert sorted(out.replies) == ["a"]
    assert out.missing == {
        "b": "site run failed",
        "c": "completed without a manifest",
        "d": "missed the deadline (Running); cancelled",
        "e": "unreadable update manifest (JSONDecodeError)",
    }
    assert out.late == {"d": "Running"}  # only the run still going, for the caller to cancel
    assert time.monotonic() - t0 >= 0.5  # d was waited for until the deadline


def test_a_run_that_replies_as_the_deadline_passes_is_not_late(hub: HubStore) -> None:
    """At the deadline the states are read again: a run that ended meanwhile and sent its
    update counts, it is not cancelled."""
    seen = {"a": RUNNING}

    def states() -> dict[str, RunState]:
        if time.time() > deadline:  # the look after the deadline: a ended, with its reply
            _reply(hub, "a")
            seen["a"] = COMPLETED
        return dict(seen)

    deadline = time.time() + 0.3
    out = collect_replies(hub, "r1", 2, ["a"], states, deadline, poll_s=0.05, states_every_s=0.05)
    assert sorted(out.replies) == ["a"] and out.missing == {} and out.late == {}
