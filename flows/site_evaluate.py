"""Score a committed global model on a site's held-out test fold (aggregates only)."""

from __future__ import annotations

from prefect import flow

from fedchem.config import ChemConfig, ModelConfig, Selection, SiteConfig
from fedchem.messages import EvalReport
from fedchem.tasks.site import evaluate_global


@flow(name="site-evaluate", flow_run_name="evaluate/{site.name}")
def site_evaluate(
    site: SiteConfig,
    hub_url: str,
    run_id: str,
    round: int,
    chem: ChemConfig,
    model: ModelConfig,
    select: Selection = "last",
) -> EvalReport:
    """``select="best_valid"``: the round up to ``round`` best on the site's validation fold."""
    return evaluate_global(site, hub_url, run_id, round, chem, model, select)
