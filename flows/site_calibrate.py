"""A site calibrates the federated model it serves: on its validation fold, aggregates out.

The exact conformal scores and the site's private heads go to the site's own registry; the
hub gets the scores as binned counts and the fold's domain-score histogram.
"""

from __future__ import annotations

from prefect import flow

from fedchem.config import ChemConfig, ModelConfig, SiteConfig, SiteRef
from fedchem.messages import SiteCalibration
from fedchem.tasks.site import calibrate_for_serving


@flow(name="site-calibrate", flow_run_name="calibrate/{site.name}")
def site_calibrate(
    site: SiteConfig | SiteRef,
    hub_url: str,
    run_id: str,
    round: int,
    chem: ChemConfig,
    model: ModelConfig,
    model_name: str,
    private_tasks: list[str] | None = None,
) -> SiteCalibration:
    return calibrate_for_serving(
        site, hub_url, run_id, round, chem, model, private_tasks or [], model_name
    )
