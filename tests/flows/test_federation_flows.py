"""2 sites x 2 rounds through the real Prefect flows on a tiny slice of Tox21.

Also the privacy promise: no SMILES or compound id from any site's rows appears in the hub,
in what the coordinator returns, or in any Prefect log record of the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from fedchem.config import ChemConfig, FederationConfig, ModelConfig, TrainConfig
from fedchem.demo.sites import bundled_dataset, split_into_sites
from fedchem.federation.consistency import ConsistencyError
from fedchem.messages import PrepareReport
from fedchem.policy import PrivacyConfig, TrustConfig
from fedchem.storage.hub import HubLayout, HubStore
from fedchem.trust.signing import SignatureRejected, Signer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "tox21_tiny.csv"
    pd.read_csv(bundled_dataset()).head(400).to_csv(out, index=False)
    return out


def _private_strings(site_dirs: list[Path]) -> set[str]:
    private: set[str] = set()
    for d in site_dirs:
        m = pd.read_csv(d / "measurements.csv", dtype=str)
        private |= {s for s in m["smiles"].dropna() if len(s) >= 6}
        private |= set(m["compound_id"].dropna())
    return private


async def _all_logs() -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()  # records are sent in batches; make sure all of this run's are in
    async with get_client() as client:
        logs = await client.read_logs(limit=200, offset=0)
        out, offset = [], 0
        while logs:
            out += [log.message for log in logs]
            offset += len(logs)
            logs = await client.read_logs(limit=200, offset=offset)
        return out


def test_two_sites_two_rounds_through_prefect(
    prefect_api: None, tiny_dataset: Path, tmp_path: Path
):
    from fedchem.flows.coordinator import coordinator
    from fedchem.flows.site_prepare import site_prepare

    split = split_into_sites(tiny_dataset, "smiles", 2, tmp_path / "sites", seed=3)
    chem, hub_url = ChemConfig(fp_size=512), str(tmp_path / "hub")
    reports = [
        site_prepare(site=s, chem=chem, tasks=split.tasks, hub_url=hub_url) for s in split.sites
    ]
    for r in reports:
        assert r.rows_in == r.rows_accepted + r.rows_quarantined and r.n_molecules > 0

    config = FederationConfig(
        run_id="t1",
        hub_url=hub_url,
        sites=split.sites,
        tasks=split.tasks,
        rounds=2,
        chem=chem,
        model=ModelConfig(hidden=32),
        train=TrainConfig(batch_size=32),
        trust=split.trust,
    )
    committed = coordinator(config)

    hub, layout = HubStore(hub_url), HubLayout("t1")
    assert [m.round for m in committed] == [0, 1, 2]
    for m in committed:
        assert hub.get_json(layout.round_manifest(m.round))["global_sha256"] == m.global_sha256
        assert hashlib.sha256(hub.get_bytes(m.global_path)).hexdigest() == m.global_sha256
    assert committed[2].sites == ["site-a", "site-b"]
    assert set(committed[2].n_examples) == {"site-a", "site-b"}
    assert committed[1].global_sha256 != committed[2].global_sha256

    private = _private_strings([tmp_path / "sites" / s.name for s in split.sites])
    assert len(private) > 100
    files = hub.list_files()
    assert all(p.endswith((".json", ".npz")) for p in files)
    blob = b"".join(hub.get_bytes(p) for p in files)
    returned = json.dumps([m.model_dump(mode="json") for m in committed])
    logs = "\n".join(asyncio.run(_all_logs()))
    assert "round 2 committed" in logs
    for s in private:
        assert s.encode() not in blob, "a site's row reached the hub"
        assert s not in returned and s not in logs

    # and nothing of theirs is anywhere in the orchestrator's database: every flow and task
    # run, parameter, state, log and artifact of the federation, read as stored
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    db = Path(str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value()).split("///", 1)[1])
    stored = b"".join(p.read_bytes() for p in db.parent.glob(f"{db.name}*"))
    assert b"round-02/site-b" in stored  # the runs are there
    leaked = [s for s in private if s.encode() in stored]
    assert leaked == [], f"site data in the Prefect database: {leaked[:5]}"

    # site preparation showed its progress in the UI (counts only)
    artifact = asyncio.run(_artifact("prepare-site-a"))
    assert artifact is not None and artifact["type"] == "progress" and artifact["data"] == 100.0

    # a report altered on the hub is refused: it is no longer its site's signed one
    prepared = HubLayout.site_prepared("site-b")
    doc = hub.get_json(prepared)
    doc["consistency"]["key"] = "0" * 16
    hub.put_json(prepared, doc)
    with pytest.raises(SignatureRejected, match="bad signature on prepare-report from site-b"):
        coordinator(config.model_copy(update={"run_id": "t2"}))
    # a site whose pipeline disagrees (here: another key; its own signed report) stops the
    # next federation
    signer = Signer.from_file("site-b", split.sites[1].signing_key_file)
    hub.put_json(
        prepared,
        signer.sign("prepare-report", PrepareReport.model_validate(doc)).model_dump(mode="json"),
    )
    with pytest.raises(ConsistencyError, match="site site-b differs on key"):
        coordinator(config.model_copy(update={"run_id": "t2"}))
    assert not hub.exists(HubLayout("t2").round_manifest(0))


async def _artifact(key: str) -> dict | None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.UPDATED_DESC,
            limit=5,
        )
        return found[0].model_dump(mode="json") if found else None


def test_demo_flow_writes_the_comparison(prefect_api: None, tiny_dataset: Path, tmp_path: Path):
    from fedchem.flows.demo import demo

    rep = demo(
        dataset=tiny_dataset,
        smiles_col="smiles",
        n_sites=2,
        rounds=2,
        out=tmp_path / "out",
        seed=0,
        run_id="demo-test",
        chem=ChemConfig(fp_size=512),
        model=ModelConfig(hidden=32),
        train=TrainConfig(batch_size=32),
    )
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved == json.loads(json.dumps(rep))
    # the demo's trust can be checked: its federation YAML, its sites' own ledger copies
    from fedchem.cli import main as cli_main

    copies = [
        f"--site-copy={s}={tmp_path / 'out' / 'sites' / s / 'work' / 'ledger'}"
        for s in ("site-a", "site-b")
    ]
    fed_yaml = str(tmp_path / "out" / "federation.yaml")
    assert cli_main(["audit", "verify", "--config", fed_yaml, *copies]) == 0
    for model in ("federated", "local", "pooled"):
        per_site = saved[model]["per_site"]
        assert set(per_site) == {"site-a", "site-b"}
        scored = [v["roc_auc"] for v in per_site.values() if v["roc_auc"] is not None]
        assert saved[model]["overall"]["roc_auc"] == pytest.approx(sum(scored) / len(scored))
    # the federated row is the committed last round scored again at each site, from the hub
    from fedchem.config import SiteConfig
    from fedchem.federation.site import evaluate_global_at_site

    for name, row in saved["federated"]["per_site"].items():
        d = tmp_path / "out" / "sites" / name
        site = SiteConfig(
            name=name,
            measurements=d / "measurements.csv",
            assays=d / "assays.csv",
            workdir=d / "work",
            key_file=d / "consortium.key",
            signing_key_file=d / "site.key",
            policy_file=d / "policy.yaml",
        )
        again = evaluate_global_at_site(
            site,
            HubStore(str(tmp_path / "out" / "hub")),
            "demo-test",
            2,
            ChemConfig(fp_size=512),
            ModelConfig(hidden=32),
        )
        if row["roc_auc"] is None:  # a tiny test fold without a task of both classes
            assert "mean_roc_auc" not in again.summary
        else:
            assert again.summary["mean_roc_auc"] == pytest.approx(row["roc_auc"], abs=1e-12)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| federated | **all** |" in md
    # each site personalized the published model; it left the federated model as it is unless
    # a fine-tuned option was better on validation with confidence
    from fedchem.federation.finetune import PERSONALIZATIONS

    chosen = saved["meta"]["personalized"]
    assert set(chosen) == set(saved["personalized"]["per_site"]) == {"site-a", "site-b"}
    for c in chosen.values():
        assert c["choice"] in PERSONALIZATIONS
        assert c["choice"] == "federated" or c["gain_lower"][c["choice"]] > 0
    assert "| personalized | **all** |" in md and "Personalized: each site's choice" in md
    # the cross-site matrix: every model on every site's test fold; its diagonal of local
    # models and its federated row are the per-site numbers above
    matrix = saved["cross_site"]["matrix"]
    assert saved["cross_site"]["metric"] == "roc_auc" and "Cross-site evaluation" in md
    assert set(matrix) == {"federated", "local:site-a", "local:site-b", "pooled"}
    for site in ("site-a", "site-b"):
        assert matrix[f"local:{site}"][site] == saved["local"]["per_site"][site]["roc_auc"]
        assert matrix["federated"][site] == saved["federated"]["per_site"][site]["roc_auc"]
        other = "site-b" if site == "site-a" else "site-a"
        if matrix["federated"][site] is not None:  # a test fold with a scorable task
            assert 0.0 <= matrix[f"local:{other}"][site] <= 1.0
        else:
            assert matrix[f"local:{other}"][site] is None
    assert any(v is not None for v in matrix["local:site-b"].values())
    hub = HubStore(str(tmp_path / "out" / "hub"))
    assert hub.exists(HubLayout("demo-test").baseline_model("site-a"))


def test_private_heads_demo_keeps_local_models_at_their_sites(
    prefect_api: None, tiny_dataset: Path, tmp_path: Path
):
    from fedchem.flows.demo import demo

    rep = demo(
        dataset=tiny_dataset,
        smiles_col="smiles",
        n_sites=2,
        rounds=2,
        out=tmp_path / "out",
        seed=0,
        run_id="demo-private",
        chem=ChemConfig(fp_size=256),
        model=ModelConfig(hidden=16),
        train=TrainConfig(batch_size=32, select="best_valid"),
        heads="private",
        task_split="disjoint",
        privacy=PrivacyConfig(level="site", clip=1.0, noise_multiplier=2.0),
    )
    assert "cross_site" not in rep
    # site-level DP through the flows: the epsilon of two releases at z = 2, in the report
    dp = rep["meta"]["privacy"]
    assert dp["level"] == "site" and dp["epsilon_run"] == pytest.approx(2.943, abs=2e-3)
    assert (
        "site-level DP (clip 1, noise multiplier 2): epsilon 2.943"
        in (tmp_path / "out" / "report.md").read_text()
    )
    # every model is selected on validation: a round (federated, per site) or an epoch
    for model in ("federated", "local", "pooled"):
        assert {p["selected"] for p in rep[model]["per_site"].values()} <= {1, 2}
    assert "best on the validation fold" in (tmp_path / "out" / "report.md").read_text()
    assert sum(rep["meta"]["tasks_per_site"].values()) == 12
    files = HubStore(str(tmp_path / "out" / "hub")).list_files("runs/demo-private")
    assert files and not any("/baselines/" in f for f in files)


def _prepared_sites(
    tmp_path: Path, tiny_dataset: Path, n: int = 2
) -> tuple[list, list, str, TrustConfig]:
    from fedchem.flows.site_prepare import site_prepare

    split = split_into_sites(tiny_dataset, "smiles", n, tmp_path / "sites", seed=3)
    hub_url = str(tmp_path / "hub")
    for s in split.sites:
        site_prepare(site=s, chem=ChemConfig(fp_size=256), tasks=split.tasks, hub_url=hub_url)
    return split.sites, split.tasks, hub_url, split.trust


def test_a_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(
    prefect_api: None, tiny_dataset: Path, tmp_path: Path
):
    from fedchem.federation.coordinator import ResumeError
    from fedchem.flows.coordinator import coordinator

    sites, tasks, hub_url, trust = _prepared_sites(tmp_path, tiny_dataset)
    base = FederationConfig(
        run_id="ref",
        hub_url=hub_url,
        sites=sites,
        tasks=tasks,
        rounds=3,
        chem=ChemConfig(fp_size=256),
        model=ModelConfig(hidden=16),
        train=TrainConfig(batch_size=32),
        heads="private",
        trust=trust,
    )
    reference = coordinator(base)[-1]
    hub, layout = HubStore(hub_url), HubLayout("cut")
    # stopped after round 1, then again mid-aggregation of round 2: its global model and the
    # sites' updates are on the hub, its manifest is not, so round 2 is uncommitted
    coordinator(base.model_copy(update={"run_id": "cut", "rounds": 2}))
    hub.fs.rm(hub._path(layout.round_manifest(2)))
    updates_before = {s.name: hub.get_bytes(layout.site_update(2, s.name)) for s in sites}
    resumed = coordinator(base.model_copy(update={"run_id": "cut"}))
    assert [m.round for m in resumed] == [0, 1, 2, 3]
    assert resumed[-1].global_sha256 == reference.global_sha256  # bitwise, private heads too
    # the sites answered round 2 again with the updates they had published, not new ones
    for s in sites:
        assert hub.get_bytes(layout.site_update(2, s.name)) == updates_before[s.name]
        # Adam's state is kept for the last two rounds only; private heads for every round
        state = s.workdir / "runs" / "cut"
        assert sorted(p.name for p in state.glob("optimizer-*")) == [
            "optimizer-0002.pt",
            "optimizer-0003.pt",
        ]
        assert len(list(state.glob("private_head-*.npz"))) == 3
    # the UI screenshot script finds the newest coordinator run and its page
    from prefect.settings import PREFECT_API_URL

    from fedchem.deployments.screenshot import browser_command, latest_coordinator_run, run_page

    api = PREFECT_API_URL.value()
    run = latest_coordinator_run(api)
    assert run.name == "federation/cut" and run.state_name == "Completed"
    page = run_page(api, str(run.id))
    assert page.endswith(f"/runs/flow-run/{run.id}") and "/api/" not in page
    assert f"--screenshot={tmp_path}/x.png" in browser_command("chromium", page, tmp_path / "x.png")
    # a run id on the hub with other model settings is not resumed
    changed = base.model_copy(update={"run_id": "cut", "train": TrainConfig(lr=0.01)})
    with pytest.raises(ResumeError, match="other settings in: train"):
        coordinator(changed)


def test_a_failing_site_is_missing_and_the_round_goes_on_with_the_quorum(
    prefect_api: None, tiny_dataset: Path, tmp_path: Path
):
    from fedchem.config import DeploymentConfig, FaultConfig
    from fedchem.federation.driver import FederationStopped
    from fedchem.flows.coordinator import coordinator

    sites, tasks, hub_url, trust = _prepared_sites(tmp_path, tiny_dataset, n=3)
    broken = sites[2].model_copy(update={"workdir": tmp_path / "nowhere"})  # its data is gone
    config = FederationConfig(
        run_id="tolerate",
        hub_url=hub_url,
        sites=[*sites[:2], broken],
        tasks=tasks,
        rounds=1,
        chem=ChemConfig(fp_size=256),
        model=ModelConfig(hidden=16),
        train=TrainConfig(batch_size=32),
        deployment=DeploymentConfig(min_sites=2),
        trust=trust,
    )
    m1 = coordinator(config)[-1]
    assert m1.sites == ["site-a", "site-b"] and m1.missing == ["site-c"]
    assert m1.missing_reasons["site-c"] == "site run failed"
    strict = config.model_copy(
        update={"run_id": "strict", "faults": FaultConfig(policy="strict", failed_rounds="stop")}
    )
    with pytest.raises(
        FederationStopped, match=r"round 1 failed \(2 accepted update\(s\), quorum is 3"
    ):
        coordinator(strict)
    failed = HubStore(hub_url).get_json(HubLayout("strict").round_manifest(1))
    assert failed["outcome"] == "failed" and failed["missing"] == ["site-c"]


def _worker_of(site: str, hub_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as ``site``'s own worker: its config (its hub; data never read here)."""
    import yaml

    from fedchem.config import SITE_CONFIG_ENV, PrepareConfig, SiteConfig

    own = SiteConfig(
        name=site,
        measurements=tmp_path / "absent.csv",
        assays=tmp_path / "absent-assays.csv",
        workdir=tmp_path / "work",
        key_file=tmp_path / "absent.key",
        hub_url=hub_url,
    )
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(PrepareConfig(site=own).model_dump(mode="json")))
    monkeypatch.setenv(SITE_CONFIG_ENV, str(path))


