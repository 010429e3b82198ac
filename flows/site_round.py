"""One site's part of one round: wait for the round's opening, train, publish update + manifest."""

from __future__ import annotations

from prefect import flow
from prefect.states import Cancelled, Failed, State

from fedchem.config import ChemConfig, ModelConfig, SiteConfig, SiteRef, TrainConfig
from fedchem.messages import SiteRefusal, SiteUpdateManifest
from fedchem.tasks.site import await_round, train_round


@flow(name="site-round", flow_run_name="round-{round:02d}/{site.name}")
def site_round(
    site: SiteConfig | SiteRef,
    hub_url: str,
    run_id: str,
    round: int,
    chem: ChemConfig,
    model: ModelConfig,
    train: TrainConfig,
    ticket: str,
    open_timeout_s: float = 1800.0,
    step: str | None = None,
) -> SiteUpdateManifest | State | None:
    """Returns the site's manifest (counts, aggregate metrics, hashes); weights stay on the hub.

    The run waits until the coordinator attempt named by ``ticket`` opens the round on the hub
    and takes the round's fit instructions (the strategy's ask, e.g. FedProx's mu) and plan
    from the opening. A run whose coordinator attempt was replaced, or whose round was
    withdrawn (the federation stopped), ends Cancelled without training. A round the site's
    own policy does not allow ends Failed, the clause named (and on the hub, for the
    coordinator). A securely aggregated round goes in steps: ``step`` names one (the
    coordinator drives the steps in one-machine runs), None runs them all in turn.
    """
    opened = await_round(site, hub_url, run_id, round, ticket, open_timeout_s)
    if isinstance(opened, str):
        return Cancelled(message=opened)
    result = train_round(
        site, hub_url, run_id, round, chem, model, train, opened, step, open_timeout_s
    )
    if isinstance(result, SiteRefusal):
        return Failed(message=f"refused by the site's policy: {result.clause}")
    return result
