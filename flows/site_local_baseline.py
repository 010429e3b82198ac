"""A site's local-only model with the federation's training budget, scored on its test fold.

With ``publish_to=(hub_url, run_id)`` its weights also go to the hub, for the cross-site
evaluation; the demo does that only with shared heads (a private head never leaves its site).
"""

from __future__ import annotations

from prefect import flow

from fedchem.config import ChemConfig, ModelConfig, SiteConfig, TrainConfig
from fedchem.messages import EvalReport
from fedchem.tasks.site import train_local_baseline


@flow(name="site-local-baseline", flow_run_name="local-baseline/{site.name}")
def site_local_baseline(
    site: SiteConfig,
    chem: ChemConfig,
    model: ModelConfig,
    train: TrainConfig,
    epochs: int,
    label_stats: dict[str, dict[str, float]],
    publish_to: tuple[str, str] | None = None,
) -> EvalReport:
    return train_local_baseline(site, chem, model, train, epochs, label_stats, publish_to)
