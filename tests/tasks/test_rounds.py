"""The coordinator's round tasks against a stand-in for Prefect's client (the run states a
server would report), so each outcome is set up exactly: booking (a dead booked run is booked
again), and stopping every run before the coordinator ends.

The wait for replies itself is library code: ``tests/federation/test_rounds.py``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prefect.client.schemas.objects import State, StateType

import fedchem.tasks.rounds as rounds
from fedchem.config import FederationConfig
from fedchem.tasks.rounds import book_site_runs, stop_site_runs

RUN = "r1"


class _Client:
    """Prefect's sync client as ``await_replies`` uses it: run states read, states set."""

    def __init__(self, states: dict[uuid.UUID, State], obey: bool = False) -> None:
        self.states, self.obey = states, obey
        self.set: dict[uuid.UUID, StateType] = {}

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read_flow_runs(self, flow_run_filter: Any) -> list[SimpleNamespace]:
        return [SimpleNamespace(id=i, state=self.states[i]) for i in flow_run_filter.id.any_]

    def set_flow_run_state(self, run_id: uuid.UUID, state: State, force: bool) -> None:
        self.set[run_id] = state.type
        if self.obey:  # the server takes the state; a run asked to stop stops at once
            final = StateType.CANCELLED if state.type == StateType.CANCELLING else state.type
            self.states[run_id] = State(type=final, name=final.value.title())


def _config(hub: Path, sites: list[str]) -> FederationConfig:
    return FederationConfig(
        run_id=RUN,
        hub_url=str(hub),
        mode="deployed",
        sites=[{"name": s} for s in sites],
        tasks=[{"name": "t", "kind": "classification"}],
        deployment={"poll_interval_s": 0.05},
    )


