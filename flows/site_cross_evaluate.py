"""The cross-site evaluation at one site: other sites' local-only models on its test fold.

Together with the global model's scores this fills the matrix (model × site) of the demo's
report. Only aggregate metrics leave the site.
"""

from __future__ import annotations

from prefect import flow

from fedchem.config import ChemConfig, ModelConfig, SiteConfig
from fedchem.messages import EvalReport
from fedchem.tasks.site import evaluate_baselines


@flow(name="site-cross-evaluate", flow_run_name="cross-evaluate/{site.name}")
def site_cross_evaluate(
    site: SiteConfig,
    hub_url: str,
    run_id: str,
    owners: list[str],
    chem: ChemConfig,
    model: ModelConfig,
) -> list[EvalReport]:
    return evaluate_baselines(site, hub_url, run_id, owners, chem, model)
