"""fedchem as a user gets it: the built wheel in a fresh virtualenv, run from an empty directory.

The wheel must carry everything the commands need (contracts, the reference set, demo data, the
deployment template) under the ``fedchem`` namespace, with no generic top-level package, and
Prefect must find fedchem's worker type through the installed entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.system
REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PREFECT_", "VIRTUAL"))
    }
    env.update(PREFECT_HOME=str(cwd / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res


def test_the_wheel_installs_into_a_fresh_venv_and_runs_the_demo_anywhere(tmp_path: Path):
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("fedchem-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"fedchem"}  # no `flows`, `tasks`
    for shipped in (
        "fedchem/flows/coordinator.py",
        "fedchem/tasks/rounds.py",
        "fedchem/deployments/worker.py",
        "fedchem/deployments/prefect.yaml",
        "fedchem/data_contracts/measurements.odcs.yaml",
        "fedchem/data_contracts/assays.odcs.yaml",
        "fedchem/chem/data/reference_set.smi",
        "fedchem/demo/tox21.csv.gz",
    ):
        assert shipped in names, shipped
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(wheel).read(meta).decode()
    assert "[prefect.collections]" in entry_points and "fedchem.deployments.worker" in entry_points

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, "torch==2.13.0"], cwd=tmp_path)  # the CPU build, as the Makefile installs it
    _run([*pip, str(wheel)], cwd=tmp_path)

    empty = tmp_path / "somewhere-else"
    empty.mkdir()
    python = str(venv / "bin" / "python")
    where = _run([python, "-c", "import fedchem; print(fedchem.__file__)"], cwd=empty)
    assert where.stdout.strip().startswith(str(venv))
    worker = _run(
        [
            python,
            "-c",
            "from prefect.workers.base import BaseWorker as W; "
            "print(W.get_worker_class_from_type('fedchem').__module__)",
        ],
        cwd=empty,
    )
    assert worker.stdout.strip().endswith("fedchem.deployments.worker")
    demo = [
        str(venv / "bin" / "fedchem"),
        "demo",
        "--sites",
        "2",
        "--rounds",
        "4",
        "--fp-size",
        "1024",
        "--model.hidden",
        "64",
        "--out",
        "out",
    ]
    _run(demo, cwd=empty)
    report = json.loads((empty / "out" / "report.json").read_text())
    assert set(report["federated"]["per_site"]) == {"site-a", "site-b"}
    # the installed package learns: measured federated 0.642 (sites 0.673, 0.610), each site
    # alone 0.567, pooled 0.670 (4 rounds; 1 round of a 32-wide net scores below chance)
    fed, alone = report["federated"], report["local"]
    assert fed["overall"]["roc_auc"] >= 0.6, fed
    assert fed["overall"]["roc_auc"] >= alone["overall"]["roc_auc"] + 0.03, (fed, alone)
    assert all(v["roc_auc"] > 0.55 for v in fed["per_site"].values()), fed
    run_id = report["meta"]["run_id"]
    assert (empty / "out" / "hub" / "runs" / run_id / "rounds" / "0001" / "manifest.json").exists()
    for site, counts in report["meta"]["prepared"].items():
        assert counts["rows_in"] == counts["accepted"] + counts["quarantined"], site
    check = _run([str(venv / "bin" / "fedchem"), "stack", "--help"], cwd=empty)
    assert "--worker" in check.stdout
