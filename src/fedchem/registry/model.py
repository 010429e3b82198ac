"""What a registered model version holds, and how it is written and read back.

A hosted version (the coordinator's registry) is these files, every one listed with its sha256:

- ``model.safetensors``: the global model's weights (safetensors: no pickle); a private task's
  head rows are zeros there;
- ``spec.json`` (:class:`ModelSpec`): the featurizer spec (the consortium's chemistry config),
  the sites' agreed reference-set hashes, the architecture, the task table, the lineage;
- ``calibration.json``: conformal calibration built from the sites' aggregated score
  histograms; ``domain.json``: the supported columns and the domain thresholds;
- ``metrics.json``: per-site aggregate metrics; ``card.md`` and ``card.json``: the model card.

A site's part (the site's own registry, never the coordinator's) completes one hosted version,
named by its global model's hash: ``heads.safetensors`` (its private head rows) and
``calibration.json`` (from its own validation fold), with a ``spec.json`` (:class:`SitePart`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedchem.config import ChemConfig
from fedchem.registry.store import Registry, RegistryError
from fedchem.strict import StrictModel
from fedchem.types import StateArrays

__all__ = [
    "Lineage",
    "ModelSpec",
    "SitePart",
    "TaskEntry",
    "find_site_part",
    "load_weights",
    "save_weights",
]


class TaskEntry(StrictModel):
    """One task of a registered model (metadata only)."""

    name: str
    kind: Literal["classification", "regression"]
    unit: str | None = None
    description: str | None = None
    """what the task measures, in words (the card shows it)"""
    threshold: float | None = None
    private: bool = False
    """its head stays at the sites: predictions need a site's part"""


class Lineage(StrictModel):
    """Where a version comes from (aggregates and hashes only)."""

    run_id: str
    round: int
    strategy: str
    n_sites: int
    global_sha256: str
    parent: str | None = None
    """the version it was trained from (``name:version``), if any"""


class ModelSpec(StrictModel):
    """How to turn a SMILES into this model's input, and what comes out."""

    format: Literal["fedchem-model/1"] = "fedchem-model/1"
    architecture: str = "fedchem.multitask"
    chem: ChemConfig
    consistency: dict[str, str]
    """the reference-set hashes every training site agreed on (key fingerprint, config,
    versions, output); a predictor recomputes them and refuses on any difference"""
    model: dict[str, Any]
    """the architecture's parameters (for ``fedchem.multitask``: a ``ModelConfig``)"""
    tasks: list[TaskEntry]
    heads: Literal["shared", "private"] = "shared"
    lineage: Lineage

    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


class SitePart(StrictModel):
    """A site's own completion of a hosted version: which one, and what the site adds."""

    format: Literal["fedchem-site-part/1"] = "fedchem-site-part/1"
    site: str
    completes: str
    """the hosted version's global model hash (``spec.lineage.global_sha256``)"""
    private_tasks: list[str]


def save_weights(arrays: StateArrays) -> bytes:
    """Weights as safetensors bytes (contiguous float arrays, names kept)."""
    return bytes(st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))


def load_weights(data: bytes) -> StateArrays:
    return dict(st_load(data))


def find_site_part(site_registry: Registry, name: str, global_sha256: str) -> tuple[int, SitePart]:
    """The site's part of model ``name`` that completes the global model ``global_sha256``
    (the newest if several); an error names what the site registry holds instead."""
    found: list[tuple[int, SitePart]] = []
    for version in site_registry.versions(name):
        part = SitePart.model_validate(site_registry.read_json(name, version, "spec.json"))
        if part.completes == global_sha256:
            found.append((version, part))
    if not found:
        raise RegistryError(
            f"site registry {site_registry.url} has no part of {name!r} for the global model "
            f"{global_sha256[:12]} (it holds versions {site_registry.versions(name) or 'none'})"
        )
    return found[-1]


def dumps(doc: Any) -> bytes:
    """JSON as a registry file: sorted keys, so the bytes and their hash are reproducible."""
    return json.dumps(doc, indent=2, sort_keys=True).encode()
