"""The audit notices what is missing, not only what was altered: deleted ledger entries, a
rolled-back round, deleted updates and models, edited side files, files written outside the
trail, and a key substituted through a reserved party name. Each attack is done to a copy of
a real signed run's hub; the audit must name it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedchem.cli import main as cli_main
from fedchem.config import ChemConfig, FederationConfig, ModelConfig, TrainConfig
from fedchem.data.prepare import prepare_site
from fedchem.demo.sites import DemoSplit, bundled_dataset, split_into_sites
from fedchem.federation.commits import record_best_round
from fedchem.federation.coordinator import start_run
from fedchem.federation.driver import CoordinatorSteps, InProcessSites, run_rounds
from fedchem.federation.publish import write_domain_support
from fedchem.policy import TrustConfig
from fedchem.storage.hub import HubLayout, HubStore, json_bytes
from fedchem.trust.keys import new_key_pair
from fedchem.trust.ledger import SITE_SCOPE, Ledger, copy_dir, ledger_dir, verify_run
from fedchem.trust.signing import COORDINATOR, KeyRing
from fedchem.trust.site import site_signer

CHEM = ChemConfig(fp_size=256)
RUN = "audited"


@dataclass
class Run:
    root: Path
    split: DemoSplit
    config: FederationConfig

    @property
    def hub(self) -> Path:
        return Path(self.config.hub_url)

    def copies(self) -> dict[str, Path]:
        """Every site's own copy of what it wrote to the run's hub (under its workdir)."""
        url = HubStore(self.config.hub_url).url
        return {s.name: copy_dir(s.workdir / "ledger", url) for s in self.split.sites}

    def tampered(self, name: str) -> Path:
        target = self.root / "tampered" / name
        shutil.copytree(self.hub, target)
        return target

    def problems(self, hub: Path, copies: bool = True) -> list[str]:
        assert self.config.trust is not None
        keys = KeyRing(self.config.trust.keyring_entries())
        return verify_run(HubStore(str(hub)), RUN, keys, self.copies() if copies else None).problems


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("audit")
    data = root / "tiny.csv"
    pd.read_csv(bundled_dataset()).head(450).to_csv(data, index=False)
    split = split_into_sites(data, "smiles", 3, root / "sites", seed=3)
    reports = [prepare_site(s, CHEM, split.tasks) for s in split.sites]
    config = FederationConfig(
        run_id=RUN,
        hub_url=str(root / "hub"),
        sites=split.sites,
        tasks=split.tasks,
        rounds=3,
        chem=CHEM,
        model=ModelConfig(hidden=16),
        train=TrainConfig(batch_size=32),
        trust=split.trust,
        strategy={"name": "fedavgm"},  # a server state too
    )
    hub = HubStore(config.hub_url)
    steps = CoordinatorSteps(config, hub)
    first = start_run(hub, config, [r.label_stats for r in reports], trust=steps.trust)
    write_domain_support(hub, RUN, reports, steps.trust)
    outcome = run_rounds(config, steps, InProcessSites(config, hub), [first])
    record_best_round(hub, RUN, outcome.rounds, steps.trust)
    # the sites' preparation reports, signed and in their own chains, as the flow publishes them
    for site, report in zip(split.sites, reports, strict=True):
        signer = site_signer(site)
        assert signer is not None
        signed = signer.sign("prepare-report", report)
        data_ = json_bytes(signed.model_dump(mode="json"))
        path = HubLayout.site_prepared(site.name)
        Ledger(hub, SITE_SCOPE, signer, site.workdir / "ledger").append(
            "prepare-report", path=path, data=data_
        )
        hub.put_bytes(path, data_)
    return Run(root, split, config)


def test_the_honest_run_audits_clean_with_and_without_the_sites_copies(run: Run) -> None:
    assert run.problems(run.hub) == []
    assert run.problems(run.hub, copies=False) == []


def _truncate(hub: Path, scope: str, actor: str, keep: Callable[[dict], bool]) -> int:
    """Delete ``actor``'s entries from the first one ``keep`` rejects on (a rollback)."""
    folder = hub / ledger_dir(scope, actor)
    entries = sorted(folder.iterdir())
    cut = next(
        (i for i, p in enumerate(entries) if not keep(yaml.safe_load(p.read_text()))),
        len(entries),
    )
    for p in entries[cut:]:
        p.unlink()
    return len(entries) - cut


