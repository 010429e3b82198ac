"""One site's part of one round: train from the global model, publish update + manifest."""

from __future__ import annotations

from prefect import flow
from prefect.states import Cancelled, State

from fedchem.config import ChemConfig, ModelConfig, SiteConfig, SiteRef, TrainConfig
from fedchem.federation.manifest import FitInstructions, SiteUpdateManifest
from tasks.site import await_round, train_round


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
    ticket: str | None = None,
    open_timeout_s: float = 1800.0,
) -> SiteUpdateManifest | State:
    """Returns the site's manifest (counts, aggregate metrics, hashes); weights stay on the hub.

    ``fit`` is what the coordinator's strategy asks of every site this round (FedProx's mu).
    With a ``ticket`` (deployed mode) the run was booked ahead: it first waits until the
    coordinator opens the round under that ticket, and takes ``fit`` from the opening; a run
    whose coordinator attempt was replaced ends Cancelled without training.
    """
    if ticket is not None:
        opened = await_round(hub_url, run_id, round, ticket, open_timeout_s)
        if opened is None:
            return Cancelled(message=f"round {round}: superseded by a newer coordinator attempt")
        fit = opened
    return train_round(site, hub_url, run_id, round, chem, model, train, fit or FitInstructions())
