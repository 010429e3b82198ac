"""Predictions from the registry: the training pipeline's features and the committed weights,
one row per input row, refused with a reason when anything differs from training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedchem.chem.featurize import featurize_partition
from fedchem.config import ModelConfig
from fedchem.federation.commits import read_round
from fedchem.federation.consistency import ConsistencyError
from fedchem.model.network import build_model
from fedchem.model.state import arrays_to_model
from fedchem.model.train import predict
from fedchem.registry.model import ModelSpec
from fedchem.registry.store import Registry
from fedchem.serve.batch import read_input
from fedchem.serve.predictor import Predictor
from fedchem.storage.hub import HubStore, IntegrityError
from tests.serve.conftest import Published

NAME = "tox21-2000"


def test_the_registered_model_predicts_what_the_training_pipeline_computes(published: Published):
    p = Predictor.load(published.registry, NAME, published.key)
    out = p.predict(published.test_smiles)
    # the same molecules through the site pipeline's own featurizer and the hub's weights
    spec = p.spec
    _, arrays, _ = read_round(
        HubStore(str(published.out / "hub")), spec.lineage.run_id, spec.lineage.round
    )
    feats = featurize_partition(published.test_smiles, spec.chem, published.key)
    ok = [r is None for r in feats.reason]
    model = build_model(spec.chem.fp_size, len(spec.tasks), ModelConfig.model_validate(spec.model))
    arrays_to_model(model, arrays)
    from fedchem.data.dataset import SiteDataset

    rows = np.flatnonzero(ok)
    tasks = [(x.name, x.kind) for x in spec.tasks]
    ds = SiteDataset.unlabelled(
        feats.indptr, feats.indices, feats.values, rows, tasks, spec.chem.fp_size
    )
    expected = predict(model, ds)
    got = out.loc[out["status"] == "ok", spec.task_names()].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_one_row_per_input_row_in_order_with_the_errors_kept(published: Published):
    p = Predictor.load(published.registry, NAME, published.key)
    smiles = ["CCO", "not a smiles", "", "[Na+].[Cl-]", "c1ccccc1O"]
    out = p.predict(smiles, ids=["a", "b", "c", "d", "e"])
    assert out["id"].tolist() == ["a", "b", "c", "d", "e"]
    assert out["smiles"].tolist() == smiles
    assert out["status"].tolist() == ["ok", "error", "error", "error", "ok"]
    assert out["error"].tolist()[1:4] == [
        "unparsable SMILES",
        "empty SMILES",
        "no organic part: the structure has no carbon atom (an inorganic salt?)",
    ]
    assert out.loc[0, "standardized_smiles"] == "CCO"
    task = p.spec.tasks[0].name
    assert 0.0 <= out.loc[0, task] <= 1.0 and np.isnan(out.loc[1, task])
    assert set(out[f"{task}_set"]) <= {"0", "1", "0|1", ""}
    assert set(out["domain"]) <= {"in", "edge", "out", ""} and out.loc[0, "domain"] != ""


def test_a_key_or_a_library_that_featurizes_otherwise_is_refused(published: Published):
    with pytest.raises(
        ConsistencyError, match=r"differ from the model's on key.*not the consortium key"
    ):
        Predictor.load(published.registry, NAME, b"another-key")


def test_a_tampered_version_refuses_to_load(published: Published, tmp_path: Path):
    copy = tmp_path / "registry"
    shutil.copytree(published.out / "registry", copy)
    weights = copy / "models" / NAME / "versions" / "0001" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="altered"):
        Predictor.load(Registry(str(copy)), NAME, published.key)


def test_a_site_part_completes_the_model_with_the_sites_own_calibration(published: Published):
    site = Predictor.load(
        published.registry, NAME, published.key, published.site_registries["site-a"]
    )
    hosted = Predictor.load(published.registry, NAME, published.key)
    assert site.site == "site-a" and hosted.site is None
    task = next(t for t in site.calibration if site.calibration[t].source == "site site-a")
    assert hosted.calibration[task].source == "federation"
    assert site.calibration[task].scores is not None and hosted.calibration[task].hist is not None
    # the site registry holds the site's part only, for this very global model
    spec = json.loads(published.site_registries["site-a"].read(NAME, 1, "spec.json"))
    assert spec["completes"] == hosted.spec.lineage.global_sha256


def test_conformal_sets_keep_their_coverage_on_each_sites_test_fold(published: Published):
    """α = 0.1, calibrated on the validation fold: coverage on the held-out test fold is at
    least 0.9 less a tolerance of 0.05 (a site's test fold holds a few hundred labels a task)."""
    report = json.loads((published.out / "report.json").read_text())
    for site, row in report["federated"]["per_site"].items():
        c = row["conformal"]
        assert c["alpha"] == 0.1 and c["coverage"] >= 0.85, (site, c)
        assert 0.0 <= c["efficiency"] <= 1.0


def test_the_card_names_data_tasks_metrics_and_privacy_without_rows(published: Published):
    reg = published.registry
    card = json.loads(reg.read(NAME, 1, "card.json"))
    assert card["data"]["sites"] == 2 and set(card["data"]["molecules_per_site"]) == {
        "site-a",
        "site-b",
    }
    assert {"valid", "test", "conformal"} <= set(card["metrics"])
    assert "No SMILES" in card["privacy"] and card["lineage"]["round"] >= 1
    spec = ModelSpec.model_validate_json(reg.read(NAME, 1, "spec.json"))
    assert spec.consistency["key"] and len(spec.tasks) == 12
    everything = b"".join(reg.read(NAME, 1, f) for f in reg.files(NAME, 1).files)
    frame = pd.read_csv(published.out / "sites" / "site-a" / "measurements.csv")
    for s in set(frame["smiles"]) | set(frame["compound_id"]):
        if len(s) >= 8:
            assert s.encode() not in everything, "a site's row reached the registry"


def test_fedchem_predict_writes_the_predictors_table(published: Published, tmp_path: Path):
    from fedchem.cli import main

    src = tmp_path / "in.csv"
    src.write_text('name,smiles\nm1,CCO\nm2,"CC(\nm3,c1ccccc1O\n')
    out = tmp_path / "out.csv"
    args = [
        "predict",
        "--registry",
        str(published.out / "registry"),
        "--model",
        f"{NAME}@production",
        "--in",
        str(src),
        "--out",
        str(out),
        "--id-col",
        "name",
        "--key-file",
        str(published.key_file),
    ]
    assert main(args) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert table["id"].tolist() == ["m1", "", "m3"] and len(table) == 3
    assert table["status"].tolist() == ["ok", "error", "ok"]
    assert table.loc[1, "error"].startswith("malformed line: unterminated quote")
    ids, smiles, _ = read_input(src, "smiles", "name")
    direct = Predictor.load(published.registry, NAME, published.key).predict(smiles, ids)
    task = direct.columns[5]
    np.testing.assert_allclose(table.loc[[0, 2], task].astype(float), direct.loc[[0, 2], task])


def test_a_model_whose_featurizer_differs_from_this_machines_is_refused(
    published: Published, tmp_path: Path
):
    """Published elsewhere with other library versions (its reference-set hashes say so): the
    files are intact, the features would not be, and the predictor refuses naming that."""
    reg = published.registry
    files = {f: reg.read(NAME, 1, f) for f in reg.files(NAME, 1).files}
    spec = json.loads(files["spec.json"])
    spec["consistency"]["versions"] = "fedchem=0.0.1;pipeline=1;rdkit=2020.03.1;numpy=1.0"
    spec["consistency"]["output"] = "0" * 64
    files["spec.json"] = json.dumps(spec).encode()
    other = Registry(str(tmp_path / "elsewhere"))
    other.publish(NAME, files, alias="production")
    with pytest.raises(ConsistencyError, match=r"on versions, output: the library versions"):
        Predictor.load(other, NAME, published.key)
