"""The coordinator: R rounds over N sites, the configured strategy, one global model per round.

It sees only what sites publish: preparation counts, update manifests, weights on the hub.
``mode: local`` runs each site's round as a subflow here (the one-machine simulation);
``mode: deployed`` runs every site's own deployment on its own work pool, booked a round
ahead so that the runs' start overlaps the round before (``fedchem.federation.rounds``), and
waits until the round's deadline, then commits with the sites that answered if they reach
the quorum. The UI shows a progress artifact for the run and a table of site metrics per round.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact
from prefect.futures import PrefectFuture, wait

from fedchem.config import FederationConfig, SiteConfig
from fedchem.federation.coordinator import QuorumError
from fedchem.federation.manifest import FitInstructions, RoundManifest, SiteUpdateManifest
from fedchem.federation.rounds import new_ticket
from fedchem.federation.strategies import Strategy, build_strategy
from fedchem.model.train import lr_factor
from flows.site_round import site_round
from tasks.hub import (
    aggregate,
    artifact_key,
    await_replies,
    await_running,
    book_site_runs,
    cancel_site_runs,
    open_site_round,
    read_prepare_reports,
    record_best,
    report_round,
    start,
)


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


class _DeployedRounds:
    """Deployed mode: every site's own deployment, one run per round, booked rounds ahead.

    While round ``r`` trains, the runs of rounds up to ``r + deployment.book_ahead`` are
    created; the sites' workers pick them up and start them, and they wait on the hub until
    their round opens (``fedchem.federation.rounds``). A round's deadline counts from its
    opening.
    """

    def __init__(self, config: FederationConfig) -> None:
        self.config, self.ticket = config, new_ticket()
        self.ahead: dict[int, PrefectFuture[tuple[dict[str, str], dict[str, str]]]] = {}

    def run(
        self, rnd: int, fit: FitInstructions, check: PrefectFuture[Any] | None = None
    ) -> tuple[list[SiteUpdateManifest], dict[str, str]]:
        """Round ``rnd``: top up its booked runs, open it once ``check`` (the sites'
        consistency, run meanwhile) passed, book the rounds ahead once its runs are running,
        and wait for them until the deadline."""
        config = self.config
        booked = self.ahead.pop(rnd).result()[0] if rnd in self.ahead else None
        # sites not booked yet, or whose booked run already ended (their worker died)
        booked, failed = book_site_runs.with_options(task_run_name=f"book-round-{rnd:02d}")(
            config, rnd, self.ticket, booked
        )
        try:
            if check is not None:
                check.result()  # no round opens while sites disagree
        except BaseException:
            if booked:
                cancel_site_runs(list(booked.values()))
            raise
        open_site_round.with_options(task_run_name=f"open-round-{rnd:02d}")(
            config, rnd, self.ticket, fit
        )
        deadline = time.time() + config.deployment.round_deadline_s
        last = min(rnd + config.deployment.book_ahead, config.rounds)
        later = [r for r in range(rnd + 1, last + 1) if r not in self.ahead]
        if later:  # once this round's runs run (their starts and the next ones' apart), the
            # nearest round's; the rest once the replies are in (one round's runs at a time)
            await_running.with_options(task_run_name=f"running-round-{rnd:02d}")(
                config, booked, deadline
            )
            self._book(later.pop(0))
        replies, missing = await_replies.with_options(task_run_name=f"await-round-{rnd:02d}")(
            config, rnd, booked, deadline
        )
        for r in later:
            self._book(r)
        return replies, {**missing, **failed}

    def _book(self, rnd: int) -> None:
        self.ahead[rnd] = book_site_runs.with_options(task_run_name=f"book-round-{rnd:02d}").submit(
            self.config, rnd, self.ticket
        )

    def close(self) -> None:
        """The federation stopped: runs booked for rounds that will not open are cancelled."""
        run_ids = []
        for future in self.ahead.values():
            made = future.result(raise_on_failure=False)  # a failed booking booked nothing
            if isinstance(made, tuple):
                run_ids += list(made[0].values())
        self.ahead.clear()
        if run_ids:
            cancel_site_runs(run_ids)


@flow(name="coordinator", flow_run_name="federation/{config.run_id}")
def coordinator(config: FederationConfig) -> list[RoundManifest]:
    """Run every round; return the committed round manifests (hashes, counts, metrics)."""
    reports = read_prepare_reports(config.hub_url, config.site_names)
    committed = start(config, reports)  # a run already on the hub resumes where it stopped
    progress = create_progress_artifact(
        100.0 * (len(committed) - 1) / config.rounds,
        key=artifact_key(config.run_id, "progress"), description=f"federation {config.run_id}",
    )  # fmt: skip
    strategy = build_strategy(config.strategy)
    deployed = _DeployedRounds(config) if config.mode == "deployed" else None
    reported = []
    try:
        for rnd in range(len(committed), config.rounds + 1):
            committed.append(_round(config, strategy, rnd, deployed))
            # the round's table and the progress bar: not on the next round's critical path
            reported.append(report_round.submit(config, committed[-1], progress))
    finally:
        if deployed is not None:
            deployed.close()
        wait(reported)
    best = record_best(config.hub_url, config.run_id, committed)
    create_markdown_artifact(
        key=artifact_key(config.run_id, "summary"),
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


def _round(
    config: FederationConfig, strategy: Strategy, rnd: int, deployed: _DeployedRounds | None
) -> RoundManifest:
    """One round: the sites' replies (subflows, or their own deployments), then the commit."""
    logger = get_run_logger()
    started_at = time.time()
    # a site may have re-prepared since: no round starts while sites disagree (checked while
    # the round's runs are topped up)
    check = read_prepare_reports.submit(config.hub_url, config.site_names) if rnd > 1 else None
    fit = strategy.configure_fit(rnd).model_copy(
        update={
            "private_tasks": config.private_tasks(),
            "lr_factor": lr_factor(config.train, rnd - 1, config.rounds),
        }
    )
    if deployed is None:
        if check is not None:
            check.result()
        replies, missing = _local_round(config, rnd, fit)
    else:
        replies, missing = deployed.run(rnd, fit, check)
    for site, why in missing.items():
        logger.warning("round %d: site %s missing: %s", rnd, site, why)
    if len(replies) < config.quorum():
        raise QuorumError(
            f"round {rnd}: {len(replies)} of {len(config.sites)} sites replied, quorum "
            f"is {config.quorum()}; missing: {missing}. Committed rounds stay intact."
        )
    manifest = aggregate(config, rnd, replies, missing, started_at)
    logger.info("round %d/%d committed", rnd, config.rounds)
    return manifest


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
