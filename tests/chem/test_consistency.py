from __future__ import annotations

import pytest

from fedchem.chem.consistency import consistency_report, reference_smiles
from fedchem.config import ChemConfig, StandardizeConfig
from fedchem.federation.consistency import describe_disagreements, find_disagreements


def test_reference_set_exercises_failures_too():
    smiles = reference_smiles()
    assert len(smiles) >= 30 and "not-a-molecule" in smiles


def test_same_pipeline_same_hash_and_the_key_is_never_in_it():
    a = consistency_report(ChemConfig(), b"consortium-secret")
    assert a == consistency_report(ChemConfig(), b"consortium-secret")
    assert "consortium-secret" not in str(a)
    assert set(a) == {"key", "config", "versions", "output"}


def test_disagreements_name_the_site_and_the_component():
    good = consistency_report(ChemConfig(), b"k")
    other_key = consistency_report(ChemConfig(), b"k2")
    stereo = consistency_report(ChemConfig(standardize=StandardizeConfig(remove_stereo=True)), b"k")
    reports = {"site-a": good, "site-b": good, "site-c": other_key, "site-d": stereo}
    diff = find_disagreements(reports)
    assert diff == {"site-c": ["key", "output"], "site-d": ["config", "output"]}
    text = describe_disagreements(reports)
    assert text is not None and "site site-c differs on key" in text and "site-d" in text
    assert describe_disagreements({"site-a": good, "site-b": good}) is None
    # a platform difference: same key/config/versions, other output
    odd = {**good, "output": "0" * 64}
    assert find_disagreements({"a": good, "b": good, "c": odd}) == {"c": ["output"]}


@pytest.mark.parametrize("component", ["versions", "config"])
def test_any_component_differing_is_reported(component: str):
    good = consistency_report(ChemConfig(fp_size=256), b"k")
    bad = {**good, component: "something-else"}
    assert find_disagreements({"a": good, "b": bad, "c": good}) == {"b": [component]}
