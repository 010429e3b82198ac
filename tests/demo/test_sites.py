"""Demo splits: shared tasks over scaffold-dealt molecules, or tasks owned by one site each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedchem.demo.report import cross_site_matrix
from fedchem.demo.sites import release_held_back, resolve_dataset, split_into_sites
from fedchem.messages import EvalReport


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten continuous targets, sparse, on real ChEMBL molecules of the bundled set."""
    src, _ = resolve_dataset("chembl", None)
    df = pd.read_csv(src, nrows=300)
    cols = df.columns[1:][df.iloc[:, 1:].notna().sum().to_numpy().argsort()[::-1][:10]]
    out = tmp_path_factory.mktemp("wide") / "wide.csv"
    df[["smiles", *cols]].to_csv(out, index=False)
    return out


def test_disjoint_split_gives_each_task_to_exactly_one_site(wide: Path, tmp_path: Path):
    split = split_into_sites(
        wide, "smiles", 3, tmp_path, seed=1, task_split="disjoint", continuous_as="classification"
    )
    src = pd.read_csv(wide)
    owned = {}
    for site in split.sites:
        assays = pd.read_csv(site.assays)
        m = pd.read_csv(site.measurements)
        assert set(m["assay_id"]) <= set(assays["assay_id"])  # a site measures only its own
        owned[site.name] = set(assays["assay_id"])
        # every value of its tasks, none of anyone else's
        assert len(m) == int(src[sorted(owned[site.name])].notna().sum().sum())
        assert split.molecules_per_site[site.name] == m["compound_id"].nunique()
    all_tasks = [t for ts in owned.values() for t in ts]
    assert sorted(all_tasks) == sorted(src.columns[1:]) and len(set(all_tasks)) == 10
    assert {t.kind for t in split.tasks} == {"classification"}  # thresholded at the sites
    assert split.tasks_per_site == {n: len(t) for n, t in owned.items()}


def test_shared_split_keeps_continuous_columns_as_regression(wide: Path, tmp_path: Path):
    split = split_into_sites(wide, "smiles", 2, tmp_path, seed=1)
    assert {t.kind for t in split.tasks} == {"regression"}
    total = sum(pd.read_csv(s.measurements)["compound_id"].nunique() for s in split.sites)
    assert total == sum(split.molecules_per_site.values()) <= 300
    assert split.tasks_per_site == {"site-a": 10, "site-b": 10}


def test_datasets_by_bundled_name_or_path(tmp_path: Path):
    path, col = resolve_dataset("biogen", None)
    assert path.exists() and col == "SMILES"
    assert resolve_dataset("tox21", "smi")[1] == "smi"
    with pytest.raises(FileNotFoundError, match="not a bundled name"):
        resolve_dataset(str(tmp_path / "nope.csv"), None)


def _report(site: str, model: str, auc: float) -> EvalReport:
    return EvalReport(
        site=site,
        model=model,
        fold="test",
        n_molecules=10,
        per_task={},
        summary={"mean_roc_auc": auc},
    )


def test_cross_site_matrix_rows_are_models_and_columns_sites():
    evals = {
        "federated": [_report("a", "federated", 0.8), _report("b", "federated", 0.7)],
        "local": [_report("a", "local", 0.6), _report("b", "local", np.nan)],
        "pooled": [_report("a", "pooled", 0.81), _report("b", "pooled", 0.72)],
    }
    cross = [_report("a", "local:b", 0.55), _report("b", "local:a", 0.52)]
    m = cross_site_matrix(evals, cross, "roc_auc")
    assert m["federated"] == {"a": 0.8, "b": 0.7}
    assert m["local:a"] == {"a": 0.6, "b": 0.52}
    assert m["local:b"] == {"a": 0.55, "b": None}  # NaN (no scorable task) → n/a
    assert list(m) == ["federated", "local:a", "local:b", "pooled"]


def test_held_back_rows_arrive_as_measured_or_shuffled_within_each_assay(tmp_path: Path):
    """The promotion gate's drill: the same rows arrive, each assay's values permuted among
    them (the counts per value stay, the pairing with molecules is gone)."""
    data = tmp_path / "tox21.csv"
    pd.read_csv(resolve_dataset("tox21", None)[0]).head(600).to_csv(data, index=False)
    arrived = {}
    for mode in ("measured", "shuffled"):
        split = split_into_sites(data, "smiles", 2, tmp_path / mode, 0, cycles=2, hold_back=0.4)
        site = split.sites[0]
        before = len(pd.read_csv(site.measurements))
        n = release_held_back(site, 2, shuffled=mode == "shuffled")
        rows = pd.read_csv(site.measurements).iloc[before:]
        assert n == len(rows) > 50
        arrived[mode] = rows.reset_index(drop=True)
    m, s = arrived["measured"], arrived["shuffled"]
    assert (
        (m[["compound_id", "smiles", "assay_id"]] == s[["compound_id", "smiles", "assay_id"]])
        .all()
        .all()
    )
    for _, g in m.groupby("assay_id"):
        assert sorted(g["value"]) == sorted(s.loc[g.index, "value"])
    assert (m["value"] != s["value"]).mean() > 0.05  # the labels moved
    assert release_held_back(site, 3) == 0  # nothing held back for a cycle that is not one
