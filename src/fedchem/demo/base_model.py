"""A public base model: a network trained on public data only, that federations start from.

The bundled ChEMBL set (23,871 molecules, 691 targets; CC BY-SA 3.0, see ``SOURCES.md``) is
prepared as one site would prepare it (contracts, RDKit standardization, the consortium's
keyed fingerprints: the base model must read the same bits as the sites' models, so whoever
trains it holds the consortium key, a site's operator) and a multitask network is trained on
its training folds, every target thresholded into a classification task. It is registered
as a versioned model with its card (:func:`publish_public_base`); a federation takes its
trunk, with new heads, through ``init_from: {model: public-base@public, parts: trunk}``.

No site's data is used: the card says so, and states its own held-out score.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field

from fedchem.chem.consistency import consistency_report
from fedchem.config import ChemConfig, ModelConfig, TrainConfig
from fedchem.data.prepare import prepare_site
from fedchem.demo.sites import resolve_dataset, split_into_sites
from fedchem.federation.site import load_site_dataset
from fedchem.model.evaluate import evaluate_at_site
from fedchem.model.network import build_model
from fedchem.model.state import model_to_arrays
from fedchem.model.train import train_epochs
from fedchem.registry.model import Lineage, ModelSpec, TaskEntry, dumps, save_weights
from fedchem.registry.store import Registry
from fedchem.strict import StrictModel
from fedchem.types import StateArrays

__all__ = ["BaseModel", "BaseModelConfig", "publish_public_base", "train_public_base"]

#: the public sets a base model may be trained on, with their licence (``SOURCES.md``)
PUBLIC_SETS = {"chembl": "ChEMBL via DeepChem chembl_5thresh; CC BY-SA 3.0 (data), MIT (repo)"}


class BaseModelConfig(StrictModel):
    """How the public base model is trained (the network must match the federations' own)."""

    dataset: str = Field("chembl", description="a bundled public set: " + ", ".join(PUBLIC_SETS))
    rows: int | None = Field(None, ge=50, description="its first rows only (tests, smoke runs)")
    epochs: int = Field(10, ge=1)
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig(batch_size=128)
    name: str = Field("public-base", description="the registry name it is published under")


@dataclass
class BaseModel:
    arrays: StateArrays
    tasks: list[TaskEntry]
    chem: ChemConfig
    model: ModelConfig
    consistency: dict[str, str]
    metrics: dict[str, Any]
    data_sha256: str


def train_public_base(
    cfg: BaseModelConfig, chem: ChemConfig, key_file: Path, workdir: Path
) -> BaseModel:
    """Prepare the public set with the consortium's ``key_file`` and train the base on it;
    its test fold scores it (the ROC-AUC on held-out public molecules)."""
    if cfg.dataset not in PUBLIC_SETS:
        raise ValueError(f"{cfg.dataset!r} is not a bundled public set ({', '.join(PUBLIC_SETS)})")
    start = time.perf_counter()
    source, smiles_col = resolve_dataset(cfg.dataset, None)
    if cfg.rows is not None:
        head = workdir / f"{cfg.dataset}-first-{cfg.rows}.csv"
        workdir.mkdir(parents=True, exist_ok=True)
        pd.read_csv(source).head(cfg.rows).to_csv(head, index=False)
        source = head
    split = split_into_sites(
        source, smiles_col, 1, workdir / "public", seed=0, continuous_as="classification"
    )
    site = split.sites[0].model_copy(update={"name": "public", "key_file": key_file})
    report = prepare_site(site, chem, split.tasks)
    ds = load_site_dataset(site)
    model = build_model(ds.fp_size, ds.n_tasks, cfg.model, cfg.train.seed)
    train = ds.without_folds([chem.test_fold])
    stats, _ = train_epochs(model, train, cfg.train, cfg.epochs, cfg.train.seed)
    test = evaluate_at_site(
        model, ds.folds([chem.test_fold]), site="public", model_name=cfg.name, fold="test"
    )
    kinds = dict(zip(ds.task_names, ds.task_kinds, strict=True))
    return BaseModel(
        arrays=model_to_arrays(model),
        tasks=[TaskEntry(name=n, kind=kinds[n]) for n in ds.task_names],
        chem=chem,
        model=cfg.model,
        consistency=consistency_report(chem, key_file.read_bytes()),
        metrics={
            "dataset": cfg.dataset,
            "licence": PUBLIC_SETS[cfg.dataset],
            "molecules": len(ds),
            "molecules_train": len(train),
            "rows_in": report.rows_in,
            "tasks": ds.n_tasks,
            "epochs": cfg.epochs,
            "test_mean_roc_auc": test.summary.get("mean_roc_auc"),
            "seconds": round(time.perf_counter() - start, 1),
            "train_seconds": round(stats.seconds, 1),
        },
        data_sha256=hashlib.sha256(Path(source).read_bytes()).hexdigest(),
    )


def publish_public_base(
    registry: Registry, base: BaseModel, name: str = "public-base", alias: str = "public"
) -> int:
    """Register ``base`` as the next version of ``name`` with its card; ``alias`` points at it."""
    weights = save_weights(base.arrays)
    spec = ModelSpec(
        chem=base.chem,
        consistency=base.consistency,
        model=base.model.model_dump(mode="json"),
        tasks=base.tasks,
        lineage=Lineage(
            run_id=f"public-{base.metrics['dataset']}",
            round=0,
            strategy="centralized on public data",
            n_sites=0,
            global_sha256=hashlib.sha256(weights).hexdigest(),
        ),
    )
    version = registry.next_version(name)
    m = base.metrics
    card = {
        "name": name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "summary": f"Public base model: a multitask network trained on {m['molecules_train']} "
        f"molecules of the public {m['dataset']} set ({m['tasks']} targets as classification "
        "tasks), for federations to start from (its trunk, with their own heads).",
        "intended_use": "The starting point of a federation or a fine-tuning "
        "(init_from: {model: NAME@public, parts: trunk}); its own heads are ChEMBL targets "
        "and are not meant for decisions.",
        "data": {"dataset": m["dataset"], "licence": m["licence"], "sha256": base.data_sha256},
        "privacy": "Trained on public data only: no site's data was used, so no differential "
        "privacy budget applies to it (a federation that starts from it accounts its own).",
        "metrics": m,
        "lineage": spec.lineage.model_dump(),
    }
    md = (
        f"# {name} v{version}\n\n{card['summary']}\n\n## Intended use\n\n{card['intended_use']}"
        f"\n\n## Data\n\n{m['dataset']}: {m['licence']}; file sha256 `{base.data_sha256}`.\n\n"
        f"## Privacy\n\n{card['privacy']}\n\n## Quality\n\nMean ROC-AUC on its held-out "
        f"public test fold: {m['test_mean_roc_auc']:.3f} ({m['tasks']} targets, "
        f"{m['epochs']} epochs).\n"
    )
    files = {
        "model.safetensors": weights,
        "spec.json": dumps(spec.model_dump(mode="json")),
        "metrics.json": dumps(m),
        "card.md": md.encode(),
        "card.json": dumps(card),
    }
    return registry.publish(name, files, version=version, alias=alias, note="public base model")