def test_a_booked_site_run_of_a_replaced_coordinator_ends_cancelled(
    prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run booked ahead waits for its round's opening; when a newer coordinator attempt
    opened the round instead, the run ends Cancelled without touching the site's data."""
    from fedchem.config import SiteRef
    from fedchem.federation.rounds import new_ticket, open_round
    from fedchem.flows.site_round import site_round
    from fedchem.messages import FitInstructions

    hub_url = str(tmp_path / "hub")
    _worker_of("nowhere", hub_url, tmp_path, monkeypatch)
    old, new = new_ticket(1_000.0), new_ticket(2_000.0)
    open_round(HubStore(hub_url), "booked", 2, new, FitInstructions())
    state = site_round(
        site=SiteRef(name="nowhere"),
        hub_url=hub_url,
        run_id="booked",
        round=2,
        chem=ChemConfig(),
        model=ModelConfig(),
        train=TrainConfig(),
        ticket=old,
        open_timeout_s=30,
        return_state=True,
    )
    assert state.is_cancelled() and "superseded" in (state.message or "")


def test_a_booked_site_run_of_a_withdrawn_round_ends_cancelled(
    prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The federation stopped before the round a run was booked for: the coordinator withdrew
    the round under its own ticket, and the waiting run ends at once, Cancelled, untrained."""
    from fedchem.config import SiteRef
    from fedchem.federation.rounds import new_ticket, withdraw_round
    from fedchem.flows.site_round import site_round

    hub_url = str(tmp_path / "hub")
    _worker_of("nowhere", hub_url, tmp_path, monkeypatch)
    ticket = new_ticket()
    withdraw_round(HubStore(hub_url), "stopped", 3, ticket)
    state = site_round(
        site=SiteRef(name="nowhere"),
        hub_url=hub_url,
        run_id="stopped",
        round=3,
        chem=ChemConfig(),
        model=ModelConfig(),
        train=TrainConfig(),
        ticket=ticket,
        open_timeout_s=30,
        return_state=True,
    )
    assert state.is_cancelled() and (state.message or "").startswith("withdrawn: round 3")


def test_a_secure_round_through_prefect_runs_the_same_protocol(
    prefect_api: None, tiny_dataset: Path, tmp_path: Path
) -> None:
    """Local mode with secure aggregation: each site's steps are subflows the coordinator's
    flow drives; the round commits from the unmasked sum and the hub holds masked updates."""
    from fedchem.flows.coordinator import coordinator
    from fedchem.model.state import load_arrays
    from fedchem.policy import SecAggPlan

    sites, tasks, hub_url, trust = _prepared_sites(tmp_path, tiny_dataset, n=3)
    config = FederationConfig(
        run_id="secure",
        hub_url=hub_url,
        sites=sites,
        tasks=tasks,
        rounds=1,
        chem=ChemConfig(fp_size=256),
        model=ModelConfig(hidden=16),
        train=TrainConfig(batch_size=32),
        trust=trust,
        secure_aggregation=SecAggPlan(),
    )
    m1 = coordinator(config)[-1]
    assert m1.outcome == "aggregated" and m1.aggregation == "fedavgm+secagg"
    assert m1.sites == ["site-a", "site-b", "site-c"]
    hub = HubStore(hub_url)
    stored = load_arrays(hub.get_bytes(HubLayout("secure").site_update(1, "site-a")))
    assert set(stored) == {"masked"}
    for name in ("roster", "cohort", "survivors", "consistent"):
        assert hub.exists(HubLayout("secure").secagg(1, name))


async def _flow_run_names_since(t0: object) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime

    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=t0)),
            limit=200,
        )
    return [r.name for r in runs]


def test_the_demo_at_many_sites_runs_each_site_step_as_one_task_not_a_subflow_per_site(
    prefect_api: None, tmp_path: Path
):
    """``simulation.engine: dask``: preparing, the rounds, evaluating, the local baselines,
    the cross-site scores and the calibrations run in Dask workers, one task run a step; the
    report, the signed audit trail and the logs are what the subflow path gives."""
    from datetime import UTC, datetime

    from fedchem.cli import main as cli_main
    from fedchem.config import SimulationConfig
    from fedchem.flows.demo import demo

    data = tmp_path / "tox21_small.csv"  # folds large enough to compare versions on
    pd.read_csv(bundled_dataset()).head(1500).to_csv(data, index=False)
    t0 = datetime.now(UTC)
    rep = demo(
        dataset=data,
        smiles_col="smiles",
        n_sites=3,
        rounds=1,
        out=tmp_path / "out",
        seed=0,
        run_id="demo-dask",
        chem=ChemConfig(fp_size=512),
        model=ModelConfig(hidden=32),
        train=TrainConfig(batch_size=32),
        simulation=SimulationConfig(engine="dask", workers=2),
        personalize=False,
        cycles=2,
    )
    names = asyncio.run(_flow_run_names_since(t0))
    # the demo, its coordinator, publish and continual flows (cycle 2: the coordinator and
    # publish again); not one run per site step
    assert sorted(names) == [
        "continual/tox21_small",
        "demo/demo-dask",
        "federation/demo-dask",
        "federation/demo-dask-cycle-2",
        "publish/tox21_small",
        "publish/tox21_small",
    ]
    sites = {"site-a", "site-b", "site-c"}
    for model in ("federated", "local", "pooled"):
        assert set(rep[model]["per_site"]) == sites
    matrix = rep["cross_site"]["matrix"]
    assert set(matrix) == {"federated", "pooled", *(f"local:{s}" for s in sites)}
    assert all(set(row) == sites for row in matrix.values())
    # every site calibrated (in its worker), signed: the audit checks every party's chain
    hub = HubStore(str(tmp_path / "out" / "hub"))
    assert all(hub.exists(HubLayout("demo-dask").site_calibration(s)) for s in sites)
    copies = [
        f"--site-copy={s}={tmp_path / 'out' / 'sites' / s / 'work' / 'ledger'}" for s in sites
    ]
    fed_yaml = str(tmp_path / "out" / "federation.yaml")
    assert cli_main(["audit", "verify", "--config", fed_yaml, *copies]) == 0
    private = _private_strings([tmp_path / "out" / "sites" / s for s in sites])
    logs = asyncio.run(_all_logs())
    assert any("evaluate: 3 of 3 sites done" in line for line in logs)
    # cycle 2: every site validated candidate and production (in its worker), and scored
    # both on its test fold
    later = rep["meta"]["cycles"][1]
    assert set(later["per_site"]) == sites and set(later["test_paired"]) == sites
    assert any("validate: 3 of 3 sites done" in line for line in logs)
    assert not [line for line in logs for p in private if p in line]
