"""A site's policy binds its own history, not the coordinator's word: the run ids it agreed to,
round numbers that only go up, ``max_rounds`` counted from what it trained, and a privacy
budget charged for every update it released. Each attack is a hostile but validly signed
coordinator; the site refuses it, naming the clause."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from fedchem.config import ChemConfig, FederationConfig, ModelConfig, SiteConfig, TrainConfig
from fedchem.data.prepare import prepare_site
from fedchem.demo.sites import DemoSplit, bundled_dataset, split_into_sites
from fedchem.federation.commits import commit_round
from fedchem.federation.coordinator import coordinator_trust, initial_model, start_run
from fedchem.federation.driver import CoordinatorSteps, fit_instructions, refusal_verifier
from fedchem.federation.rounds import SiteReplies, await_round_open, new_ticket, read_replies
from fedchem.federation.site import evaluate_global_at_site, take_part
from fedchem.messages import RoundManifest, RoundOpen, SiteRefusal, SiteUpdateManifest
from fedchem.model.state import dump_arrays, model_to_arrays
from fedchem.policy import PrivacyConfig
from fedchem.storage.hub import HubStore
from fedchem.trust.budget import PrivacyBudget
from fedchem.trust.keys import new_key_pair
from fedchem.trust.signing import COORDINATOR, Signer
from fedchem.trust.site import PolicyRefused

CHEM = ChemConfig(fp_size=256)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoSplit, list[Any]]:
    root = tmp_path_factory.mktemp("history")
    data = root / "tiny.csv"
    pd.read_csv(bundled_dataset()).head(450).to_csv(data, index=False)
    split = split_into_sites(data, "smiles", 3, root / "sites", seed=3)
    stats = [prepare_site(s, CHEM, split.tasks).label_stats for s in split.sites]
    return split, stats


def _site(split: DemoSplit, tmp_path: Path, **policy: Any) -> SiteConfig:
    """Site a with a fresh workdir copy's history and ``policy`` over its demo policy."""
    a = split.sites[0]
    assert a.policy_file is not None
    doc = {**yaml.safe_load(Path(a.policy_file).read_text()), **policy}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return a.model_copy(update={"policy_file": path})


def _config(split: DemoSplit, hub: Path, run_id: str, **over: Any) -> FederationConfig:
    return FederationConfig(
        run_id=run_id,
        hub_url=str(hub),
        sites=split.sites,
        tasks=split.tasks,
        rounds=over.pop("rounds", 3),
        chem=CHEM,
        model=ModelConfig(hidden=16),
        train=TrainConfig(batch_size=32),
        trust=split.trust,
        **over,
    )


def _open(config: FederationConfig, rnd: int, run_id: str | None = None) -> RoundOpen:
    """A signed opening of round ``rnd`` (of ``run_id``, whatever the config says)."""
    cfg = config if run_id is None else config.model_copy(update={"run_id": run_id})
    steps = CoordinatorSteps(cfg)
    ticket = new_ticket()
    steps.open(rnd, ticket, fit_instructions(cfg, steps.strategy, rnd))
    return await_round_open(steps.hub, cfg.run_id, rnd, ticket, timeout_s=0)


def _answer(site: SiteConfig, config: FederationConfig, opened: RoundOpen) -> Any:
    return take_part(site, HubStore(config.hub_url), opened, CHEM, config.model, config.train)


def _recommit_round_0(config: FederationConfig, seed: int) -> str:
    """The hostile coordinator commits round 0 again, signed, with another initial model."""
    trust = coordinator_trust(config)
    tasks = [(t.name, t.kind) for t in config.tasks]
    model = initial_model(CHEM.fp_size, tasks, config.model, seed, [])
    data = dump_arrays(model_to_arrays(model))
    m = commit_round(HubStore(config.hub_url), config.run_id, 0, data, "init", {}, {}, trust=trust)
    return m.global_sha256


def test_a_round_retrained_from_another_base_is_a_new_release_and_is_charged(
    split: tuple[DemoSplit, list[Any]], tmp_path: Path
) -> None:
    sites, stats = split
    site = _site(sites, tmp_path, dp={"max_epsilon": 4.0, "delta": 1e-5})
    privacy = PrivacyConfig(level="record", clip=1.0, target_epsilon=3.0)
    config = _config(sites, tmp_path / "hub", "recommit", rounds=1, privacy=privacy)
    start_run(HubStore(config.hub_url), config, stats, trust=coordinator_trust(config))
    first = _answer(site, config, _open(config, 1))
    assert isinstance(first, SiteUpdateManifest) and first.dp is not None
    assert first.dp.epsilon_total == pytest.approx(3.0, abs=0.3)
    # asked again for the same round from the same base (a resumed coordinator): the same
    # update, sent again from the site's own copy, nothing new released
    again = _answer(site, config, _open(config, 1))
    assert again == first
    budget = PrivacyBudget.of_site(site.workdir)
    assert len(budget.releases) == 1
    # the attack: round 0 committed again (signed) with another model, round 1 opened again.
    # Training round 1 from it is a second release of the site's data, charged: the two
    # compose to 3.93 (not the 3.0 one round would record)
    _recommit_round_0(config, seed=7)
    second = _answer(site, config, _open(config, 1))
    assert isinstance(second, SiteUpdateManifest) and second.dp is not None
    assert second.base_sha256 != first.base_sha256
    assert second.dp.epsilon_total == pytest.approx(3.93, abs=0.05)
    assert len(PrivacyBudget.of_site(site.workdir).releases) == 2
    # a third would compose past the policy's 4: refused before it trains
    _recommit_round_0(config, seed=8)
    refused = _answer(site, config, _open(config, 1))
    assert isinstance(refused, SiteRefusal) and refused.clause == "dp.max_epsilon"
    assert "allows 4" in refused.reason
    assert len(PrivacyBudget.of_site(site.workdir).releases) == 2  # nothing trained


