"""A site scores registered model versions on its own validation fold (aggregates leave)."""

from __future__ import annotations

from prefect import flow

from fedchem.config import SiteConfig, SiteRef
from fedchem.messages import EvalReport
from fedchem.tasks.serve import validate_registered


@flow(name="site-validate", flow_run_name="validate/{site.name}")
def site_validate(
    site: SiteConfig | SiteRef, registry: str, refs: list[str]
) -> dict[str, EvalReport]:
    return validate_registered(site, registry, refs)
