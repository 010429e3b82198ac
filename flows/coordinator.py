"""The coordinator: R rounds over N sites, the configured strategy, one global model per round.

It sees only what sites publish: preparation counts, update manifests, weights on the hub.
``mode: local`` runs each site's round as a subflow here (the one-machine simulation);
``mode: deployed`` triggers every site's own deployment concurrently on its own work pool and
waits until the round's deadline, then commits with the sites that answered if they reach
the quorum. The UI shows a progress artifact for the run and a table of site metrics per round.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from fedchem.config import FederationConfig, SiteConfig
from fedchem.federation.coordinator import QuorumError
from fedchem.federation.manifest import FitInstructions, RoundManifest, SiteUpdateManifest
from fedchem.federation.strategies import build_strategy
from fedchem.model.train import lr_factor
from flows.site_round import site_round
from tasks.hub import (
    aggregate,
    collect_replies,
    read_prepare_reports,
    record_best,
    start,
    trigger_site_round,
)


def _key(run_id: str, suffix: str) -> str:
    """An artifact key (lowercase letters, digits, dashes) for this run."""
    slug = "".join(c if c.isalnum() else "-" for c in run_id.lower()).strip("-")
    return f"fedchem-{slug}-{suffix}"[:120]


def _local_round(
    config: FederationConfig, rnd: int, fit: FitInstructions
) -> tuple[list[SiteUpdateManifest], dict[str, str]]:
    """Every site's round as a subflow; a site whose flow fails is missing, not fatal."""
    replies, missing = [], {}
    for site in config.sites:
        if not isinstance(site, SiteConfig):
            continue
        state = site_round.with_options(flow_run_name=f"round-{rnd:02d}/{site.name}")(
            site=site,
            hub_url=config.hub_url,
            run_id=config.run_id,
            round=rnd,
            chem=config.chem,
            model=config.model,
            train=config.train,
            fit=fit,
            return_state=True,
        )
        if state.is_completed():
            replies.append(state.result())
        else:  # the error's type only: its message could carry site data
            exc = state.result(raise_on_failure=False)
            kind = type(exc).__name__ if isinstance(exc, BaseException) else state.name
            missing[site.name] = f"site flow {state.name.lower()} ({kind})"
    return replies, missing


def _deployed_round(
    config: FederationConfig, rnd: int, fit: FitInstructions
) -> tuple[list[SiteUpdateManifest], dict[str, str]]:
    deadline = time.time() + config.deployment.round_deadline_s
    futures = [
        trigger_site_round.with_options(task_run_name=f"trigger-round-{rnd:02d}/{name}").submit(
            config, rnd, name, fit, deadline
        )
        for name in config.site_names
    ]
    outcomes = [f.result() for f in futures]
    return collect_replies(config.hub_url, config.run_id, rnd, outcomes)


@flow(name="coordinator", flow_run_name="federation/{config.run_id}")
def coordinator(config: FederationConfig) -> list[RoundManifest]:
    """Run every round; return the committed round manifests (hashes, counts, metrics)."""
    logger = get_run_logger()
    reports = read_prepare_reports(config.hub_url, config.site_names)
    committed = start(config, reports)  # a run already on the hub resumes where it stopped
    strategy = build_strategy(config.strategy)
    progress = create_progress_artifact(
        100.0 * (len(committed) - 1) / config.rounds,
        key=_key(config.run_id, "progress"), description=f"federation {config.run_id}",
    )  # fmt: skip
    for rnd in range(len(committed), config.rounds + 1):
        if rnd > 1:  # a site may have re-prepared since: no round starts while sites disagree
            read_prepare_reports(config.hub_url, config.site_names)
        started_at = time.time()
        fit = strategy.configure_fit(rnd).model_copy(
            update={
                "private_tasks": config.private_tasks(),
                "lr_factor": lr_factor(config.train, rnd - 1, config.rounds),
            }
        )
        if config.mode == "local":
            replies, missing = _local_round(config, rnd, fit)
        else:
            replies, missing = _deployed_round(config, rnd, fit)
        for site, why in missing.items():
            logger.warning("round %d: site %s missing: %s", rnd, site, why)
        if len(replies) < config.quorum():
            raise QuorumError(
                f"round {rnd}: {len(replies)} of {len(config.sites)} sites replied, quorum "
                f"is {config.quorum()}; missing: {missing}. Committed rounds stay intact."
            )
        manifest = aggregate(config, rnd, replies, missing, started_at)
        committed.append(manifest)
        create_table_artifact(
            key=_key(config.run_id, f"round-{rnd:02d}"),
            table=[
                {
                    "site": s,
                    "examples": manifest.n_examples.get(s, 0),
                    **{k: round(v, 4) for k, v in manifest.valid_summary.get(s, {}).items()},
                }
                for s in config.site_names
                if s in manifest.valid_summary
            ]
            + [{"site": f"missing: {s}", "examples": 0} for s in manifest.missing]
            + [{"site": f"rejected: {s}", "examples": 0} for s in manifest.rejected],
            description=f"round {rnd} of {config.run_id}: site validation metrics (aggregates)",
        )
        update_progress_artifact(progress, 100.0 * rnd / config.rounds)
        logger.info("round %d/%d committed", rnd, config.rounds)
    best = record_best(config.hub_url, config.run_id, committed)
    create_markdown_artifact(
        key=_key(config.run_id, "summary"),
        markdown=_summary(config, committed)
        + (
            f"\nBest round by the sites' validation {best['metric']}: **{best['round']}** "
            f"({best['value']:.4f}); kept as `runs/{config.run_id}/best.json` on the hub.\n"
            if best.get("round")
            else ""
        ),
        description=f"federation {config.run_id}: every round",
    )
    return committed


def _summary(config: FederationConfig, committed: list[RoundManifest]) -> str:
    metric_keys = sorted({k for m in committed for k in m.valid_score})
    lines = [
        f"# Federation `{config.run_id}`",
        "",
        f"{len(config.sites)} sites, {config.rounds} rounds, strategy `{config.strategy.name}`, "
        f"mode `{config.mode}`.",
        "",
        "| round | sites | missing | " + " | ".join(metric_keys) + " |",
        "|---|---|---|" + "---|" * len(metric_keys),
    ]
    for m in committed[1:]:
        vals = " | ".join(
            f"{m.valid_score[k]:.4f}" if k in m.valid_score else "" for k in metric_keys
        )
        lines.append(f"| {m.round} | {len(m.sites)} | {', '.join(m.missing) or '-'} | {vals} |")
    return "\n".join(lines) + "\n"