def test_deleted_ledger_entries_are_found(run: Run) -> None:
    # a site's last four entries deleted: the chain that is left still links
    hub = run.tampered("tail")
    folder = hub / ledger_dir(RUN, "site-a")
    for p in sorted(folder.iterdir())[-4:]:
        p.unlink()
    with_copies = run.problems(hub)
    assert any("of site-a's own copy are gone from the hub" in p for p in with_copies)
    # without the site's copy, its objects on the hub are no longer in its chain
    without = run.problems(hub, copies=False)
    assert any("not in site-a's ledger" in p for p in without), without


def test_a_rolled_back_round_is_found(run: Run) -> None:
    # round 3 removed whole: its objects and every party's entries from round 3 on
    hub = run.tampered("rollback")
    shutil.rmtree(hub / "runs" / RUN / "rounds" / "0003")
    for actor in [COORDINATOR, *run.config.site_names]:
        _truncate(hub, RUN, actor, lambda e: (e.get("round") or 0) < 3 and e["kind"] != "best")
    (hub / "runs" / RUN / "best.json").unlink()  # it names round 3
    problems = run.problems(hub)
    for site in run.config.site_names:
        assert any(f"of {site}'s own copy are gone from the hub" in p for p in problems), site
    # the coordinator's chain rolled back under the sites' (their entries kept): their anchors
    # name the openings and models they trained from
    hub = run.tampered("coordinator-rollback")
    (hub / "runs" / RUN / "rounds" / "0003" / "manifest.json").unlink()
    _truncate(hub, RUN, COORDINATOR, lambda e: (e.get("round") or 0) < 3 and e["kind"] != "best")
    problems = run.problems(hub, copies=False)
    assert any(
        "the coordinator's round-open it trained from" in p and "rolled back" in p for p in problems
    ), problems


@pytest.mark.parametrize(
    ("what", "path", "expect"),
    [
        ("an update deleted", "runs/{run}/rounds/0002/sites/site-b/update.npz", "gone"),
        ("a global model deleted", "runs/{run}/rounds/0002/global.npz", "gone"),
        ("a round manifest deleted", "runs/{run}/rounds/0003/manifest.json", "gone"),
        ("the server state edited", "runs/{run}/rounds/0002/server_state.npz", "edited"),
        ("best.json edited", "runs/{run}/best.json", "edited"),
        ("the domain edited", "runs/{run}/domain/support.json", "edited"),
        ("a preparation report edited", "sites/site-c/prepared.json", "edited"),
        ("a file outside the trail", "runs/{run}/rounds/0002/notes.json", "added"),
    ],
)
def test_every_missing_or_edited_object_is_named(run: Run, what: str, path: str, expect: str):
    hub = run.tampered(what.replace(" ", "-"))
    target = hub / path.format(run=RUN)
    if expect == "gone":
        target.unlink()
        want = f"{path.format(run=RUN)} ("
        suffix = "is gone from the hub"
    elif expect == "edited":
        target.write_bytes(target.read_bytes() + b" ")
        want, suffix = path.format(run=RUN), "on the hub is not what was recorded"
    else:
        target.write_text("{}")
        want, suffix = path.format(run=RUN), "not in coordinator's ledger"
    problems = run.problems(hub)
    assert any(want in p and suffix in p for p in problems), (what, problems)


def test_a_reserved_party_name_cannot_substitute_the_coordinators_key(run: Run) -> None:
    assert run.config.trust is not None
    trust = run.config.trust.model_dump(mode="json")
    rogue = new_key_pair(run.root / "rogue", "rogue").public  # a key the attacker holds
    with pytest.raises(ValueError, match="reserved party names"):
        TrustConfig.model_validate({**trust, "sites": {**trust["sites"], "coordinator": rogue}})
    # and the CLI refuses such a config before it audits anything
    cfg = {**run.config.model_dump(mode="json")}
    cfg["trust"] = {**trust, "sites": {**trust["sites"], "coordinator": rogue}}
    path = run.root / "rogue.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli_main(["audit", "verify", "--config", str(path)]) == 2


def test_the_cli_compares_the_sites_copies(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    hub = run.tampered("cli")
    for p in sorted((hub / ledger_dir(RUN, "site-b")).iterdir())[-2:]:
        p.unlink()
    cfg = run.root / "federation.yaml"
    cfg.write_text(yaml.safe_dump({**run.config.model_dump(mode="json"), "hub_url": str(hub)}))
    # the copies the sites keep of what they wrote to the original hub, against the copy
    copies = []
    for s in run.split.sites:
        url = HubStore(run.config.hub_url).url
        copies.append(f"--site-copy={s.name}={copy_dir(s.workdir / 'ledger', url)}")
    assert cli_main(["audit", "verify", "--config", str(cfg), *copies]) == 1
    assert "of site-b's own copy are gone from the hub" in capsys.readouterr().out
