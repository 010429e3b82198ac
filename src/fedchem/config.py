"""Configuration models, read once at the edge and trusted afterwards.

Every model forbids unknown keys, so a typo in a YAML file or a flow parameter is an error
that names the key instead of a setting silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ChemConfig",
    "FederationConfig",
    "ModelConfig",
    "SiteConfig",
    "TaskSpec",
    "TrainConfig",
    "load_federation_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChemConfig(_Strict):
    """What every site must compute identically (the consortium's pinned pipeline)."""

    fp_radius: int = Field(3, ge=1, le=6, description="Morgan radius (3 = ECFP6)")
    fp_size: int = Field(4096, ge=64, le=1 << 20, description="folded fingerprint width")
    max_heavy_atoms: int = Field(100, ge=1, description="molecules at or above this are rejected")
    n_folds: int = Field(5, ge=3, le=20)
    test_fold: int = Field(0, ge=0)
    valid_fold: int = Field(1, ge=0)

    @field_validator("valid_fold")
    @classmethod
    def _folds_differ(cls, v: int, info: object) -> int:
        data = getattr(info, "data", {})
        if v == data.get("test_fold"):
            raise ValueError("valid_fold must differ from test_fold")
        return v


class TaskSpec(_Strict):
    """One task of the federation's shared catalogue (metadata only, never labels)."""

    name: str
    kind: Literal["classification", "regression"]


class ModelConfig(_Strict):
    hidden: int = Field(512, ge=8)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    depth: int = Field(1, ge=1, le=4, description="dense layers after the sparse input layer")


class TrainConfig(_Strict):
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


class SiteConfig(_Strict):
    """A site as its own operator configures it. The paths never leave the site."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    measurements: Path
    assays: Path
    workdir: Path
    key_file: Path = Field(description="file holding the consortium secret (never leaves the site)")
    contracts_dir: Path | None = Field(
        None, description="default: the repository's data_contracts/"
    )
    max_quarantine_fraction: float = Field(0.5, ge=0.0, le=1.0)
    dask_workers: int = Field(2, ge=1)
    dask_address: str | None = None
    partition_rows: int = Field(5000, ge=100)


class FederationConfig(_Strict):
    """The coordinator's view: sites by name, the task catalogue, rounds, model and training."""

    run_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    hub_url: str
    sites: list[SiteConfig]
    tasks: list[TaskSpec]
    rounds: int = Field(10, ge=1)
    chem: ChemConfig = ChemConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, v: list[SiteConfig]) -> list[SiteConfig]:
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique, got {names}")
        if not v:
            raise ValueError("a federation needs at least one site")
        return v


def load_federation_config(path: Path) -> FederationConfig:
    """Read a federation YAML file; pydantic errors name the offending key."""
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    return FederationConfig.model_validate(raw)
