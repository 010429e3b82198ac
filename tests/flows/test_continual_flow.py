"""Two turns of the loop through the real flows: a warm-started candidate, the sites' verdict,
and a cycle run again that publishes nothing twice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedchem.config import ChemConfig, FederationConfig, ModelConfig, PublishConfig, TrainConfig
from fedchem.demo.sites import DemoSplit, bundled_dataset, release_held_back, split_into_sites
from fedchem.federation.commits import read_round
from fedchem.registry.model import load_weights
from fedchem.registry.store import Registry
from fedchem.storage.hub import HubStore

pytestmark = pytest.mark.slow


def _first_cycle(
    tmp_path: Path, name: str, rows: int, hold_back: float, fp_size: int, hidden: int, rounds: int
) -> tuple[DemoSplit, FederationConfig, PublishConfig, int]:
    """Tox21's first ``rows`` over 2 sites (``hold_back`` of their molecules waiting for cycle
    2), prepared, federated and published: the split, the config, the target, the version."""
    from fedchem.flows.coordinator import coordinator
    from fedchem.flows.publish import publish
    from fedchem.flows.site_prepare import site_prepare

    data = tmp_path / "tox21.csv"
    pd.read_csv(bundled_dataset()).head(rows).to_csv(data, index=False)
    split = split_into_sites(
        data, "smiles", 2, tmp_path / "sites", 0, cycles=2, hold_back=hold_back
    )
    chem, hub = ChemConfig(fp_size=fp_size), str(tmp_path / "hub")
    for s in split.sites:
        site_prepare(site=s, chem=chem, tasks=split.tasks, hub_url=hub)
    config = FederationConfig(
        run_id=name,
        hub_url=hub,
        sites=split.sites,
        tasks=split.tasks,
        rounds=rounds,
        chem=chem,
        model=ModelConfig(hidden=hidden),
        train=TrainConfig(batch_size=32),
        trust=split.trust,
    )
    coordinator(config)
    target = PublishConfig(registry=str(tmp_path / "registry"), model_name=name)
    return split, config, target, publish(config, target)


def test_a_second_cycle_warm_starts_decides_and_is_not_published_twice(
    prefect_api: None, tmp_path: Path
):
    from fedchem.flows.continual import continual

    split, config, target, version = _first_cycle(tmp_path, "loop", 800, 0.3, 256, 32, 1)
    assert version == 1
    before = {s.name: len(pd.read_csv(s.measurements)) for s in split.sites}
    reg = Registry(target.registry)

    added = {s.name: release_held_back(s, 2) for s in split.sites}
    assert all(n > 0 for n in added.values())
    assert {s.name: len(pd.read_csv(s.measurements)) for s in split.sites} == {
        k: before[k] + added[k] for k in before
    }
    candidate = target.model_copy(update={"alias": "candidate"})
    first = continual(config, candidate, cycle="c2")
    assert first["candidate"] == 2 and first["production"] == 1 and first["run_id"] == "loop-c2"
    assert set(first["per_site"]) == {"site-a", "site-b"}
    assert reg.aliases("loop")["candidate"] == 2
    assert reg.aliases("loop")["production"] == (2 if first["promote"] else 1)
    # the cycle started from production: its round 0 is version 1's weights
    _, start, _ = read_round(HubStore(config.hub_url), "loop-c2", 0)
    v1 = load_weights(reg.read("loop", 1, "model.safetensors"))
    assert all(np.array_equal(start[k], v1[k]) for k in v1)
    decisions = [e for e in reg.history("loop") if e["event"] == "decision"]
    assert len(decisions) == 1 and decisions[0]["decision"]["promote"] == first["promote"]
    # the confidence rule: each site's paired difference and interval, and the overall one,
    # are in the registry's history; the outcome follows from them
    recorded = decisions[0]["decision"]
    assert recorded["rule"] == "confidence" and recorded["outcome"] == first["outcome"]
    for row in recorded["per_site"].values():
        assert row["lower"] <= row["change"] <= row["upper"] and row["n_molecules"] > 0
    overall = recorded["overall"]
    assert overall["lower"] <= overall["change"] <= overall["upper"]
    assert first["promote"] == (
        overall["lower"] > 0 and all(r["ok"] for r in recorded["per_site"].values())
    )
    # run again (a retried or resumed cycle): nothing new is published or decided
    again = continual(config, candidate, cycle="c2")
    assert reg.versions("loop") == [1, 2] and again["promote"] == first["promote"]
    assert len([e for e in reg.history("loop") if e["event"] == "decision"]) == 1


def test_a_candidate_trained_on_shuffled_arrivals_is_not_promoted(
    prefect_api: None, tmp_path: Path
):
    """The drill: 60 % of each site's molecules arrive in cycle 2 with their values shuffled
    within each assay. The candidate, trained on them from production, must stay a candidate;
    the gate says why with its numbers."""
    from fedchem.flows.continual import continual

    split, config, target, _ = _first_cycle(tmp_path, "drill", 1600, 0.6, 512, 64, 3)
    for s in split.sites:
        assert release_held_back(s, 2, shuffled=True) > 0
    decision = continual(config, target.model_copy(update={"alias": "candidate"}), cycle="c2")
    assert not decision["promote"] and decision["outcome"] in ("refused", "not enough evidence")
    assert decision["overall"]["lower"] <= 0, decision["overall"]
    assert Registry(target.registry).aliases("drill")["production"] == 1
