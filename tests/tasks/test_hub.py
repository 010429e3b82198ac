"""The coordinator's wait for a round's replies: the hub says who replied, Prefect who ended.

``await_replies`` runs here against a real hub directory and a stand-in for Prefect's client
(the run states a server would report), so each outcome is set up exactly.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prefect.client.schemas.objects import State, StateType
from prefect.states import Completed, Failed, Running

import tasks.hub
from fedchem.config import FederationConfig
from fedchem.federation.manifest import EvalReport, SiteUpdateManifest
from fedchem.storage.hub import HubLayout, HubStore
from tasks.hub import await_replies, book_site_runs

RUN = "r1"


class _Client:
    """Prefect's sync client as ``await_replies`` uses it: run states read, states set."""

    def __init__(self, states: dict[uuid.UUID, State]) -> None:
        self.states = states
        self.set: dict[uuid.UUID, StateType] = {}

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read_flow_runs(self, flow_run_filter: Any) -> list[SimpleNamespace]:
        return [SimpleNamespace(id=i, state=self.states[i]) for i in flow_run_filter.id.any_]

    def set_flow_run_state(self, run_id: uuid.UUID, state: State, force: bool) -> None:
        self.set[run_id] = state.type


def _config(hub: Path, sites: list[str]) -> FederationConfig:
    return FederationConfig(
        run_id=RUN, hub_url=str(hub), mode="deployed", sites=[{"name": s} for s in sites],
        tasks=[{"name": "t", "kind": "classification"}], deployment={"poll_interval_s": 0.05},
    )  # fmt: skip


def _reply(hub: HubStore, site: str) -> SiteUpdateManifest:
    layout = HubLayout(RUN)
    valid = EvalReport(site=site, model="m", fold="valid", n_molecules=5, per_task={}, summary={})
    m = SiteUpdateManifest(
        run_id=RUN, round=2, site=site, n_examples=5, n_labels=5, base_sha256="0" * 64,
        update_path=layout.site_update(2, site), update_sha256="1" * 64, train_loss=0.1,
        train_seconds=0.1, device="cpu", valid=valid,
    )  # fmt: skip
    hub.put_json(layout.site_manifest(2, site), m.model_dump(mode="json"))
    return m


_Waited = tuple[dict[str, str], _Client, dict[str, uuid.UUID], float]


def _wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, states: dict[str, State], replied: list[str],
    deadline_s: float,
) -> _Waited:  # fmt: skip
    """The manifests of ``replied`` on the hub, runs in ``states``: what the wait returns
    (replies checked here: every published one, in booked order), and how long it took."""
    hub = HubStore(str(tmp_path))
    sent = [_reply(hub, s) for s in replied]
    ids = {site: uuid.uuid4() for site in states}
    client = _Client({ids[s]: state for s, state in states.items()})
    monkeypatch.setattr(tasks.hub, "get_client", lambda sync_client: client)
    config = _config(tmp_path, list(states))
    t0 = time.monotonic()
    replies, missing = await_replies.fn(
        config, 2, {s: str(i) for s, i in ids.items()}, time.time() + deadline_s
    )
    assert replies == sorted(sent, key=lambda m: list(states).index(m.site))
    return missing, client, ids, time.monotonic() - t0


def test_replies_on_the_hub_end_the_wait_while_the_runs_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    states = {"a": Running(), "b": Running()}  # updates published, runs not Completed yet
    missing, client, _, took = _wait(tmp_path, monkeypatch, states, ["b", "a"], 30.0)
    assert missing == {} and client.set == {}  # nothing cancelled
    assert took < 5.0  # not the 30 s deadline


def test_every_way_a_site_can_miss_a_round_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    states = {"a": Running(), "b": Failed(), "c": Completed(), "d": Running()}
    missing, client, ids, took = _wait(tmp_path, monkeypatch, states, ["a"], 0.6)
    assert missing == {
        "b": "Failed",
        "c": "completed without a manifest",
        "d": "missed the deadline (Running); cancelled",
    }
    assert client.set == {ids["d"]: StateType.CANCELLING}  # only the run still going
    assert took >= 0.5  # d was waited for until the deadline


def test_a_booked_run_that_ended_before_its_round_opened_is_booked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a's booked run waits (kept); b's crashed and c's was cancelled before the round opened
    (booked again, under a new idempotency key); d has none yet (booked); e's deployment is
    not there (named, not raised)."""
    kept, crashed, cancelled = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    client = _Client({
        kept: State(type=StateType.SCHEDULED),
        crashed: State(type=StateType.CRASHED, name="Crashed"),
        cancelled: State(type=StateType.CANCELLED, name="Cancelled"),
    })  # fmt: skip
    created: list[dict[str, Any]] = []

    def run_deployment(name: str, **kwargs: Any) -> SimpleNamespace:
        if name.startswith("site-round/e-"):
            raise ValueError("deployment not found")
        created.append({"name": name, **kwargs})
        return SimpleNamespace(id=uuid.uuid4())

    warnings: list[str] = []
    logger = SimpleNamespace(warning=lambda msg, *args: warnings.append(msg % args))
    monkeypatch.setattr(tasks.hub, "get_client", lambda sync_client: client)
    monkeypatch.setattr(tasks.hub, "run_deployment", run_deployment)
    monkeypatch.setattr(tasks.hub, "get_run_logger", lambda: logger)
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
