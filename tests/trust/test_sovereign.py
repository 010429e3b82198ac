"""A site owns its configuration: whoever starts its flows (a hostile coordinator, anyone who
reaches the Prefect API) cannot point its data, its Dask work, its key or its updates anywhere
its own config does not name, nor make it train with settings the coordinator did not sign or
its policy does not allow. Each attack first, then what the site does instead."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from fedchem.config import (
    SITE_CONFIG_ENV,
    ChemConfig,
    ModelConfig,
    PrepareConfig,
    SiteConfig,
    SiteRef,
    TrainConfig,
)
from fedchem.demo.sites import DemoSplit, bundled_dataset, split_into_sites
from fedchem.federation.coordinator import round_settings
from fedchem.messages import FitInstructions, RoundOpen, RoundPlan
from fedchem.storage.hub import HubStore
from fedchem.trust.ledger import copy_dir
from fedchem.trust.signing import COORDINATOR, Signer
from fedchem.trust.site import PolicyRefused, SiteGuard
from fedchem.trust.sovereign import check_featurizer, own_site

CHEM = ChemConfig(fp_size=256)


@dataclass
class Worker:
    """Site a's own worker: its config file (with its hub) in the environment."""

    split: DemoSplit
    own: SiteConfig
    hub: Path

    @property
    def ledger(self) -> list[dict[str, Any]]:
        mine = copy_dir(self.own.workdir / "ledger", HubStore(str(self.hub)).url)
        path = mine / "_site.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Worker:
    data = tmp_path / "tiny.csv"
    pd.read_csv(bundled_dataset()).head(300).to_csv(data, index=False)
    split = split_into_sites(data, "smiles", 2, tmp_path / "sites", seed=3)
    hub = tmp_path / "hub"
    own = split.sites[0].model_copy(
        update={"hub_url": str(hub), "registries": [str(tmp_path / "registry")]}
    )
    config = tmp_path / "sites" / own.name / "site.yaml"
    config.write_text(
        yaml.safe_dump(PrepareConfig(site=own, chem=CHEM).model_dump(mode="json"), sort_keys=False)
    )
    monkeypatch.setenv(SITE_CONFIG_ENV, str(config))
    return Worker(split, own, hub)


def _refused(fn: Any, **kw: Any) -> PolicyRefused:
    with pytest.raises(PolicyRefused) as caught:
        fn(**kw)
    return caught.value


def test_a_full_site_config_passed_to_the_sites_worker_is_refused_and_recorded(
    worker: Worker, tmp_path: Path
) -> None:
    # the attack of the issue: the caller's Dask scheduler and a fresh workdir (a fresh
    # privacy budget) in a full config for site-a, to site-a's own worker
    stolen = tmp_path / "attacker"
    redirect = worker.own.model_copy(
        update={"workdir": stolen, "dask_address": "tcp://203.0.113.7:8786"}
    )
    refused = _refused(own_site, site=redirect, hub_url=str(worker.hub))
    assert refused.clause == "parameters" and refused.reason.startswith("site: a full site config")
    # even its own config, verbatim, is not taken from a parameter
    assert _refused(own_site, site=worker.own).clause == "parameters"
    assert not stolen.exists()  # nothing ran, nothing was written where the caller said
    recorded = [e for e in worker.ledger if e["kind"] == "refused-parameter"]
    assert [e["subject"] for e in recorded] == ["site"] and recorded[0]["signature"]
    # the site's name alone gets the site's own config
    assert own_site(SiteRef(name="site-a"), hub_url=str(worker.hub)) == worker.own
    # a worker serves one site: another's name is not its business
    with pytest.raises(ValueError, match="this worker serves site 'site-a', not 'site-b'"):
        own_site(SiteRef(name="site-b"))


def test_the_site_flow_refuses_the_redirect_before_touching_its_data(
    prefect_api: None, worker: Worker, tmp_path: Path
) -> None:
    from fedchem.flows.site_prepare import site_prepare

    stolen = tmp_path / "attacker"
    redirect = worker.own.model_copy(
        update={"workdir": stolen, "dask_address": "tcp://203.0.113.7:8786"}
    )
    # a Dask client to that address would fail to connect: the refusal comes first
    with pytest.raises(PolicyRefused, match="a full site config was passed"):
        site_prepare(site=redirect, hub_url=str(worker.hub), chem=CHEM)
    assert not stolen.exists()
    # the honest call, by name, prepares at the site and publishes its counts to its hub
    report = site_prepare(site=SiteRef(name="site-a"), hub_url=str(worker.hub), chem=CHEM)
    assert report.rows_in == report.rows_accepted + report.rows_quarantined
    assert (worker.hub / "sites" / "site-a" / "prepared.json").exists()


