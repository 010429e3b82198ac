"""The round driver (the one loop every federation runs): what a round asks of the sites, and
what happens when a round cannot reach its quorum: recorded as failed, then on or stop."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fedchem.config import FaultConfig, ModelConfig, TrainConfig
from fedchem.federation.coordinator import start_run
from fedchem.federation.driver import (
    CoordinatorSteps,
    InProcessSites,
    RoundStart,
    RunOutcome,
    run_rounds,
)
from fedchem.federation.rounds import SiteReplies
from fedchem.messages import RoundOpen, SiteUpdateManifest
from fedchem.model.train import lr_factor
from fedchem.storage.hub import HubLayout, HubStore
from fedchem.trust.ledger import verify_run
from fedchem.trust.signing import COORDINATOR, KeyRing
from tests.conftest import PreparedSites

SMALL = {"model": ModelConfig(hidden=16), "train": TrainConfig(batch_size=128)}


class Watched(InProcessSites):
    """The in-process launcher, remembering whether the driver closed it."""

    closed = False

    def close(self) -> None:
        self.closed = True


def _run(
    sites: PreparedSites,
    run_id: str,
    rounds: int,
    down: Callable[[int], Sequence[str]] | None = None,
    **over: object,
) -> tuple[RunOutcome, HubStore, Watched]:
    config = sites.config(run_id, rounds=rounds, **{**SMALL, **over})
    hub = HubStore(config.hub_url)
    steps = CoordinatorSteps(config, hub)
    first = start_run(hub, config, sites.label_stats, trust=steps.trust)
    launcher = Watched(config, hub, down=down)
    return run_rounds(config, steps, launcher, [first]), hub, launcher


def test_a_round_below_quorum_is_recorded_as_failed_and_the_run_goes_on(
    tox21_sites: PreparedSites,
) -> None:
    outcome, hub, launcher = _run(
        tox21_sites, "one-down", 3, down=lambda rnd: ["site-c"] if rnd == 2 else []
    )
    _, r1, r2, r3 = outcome.rounds
    assert outcome.failed == [2] and outcome.stopped is None and launcher.closed
    assert outcome.failure is None  # the run ended on an aggregated round
    assert r2.outcome == "failed" and r2.sites == [] and r2.missing == ["site-c"]
    assert r2.reason == ("3 accepted update(s), quorum is 4; missing: site-c; rejected: -"), (
        r2.reason
    )
    assert r2.missing_reasons == {"site-c": "site down (not started)"}
    # the failed round keeps round 1's model; round 3 starts from it and every site is back
    assert (r2.global_path, r2.global_sha256) == (r1.global_path, r1.global_sha256)
    assert r3.outcome == "aggregated" and r3.sites == ["site-a", "site-b", "site-c", "site-d"]
    reply = SiteUpdateManifest.model_validate(
        hub.get_json(HubLayout("one-down").site_manifest(3, "site-c"))
    )
    assert reply.base_sha256 == r1.global_sha256 != r3.global_sha256
    # the failed round is signed and in the coordinator's ledger: the run audits clean
    trust = tox21_sites.split.trust
    keys = KeyRing({COORDINATOR: trust.coordinator, **trust.sites})
    assert r2.signature is not None
    assert verify_run(hub, "one-down", keys).problems == []


def test_failed_rounds_stop_the_run_when_the_policy_says_so(tox21_sites: PreparedSites) -> None:
    outcome, _, launcher = _run(
        tox21_sites,
        "stop-at-failure",
        3,
        down=lambda rnd: ["site-a"] if rnd == 2 else [],
        faults=FaultConfig(failed_rounds="stop"),
    )
    assert [m.round for m in outcome.rounds] == [0, 1, 2] and outcome.failed == [2]
    assert outcome.stopped is not None and outcome.stopped.startswith("round 2 failed (3 accepted")
    assert launcher.closed


def test_too_many_failed_rounds_in_a_row_end_the_run(tox21_sites: PreparedSites) -> None:
    outcome, _, _ = _run(
        tox21_sites,
        "all-down",
        5,
        down=lambda rnd: ["site-a", "site-b"],
        faults=FaultConfig(max_failed_in_a_row=2),
    )
    assert outcome.failed == [1, 2] and len(outcome.rounds) == 3
    assert outcome.stopped is not None and "2 rounds in a row failed" in outcome.stopped
    # a lower quorum lets the same run go on with the sites that are up
    outcome, _, _ = _run(
        tox21_sites,
        "two-down-quorum-2",
        2,
        down=lambda rnd: ["site-a", "site-b"],
        deployment={"min_sites": 2},
    )
    assert (
        outcome.failed == [] and [m.sites for m in outcome.rounds[1:]] == [["site-c", "site-d"]] * 2
    )


def test_every_round_asks_the_strategy_the_schedule_and_the_private_heads(
    tox21_sites: PreparedSites,
) -> None:
    train = TrainConfig(batch_size=128, lr_schedule="cosine", lr_min_factor=0.2)
    shared = tox21_sites.split.tasks[0].name
    outcome, hub, _ = _run(
        tox21_sites,
        "asks",
        3,
        train=train,
        heads="private",
        shared_tasks=[shared],
        strategy={"name": "fedprox", "mu": 0.05},
    )
    assert outcome.failed == []
    private = [t.name for t in tox21_sites.split.tasks if t.name != shared]
    factors = []
    for rnd in (1, 2, 3):
        opened = RoundOpen.model_validate(hub.get_json(HubLayout("asks").round_open(rnd)))
        assert opened.fit.proximal_mu == 0.05
        assert opened.fit.private_tasks == private
        assert opened.fit.lr_factor == lr_factor(train, rnd - 1, 3)
        factors.append(opened.fit.lr_factor)
    assert factors[0] == 1.0 and factors[0] > factors[1] > factors[2] >= 0.2


class Silent:
    """A launcher whose sites never answer: every round of it fails."""

    def start(self, rnd: int, ticket: str, open_round: Callable[[], None]) -> RoundStart:
        open_round()
        return RoundStart({}, {"site-a": "unreachable"}, 0.0)

    def collect(self, rnd: int, started: RoundStart, deadline: float) -> SiteReplies:
        return SiteReplies()

    def after_replies(self, rnd: int) -> None:
        return None

    def close(self) -> None:
        return None


def test_a_launcher_is_all_the_driver_needs_to_know_of_the_sites(
    tox21_sites: PreparedSites,
) -> None:
    config = tox21_sites.config("silent", rounds=2, **SMALL)
    hub = HubStore(config.hub_url)
    steps = CoordinatorSteps(config, hub)
    first = start_run(hub, config, tox21_sites.label_stats, trust=steps.trust)
    outcome = run_rounds(config, steps, Silent(), [first])
    assert outcome.failed == [1, 2] and outcome.stopped is None
    assert outcome.failure == (
        "its last round, 2, failed (0 accepted update(s), quorum is 4; missing: site-a; "
        "rejected: -)"
    )
    assert outcome.rounds[2].missing_reasons == {"site-a": "unreachable"}
    assert outcome.rounds[2].global_sha256 == first.global_sha256
