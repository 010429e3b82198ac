"""A site's local-only model with the federation's training budget, scored on its test fold."""

from __future__ import annotations

from prefect import flow

from fedchem.config import ChemConfig, ModelConfig, SiteConfig, TrainConfig
from fedchem.federation.manifest import EvalReport
from tasks.site import train_local_baseline


@flow(name="site-local-baseline", flow_run_name="local-baseline/{site.name}")
def site_local_baseline(
    site: SiteConfig, chem: ChemConfig, model: ModelConfig, train: TrainConfig,
    epochs: int, label_stats: dict[str, dict[str, float]],
) -> EvalReport:  # fmt: skip
    return train_local_baseline(site, chem, model, train, epochs, label_stats)
