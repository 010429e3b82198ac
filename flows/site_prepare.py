"""Site preparation: validate → standardize → featurize → tasks; publish counts to the hub."""

from __future__ import annotations

from prefect import flow

from fedchem.config import ChemConfig, SiteConfig, TaskSpec
from fedchem.data.prepare import PrepareReport
from tasks.site import prepare, publish_prepare_report


@flow(name="site-prepare", flow_run_name="prepare/{site.name}")
def site_prepare(
    site: SiteConfig, chem: ChemConfig, tasks: list[TaskSpec], hub_url: str
) -> PrepareReport:
    """Prepare one site's data (cached by content) and publish its counts, never its rows."""
    report = prepare(site, chem, tasks)
    publish_prepare_report(hub_url, report)
    return report
