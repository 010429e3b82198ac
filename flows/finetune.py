"""Fine-tune a published model at a site, on the site's own tasks; it stays at the site.

The site prepares its data with the model's featurizer (cached), fits heads for its own tasks
(optionally the trunk's last layer too) with early stopping on its validation fold, and
registers the result in its own registry, never the coordinator's. The run returns the test
fold's aggregates: fine-tuned, the federated model as is, local-only with the same budget.
"""

from __future__ import annotations

from prefect import flow

from fedchem.config import SiteConfig, SiteRef
from fedchem.federation.finetune import FinetuneConfig
from fedchem.messages import EvalReport
from fedchem.tasks.serve import finetune_at_site


@flow(name="finetune", flow_run_name="finetune/{site.name}")
def finetune(
    site: SiteConfig | SiteRef,
    registry: str,
    model: str,
    name: str | None = None,
    config: FinetuneConfig = FinetuneConfig(),  # noqa: B008 (frozen pydantic model)
) -> dict[str, EvalReport | None]:
    return finetune_at_site(site, registry, model, name, config)
