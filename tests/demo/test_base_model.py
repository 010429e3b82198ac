"""The public base model: trained on bundled public ChEMBL only, registered with its card, and
the trunk a federation starts from."""

from __future__ import annotations

import numpy as np
import pytest

from fedchem.config import ModelConfig, WarmStart
from fedchem.demo.base_model import BaseModelConfig, publish_public_base, train_public_base
from fedchem.federation.commits import read_round
from fedchem.federation.coordinator import start_run
from fedchem.registry.model import ModelSpec, load_weights
from fedchem.registry.store import Registry
from fedchem.storage.hub import HubStore

MODEL = ModelConfig(hidden=256)


@pytest.fixture(scope="module")
def base(tox21_sites, tmp_path_factory):
    cfg = BaseModelConfig(rows=6000, epochs=2, model=MODEL)
    key = tox21_sites.split.sites[0].key_file
    return train_public_base(cfg, tox21_sites.chem, key, tmp_path_factory.mktemp("public"))


def test_the_base_is_trained_on_public_targets_and_scored_on_held_out_molecules(base):
    m = base.metrics
    assert m["dataset"] == "chembl" and "CC BY-SA 3.0" in m["licence"]
    assert m["rows_in"] >= 6000 and 0 < m["molecules_train"] < m["molecules"] <= 6000
    assert m["tasks"] == len(base.tasks) > 10
    assert 0.5 < m["test_mean_roc_auc"] <= 1.0  # better than chance on unseen public molecules
    assert base.arrays["input.weight"].shape == (2048, 256)


def test_it_is_registered_with_a_card_that_says_no_site_data(base, tmp_path):
    reg = Registry(str(tmp_path / "registry"))
    version = publish_public_base(reg, base)
    assert reg.resolve("public-base@public") == ("public-base", version)
    card = reg.read_json("public-base", version, "card.json")
    assert "no site's data" in card["privacy"] and card["data"]["dataset"] == "chembl"
    assert card["metrics"]["test_mean_roc_auc"] == base.metrics["test_mean_roc_auc"]
    spec = ModelSpec.model_validate(reg.read_json("public-base", version, "spec.json"))
    assert spec.lineage.n_sites == 0 and spec.consistency["key"]
    weights = load_weights(reg.read("public-base", version, "model.safetensors"))
    np.testing.assert_array_equal(weights["input.weight"], base.arrays["input.weight"])
    assert publish_public_base(reg, base) == version + 1  # versions are never overwritten


def test_a_federation_starts_from_its_trunk_with_new_heads(base, tox21_sites, tmp_path):
    reg = Registry(str(tmp_path / "registry"))
    publish_public_base(reg, base)
    warm = WarmStart(registry=str(tmp_path / "registry"), model="public-base@public", parts="trunk")
    config = tox21_sites.config("from-base", model=MODEL, init_from=warm)
    name, version = reg.resolve(warm.model)
    init = load_weights(reg.read(name, version, "model.safetensors"))
    hub = HubStore(config.hub_url)
    start_run(hub, config, tox21_sites.label_stats, init=init)
    _, arrays, _ = read_round(hub, config.run_id, 0)
    np.testing.assert_array_equal(arrays["input.weight"], base.arrays["input.weight"])
    np.testing.assert_array_equal(arrays["input_bias"], base.arrays["input_bias"])
    assert arrays["head.weight"].shape == (len(config.tasks), 256)  # Tox21's heads, not ChEMBL's
    assert base.arrays["head.weight"].shape[0] != len(config.tasks)


def test_a_base_of_another_width_is_refused_with_the_reason(base, tox21_sites, tmp_path):
    warm = WarmStart(registry=str(tmp_path), model="public-base@public", parts="trunk")
    config = tox21_sites.config("wrong-width", model=ModelConfig(hidden=128), init_from=warm)
    with pytest.raises(
        ValueError, match=r"trunk does not fit: input_bias is \(256,\), this network's is \(128,\)"
    ):
        start_run(HubStore(config.hub_url), config, tox21_sites.label_stats, init=base.arrays)


def test_only_bundled_public_sets_are_accepted(tox21_sites, tmp_path):
    cfg = BaseModelConfig(dataset="tox21", rows=100)
    with pytest.raises(ValueError, match="not a bundled public set"):
        train_public_base(cfg, tox21_sites.chem, tox21_sites.split.sites[0].key_file, tmp_path)
