"""Secure aggregation in a real (small) signed federation, through the round driver with the
sites in process: the committed model is the plain one up to the fixed-point step, the hub
holds masked updates only, every dropout point is survived while the threshold holds and
fails clearly when it does not, and a coordinator that forges keys, replays shares or shows
sites different survivors lists gets nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from fedchem.config import ChemConfig, FederationConfig, ModelConfig, TrainConfig
from fedchem.data.prepare import prepare_site
from fedchem.demo.sites import DemoSplit, bundled_dataset, split_into_sites
from fedchem.federation.commits import read_round
from fedchem.federation.coordinator import start_run
from fedchem.federation.driver import CoordinatorSteps, InProcessSites, RunOutcome, run_rounds
from fedchem.messages import RoundOpen
from fedchem.model.state import load_arrays
from fedchem.policy import SecAggPlan
from fedchem.secagg.protocol import Cohort, Roster, SecAggError, Survivors
from fedchem.secagg.rounds import SecureRound, SiteParty
from fedchem.storage.hub import HubLayout, HubStore
from fedchem.trust.keys import new_key_pair
from fedchem.trust.ledger import copy_dir, verify_run
from fedchem.trust.signing import KeyRing, Signer
from fedchem.trust.site import SiteGuard

CHEM = ChemConfig(fp_size=512)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoSplit, list[Any], Path]:
    root = tmp_path_factory.mktemp("secagg")
    data = root / "tox21.csv"
    pd.read_csv(bundled_dataset()).head(1200).to_csv(data, index=False)
    split = split_into_sites(data, "smiles", 4, root / "sites", seed=0)
    stats = [prepare_site(s, CHEM, split.tasks).label_stats for s in split.sites]
    return split, stats, root


def _config(fed: Any, run_id: str, secure: bool = True, **over: Any) -> FederationConfig:
    split, _, root = fed
    settings: dict[str, Any] = {
        "run_id": run_id,
        "hub_url": str(root / "hub"),
        "sites": split.sites,
        "tasks": split.tasks,
        "rounds": 1,
        "chem": CHEM,
        "model": ModelConfig(hidden=32),
        "train": TrainConfig(batch_size=64),
        "trust": split.trust,
        "strategy": {"name": "fedavgm"},
        "secure_aggregation": SecAggPlan() if secure else None,
        **over,
    }
    return FederationConfig(**settings)


def _run(
    fed: Any, config: FederationConfig, steps: CoordinatorSteps | None = None, **launcher: Any
) -> RunOutcome:
    _, stats, _ = fed
    hub = HubStore(config.hub_url)
    steps = steps or CoordinatorSteps(config, hub)
    first = start_run(hub, config, stats, trust=steps.trust)
    return run_rounds(config, steps, InProcessSites(config, hub, **launcher), [first])


def test_the_secure_model_is_the_plain_one_up_to_the_fixed_point_step(fed: Any) -> None:
    plain = _run(fed, _config(fed, "plain", secure=False))
    secure = _run(fed, _config(fed, "secure", rounds=2))
    assert plain.rounds[1].outcome == secure.rounds[1].outcome == "aggregated"
    assert secure.rounds[1].aggregation == "fedavgm+secagg" and secure.failed == []
    hub = HubStore(_config(fed, "x").hub_url)
    g_plain, g_secure = read_round(hub, "plain", 1)[1], read_round(hub, "secure", 1)[1]
    # 4 sites' weighted deltas, each rounded to 2^-20: the mean moves by at most 4 x 2^-21
    worst = max(float(np.max(np.abs(g_plain[k] - g_secure[k]))) for k in g_plain)
    assert worst <= 4 * 2.0**-21 + 2e-7, worst  # + float32's own rounding of the weights
    # what the hub holds of a site's update is masked: uniform 32-bit words, no float in sight
    layout = HubLayout("secure")
    for site in _config(fed, "x").site_names:
        stored = load_arrays(hub.get_bytes(layout.site_update(1, site)))
        assert set(stored) == {"masked"} and stored["masked"].dtype == np.uint32
        assert 0.45 < float(np.mean(stored["masked"] / 2**32)) < 0.55
    # and the run audits clean: every secure-aggregation message signed and in its ledger
    split = fed[0]
    keys = KeyRing(split.trust.keyring_entries())
    copies = {s.name: copy_dir(s.workdir / "ledger", hub.url) for s in split.sites}
    assert verify_run(hub, "secure", keys, copies).problems == []


@pytest.mark.parametrize(
    ("point", "step", "sites"),
    [
        ("before sharing its keys", "keys", ["site-b"]),
        ("after its keys, before sharing", "shares", ["site-b"]),
        ("after sharing, before its masked update", "upload", ["site-c"]),
        ("after its masked update, before the check", "check", ["site-d"]),
        ("after the check, before revealing", "reveal", ["site-a"]),
    ],
)
def test_a_site_gone_at_any_point_leaves_the_sum_of_the_others(
    fed: Any, point: str, step: str, sites: list[str]
) -> None:
    run_id = f"drop-{step}"
    out = _run(fed, _config(fed, run_id), drop=lambda rnd, s: sites if s == step else [])
    m = out.rounds[1]
    assert m.outcome == "aggregated", (point, m.reason)
    if step in ("keys", "shares", "upload"):  # its update never entered the sum
        assert m.sites == sorted(set(_config(fed, "x").site_names) - set(sites)), point
    else:  # its masked update is in the sum; the others' reveals unmask it
        assert m.sites == _config(fed, "x").site_names, point


def test_below_the_threshold_the_round_fails_and_says_why(fed: Any) -> None:
    out = _run(
        fed,
        _config(fed, "too-few"),
        drop=lambda rnd, s: ["site-a", "site-b"] if s == "upload" else [],
    )
    m = out.rounds[1]
    assert m.outcome == "failed" and m.reason.startswith("secure aggregation: 2 masked inputs")
    assert out.failure is not None


class Hostile(CoordinatorSteps):
    """A coordinator that tampers with one of its secure-aggregation lists."""

    def __init__(self, config: FederationConfig, attack: str, tmp: Path) -> None:
        super().__init__(config)
        self.attack, self.tmp = attack, tmp

    def secure(self, rnd: int) -> SecureRound:
        real = super().secure(rnd)
        attack, tmp = self.attack, self.tmp

        class Tampered(SecureRound):
            def _publish(self, name: str, message: Any) -> Any:
                if attack == "forged keys" and name == "roster":
                    # site-b's keys replaced by the coordinator's own, signed by a key of its
                    # choosing: it could then open what is sealed to site-b, and unmask it
                    mallory = new_key_pair(tmp / "mallory", "mallory")
                    forged = message.adverts[1].model_copy(
                        update={"mask_key": message.adverts[0].mask_key, "signature": None}
                    )
                    forged = Signer.from_file("site-b", mallory.private_path).sign(
                        "secagg-keys", forged
                    )
                    message = message.model_copy(
                        update={"adverts": [message.adverts[0], forged, *message.adverts[2:]]}
                    )
                if attack == "replayed shares" and name == "cohort":
                    other = self.hub.get_bytes(
                        HubLayout("replay-source").site_secagg(1, "site-b", "shares")
                    )
                    from fedchem.secagg.protocol import SharesBundle

                    old = SharesBundle.model_validate_json(other)
                    message = message.model_copy(
                        update={
                            "bundles": [old if b.site == "site-b" else b for b in message.bundles]
                        }
                    )
                return super()._publish(name, message)

        hostile = Tampered(real.hub, real.run_id, real.rnd, real.members, real.plan, real.trust)
        return hostile


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("forged keys", "the roster's keys of site-b: secagg-keys signed with an unknown key"),
        ("replayed shares", "the shares of site-b is of run 'replay-source'"),
    ],
)
def test_a_coordinator_that_forges_keys_or_replays_shares_gets_nothing(
    fed: Any, tmp_path: Path, attack: str, reason: str
) -> None:
    if attack == "replayed shares":
        _run(fed, _config(fed, "replay-source"))
    config = _config(fed, f"attack-{attack.replace(' ', '-')}")
    out = _run(fed, config, steps=Hostile(config, attack, tmp_path))
    m = out.rounds[1]
    assert m.outcome == "failed", m
    refusals = [
        yaml.safe_load(
            HubStore(config.hub_url).get_bytes(HubLayout(config.run_id).site_refusal(1, s))
        )
        for s in config.site_names
        if HubStore(config.hub_url).exists(HubLayout(config.run_id).site_refusal(1, s))
    ]
    assert refusals and all(r["clause"] == "secure_aggregation" for r in refusals)
    assert any(reason in r["reason"] for r in refusals), [r["reason"] for r in refusals]


def test_a_site_reveals_nothing_when_shown_another_survivors_list(fed: Any) -> None:
    config = _config(fed, "two-lists")
    split = fed[0]
    out = _run(fed, config, drop=lambda rnd, s: ["site-d"] if s == "reveal" else [])
    assert out.rounds[1].outcome == "aggregated"
    # the coordinator now shows site-d a list without site-b, to get site-b's mask key from it
    # while site-b's self-mask seed came from the others: site-d refuses, the checks disagree
    hub = HubStore(config.hub_url)
    layout = HubLayout("two-lists")
    survivors = Survivors.model_validate_json(hub.get_bytes(layout.secagg(1, "survivors")))
    narrowed = Survivors(
        run_id="two-lists", round=1, sites=[s for s in survivors.sites if s != "site-b"]
    )
    trust = CoordinatorSteps(config).trust
    assert trust is not None
    hub.put_json(
        layout.secagg(1, "survivors"),
        trust.sign("secagg-survivors", narrowed).model_dump(mode="json"),
    )
    d = split.sites[3]
    opened = RoundOpen.model_validate(hub.get_json(layout.round_open(1)))
    party = SiteParty(d.name, d.workdir, hub, opened, SiteGuard.load(d))
    with pytest.raises(SecAggError, match="was shown another survivors list"):
        party.reveal()


def test_a_forged_roster_entry_for_oneself_is_refused(fed: Any) -> None:
    config = _config(fed, "self-check")
    _run(fed, config)
    hub = HubStore(config.hub_url)
    layout = HubLayout("self-check")
    roster = Roster.model_validate_json(hub.get_bytes(layout.secagg(1, "roster")))
    a = fed[0].sites[0]
    opened = RoundOpen.model_validate(hub.get_json(layout.round_open(1)))
    party = SiteParty(a.name, a.workdir, hub, opened, SiteGuard.load(a))
    assert party.roster() == roster  # the honest one passes
    # another round's roster, re-signed: refused
    trust = CoordinatorSteps(config).trust
    assert trust is not None
    moved = trust.sign("secagg-roster", roster.model_copy(update={"round": 2, "signature": None}))
    hub.put_json(layout.secagg(1, "roster"), moved.model_dump(mode="json"))
    with pytest.raises(SecAggError, match="is of run 'self-check' round 2"):
        party.roster()


def test_strategies_and_settings_that_need_single_updates_are_refused_at_config_time(
    fed: Any,
) -> None:
    for over, why in [
        ({"strategy": {"name": "median"}}, "needs every update on its own"),
        ({"strategy": {"name": "krum"}}, "needs every update on its own"),
        (
            {"privacy": {"level": "site", "noise_multiplier": 1.0}},
            "site-level DP adds the noise at the coordinator",
        ),
        ({"trust": None}, "it needs trust"),
        ({"secure_aggregation": SecAggPlan(fraction_bits=28)}, "overflows the 32-bit ring"),
    ]:
        with pytest.raises(ValueError, match=why):
            _config(fed, "bad", **over)


def test_a_site_whose_policy_requires_it_refuses_a_plain_round(fed: Any, tmp_path: Path) -> None:
    split = fed[0]
    a = split.sites[0]
    assert a.policy_file is not None
    policy = yaml.safe_load(Path(a.policy_file).read_text())
    strict = tmp_path / "policy.yaml"
    strict.write_text(yaml.safe_dump({**policy, "secure_aggregation": {"required": True}}))
    guarded = a.model_copy(update={"policy_file": strict})
    config = _config(fed, "plain-refused", secure=False)
    config = config.model_copy(update={"sites": [guarded, *split.sites[1:]]})
    out = _run(fed, config)
    assert "secure_aggregation.required" in out.rounds[1].missing_reasons["site-a"]


class SelfStepping:
    """Sites that step through a secure round by themselves, concurrently, each waiting on
    the hub for the coordinator's next list: how deployed sites' runs go (one thread each
    here, instead of a worker each)."""

    def __init__(self, config: FederationConfig, gone_after: dict[str, str] | None = None) -> None:
        self.config, self.hub = config, HubStore(config.hub_url)
        self.threads: dict[str, threading.Thread] = {}
        self.replies: dict[str, Any] = {}
        self.gone_after = gone_after or {}

    def _site(self, site: Any, rnd: int, ticket: str) -> None:
        from fedchem.federation.rounds import await_round_open
        from fedchem.federation.site import take_part
        from fedchem.secagg.rounds import STEPS

        opened = await_round_open(self.hub, self.config.run_id, rnd, ticket, timeout_s=30)
        cfg = self.config
        last = self.gone_after.get(site.name)
        steps = STEPS[: STEPS.index(last) + 1] if last else STEPS
        for step in steps:  # as take_part(step=None) does, stopping where the site goes away
            from fedchem.secagg.rounds import site_waits

            site_waits(self.hub, opened, step, timeout_s=60, poll_s=0.05)
            out = take_part(site, self.hub, opened, cfg.chem, cfg.model, cfg.train, step)
            if out is not None:
                self.replies[site.name] = out

    def start(self, rnd: int, ticket: str, open_round: Any) -> Any:
        from fedchem.federation.driver import RoundStart

        open_round()
        for site in self.config.sites:
            t = threading.Thread(target=self._site, args=(site, rnd, ticket), daemon=True)
            t.start()
            self.threads[site.name] = t
        return RoundStart({s: s for s in self.threads}, {}, time.time())

    def step(self, rnd: int, step: str) -> None:
        return None

    def ended(self, rnd: int, started: Any) -> set[str]:
        return {s for s, t in self.threads.items() if not t.is_alive()}

    def collect(self, rnd: int, started: Any, deadline: float) -> Any:
        from fedchem.federation.rounds import RunState, collect_replies

        def states() -> dict[str, RunState]:
            return {
                s: RunState("Completed" if not t.is_alive() else "Running", not t.is_alive())
                for s, t in self.threads.items()
            }

        return collect_replies(
            self.hub, self.config.run_id, rnd, list(self.threads), states, deadline, poll_s=0.05
        )

    def after_replies(self, rnd: int) -> None:
        return None

    def close(self) -> None:
        for t in self.threads.values():
            t.join(timeout=120)


def test_deployed_sites_step_through_the_round_by_themselves(fed: Any) -> None:
    config = _config(
        fed, "self-stepping", deployment={"round_deadline_s": 120, "poll_interval_s": 0.05}
    )
    _, stats, _ = fed
    hub = HubStore(config.hub_url)
    steps = CoordinatorSteps(config, hub)
    first = start_run(hub, config, stats, trust=steps.trust)
    # site-c goes away after its masked upload (before the check): the others unmask it
    out = run_rounds(config, steps, SelfStepping(config, {"site-c": "upload"}), [first])
    m = out.rounds[1]
    assert m.outcome == "aggregated" and m.sites == config.site_names, m.reason


def test_a_masked_upload_from_a_site_that_did_not_share_is_left_out(fed: Any) -> None:
    config = _config(fed, "no-shares-upload")
    out = _run(fed, config, drop=lambda rnd, s: ["site-b"] if s == "shares" else [])
    assert out.rounds[1].outcome == "aggregated" and "site-b" not in out.rounds[1].sites
    # the coordinator lists survivors among the sites that shared only: an upload of site-b
    # (its masks not removable: nobody holds its shares) never enters the sum
    steps = CoordinatorSteps(config)
    secure = steps.secure(2)
    hub = HubStore(config.hub_url)
    layout = HubLayout("no-shares-upload")
    secure.roster = Roster.model_validate_json(hub.get_bytes(layout.secagg(1, "roster")))
    secure.cohort = Cohort.model_validate_json(hub.get_bytes(layout.secagg(1, "cohort")))
    secure.rnd = 1
    survivors = secure.publish_survivors(["site-a", "site-b", "site-c", "site-d"])
    assert survivors.sites == ["site-a", "site-c", "site-d"]


def test_private_heads_stay_private_under_secure_aggregation(fed: Any) -> None:
    split = fed[0]
    shared = split.tasks[0].name
    config = _config(fed, "secure-heads", heads="private", shared_tasks=[shared])
    out = _run(fed, config)
    assert out.rounds[1].outcome == "aggregated"
    hub = HubStore(config.hub_url)
    g0, g1 = read_round(hub, "secure-heads", 0)[1], read_round(hub, "secure-heads", 1)[1]
    private = [j for j, t in enumerate(split.tasks) if t.name != shared]
    # the private rows of the global heads did not move: each site sent no delta for them
    assert np.allclose(g1["head.weight"][private], g0["head.weight"][private], atol=1e-5)
    assert not np.allclose(g1["head.weight"][0], g0["head.weight"][0])  # the shared one did
    for site in split.sites:
        assert (site.workdir / "runs" / "secure-heads" / "private_head-0001.npz").exists()
