"""One site's part of one round: train from the global model, publish update + manifest."""

from __future__ import annotations

from prefect import flow

from fedchem.config import ChemConfig, ModelConfig, SiteConfig, SiteRef, TrainConfig
from fedchem.federation.manifest import FitInstructions, SiteUpdateManifest
from tasks.site import train_round


@flow(name="site-round", flow_run_name="round-{round:02d}/{site.name}")
def site_round(
    site: SiteConfig | SiteRef,
    hub_url: str,
    run_id: str,
    round: int,
    chem: ChemConfig,
    model: ModelConfig,
    train: TrainConfig,
    fit: FitInstructions | None = None,
) -> SiteUpdateManifest:
    """Returns the site's manifest (counts, aggregate metrics, hashes); weights stay on the hub.

    ``fit`` is what the coordinator's strategy asks of every site this round (FedProx's mu).
    """
    return train_round(site, hub_url, run_id, round, chem, model, train, fit or FitInstructions())