def test_a_run_the_site_did_not_agree_to_is_refused(
    split: tuple[DemoSplit, list[Any]], tmp_path: Path
) -> None:
    sites, stats = split
    site = _site(sites, tmp_path, runs=["tox21-weekly-*"])
    config = _config(sites, tmp_path / "hub", "tox21-weekly-1")
    start_run(HubStore(config.hub_url), config, stats, trust=coordinator_trust(config))
    assert isinstance(_answer(site, config, _open(config, 1)), SiteUpdateManifest)
    other = config.model_copy(update={"run_id": "another-run"})
    start_run(HubStore(other.hub_url), other, stats, trust=coordinator_trust(other))
    refused = _answer(site, other, _open(other, 1))
    assert isinstance(refused, SiteRefusal) and refused.clause == "runs"


def test_rounds_only_go_up_and_max_rounds_counts_what_the_site_trained(
    split: tuple[DemoSplit, list[Any]], tmp_path: Path
) -> None:
    sites, stats = split
    site = _site(sites, tmp_path, max_rounds=2)
    config = _config(sites, tmp_path / "hub", "history", rounds=4)
    hub = HubStore(config.hub_url)
    steps = CoordinatorSteps(config, hub)
    start_run(hub, config, stats, trust=steps.trust)
    # the site trains rounds 1 and 2 (the others' updates make the commits)
    for rnd in (1, 2):
        opened = _open(config, rnd)
        replies = [_answer(s, config, opened) for s in sites.sites[1:]]
        mine = _answer(site, config, opened)
        assert isinstance(mine, SiteUpdateManifest), mine
        got = {m.site: m for m in [*replies, mine] if isinstance(m, SiteUpdateManifest)}
        steps.aggregate(rnd, SiteReplies(replies=got), {}, 0.0)
    # round 3 would be its third: refused, counted from its own record
    refused = _answer(site, config, _open(config, 3))
    assert isinstance(refused, SiteRefusal) and refused.clause == "max_rounds"
    # an opening that goes back to round 1 (a rollback) is refused as such
    refused = _answer(site, config, _open(config, 1))
    assert isinstance(refused, SiteRefusal) and refused.clause == "rounds"
    assert "already trained round 2" in refused.reason
    assert PrivacyBudget.of_site(site.workdir).rounds("history") == [1, 2]


def test_a_site_without_a_valid_policy_still_signs_its_refusal(
    split: tuple[DemoSplit, list[Any]], tmp_path: Path
) -> None:
    sites, stats = split
    config = _config(sites, tmp_path / "hub", "no-policy")
    start_run(HubStore(config.hub_url), config, stats, trust=coordinator_trust(config))
    opened = _open(config, 1)
    for broken, clause in (
        (sites.sites[0].model_copy(update={"policy_file": None}), "policy"),
        (sites.sites[0].model_copy(update={"policy_file": sites.sites[1].policy_file}), "site"),
    ):
        refusal = _answer(broken, config, opened)
        assert isinstance(refusal, SiteRefusal) and refusal.clause == clause
        assert refusal.signature is not None  # the site's own key, policy or not
        # the coordinator reads the clause, not "a refusal not signed by the site"
        got = read_replies(
            HubStore(config.hub_url), "no-policy", 1, ["site-a"], refusal_verifier(config)
        )
        assert got["site-a"] == f"refused by its policy: {clause} ({refusal.reason})"[:400]


def test_a_site_loads_no_global_model_the_coordinator_did_not_sign(
    split: tuple[DemoSplit, list[Any]], tmp_path: Path
) -> None:
    sites, stats = split
    config = _config(sites, tmp_path / "hub", "forged-global", rounds=1)
    hub = HubStore(config.hub_url)
    start_run(hub, config, stats, trust=coordinator_trust(config))
    site = sites.sites[0]
    evaluate_global_at_site(site, hub, "forged-global", 0, CHEM, config.model)  # signed: scored
    # round 0's commit re-signed by a key the site's policy does not pin
    mallory = new_key_pair(tmp_path / "mallory", "mallory")
    path = "runs/forged-global/rounds/0000/manifest.json"
    m = RoundManifest.model_validate(hub.get_json(path))
    forged = Signer.from_file(COORDINATOR, mallory.private_path).sign("round-commit", m)
    hub.put_json(path, forged.model_dump(mode="json"))
    with pytest.raises(PolicyRefused) as caught:
        evaluate_global_at_site(site, hub, "forged-global", 0, CHEM, config.model)
    assert caught.value.clause == "coordinator_key"
