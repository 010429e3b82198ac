"""A site's policy, read from its own disk: fail-closed, and every clause refuses a round that
breaks it, naming the clause."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fedchem.config import SiteConfig
from fedchem.messages import FitInstructions, RoundOpen, RoundPlan
from fedchem.policy import PrivacyConfig, SecAggPlan
from fedchem.trust.budget import PrivacyBudget
from fedchem.trust.keys import new_key_pair
from fedchem.trust.signing import COORDINATOR, Signer
from fedchem.trust.site import PolicyRefused, SiteGuard


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    coord = new_key_pair(tmp_path / "coordinator", "coordinator")
    other = new_key_pair(tmp_path / "mallory", "mallory")
    site = new_key_pair(tmp_path / "site-a", "site")
    return {"coordinator": coord, "other": other, "site": site}


def _site(tmp_path: Path, keys: dict[str, Any], policy: dict[str, Any] | None) -> SiteConfig:
    policy_file = None
    if policy is not None:
        policy_file = tmp_path / "site-a" / "policy.yaml"
        policy_file.write_text(yaml.safe_dump(policy))
    return SiteConfig(
        name="site-a",
        measurements=tmp_path / "m.csv",
        assays=tmp_path / "a.csv",
        workdir=tmp_path / "site-a" / "work",
        key_file=tmp_path / "consortium.key",
        signing_key_file=keys["site"].private_path,
        policy_file=policy_file,
    )


def _policy(keys: dict[str, Any], **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "site": "site-a",
        "coordinator_key": keys["coordinator"].public,
        "allowed_strategies": ["fedavg", "fedavgm"],
        "min_sites_per_round": 3,
        "max_rounds": 5,
    }
    return {**base, **over}


def _opening(
    keys: dict[str, Any], *, signer: str = "coordinator", rnd: int = 1, **plan: Any
) -> RoundOpen:
    fields: dict[str, Any] = {
        "strategy": "fedavgm",
        "sites": ["site-a", "site-b", "site-c"],
        "quorum": 3,
        "rounds": 5,
        "heads": "shared",
    }
    fields.update(plan)
    doc = RoundOpen(
        run_id="r1",
        round=rnd,
        ticket="t",
        fit=FitInstructions(private_tasks=fields.pop("private_tasks", [])),
        opened_at="2026-12-02T00:00:00Z",
        plan=RoundPlan(**fields),
    )
    return Signer.from_file(COORDINATOR, keys[signer].private_path).sign("round-open", doc)


def _refused(guard: SiteGuard, opened: RoundOpen, tasks: list[str] | None = None) -> str:
    with pytest.raises(PolicyRefused) as caught:
        guard.check_round(opened, tasks or ["t1", "t2"])
    return caught.value.clause


def test_without_a_valid_policy_of_its_own_the_site_takes_part_in_nothing(tmp_path, keys):
    with pytest.raises(PolicyRefused, match="has no policy") as e:
        SiteGuard.load(_site(tmp_path, keys, None))
    assert e.value.clause == "policy"
    with pytest.raises(PolicyRefused, match="unreadable"):
        cfg = _site(tmp_path, keys, None).model_copy(update={"policy_file": tmp_path / "nope"})
        SiteGuard.load(cfg)
    for broken in ({**_policy(keys), "allow_everything": True}, {"site": "site-a"}):
        with pytest.raises(PolicyRefused, match="policy file invalid"):
            SiteGuard.load(_site(tmp_path, keys, broken))
    (tmp_path / "site-a" / "policy.yaml").write_text("site: [unclosed")
    with pytest.raises(PolicyRefused, match="policy file invalid"):
        SiteGuard.load(
            _site(tmp_path, keys, None).model_copy(
                update={"policy_file": tmp_path / "site-a" / "policy.yaml"}
            )
        )
    with pytest.raises(PolicyRefused, match="for 'site-b', not 'site-a'") as e:
        SiteGuard.load(_site(tmp_path, keys, _policy(keys, site="site-b")))  # a copied file
    assert e.value.clause == "site"
    # signatures are required unless the policy says otherwise, and need a pinned key
    with pytest.raises(PolicyRefused, match="require_signatures needs coordinator_key"):
        SiteGuard.load(_site(tmp_path, keys, _policy(keys, coordinator_key=None)))
    no_key = _site(tmp_path, keys, _policy(keys)).model_copy(update={"signing_key_file": None})
    with pytest.raises(PolicyRefused) as e:
        SiteGuard.load(no_key)
    assert e.value.clause == "require_signatures"


def test_an_opening_not_signed_by_the_pinned_coordinator_is_refused(tmp_path, keys):
    guard = SiteGuard.load(_site(tmp_path, keys, _policy(keys)))
    assert guard.check_round(_opening(keys), ["t1"]).strategy == "fedavgm"  # the good one
    assert _refused(guard, _opening(keys, signer="other")) == "coordinator_key"
    unsigned = _opening(keys).model_copy(update={"signature": None})
    assert _refused(guard, unsigned) == "coordinator_key"
    altered = _opening(keys).model_copy(update={"round": 2})  # signed for round 1
    assert _refused(guard, altered) == "coordinator_key"
    no_plan = Signer.from_file(COORDINATOR, keys["coordinator"].private_path).sign(
        "round-open", _opening(keys).model_copy(update={"plan": None, "signature": None})
    )
    assert _refused(guard, no_plan) == "plan"


@pytest.mark.parametrize(
    ("policy", "plan", "clause"),
    [
        ({}, {"strategy": "krum"}, "allowed_strategies"),
        ({}, {"quorum": 2}, "min_sites_per_round"),
        ({}, {"rnd": 6}, "max_rounds"),
        ({"share_heads": False}, {"private_tasks": ["t1"]}, "share_heads"),
        ({"dp": {"required": True}}, {}, "dp.required"),
        (
            {"dp": {"required": True, "level": "record"}},
            {"privacy": PrivacyConfig(level="site", noise_multiplier=1.0)},
            "dp.level",
        ),
        (
            {"dp": {"delta": 1e-6}},
            {"privacy": PrivacyConfig(level="site", noise_multiplier=1.0, delta=1e-5)},
            "dp.delta",
        ),
        ({"dp": {"max_epsilon": 8}}, {}, "dp.max_epsilon"),
        # a hostile plan no honest config makes: a compressed update in a secure round
        (
            {"members": {"site-b": "b", "site-c": "c"}},
            {"secure_aggregation": SecAggPlan(), "compression": "int8"},
            "secure_aggregation",
        ),
    ],
)
def test_every_clause_refuses_the_round_that_breaks_it(tmp_path, keys, policy, plan, clause):
    guard = SiteGuard.load(_site(tmp_path, keys, _policy(keys, **policy)))
    rnd = plan.pop("rnd", 1)
    assert _refused(guard, _opening(keys, rnd=rnd, **plan)) == clause


def test_a_policy_that_keeps_heads_takes_rounds_that_keep_every_one(tmp_path, keys):
    guard = SiteGuard.load(_site(tmp_path, keys, _policy(keys, share_heads=False)))
    guard.check_round(_opening(keys, heads="private", private_tasks=["t1", "t2"]), ["t1", "t2"])


def test_the_noise_floor_and_the_budget_refuse_before_training(tmp_path, keys):
    dp = {"required": True, "level": "site", "max_epsilon": 4.0, "min_noise_multiplier": 0.8}
    guard = SiteGuard.load(_site(tmp_path, keys, _policy(keys, dp=dp)))
    weak = PrivacyConfig(level="site", noise_multiplier=0.5)
    plan = guard.check_round(_opening(keys, privacy=weak), ["t1"])
    with pytest.raises(PolicyRefused) as e:
        guard.privacy("r1", plan, 100, 32, 1)
    assert e.value.clause == "dp.min_noise_multiplier"
    strong = PrivacyConfig(level="site", noise_multiplier=2.0)
    plan = guard.check_round(_opening(keys, privacy=strong), ["t1"])
    spent = []
    for rnd in range(1, 20):
        try:
            got = guard.privacy("r1", plan, 100, 32, 1)
        except PolicyRefused as exc:
            assert exc.clause == "dp.max_epsilon" and "allows 4" in exc.reason
            break
        assert got is not None and got.epsilon_total <= 4.0
        guard.spend("r1", rnd, f"base-{rnd}", got)
        spent.append(got.epsilon_total)
    else:
        pytest.fail("the budget never ran out")
    assert spent == sorted(spent) and len(spent) == 3  # eps 1.99, 2.94, 3.71; 4.38 > 4
    # the budget is the site's across runs: a new run starts where the last one stopped
    budget = PrivacyBudget.of_site(guard.workdir)
    assert budget.spent(1e-5) == pytest.approx(spent[-1], rel=1e-6)
    with pytest.raises(PolicyRefused, match=r"dp\.max_epsilon"):  # the same release, new run
        guard.privacy("r2", plan, 100, 32, 1)
    # recording the same update again (a re-send) releases nothing new
    guard.spend("r1", 3, "base-3", got)
    assert PrivacyBudget.of_site(guard.workdir).spent(1e-5) == pytest.approx(spent[-1], rel=1e-6)
