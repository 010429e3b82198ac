"""The registry: immutable versions, movable aliases with their history, files checked on read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedchem.registry.store import ModelRef, Registry, RegistryError, VersionExists
from fedchem.storage.hub import IntegrityError


def test_references_parse_and_say_what_is_wrong():
    assert ModelRef.parse("tox21") == ModelRef("tox21", "production", None)
    assert ModelRef.parse("tox21@candidate") == ModelRef("tox21", "candidate", None)
    assert ModelRef.parse("tox21:3") == ModelRef("tox21", None, 3)
    assert str(ModelRef.parse("tox21:3")) == "tox21:3"
    with pytest.raises(RegistryError, match="a version is a number"):
        ModelRef.parse("tox21:latest")
    with pytest.raises(RegistryError, match="a model name is"):
        ModelRef.parse("Tox 21")


def test_a_version_is_written_once_and_aliases_move_with_a_history(tmp_path: Path):
    reg = Registry(str(tmp_path / "registry"))
    v1 = reg.publish("tox21", {"model.bin": b"one", "spec.json": b"{}"}, alias="production")
    v2 = reg.publish("tox21", {"model.bin": b"two", "spec.json": b"{}"}, alias="candidate")
    assert (v1, v2) == (1, 2) and reg.versions("tox21") == [1, 2] and reg.models() == ["tox21"]
    with pytest.raises(VersionExists, match="tox21:1 exists"):
        reg.publish("tox21", {"model.bin": b"other"}, version=1)
    assert reg.read("tox21", 1, "model.bin") == b"one"  # unchanged by the refused publish
    assert reg.resolve("tox21") == ("tox21", 1) and reg.resolve("tox21@candidate") == ("tox21", 2)
    # promotion, then the rollback: both alias moves, both recorded with what they replaced
    assert reg.set_alias("tox21", "production", 2, note="better") == 1
    assert reg.resolve("tox21") == ("tox21", 2)
    assert reg.set_alias("tox21", "production", 1, note="rollback") == 2
    moves = [
        (e["alias"], e["previous"], e["version"], e["note"])
        for e in reg.history("tox21")
        if e["event"] == "alias"
    ]
    assert moves == [
        ("production", None, 1, ""),
        ("candidate", None, 2, ""),
        ("production", 1, 2, "better"),
        ("production", 2, 1, "rollback"),
    ]
    with pytest.raises(RegistryError, match="no such version"):
        reg.set_alias("tox21", "production", 9)
    with pytest.raises(RegistryError, match="no alias 'staging'"):
        reg.resolve("tox21@staging")
    with pytest.raises(RegistryError, match=r"no model 'lipo'.*models: tox21"):
        reg.resolve("lipo")


def test_a_tampered_file_refuses_to_load(tmp_path: Path):
    reg = Registry(str(tmp_path / "registry"))
    reg.publish("tox21", {"model.bin": b"weights", "card.md": b"# card"})
    stored = tmp_path / "registry" / "models" / "tox21" / "versions" / "0001" / "model.bin"
    stored.write_bytes(b"weightz")
    with pytest.raises(IntegrityError, match="altered"):
        reg.read("tox21", 1, "model.bin")
    assert reg.read("tox21", 1, "card.md") == b"# card"  # the others still check out
    listing = json.loads(stored.with_name("files.json").read_text())
    assert set(listing["files"]) == {"model.bin", "card.md"}
    with pytest.raises(RegistryError, match=r"has no file 'extra\.bin'"):
        reg.read("tox21", 1, "extra.bin")


def test_a_version_without_its_listing_is_not_a_version(tmp_path: Path):
    """``files.json`` is written last: a publication interrupted before it left no version."""
    reg = Registry(str(tmp_path / "registry"))
    reg.store.put_bytes("models/tox21/versions/0001/model.bin", b"half")
    assert reg.versions("tox21") == [] and reg.models() == []
    assert reg.publish("tox21", {"model.bin": b"whole"}) == 1  # the number is free again
