"""Publish a federation's round as a registered model (the coordinator's registry).

Each site first calibrates the round's model on its own validation fold (``site-calibrate``:
a subflow in local mode, the site's own deployment in deployed mode); its private heads and
exact scores go to its own registry, binned counts to the hub. The coordinator then registers
the weights, spec, calibration from the counts, domain and model card as the next version.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment

from fedchem.config import FederationConfig, PublishConfig, SiteConfig
from fedchem.federation import steps
from fedchem.federation.parallel import dask_sites
from fedchem.flows.site_calibrate import site_calibrate
from fedchem.messages import EvalReport, SiteCalibration
from fedchem.storage.hub import HubLayout, HubStore
from fedchem.tasks.coordinator import read_prepare_reports
from fedchem.tasks.registry import publish_model, round_to_publish
from fedchem.tasks.site import at_sites


@flow(name="publish", flow_run_name="publish/{target.model_name}")
def publish(
    config: FederationConfig, target: PublishConfig, evals: list[EvalReport] | None = None
) -> int:
    """Returns the version registered. ``evals``: the sites' test-fold reports, if at hand
    (the demo has them), for the model card."""
    rnd = round_to_publish(config, target)
    reports = read_prepare_reports(config.hub_url, config.site_names, config.trust)
    calibrations = _calibrate(config, target, rnd)
    return publish_model(config, target, rnd, reports, calibrations, evals)


def _calibrate(config: FederationConfig, target: PublishConfig, rnd: int) -> list[SiteCalibration]:
    """Every site's calibration of round ``rnd``; a site that fails is left out (logged)."""
    logger = get_run_logger()
    common: dict[str, Any] = {
        "hub_url": config.hub_url,
        "run_id": config.run_id,
        "round": rnd,
        "chem": config.chem.model_dump(mode="json"),
        "model": config.model.model_dump(mode="json"),
        "model_name": target.model_name,
        "private_tasks": config.private_tasks(),
    }
    sites, local = config.sites, dask_sites(config)
    if local is not None:
        # many sites: one task, the sites' calibrations in Dask workers (failures logged)
        at_sites(
            "calibrate",
            len(local),
            steps.calibrate_for_serving,
            [
                (
                    s.name,
                    (
                        s,
                        config.hub_url,
                        config.run_id,
                        rnd,
                        config.chem,
                        config.model,
                        config.private_tasks(),
                        target.model_name,
                    ),
                )
                for s in local
            ],
            config.simulation.dask_address,
            config.simulation.workers,
        )
        sites = []
    for site in sites:
        if config.mode == "local" and isinstance(site, SiteConfig):
            state = site_calibrate.with_options(flow_run_name=f"calibrate/{site.name}")(
                site=site,
                **{**common, "chem": config.chem, "model": config.model},
                return_state=True,
            )
        else:
            run = run_deployment(
                f"site-calibrate/{site.name}-calibrate",
                parameters={"site": {"name": site.name}, **common},
                timeout=target.calibration_deadline_s,
                flow_run_name=f"calibrate/{site.name}",
                tags=["fedchem", f"site:{site.name}", f"run:{config.run_id}"],
            )
            state = run.state  # type: ignore[union-attr]
        if state is None or not state.is_completed():
            logger.warning("site %s: no calibration (%s)", site.name, getattr(state, "name", None))
    hub, layout = HubStore(config.hub_url), HubLayout(config.run_id)
    out = []
    for name in config.site_names:  # from the hub, whichever way the runs were started
        path = layout.site_calibration(name)
        if hub.exists(path):
            cal = SiteCalibration.model_validate(hub.get_json(path))
            if cal.round == rnd:
                out.append(cal)
    return out
