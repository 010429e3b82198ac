"""DP-SGD's recipe: what ``privacy.level: record`` sets where the config is silent."""

from __future__ import annotations

from fedchem.config import (
    DP_RECORD_RECIPE,
    FederationConfig,
    ModelConfig,
    TrainConfig,
    WarmStart,
)
from fedchem.policy import PrivacyConfig

RECORD = {"level": "record", "target_epsilon": 3.0}


def _config(tox21_sites, **over) -> FederationConfig:
    doc = {
        "run_id": "r",
        "hub_url": "hub",
        "sites": tox21_sites.split.sites,
        "tasks": tox21_sites.split.tasks,
        **over,
    }
    return FederationConfig.model_validate(doc)


def test_record_level_fills_the_recipe_where_the_config_is_silent(tox21_sites):
    cfg = _config(tox21_sites, privacy=RECORD)
    assert cfg.train.batch_size == DP_RECORD_RECIPE["train"]["batch_size"] == 512
    assert cfg.train.lr == 0.01 and cfg.train.trainable == "all"  # no base: the whole network
    assert cfg.model.head_bias == "prior" and cfg.privacy.clip == 12.0
    again = FederationConfig.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg  # the filled config reads back as itself (resume, deployed sites)


def test_with_a_public_base_only_the_heads_are_trained_privately(tox21_sites):
    warm = WarmStart(registry="reg", model="public-base@public", parts="trunk")
    cfg = _config(tox21_sites, privacy=PrivacyConfig(**RECORD), init_from=warm)
    assert cfg.train.trainable == "head" and cfg.train.batch_size == 512


def test_what_the_config_says_wins_over_the_recipe(tox21_sites):
    cfg = _config(
        tox21_sites,
        privacy={**RECORD, "clip": 1.5},
        train=TrainConfig(batch_size=64, trainable="top"),
        model=ModelConfig(head_bias="zero"),
    )
    assert (cfg.train.batch_size, cfg.train.trainable, cfg.train.lr) == (64, "top", 0.01)
    assert cfg.model.head_bias == "zero" and cfg.privacy.clip == 1.5


def test_without_record_level_dp_nothing_changes(tox21_sites):
    for privacy in ({}, {"level": "site", "noise_multiplier": 1.0}):
        cfg = _config(tox21_sites, privacy=privacy)
        assert cfg.train == TrainConfig() and cfg.model == ModelConfig()
