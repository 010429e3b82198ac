"""A site scores registered model versions on its own validation fold (aggregates leave);
asked to compare a candidate with production, it also sends their paired difference and its
confidence interval on the same molecules."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from fedchem.config import SiteConfig, SiteRef
from fedchem.federation.continual import PromotionPolicy
from fedchem.messages import EvalReport
from fedchem.tasks.serve import validate_registered


@flow(name="site-validate", flow_run_name="validate/{site.name}")
def site_validate(
    site: SiteConfig | SiteRef,
    registry: str,
    refs: list[str],
    fold: Literal["valid", "test"] = "valid",
    compare: PromotionPolicy | None = None,
) -> dict[str, EvalReport]:
    return validate_registered(site, registry, refs, fold, compare)
