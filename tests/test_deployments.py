"""The deployments fedchem ships: the committed prefect.yaml is what the renderer writes (a
work pool per site, the coordinator's on its own), checked without starting anything."""

from __future__ import annotations

from pathlib import Path

import yaml

from fedchem.deployments.render import committed_prefect_yaml, example_prefect_yaml

REPO = Path(__file__).resolve().parents[1]


def test_committed_prefect_yaml_is_what_the_renderer_writes():
    committed = committed_prefect_yaml().read_text()
    # after a config change: .venv/bin/python -m fedchem.deployments.render rewrites it
    assert committed_prefect_yaml() == REPO / "deployments" / "prefect.yaml"
    assert committed == example_prefect_yaml()
    doc = yaml.safe_load(committed)
    pools = {d["name"]: d["work_pool"]["name"] for d in doc["deployments"]}
    site_flows = ("prepare", "round", "calibrate", "validate", "batch-predict")
    assert pools == {
        **{f"{s}-{f}": s for s in ("site-a", "site-b") for f in site_flows},
        "coordinator": "coordinator",
        "publish": "coordinator",
        "continual": "coordinator",
    }
    coord = next(d for d in doc["deployments"] if d["name"] == "coordinator")
    weekly = next(d for d in doc["deployments"] if d["name"] == "continual")
    assert weekly["schedules"][0]["active"] is False  # the operator switches it on
    assert weekly["parameters"]["target"]["alias"] == "candidate"
    publish = next(d for d in doc["deployments"] if d["name"] == "publish")
    assert publish["parameters"]["config"] == coord["parameters"]["config"]  # one anchor
