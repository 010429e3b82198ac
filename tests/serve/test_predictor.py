"""Predictions from the registry: the training pipeline's features and the committed weights,
one row per input row, refused with a reason when anything differs from training."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.numpy
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator

from fedchem.federation.consistency import ConsistencyError
from fedchem.registry.model import ModelSpec
from fedchem.registry.store import Registry
from fedchem.serve.batch import read_input
from fedchem.serve.predictor import Predictor
from fedchem.storage.hub import IntegrityError
from tests.serve.conftest import Published

NAME = "tox21-2000"


def _by_hand(smiles: str, key: bytes, fp_size: int, weights: dict[str, np.ndarray]) -> np.ndarray:
    """The model's probabilities for one plain molecule without fedchem: RDKit's canonical
    molecule and its ECFP6 bits, the MELLODDY column permutation (columns sorted by
    HMAC-SHA256 of their index under the consortium key), then the network's arithmetic in
    NumPy: the sum of the on-columns' input rows plus the bias, ReLU, the heads, a logistic."""
    mol = Chem.MolFromSmiles(smiles)
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=3, fpSize=fp_size)
    bits = np.flatnonzero(gen.GetFingerprintAsNumPy(mol))
    digest = [hmac.new(key, str(i).encode(), hashlib.sha256).digest() for i in range(fp_size)]
    rank = {
        column: place for place, column in enumerate(sorted(range(fp_size), key=digest.__getitem__))
    }
    columns = [rank[int(b)] for b in bits]
    h = weights["input.weight"][columns].astype(np.float64).sum(axis=0) + weights["input_bias"]
    logits = weights["head.weight"].astype(np.float64) @ np.maximum(h, 0.0) + weights["head.bias"]
    return 1.0 / (1.0 + np.exp(-logits))


def test_the_registered_model_predicts_what_rdkit_and_plain_arithmetic_give(
    published: Published,
):
    p = Predictor.load(published.registry, NAME, published.key)
    # plain organic molecules, already standard (neutral, one fragment, no isotopes)
    plain = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C"]
    out = p.predict(plain)
    assert out["standardized_smiles"].tolist() == [Chem.CanonSmiles(s) for s in plain]
    spec = p.spec
    assert (spec.chem.featurizer, spec.chem.fp_radius, spec.chem.permute_columns) == (
        "morgan",
        3,
        True,
    )
    assert spec.model["depth"] == 1 and {t.kind for t in spec.tasks} == {"classification"}
    _, version = published.registry.resolve(NAME)
    weights = safetensors.numpy.load(published.registry.read(NAME, version, "model.safetensors"))
    for i, smi in enumerate(plain):
        want = _by_hand(smi, published.key, spec.chem.fp_size, weights)
        got = out.loc[i, spec.task_names()].to_numpy(dtype=np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=smi)


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
    rows = read_input(src, "smiles", "name")
    direct = Predictor.load(published.registry, NAME, published.key).predict(rows.smiles, rows.ids)
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