def _booking(
    monkeypatch: pytest.MonkeyPatch, client: _Client, missing: str | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Route ``book_site_runs``'s client, runs and logger to stand-ins; return the runs it
    creates and the warnings it logs (the deployment of site ``missing`` is not there)."""
    created: list[dict[str, Any]] = []

    def run_deployment(name: str, **kwargs: Any) -> SimpleNamespace:
        if missing is not None and name.startswith(f"site-round/{missing}-"):
            raise ValueError("deployment not found")
        created.append({"name": name, **kwargs})
        return SimpleNamespace(id=uuid.uuid4())

    warnings: list[str] = []
    logger = SimpleNamespace(warning=lambda msg, *args: warnings.append(msg % args))
    monkeypatch.setattr(rounds, "get_client", lambda sync_client: client)
    monkeypatch.setattr(rounds, "run_deployment", run_deployment)
    monkeypatch.setattr(rounds, "get_run_logger", lambda: logger)
    return created, warnings


def test_a_booked_run_that_ended_before_its_round_opened_is_booked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a's booked run waits (kept); b's crashed and c's was cancelled before the round opened
    (booked again, under a new idempotency key); d has none yet (booked); e's deployment is
    not there (named, not raised)."""
    kept, crashed, cancelled = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    client = _Client(
        {
            kept: State(type=StateType.SCHEDULED),
            crashed: State(type=StateType.CRASHED, name="Crashed"),
            cancelled: State(type=StateType.CANCELLED, name="Cancelled"),
        }
    )
    created, warnings = _booking(monkeypatch, client, missing="e")
    config = _config(tmp_path, ["a", "b", "c", "d", "e"])
    booked = {"a": str(kept), "b": str(crashed), "c": str(cancelled)}

    now, failed = book_site_runs.fn(config, 3, "tk", booked)

    assert now["a"] == str(kept)
    assert {c["flow_run_name"] for c in created} == {"round-03/b", "round-03/c", "round-03/d"}
    keys = {c["flow_run_name"][-1]: c["idempotency_key"] for c in created}
    assert keys == {"b": f"{RUN}/3/b/tk/again", "c": f"{RUN}/3/c/tk/again", "d": f"{RUN}/3/d/tk"}
    assert {now[s] for s in "bcd"}.isdisjoint({str(crashed), str(cancelled)})
    assert set(now) == {"a", "b", "c", "d"}
    assert failed == {"e": "not started: ValueError: deployment not found"}
    assert warnings == [
        f"round 3: {s}'s booked run ended before the round opened ({why}); booking again"
        for s, why in [("b", "Crashed"), ("c", "Cancelled")]
    ]
    assert all(c["timeout"] == 0 and c["parameters"]["ticket"] == "tk" for c in created)
    assert booked == {"a": str(kept), "b": str(crashed), "c": str(cancelled)}  # not mutated


def test_a_booked_run_held_after_a_failed_round_is_stopped_and_booked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b's round-2 run was cancelled at the deadline (its worker killed with its runs) and a
    worker holds b's booked round-3 run: that run is asked to stop and b is booked again. a's
    round 2 completed and d's still runs (it replied and is finishing): their held runs are
    kept; c's round 2 crashed but its booked run still waits (Late: Scheduled, for any worker;
    kept)."""
    ids = {f"{s}{r}": uuid.uuid4() for s in "abcd" for r in (2, 3)}
    client = _Client(
        {
            ids["a2"]: State(type=StateType.COMPLETED, name="Completed"),
            ids["a3"]: State(type=StateType.RUNNING, name="Running"),
            ids["b2"]: State(type=StateType.CANCELLING, name="Cancelling"),
            ids["b3"]: State(type=StateType.RUNNING, name="Running"),
            ids["c2"]: State(type=StateType.CRASHED, name="Crashed"),
            ids["c3"]: State(type=StateType.SCHEDULED, name="Late"),
            ids["d2"]: State(type=StateType.RUNNING, name="Running"),
            ids["d3"]: State(type=StateType.PENDING, name="Pending"),
        }
    )
    created, warnings = _booking(monkeypatch, client)
    config = _config(tmp_path, ["a", "b", "c", "d"])
    booked = {s: str(ids[f"{s}3"]) for s in "abcd"}
    previous = {s: str(ids[f"{s}2"]) for s in "abcd"}

    now, failed = book_site_runs.fn(config, 3, "tk", booked, previous)

    assert [now[s] for s in "acd"] == [str(ids[f"{s}3"]) for s in "acd"]
    assert [(c["flow_run_name"], c["idempotency_key"]) for c in created] == [
        ("round-03/b", f"{RUN}/3/b/tk/again")
    ]
    assert now["b"] != str(ids["b3"]) and failed == {}
    assert client.set == {ids["b3"]: StateType.CANCELLING}  # only b's held run, asked to stop
    assert warnings == [
        "round 3: b's run of round 2 did not complete (Cancelling) and a worker holds its "
        "booked run (Running); that run is stopped and booked again"
    ]


def test_every_run_the_coordinator_started_ends_final_before_it_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scheduled run is Cancelled, a running one asked to stop (Cancelling, and it stops);
    a finished one is left alone."""
    waiting, running, done = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    client = _Client(
        {
            waiting: State(type=StateType.SCHEDULED),
            running: State(type=StateType.RUNNING),
            done: State(type=StateType.COMPLETED, name="Completed"),
        },
        obey=True,
    )
    monkeypatch.setattr(rounds, "get_client", lambda sync_client: client)
    monkeypatch.setattr(rounds, "get_run_logger", lambda: SimpleNamespace(warning=print))
    final = stop_site_runs.fn([str(waiting), str(running), str(done)], grace_s=5, poll_s=0.01)
    assert client.set == {waiting: StateType.CANCELLED, running: StateType.CANCELLING}
    assert final == {str(waiting): "Cancelled", str(running): "Cancelled", str(done): "Completed"}


def test_a_run_that_does_not_stop_is_marked_cancelled_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stuck = uuid.uuid4()
    client = _Client({stuck: State(type=StateType.RUNNING)})  # ignores its cancel
    warnings: list[str] = []
    logger = SimpleNamespace(warning=lambda msg, *args: warnings.append(msg % args))
    monkeypatch.setattr(rounds, "get_client", lambda sync_client: client)
    monkeypatch.setattr(rounds, "get_run_logger", lambda: logger)
    stop_site_runs.fn([str(stuck)], grace_s=0.2, poll_s=0.01)
    assert client.set == {stuck: StateType.CANCELLED}  # Cancelling first, then forced
    assert warnings == [f"site run {stuck} did not stop within 0s of its cancel; marked Cancelled"]
