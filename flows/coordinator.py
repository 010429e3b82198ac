"""The coordinator: R rounds over N sites, the configured strategy, one global model per round.

It sees only what sites publish: preparation counts, update manifests, weights on the hub.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from fedchem.config import FederationConfig
from fedchem.federation.manifest import RoundManifest
from fedchem.federation.strategies import build_strategy
from flows.site_round import site_round
from tasks.hub import aggregate, read_prepare_reports, start


@flow(name="coordinator", flow_run_name="federation/{config.run_id}")
def coordinator(config: FederationConfig) -> list[RoundManifest]:
    """Run every round; return the committed round manifests (hashes, counts, metrics)."""
    logger = get_run_logger()
    reports = read_prepare_reports(config.hub_url, [s.name for s in config.sites])
    committed = [start(config, reports)]
    strategy = build_strategy(config.strategy)
    site_names = [s.name for s in config.sites]
    for rnd in range(1, config.rounds + 1):
        if rnd > 1:  # a site may have re-prepared since: no round starts while sites disagree
            read_prepare_reports(config.hub_url, site_names)
        fit = strategy.configure_fit(rnd)
        replies = [
            site_round.with_options(flow_run_name=f"round-{rnd:02d}/{site.name}")(
                site=site,
                hub_url=config.hub_url,
                run_id=config.run_id,
                round=rnd,
                chem=config.chem,
                model=config.model,
                train=config.train,
                fit=fit,
            )
            for site in config.sites
        ]
        committed.append(
            aggregate(config.hub_url, config.run_id, rnd, replies, config.strategy, [])
        )
        logger.info("round %d/%d committed", rnd, config.rounds)
    return committed
