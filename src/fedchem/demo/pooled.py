"""The pooled baseline: one model on every site's training data (possible only in simulation)."""

from __future__ import annotations

from collections.abc import Sequence

from fedchem.config import ChemConfig, ModelConfig, SiteConfig, TrainConfig
from fedchem.data.dataset import SiteDataset
from fedchem.federation.coordinator import initial_model
from fedchem.federation.site import load_site_dataset, scored_on_test
from fedchem.messages import EvalReport
from fedchem.model.selection import EpochSelector
from fedchem.model.train import epoch_lr_factors, train_epochs

__all__ = ["train_pooled"]


def train_pooled(
    sites: Sequence[SiteConfig],
    chem: ChemConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    epochs: int,
    label_stats: Sequence[dict[str, dict[str, float]]],
) -> list[EvalReport]:
    data = {s.name: load_site_dataset(s) for s in sites}
    held_out = [chem.test_fold, chem.valid_fold]
    pooled = SiteDataset.concat([d.without_folds(held_out) for d in data.values()])
    first = next(iter(data.values()))
    tasks = list(zip(first.task_names, first.task_kinds, strict=True))
    model = initial_model(first.fp_size, tasks, model_cfg, train_cfg.seed, label_stats)
    selector = None
    if train_cfg.select == "best_valid":  # on every site's validation fold together
        valid = SiteDataset.concat([d.folds([chem.valid_fold]) for d in data.values()])
        selector = EpochSelector(model, valid, "pooled")
    train_epochs(
        model,
        pooled,
        train_cfg,
        epochs,
        train_cfg.seed,
        lr_factors=epoch_lr_factors(train_cfg, epochs),
        after_epoch=selector,
    )
    selected = selector.restore() if selector is not None else None
    return [
        scored_on_test(model, d, chem, name, "pooled").model_copy(update={"selected": selected})
        for name, d in data.items()
    ]