def test_locations_the_sites_config_does_not_name_are_refused(
    worker: Worker, tmp_path: Path
) -> None:
    site = SiteRef(name="site-a")
    tried = {
        "hub_url": _refused(own_site, site=site, hub_url=str(tmp_path / "attackers-hub")),
        "registry": _refused(own_site, site=site, registries=["s3://attackers/registry"]),
        "path": _refused(own_site, site=site, paths=["/etc/passwd"]),
        "path (a remote output)": _refused(own_site, site=site, paths=["s3://attackers/out.csv"]),
    }
    for what, refused in tried.items():
        assert refused.clause == "parameters", what
        assert refused.reason.split(":")[0] == what.split(" ")[0], refused.reason
    # what the config names is taken
    batch = worker.own.workdir / "batch"
    own_site(
        site,
        hub_url=str(worker.hub) + "/",
        registries=[str(tmp_path / "registry"), worker.own.registry_url()],
        paths=[str(batch / "in.csv"), str(batch / "out" / "scored.csv")],
    )
    subjects = [e["subject"] for e in worker.ledger if e["kind"] == "refused-parameter"]
    assert subjects == ["hub_url", "registry", "path"]  # the same refusal is recorded once


def test_a_plug_in_featurizer_runs_only_when_the_sites_policy_names_it(
    worker: Worker,
) -> None:
    # a featurizer is code run on the site's molecules: "package.module:function" from a
    # caller would run whatever is importable there
    for name in ("os:system", "shutil:rmtree", "fedchem.chem.fingerprints:morgan_bits"):
        refused = _refused(
            check_featurizer, site=worker.own, chem=CHEM.model_copy(update={"featurizer": name})
        )
        assert refused.reason.startswith("chem.featurizer:"), refused.reason
    check_featurizer(worker.own, CHEM)  # morgan: built in
    assert worker.own.policy_file is not None
    policy = yaml.safe_load(worker.own.policy_file.read_text())
    policy["training"] = {"featurizers": ["morgan", "fedchem.chem.fingerprints:morgan_bits"]}
    worker.own.policy_file.write_text(yaml.safe_dump(policy))
    check_featurizer(
        worker.own, CHEM.model_copy(update={"featurizer": "fedchem.chem.fingerprints:morgan_bits"})
    )


def _opening(split: DemoSplit, settings: dict[str, Any], lr_factor: float = 1.0) -> RoundOpen:
    plan = RoundPlan(
        strategy="fedavgm",
        sites=[s.name for s in split.sites],
        quorum=2,
        rounds=3,
        heads="shared",
        settings=settings,
    )
    doc = RoundOpen(
        run_id="r1",
        round=1,
        ticket="t",
        fit=FitInstructions(lr_factor=lr_factor),
        opened_at="2026-12-07T00:00:00Z",
        plan=plan,
    )
    assert split.trust.coordinator_key_file is not None
    return Signer.from_file(COORDINATOR, split.trust.coordinator_key_file).sign("round-open", doc)


def test_the_site_trains_only_the_signed_settings_within_its_limits(worker: Worker) -> None:
    model, train = ModelConfig(hidden=64), TrainConfig(batch_size=32)
    guard = SiteGuard.load(worker.own)
    signed = _opening(worker.split, round_settings(CHEM, model, train))
    guard.check_settings(signed, CHEM, model, train)  # as signed: taken
    # a flow parameter that differs from what the coordinator signed
    for chem, m, t, what in [
        (CHEM.model_copy(update={"test_fold": 1}), model, train, "chem"),
        (CHEM, model, train.model_copy(update={"local_epochs": 50}), "train"),
        (CHEM, ModelConfig(hidden=4096), train, "model"),
    ]:
        refused = _refused(guard.check_settings, opened=signed, chem=chem, model=m, train=t)
        assert refused.clause == "settings" and refused.reason.startswith(what), refused.reason
    # settings the coordinator did sign, beyond the site's limits
    over = [
        (train.model_copy(update={"local_epochs": 11}), model, 1.0, "training.max_local_epochs"),
        (train.model_copy(update={"lr": 0.5}), model, 1.0, "training.lr"),
        (train, model, 1000.0, "training.lr"),  # the schedule's factor counts too
        (train.model_copy(update={"batch_size": 1}), model, 1.0, "training.min_batch_size"),
        (train, ModelConfig(hidden=16384), 1.0, "training.max_hidden"),
        (train, ModelConfig(depth=4, hidden=64), 1.0, None),  # at the limit: taken
    ]
    for t, m, factor, clause in over:
        opened = _opening(worker.split, round_settings(CHEM, m, t), factor)
        if clause is None:
            guard.check_settings(opened, CHEM, m, t)
        else:
            refused = _refused(guard.check_settings, opened=opened, chem=CHEM, model=m, train=t)
            assert refused.clause == clause, (refused.clause, refused.reason)
    # an opening without signed settings is not trained
    bare = _opening(worker.split, {})
    assert (
        _refused(guard.check_settings, opened=bare, chem=CHEM, model=model, train=train).clause
        == "settings"
    )
