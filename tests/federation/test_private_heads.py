"""MELLODDY's heads policy: the trunk is federated, each site's task heads stay at the site."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedchem.config import ChemConfig, FederationConfig, ModelConfig, TrainConfig
from fedchem.data.prepare import prepare_site
from fedchem.demo.sites import bundled_dataset, split_into_sites
from fedchem.federation.coordinator import start_run
from fedchem.federation.driver import CoordinatorSteps, InProcessSites, run_rounds
from fedchem.federation.site import (
    _load_private_head,
    evaluate_global_at_site,
    fetch_global,
    load_site_dataset,
)
from fedchem.model.evaluate import evaluate_at_site
from fedchem.model.network import build_model
from fedchem.model.state import arrays_to_model, load_arrays
from fedchem.model.train import predict
from fedchem.storage.hub import HubLayout, HubStore


def test_private_heads_never_leave_the_site(tmp_path: Path):
    data = tmp_path / "tiny.csv"
    pd.read_csv(bundled_dataset()).head(300).to_csv(data, index=False)
    split = split_into_sites(data, "smiles", 2, tmp_path / "sites", seed=1)
    chem = ChemConfig(fp_size=256)
    reports = [prepare_site(s, chem, split.tasks) for s in split.sites]
    shared = split.tasks[0].name
    config = FederationConfig(
        run_id="ph",
        hub_url=str(tmp_path / "hub"),
        sites=split.sites,
        tasks=split.tasks,
        rounds=2,
        chem=chem,
        model=ModelConfig(hidden=16),
        train=TrainConfig(batch_size=32),
        heads="private",
        shared_tasks=[shared],
        trust=split.trust,
    )
    private = config.private_tasks()
    assert shared not in private and len(private) == len(split.tasks) - 1
    hub = HubStore(config.hub_url)
    steps = CoordinatorSteps(config, hub)
    first = start_run(hub, config, [r.label_stats for r in reports], trust=steps.trust)
    outcome = run_rounds(config, steps, InProcessSites(config, hub), [first])
    assert outcome.failed == []
    rows = np.arange(1, len(split.tasks))
    heads = []
    for s in split.sites:
        upload = load_arrays(hub.get_bytes(HubLayout("ph").site_update(2, s.name)))
        assert np.all(upload["head.weight"][rows] == 0) and np.all(upload["head.bias"][rows] == 0)
        assert np.any(upload["head.weight"][0] != 0)  # the shared task's head is federated
        with np.load(s.workdir / "runs" / "ph" / "private_head-0002.npz") as z:
            assert z["rows"].tolist() == rows.tolist()
            assert np.any(z["weight"] != 0)
            heads.append(z["weight"].copy())
    assert not np.allclose(heads[0], heads[1])  # each site trained its own
    # the federated model at a site is the global trunk + shared head + the site's own heads
    site = split.sites[0]
    ds = load_site_dataset(site)
    arrays, _ = fetch_global(hub, "ph", 2)
    bare = arrays_to_model(build_model(ds.fp_size, ds.n_tasks, config.model), arrays)
    completed = arrays_to_model(build_model(ds.fp_size, ds.n_tasks, config.model), arrays)
    _load_private_head(completed, site.workdir / "runs" / "ph" / "private_head-0002.npz", rows)
    p_bare, p_site = predict(bare, ds), predict(completed, ds)  # type: ignore[arg-type]
    assert np.allclose(p_bare[:, 0], p_site[:, 0])  # shared task: the federated head
    assert not np.allclose(p_bare[:, rows], p_site[:, rows])  # private tasks: the site's own
    rep = evaluate_global_at_site(site, hub, "ph", 2, chem, config.model)
    assert rep.model == "federated" and rep.n_molecules == len(ds.folds([chem.test_fold]))
    assert rep.selected is None
    # model selection at the site: the round whose model (global + own heads) scores best on
    # the site's validation fold, reported on the test fold
    valid_auc = []
    for rnd in (1, 2):
        m = arrays_to_model(
            build_model(ds.fp_size, ds.n_tasks, config.model), fetch_global(hub, "ph", rnd)[0]
        )
        _load_private_head(m, site.workdir / "runs" / "ph" / f"private_head-{rnd:04d}.npz")
        valid_auc.append(
            evaluate_at_site(
                m, ds.folds([chem.valid_fold]), site=site.name, model_name="m", fold="valid"
            ).summary["mean_roc_auc"]
        )
    chosen = evaluate_global_at_site(site, hub, "ph", 2, chem, config.model, "best_valid")
    assert chosen.selected == int(np.argmax(valid_auc)) + 1
    that_round = evaluate_global_at_site(site, hub, "ph", chosen.selected, chem, config.model)
    assert chosen.summary == that_round.summary


def test_shared_tasks_must_be_in_the_catalogue(tmp_path: Path):
    with pytest.raises(ValueError, match="shared_tasks not in the task catalogue"):
        FederationConfig(
            run_id="x",
            hub_url=str(tmp_path),
            sites=[{"name": "a"}],
            tasks=[{"name": "t", "kind": "classification"}],
            mode="deployed",
            heads="private",
            shared_tasks=["nope"],
        )
