"""The real deployment on one machine: Prefect server, S3 server, a worker per site, 2 x 2 rounds.

Everything goes through the Prefect CLI a CI pipeline would use (``prefect deployment run
... --watch``); the test stops every process it started, by pid. The stack runs fedchem's
worker type (flow runs forked warm) on a PostgreSQL server of its own; one test runs the same
deployments on Prefect's plain ``process`` workers and SQLite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import s3fs
import yaml
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, FlowRunFilterTags
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from fedchem.config import ChemConfig
from fedchem.demo.sites import bundled_dataset
from fedchem.deployments.stack import Stack, stack_down, stack_up

pytestmark = pytest.mark.system
REPO = Path(__file__).resolve().parents[1]


def _stack(base: Path, **kwargs: Any) -> Iterator[Stack]:
    data = base / "tiny.csv"
    pd.read_csv(bundled_dataset()).head(300).to_csv(data, index=False)
    st = stack_up(base / "state", data, n_sites=2, rounds=2, chem=ChemConfig(fp_size=512), **kwargs)
    try:
        yield st
    finally:
        stack_down(base / "state")
        assert [name for name, pid in st.pids.items() if _running(pid)] == []


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = _stack(tmp_path_factory.mktemp("stack"), postgres=True)  # the stack's default here
    yield next(st)
    st.close()


def _site_runs(stack: Stack, run_id: str) -> dict[str, str]:
    """The site runs of a federation (``round-NN/<site>`` -> state name), read with Prefect's
    client."""
    with (
        temporary_settings(
            {
                PREFECT_API_URL: stack.api_url,
                PREFECT_API_AUTH_STRING: stack.env()["PREFECT_API_AUTH_STRING"],
            }
        ),
        get_client(sync_client=True) as client,
    ):
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[f"run:{run_id}"]),
                name=FlowRunFilterName(like_="round-"),
            )
        )
    return {r.name: r.state_name or "" for r in runs}


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


def _run(
    stack: Stack, deployment: str, *extra: str, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).with_name("prefect"))
    return subprocess.run(
        [exe, "deployment", "run", deployment, "--watch", *extra],
        env=stack.env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _hub(stack: Stack, party: str = "operator") -> s3fs.S3FileSystem:
    creds = stack.credentials(party)
    return s3fs.S3FileSystem(
        key=creds.access_key,
        secret=creds.secret_key,
        client_kwargs={"endpoint_url": stack.s3_endpoint},
        skip_instance_cache=True,
    )


def _prepare_and_federate(stack: Stack) -> None:
    for site in stack.sites:
        res = _run(stack, f"site-prepare/{site}-prepare")
        assert res.returncode == 0, res.stdout + res.stderr
    res = _run(stack, "coordinator/coordinator")
    assert res.returncode == 0, res.stdout + res.stderr


def test_sites_prepare_then_two_rounds_commit_on_s3(stack: Stack):
    _prepare_and_federate(stack)
    fs = _hub(stack)
    root = "fedchem-hub/hub/runs/stack-run/rounds"
    manifests = [json.loads(fs.cat(f"{root}/{r:04d}/manifest.json")) for r in (0, 1, 2)]
    assert [m["round"] for m in manifests] == [0, 1, 2]
    for m in manifests[1:]:
        assert m["sites"] == stack.sites and m["missing"] == []
        assert fs.exists(f"fedchem-hub/hub/{m['global_path']}")
    for site in stack.sites:
        assert fs.exists(f"{root}/0002/sites/{site}/update.npz")
    # the hub holds models and manifests only: no SMILES or compound id of any site
    blob = b"".join(fs.cat(p) for p in fs.find("fedchem-hub/hub"))
    for site in stack.sites:
        rows = pd.read_csv(Path(stack.dir) / "sites" / site / "measurements.csv", dtype=str)
        for s in set(rows["smiles"]) | set(rows["compound_id"]):
            if len(s) >= 6:
                assert s.encode() not in blob


def test_the_s3_server_holds_every_party_to_its_own_objects(stack: Stack):
    """After the federation ran: site-b's worker's credentials cannot read site-a's update
    nor overwrite the global model; the coordinator's cannot write a site's update."""
    a, b = stack.sites
    root = "fedchem-hub/hub/runs/stack-run/rounds"
    update_a, global_1 = f"{root}/0001/sites/{a}/update.npz", f"{root}/0001/global.npz"
    original = _hub(stack).cat(global_1)
    site_b, coordinator = _hub(stack, b), _hub(stack, "coordinator")
    assert site_b.cat(global_1) == original  # what b needs: the global model
    with pytest.raises(PermissionError):
        site_b.cat(update_a)
    with pytest.raises(PermissionError):
        site_b.pipe(global_1, b"poisoned")
    with pytest.raises(PermissionError):
        coordinator.pipe(update_a, b"forged")
    assert _hub(stack).cat(global_1) == original
    # the round runs signed: every commit carries the coordinator's signature and the audit
    # of the run is clean
    for r in (0, 1, 2):
        assert json.loads(_hub(stack).cat(f"{root}/{r:04d}/manifest.json"))["signature"]
    fed = yaml.safe_load((Path(stack.dir) / "prefect.yaml").read_text())
    coord = next(d for d in fed["deployments"] if d["name"] == "coordinator")
    cfg = Path(stack.dir) / "federation.yaml"
    cfg.write_text(yaml.safe_dump(coord["parameters"]["config"]))
    res = subprocess.run(
        [str(Path(sys.executable).with_name("fedchem")), "audit", "verify", "--config", str(cfg)],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK: every chain links" in res.stdout


def test_the_federation_is_published_through_its_deployment(stack: Stack):
    """The deployed publish path: each site's calibrate deployment runs on its own worker
    (its part into its own registry), then the coordinator's registry on S3 gets version 1."""
    res = _run(stack, "publish/publish", timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    fs = _hub(stack)
    listing = json.loads(fs.cat("fedchem-hub/registry/models/fedchem/versions/0001/files.json"))
    assert {"model.safetensors", "spec.json", "calibration.json", "card.md"} <= set(
        listing["files"]
    )
    assert json.loads(fs.cat("fedchem-hub/registry/models/fedchem/aliases.json")) == {
        "production": 1
    }
    for site in stack.sites:
        part = Path(stack.dir) / "sites" / site / "registry" / "models" / "fedchem" / "versions"
        assert (part / "0001" / "heads.safetensors").exists()  # stays at the site
        assert fs.exists(f"fedchem-hub/hub/runs/stack-run/calibration/{site}.json")  # counts
    heads = [p for p in fs.find("fedchem-hub") if p.endswith("heads.safetensors")]
    assert heads == []  # no site's part on the coordinator's storage


def _site_paths(pid: int, stack: Stack) -> list[bytes]:
    """The site-data entries of a process's environment."""
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return [e for e in env if e.startswith(b"FEDCHEM_SITE_CONFIG=") or b"/sites/" in e]


def _zygotes(worker: int) -> list[int]:
    """The fork servers a fedchem worker started (one per worker)."""
    return [
        c
        for c in _children(worker)
        if b"fedchem.deployments.zygote" in Path(f"/proc/{c}/cmdline").read_bytes()
    ]


def test_each_site_worker_sees_only_its_own_data(stack: Stack):
    for site in stack.sites:
        mine = [f"FEDCHEM_SITE_CONFIG={Path(stack.dir) / 'sites' / site / 'site.yaml'}".encode()]
        worker = stack.pids[f"worker-{site}"]
        assert _site_paths(worker, stack) == mine
        # the worker's zygote (which forks the site's flow runs) holds the same
        zygotes = _zygotes(worker)
        assert len(zygotes) == 1 and _site_paths(zygotes[0], stack) == mine
    coordinator = stack.pids["worker-coordinator"]
    zygotes = _zygotes(coordinator)
    assert len(zygotes) == 1  # the coordinator's runs start warm too
    for pid in (coordinator, *zygotes):
        env = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"FEDCHEM_SITE_CONFIG" not in env and b"/sites/" not in env


def test_a_site_down_does_not_block_the_federation(stack: Stack):
    # stop site-b's worker; with a quorum of 1 the round waits until its deadline, then
    # commits with site-a and records site-b as missing: once site-a's own policy lets it
    # take part in rounds that commit with one site
    a, b = stack.sites
    pid = stack.pids[f"worker-{b}"]
    os.killpg(pid, signal.SIGTERM)
    os.killpg(pid, signal.SIGTERM)
    params = yaml.safe_load((Path(stack.dir) / "prefect.yaml").read_text())
    config = next(d for d in params["deployments"] if d["name"] == "coordinator")["parameters"][
        "config"
    ]
    quorum_1 = {**config["deployment"], "min_sites": 1, "round_deadline_s": 20}
    config = {**config, "run_id": "degraded", "rounds": 1, "deployment": quorum_1}
    # the demo sites' policies ask for rounds of at least two sites: site-a refuses, naming
    # the clause; the round is recorded as failed, and a run whose last round failed fails
    res = _run(stack, "coordinator/coordinator", "--params", json.dumps({"config": config}))
    assert res.returncode == 1
    refusal = json.loads(
        _hub(stack).cat(f"fedchem-hub/hub/runs/degraded/rounds/0001/sites/{a}/refusal.json")
    )
    assert refusal["clause"] == "min_sites_per_round" and refusal["signature"]
    failed = json.loads(_hub(stack).cat("fedchem-hub/hub/runs/degraded/rounds/0001/manifest.json"))
    assert failed["outcome"] == "failed" and failed["sites"] == [] and failed["signature"]
    assert "min_sites_per_round" in failed["missing_reasons"][a]
    # site-a's admin allows rounds of one site (the policy is read from its disk every round)
    policy_file = Path(stack.dir) / "sites" / a / "policy.yaml"
    policy = yaml.safe_load(policy_file.read_text())
    policy_file.write_text(yaml.safe_dump({**policy, "min_sites_per_round": 1}))
    config = {**config, "run_id": "degraded-2"}
    res = _run(stack, "coordinator/coordinator", "--params", json.dumps({"config": config}))
    assert res.returncode == 0, res.stdout + res.stderr
    m = json.loads(_hub(stack).cat("fedchem-hub/hub/runs/degraded-2/rounds/0001/manifest.json"))
    assert m["sites"] == [a] and m["missing"] == [b]
    # without the quorum, and a fault policy that stops at a failed round, the run fails (exit
    # code 1) after recording round 1 as failed; the runs it had booked for round 2 (one round
    # ahead) end Cancelled, the one already waiting at site-a's worker included
    quorum_2 = {**config["deployment"], "min_sites": 2, "round_deadline_s": 10, "book_ahead": 1}
    stop = {**config["faults"], "failed_rounds": "stop"}
    strict = {**config, "run_id": "strict", "rounds": 2, "deployment": quorum_2, "faults": stop}
    res = _run(stack, "coordinator/coordinator", "--params", json.dumps({"config": strict}))
    assert res.returncode == 1
    failed = json.loads(_hub(stack).cat("fedchem-hub/hub/runs/strict/rounds/0001/manifest.json"))
    assert failed["outcome"] == "failed" and failed["missing"] == [b]
    assert not _hub(stack).exists("fedchem-hub/hub/runs/strict/rounds/0002/manifest.json")
    # every run the coordinator started ended before it did: no waiting here
    runs = _site_runs(stack, "strict")
    assert runs == {
        f"round-01/{a}": "Completed",
        f"round-01/{b}": "Cancelled",
        f"round-02/{a}": "Cancelled",
        f"round-02/{b}": "Cancelled",
    }


def test_the_plain_process_worker_and_sqlite_run_the_same_deployments(
    tmp_path_factory: pytest.TempPathFactory,
):
    stacks = _stack(tmp_path_factory.mktemp("process"), worker="process", postgres=False)
    st = next(stacks)
    try:
        assert st.database == "sqlite" and "postgres" not in st.pids
        assert _zygotes(st.pids[f"worker-{st.sites[0]}"]) == []  # a fresh process per run
        _prepare_and_federate(st)
        m = json.loads(_hub(st).cat("fedchem-hub/hub/runs/stack-run/rounds/0002/manifest.json"))
        assert m["sites"] == st.sites and m["missing"] == []
        assert set(_site_runs(st, "stack-run").values()) == {"Completed"}
    finally:
        stacks.close()


def test_the_control_plane_needs_its_secret_and_a_site_refuses_a_redirect(
    stack: Stack, tmp_path: Path
) -> None:
    """Prefect's API answers only with the stack's auth string; and a caller who holds it
    (an operator, the coordinator's worker) still cannot point a site's run at its own Dask
    scheduler or workdir: the site's worker refuses, and its ledger says so."""
    import httpx

    user, _, password = stack.env()["PREFECT_API_AUTH_STRING"].partition(":")
    assert httpx.post(f"{stack.api_url}/flows/filter", json={}).status_code == 401
    wrong = httpx.post(f"{stack.api_url}/flows/filter", json={}, auth=(user, "guessed"))
    assert wrong.status_code == 401
    assert httpx.post(f"{stack.api_url}/flows/filter", json={}, auth=(user, password)).is_success
    a = stack.sites[0]
    own = yaml.safe_load((Path(stack.dir) / "sites" / a / "site.yaml").read_text())["site"]
    stolen = tmp_path / "attacker"
    redirect = {**own, "workdir": str(stolen), "dask_address": "tcp://127.0.0.1:9"}
    res = _run(stack, f"site-prepare/{a}-prepare", "--params", json.dumps({"site": redirect}))
    assert res.returncode == 1, res.stdout
    assert not stolen.exists()
    ledger = _hub(stack).find(f"fedchem-hub/hub/ledger/_site/{a}")
    kinds = [json.loads(_hub(stack).cat(p)) for p in ledger]
    assert any(e["kind"] == "refused-parameter" and e["subject"] == "site" for e in kinds)
