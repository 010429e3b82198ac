"""Trust in a real (tiny) federation, through the library the flows call: signed rounds and
updates, every kind of forged or replayed update rejected with its reason, differential
privacy at site and record level, and the audit of a run naming the first broken link."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from fedchem.cli import main as cli_main
from fedchem.config import ChemConfig, FederationConfig, ModelConfig, SiteConfig, TrainConfig
from fedchem.data.prepare import prepare_site
from fedchem.demo.sites import DemoSplit, bundled_dataset, split_into_sites
from fedchem.federation.coordinator import (
    aggregate_round,
    coordinator_trust,
    start_run,
    strategy_for,
)
from fedchem.federation.driver import (
    CoordinatorSteps,
    InProcessSites,
    fit_instructions,
    run_rounds,
)
from fedchem.federation.publish import publish_round
from fedchem.federation.rounds import await_round_open, new_ticket
from fedchem.federation.site import fetch_global, refuse_round, run_site_round
from fedchem.messages import RoundManifest, SiteUpdateManifest
from fedchem.model.state import dump_arrays, load_arrays
from fedchem.policy import PrivacyConfig
from fedchem.registry.store import Registry
from fedchem.storage.hub import HubLayout, HubStore, json_bytes
from fedchem.trust.coordinator import CoordinatorTrust
from fedchem.trust.dp import Steps, delta_norm, epsilon
from fedchem.trust.keys import new_key_pair
from fedchem.trust.ledger import Ledger, entry_sha256, ledger_dir, verify_run
from fedchem.trust.signing import COORDINATOR, KeyRing, Signer
from fedchem.trust.site import PolicyRefused, SiteGuard

CHEM = ChemConfig(fp_size=256)


@dataclass
class Fed:
    root: Path
    split: DemoSplit
    label_stats: list[dict[str, dict[str, float]]]

    def config(self, run_id: str, rounds: int = 2, **over: Any) -> FederationConfig:
        return FederationConfig(
            run_id=run_id,
            hub_url=str(self.root / "hub"),
            sites=self.split.sites,
            tasks=self.split.tasks,
            rounds=rounds,
            chem=CHEM,
            model=ModelConfig(hidden=16),
            train=TrainConfig(batch_size=32),
            trust=self.split.trust,
            **over,
        )


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    root = tmp_path_factory.mktemp("fed")
    data = root / "tiny.csv"
    pd.read_csv(bundled_dataset()).head(450).to_csv(data, index=False)
    split = split_into_sites(data, "smiles", 3, root / "sites", seed=3)
    reports = [prepare_site(s, CHEM, split.tasks) for s in split.sites]
    return Fed(root, split, [r.label_stats for r in reports])


def _open(hub: HubStore, config: FederationConfig, trust: CoordinatorTrust, rnd: int) -> Any:
    """Round ``rnd`` opened by hand (signed, in the ledger), for the attacks below."""
    steps = CoordinatorSteps(config, hub)
    ticket = new_ticket()
    steps.open(rnd, ticket, fit_instructions(config, steps.strategy, rnd))
    return await_round_open(hub, config.run_id, rnd, ticket, timeout_s=0)


def _site_round(
    fed: Fed, hub: HubStore, config: FederationConfig, site: SiteConfig, rnd: int, opened: Any
) -> SiteUpdateManifest:
    guard = SiteGuard.load(site)
    return run_site_round(
        site, hub, config.run_id, rnd, CHEM, config.model, config.train, opened=opened, guard=guard
    )


def _run(
    fed: Fed, config: FederationConfig, rounds: int = 2
) -> tuple[HubStore, CoordinatorTrust, list[RoundManifest]]:
    """Rounds 1..``rounds`` of ``config`` through the round driver, the sites in process."""
    hub = HubStore(config.hub_url)
    steps = CoordinatorSteps(config.model_copy(update={"rounds": rounds}), hub)
    assert steps.trust is not None
    first = start_run(hub, config, fed.label_stats, trust=steps.trust)
    outcome = run_rounds(steps.config, steps, InProcessSites(steps.config, hub), [first])
    assert outcome.stopped is None and outcome.failed == []
    return hub, steps.trust, outcome.rounds[1:]


def _verify(hub_dir: Path, run_id: str, config: FederationConfig) -> list[str]:
    assert config.trust is not None
    keys = KeyRing({COORDINATOR: config.trust.coordinator, **config.trust.sites})
    return verify_run(HubStore(str(hub_dir)), run_id, keys).problems


def test_a_signed_run_audits_clean_and_every_tampering_is_named(fed, tmp_path, capsys):
    config = fed.config("audit")
    _, _, committed = _run(fed, config)
    assert [m.sites for m in committed] == [config.site_names] * 2
    assert all(m.signature is not None for m in committed)
    hub_dir = Path(config.hub_url)
    assert _verify(hub_dir, "audit", config) == []
    cfg_file = tmp_path / "federation.yaml"
    cfg_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert cli_main(["audit", "verify", "--config", str(cfg_file)]) == 0
    assert "OK: every chain links" in capsys.readouterr().out

    site = config.site_names[0]
    layout = HubLayout("audit")

    def tampered(name: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(hub_dir, copy)
        return copy

    # an object altered after it was sent
    h = tampered("object")
    (h / layout.site_update(1, site)).write_bytes(b"other weights")
    problems = _verify(h, "audit", config)
    assert f"{layout.site_update(1, site)} on the hub is not what was recorded" in problems[0]
    # an entry altered: its signature no longer holds
    h = tampered("entry")
    entry = h / ledger_dir("audit", site) / "00000001.json"
    doc = yaml.safe_load(entry.read_text())
    doc["note"] = "nothing to see"
    entry.write_text(json_bytes(doc).decode())
    problems = _verify(h, "audit", config)
    assert problems[0].startswith(f"ledger audit/{site} entry 1:") and "signature" in problems[0]
    # an entry removed: the chain has a gap
    h = tampered("removed")
    (h / ledger_dir("audit", site) / "00000001.json").unlink()
    problems = _verify(h, "audit", config)
    assert "entry 1: sequence 2 where 1 belongs" in problems[0]
    # an update manifest no site recorded (a forged reply)
    h = tampered("unrecorded")
    other = config.site_names[1]
    forged = h / layout.site_manifest(2, other)
    forged.write_bytes(forged.read_bytes().replace(b'"train_loss"', b'"train_loss" ', 1))
    problems = _verify(h, "audit", config)
    assert any(
        f"{layout.site_manifest(2, other)} on the hub is not what was recorded" in p
        for p in problems
    )
    # a committed round the coordinator never recorded
    h = tampered("commit")
    (h / ledger_dir("audit", COORDINATOR)).joinpath(
        sorted(p.name for p in (h / ledger_dir("audit", COORDINATOR)).iterdir())[-1]
    ).unlink()
    problems = _verify(h, "audit", config)
    assert any("a committed round not in the coordinator's ledger" in p for p in problems)
    # the CLI: exit 1 and the first broken link
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        yaml.safe_dump({**config.model_dump(mode="json"), "hub_url": str(tmp_path / "object")})
    )
    assert cli_main(["audit", "verify", "--config", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "FAILED: first broken link:" in out and "not what was recorded" in out
    # a site's own record of what left it, and whether the hub holds the same
    site_cfg = tmp_path / "site.yaml"
    site_cfg.write_text(yaml.safe_dump({"site": fed.split.sites[0].model_dump(mode="json")}))
    assert (
        cli_main(
            [
                "audit",
                "list",
                "--site-config",
                str(site_cfg),
                "--scope",
                "audit",
                "--hub",
                str(hub_dir),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "update round 1" in out and "hub and site agree" in out
    assert (
        cli_main(
            [
                "audit",
                "list",
                "--site-config",
                str(site_cfg),
                "--scope",
                "audit",
                "--hub",
                str(tmp_path / "removed"),
            ]
        )
        == 1
    )
    assert "NOT ON HUB AS SENT" in capsys.readouterr().out


def _resign(m: SiteUpdateManifest, key: Path, owner: str) -> SiteUpdateManifest:
    return Signer.from_file(owner, key).sign(
        "site-update", m.model_copy(update={"signature": None})
    )


def test_updates_not_their_sites_own_are_rejected_with_the_reason(fed, tmp_path):
    config = fed.config("forged", rounds=3)
    hub, trust, _ = _run(fed, config, rounds=1)
    a, b, c = fed.split.sites
    layout = HubLayout("forged")
    round1_a = SiteUpdateManifest.model_validate(hub.get_json(layout.site_manifest(1, a.name)))
    # the same sites in another run: a signed, recorded update of theirs, replayed here
    _, _, _ = _run(fed, fed.config("elsewhere", rounds=3), rounds=1)
    elsewhere_b = SiteUpdateManifest.model_validate(
        hub.get_json(HubLayout("elsewhere").site_manifest(1, b.name))
    )
    opened = _open(hub, config, trust, 2)
    replies = {s.name: _site_round(fed, hub, config, s, 2, opened) for s in fed.split.sites}
    mallory = new_key_pair(tmp_path / "mallory", "mallory")
    assert b.signing_key_file is not None and a.signing_key_file is not None
    forged = [
        _resign(replies[a.name], mallory.private_path, a.name),  # an unknown key
        _resign(replies[a.name], b.signing_key_file, a.name),  # another site's key
        replies[a.name].model_copy(update={"n_examples": 10_000}),  # altered after signing
    ]
    want = ["unknown key", f"signed with {b.name}'s key", "bad signature"]
    for m, why in zip(forged, want, strict=True):
        got = trust.check_update(hub, m)
        assert got is not None and got.startswith("signature:") and why in got, got
    # replays: another run's update, this run's earlier round
    m = aggregate_round(
        hub,
        "forged",
        2,
        [round1_a, elsewhere_b, replies[c.name]],
        strategy_for(config),
        members=config.site_names,
        quorum=1,
        trust=trust,
    )
    assert m.sites == [c.name]
    assert m.rejected[a.name] == "stale update: for round 1, not 2"
    assert "for run 'elsewhere', not 'forged'" in m.rejected[b.name]
    # a second update for a round: the site's ledger records both, the first one is refused
    opened = _open(hub, config, trust, 3)
    first = _site_round(fed, hub, config, a, 3, opened)
    signer = Signer.from_file(a.name, a.signing_key_file)
    ledger = Ledger(hub, "forged", signer, a.workdir / "ledger")
    arrays = load_arrays(hub.get_bytes(first.update_path))
    arrays["head.weight"] = arrays["head.weight"] * 1.01
    data = dump_arrays(arrays)
    path = first.update_path.replace(".npz", "-b.npz")
    hub.put_bytes(path, data)
    entry = ledger.append("update", round=3, path=path, data=data)
    second = signer.sign(
        "site-update",
        first.model_copy(
            update={
                "update_path": path,
                "update_sha256": hashlib.sha256(data).hexdigest(),
                "ledger_seq": entry.seq,
                "ledger_sha256": entry_sha256(entry),
                "signature": None,
            }
        ),
    )
    why = trust.check_update(hub, first)
    assert why is not None and "a second update from" in why
    rest = [_site_round(fed, hub, config, s, 3, opened) for s in (b, c)]
    m3 = aggregate_round(
        hub,
        "forged",
        3,
        [second, *rest],
        strategy_for(config),
        members=config.site_names,
        quorum=2,
        trust=trust,
    )
    assert m3.sites == config.site_names  # the site's last word is taken...
    taken = [
        e
        for e in trust.ledger(hub, "forged").entries()
        if (e.kind, e.round, e.subject) == ("received", 3, a.name)
    ]
    assert taken and taken[-1].sha256 == second.update_sha256
    # ...and once taken, neither the earlier one nor a third may replace it
    why = trust.check_update(hub, first, trust.ledger(hub, "forged"))
    assert why is not None and "second update" in why


def test_site_level_dp_clips_every_update_and_reports_the_run_epsilon(fed):
    privacy = PrivacyConfig(level="site", clip=0.05, noise_multiplier=1.5)
    config = fed.config("site-dp", privacy=privacy)
    hub, _, committed = _run(fed, config)
    layout = HubLayout("site-dp")
    for rnd in (1, 2):
        base, _ = fetch_global(hub, "site-dp", rnd - 1)
        for s in config.site_names:
            m = SiteUpdateManifest.model_validate(hub.get_json(layout.site_manifest(rnd, s)))
            norm = delta_norm(load_arrays(hub.get_bytes(m.update_path)), base)
            assert norm <= 0.05 * (1 + 1e-4), norm
            assert m.dp is not None and m.dp.level == "site"
            assert m.dp.delta_norm == pytest.approx(norm, rel=1e-3)
    for rnd, m in zip((1, 2), committed, strict=True):
        want = epsilon([Steps(1.0, 1.5, rnd)], 1e-5)
        assert m.dp["epsilon_run"] == pytest.approx(want, rel=1e-6)
        assert m.dp["noise_multiplier"] == 1.5 and m.dp["clip"] == 0.05
    # the noise went in: the global model of round 1 is not the mean of the clipped updates
    g1, _ = fetch_global(hub, "site-dp", 1)
    ups = [load_arrays(hub.get_bytes(layout.site_update(1, s))) for s in config.site_names]
    mean = np.mean([u["head.weight"] for u in ups], axis=0)
    noise = g1["head.weight"] - mean
    assert float(np.std(noise)) > 0.5 * 1.5 * 0.05 / len(ups)  # noise std z*C on the sum


def test_record_level_dp_trains_within_the_target_and_spends_the_budget(fed, tmp_path):
    privacy = PrivacyConfig(level="record", clip=1.0, target_epsilon=3.0)
    config = fed.config("record-dp", rounds=1, privacy=privacy)
    _, _, committed = _run(fed, config, rounds=1)
    assert set(committed[0].site_epsilon) == set(config.site_names)
    for s in fed.split.sites:
        eps = committed[0].site_epsilon[s.name]
        assert 2.7 <= eps <= 3.0 + 1e-6, eps  # calibrated to the target over the planned run
    # the published model's card states the guarantee: each site's epsilon, the unit
    reg = Registry(str(tmp_path / "registry"))
    version = publish_round(
        HubStore(config.hub_url),
        reg,
        "dp-model",
        "record-dp",
        1,
        chem=CHEM,
        model=config.model,
        tasks=config.tasks,
        private_tasks=[],
        strategy="fedavg",
        reports=[],
    )
    card = reg.read_json("dp-model", version, "card.json")
    assert card["differential_privacy"] == {
        "level": "record",
        "unit": "one compound",
        "epsilon": committed[0].site_epsilon,
    }
    md = reg.read("dp-model", version, "card.md").decode()
    eps_a = committed[0].site_epsilon["site-a"]
    assert f"record level (one compound): epsilon site-a {eps_a:.2f}" in md
    assert "bench_privacy_audit" in md
    # a site whose policy allows 3.5 in all refuses a second run at 3, before training (two
    # full-batch Gaussian releases at 3 compose to about 4 by PLD: not to 6)
    a = fed.split.sites[0]
    assert a.policy_file is not None
    policy = yaml.safe_load(Path(a.policy_file).read_text())
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump({**policy, "dp": {"max_epsilon": 3.5, "delta": 1e-5}}))
    guarded = a.model_copy(update={"policy_file": strict})
    config2 = fed.config("record-dp-2", rounds=1, privacy=privacy)
    hub = HubStore(config2.hub_url)
    trust = coordinator_trust(config2)
    assert trust is not None
    start_run(hub, config2, fed.label_stats, trust=trust)
    opened = _open(hub, config2, trust, 1)
    with pytest.raises(PolicyRefused) as e:
        run_site_round(
            guarded,
            hub,
            "record-dp-2",
            1,
            CHEM,
            config2.model,
            config2.train,
            opened=opened,
            guard=SiteGuard.load(guarded),
        )
    assert e.value.clause == "dp.max_epsilon" and "allows 3.5" in e.value.reason
    refusal = refuse_round(hub, "record-dp-2", 1, a.name, e.value, SiteGuard.load(guarded))
    assert refusal.signature is not None
    assert not hub.exists(HubLayout("record-dp-2").site_update(1, a.name))  # nothing left
