"""Site preparation: validate → standardize → featurize → tasks; publish counts to the hub."""

from __future__ import annotations

from prefect import flow

from fedchem.config import ChemConfig, SiteConfig, SiteRef, TaskSpec
from fedchem.messages import PrepareReport
from fedchem.tasks.site import prepare, publish_prepare_report


@flow(name="site-prepare", flow_run_name="prepare/{site.name}")
def site_prepare(
    site: SiteConfig | SiteRef,
    hub_url: str,
    chem: ChemConfig = ChemConfig(),  # noqa: B008 (frozen pydantic model)
    tasks: list[TaskSpec] | None = None,
) -> PrepareReport:
    """Prepare one site's data (cached by content) and publish its counts, never its rows.

    ``site`` by name only (deployed mode) reads the site's config from its worker's
    ``$FEDCHEM_SITE_CONFIG``; ``tasks`` left out derives the catalogue from the assay table.
    """
    report = prepare(site, chem, tasks, hub_url)
    publish_prepare_report(hub_url, report, site)
    return report
