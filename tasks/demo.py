"""Tasks of the simulated federation only (the pooled baseline needs every site's data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

from fedchem.config import ChemConfig, ModelConfig, SiteConfig, TrainConfig
from fedchem.demo.pooled import train_pooled
from fedchem.demo.report import build_report, write_report
from fedchem.demo.sites import DemoSplit, release_held_back, split_into_sites
from fedchem.messages import EvalReport

__all__ = ["make_sites", "pooled_baseline", "release_rows", "report"]


@task(cache_policy=NO_CACHE)
def make_sites(
    dataset: Path,
    smiles_col: str,
    n_sites: int,
    out_dir: Path,
    seed: int,
    task_split: Literal["shared", "disjoint"] = "shared",
    continuous_as: Literal["regression", "classification"] = "regression",
    cycles: int = 1,
    hold_back: float = 0.0,
) -> DemoSplit:
    return split_into_sites(
        dataset, smiles_col, n_sites, out_dir, seed, task_split, continuous_as, cycles, hold_back
    )


@task(cache_policy=NO_CACHE)
def release_rows(sites: list[SiteConfig], cycle: int, shuffled: bool = False) -> dict[str, int]:
    """The rows each site held back for ``cycle`` join its export (counts only); ``shuffled``:
    with their values shuffled within each assay (the promotion gate's drill)."""
    return {s.name: release_held_back(s, cycle, shuffled) for s in sites}


@task(cache_policy=NO_CACHE)
def pooled_baseline(
    sites: list[SiteConfig],
    chem: ChemConfig,
    model: ModelConfig,
    train: TrainConfig,
    epochs: int,
    label_stats: list[dict[str, dict[str, float]]],
) -> list[EvalReport]:
    return train_pooled(sites, chem, model, train, epochs, label_stats)


@task(cache_policy=NO_CACHE)
def report(
    evals: dict[str, list[EvalReport]],
    meta: dict[str, Any],
    out_dir: Path,
    cross: list[EvalReport] | None = None,
) -> dict[str, Any]:
    rep = build_report(evals, meta, cross)
    write_report(rep, out_dir)
    return rep
