"""The coordinator: R rounds over N sites, the configured strategy, one global model per round.

It sees only what sites publish: preparation counts, update manifests, weights on the hub.
Every round goes one way (``fedchem.federation.rounds``): the coordinator opens it on the hub,
each site's run reads the opening, trains and publishes its update, and the coordinator
collects the replies from the hub, then screens, aggregates and commits (the quorum is decided
there, once). Only how a site's run starts differs: ``mode: local`` runs it as a subflow here
(the one-machine simulation); ``mode: deployed`` runs the site's own deployment on its own work
pool, booked rounds ahead so that the runs' start overlaps the rounds before. Every run the
coordinator started ends in a final state before it does. The UI shows a progress artifact for
the run and a table of site metrics per round.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact
from prefect.futures import PrefectFuture, wait

from fedchem.config import FederationConfig, SiteConfig
from fedchem.federation.coordinator import strategy_for
from fedchem.federation.rounds import new_ticket
from fedchem.federation.strategies import Strategy
from fedchem.flows.site_round import site_round
from fedchem.messages import FitInstructions, RoundManifest
from fedchem.model.train import lr_factor
from fedchem.tasks.coordinator import (
    aggregate,
    artifact_key,
    read_prepare_reports,
    record_best,
    report_round,
    start,
)
from fedchem.tasks.rounds import (
    await_replies,
    await_running,
    book_site_runs,
    open_site_round,
    stop_site_runs,
    withdraw_site_rounds,
)

#: site -> its run's flow run id, site -> why it has no run, and when the round was opened
Started = tuple[dict[str, str], dict[str, str], float]
#: site -> flow run id, site -> why not booked
Booked = tuple[dict[str, str], dict[str, str]]


class LocalSites:
    """Simulation: every site's round is a subflow of the coordinator, one after another."""

    def __init__(self, config: FederationConfig, ticket: str) -> None:
        self.config, self.ticket = config, ticket

    def start(self, rnd: int, fit: FitInstructions, check: PrefectFuture[Any] | None) -> Started:
        config = self.config
        if check is not None:
            check.result()  # no round opens while sites disagree
        open_site_round.with_options(task_run_name=f"open-round-{rnd:02d}")(
            config, rnd, self.ticket, fit
        )
        opened = time.time()
        runs = {}
        for site in config.sites:
            assert isinstance(site, SiteConfig)  # local mode: checked by FederationConfig
            state = site_round.with_options(flow_run_name=f"round-{rnd:02d}/{site.name}")(
                site=site,
                hub_url=config.hub_url,
                run_id=config.run_id,
                round=rnd,
                chem=config.chem,
                model=config.model,
                train=config.train,
                ticket=self.ticket,
                return_state=True,
            )
            runs[site.name] = str(state.state_details.flow_run_id)
        return runs, {}, opened

    def after_replies(self, rnd: int) -> None:
        return None

    def close(self) -> None:
        return None


class DeployedSites:
    """Every site's own deployment, one run per round, booked rounds ahead.

    While round ``r`` trains, the runs of rounds up to ``r + deployment.book_ahead`` are
    created; the sites' workers start them and they wait on the hub until their round opens.
    """

    def __init__(self, config: FederationConfig, ticket: str) -> None:
        self.config, self.ticket = config, ticket
        self.ahead: dict[int, PrefectFuture[Booked]] = {}
        self.later: list[int] = []
        self.started: list[str] = []  # every run booked, for close()
        self.last: dict[str, str] = {}  # the runs of the round opened last
        self.unopened: set[int] = set()  # rounds with runs booked, not opened yet

    def start(self, rnd: int, fit: FitInstructions, check: PrefectFuture[Any] | None) -> Started:
        """Top up round ``rnd``'s booked runs, open it once ``check`` (the sites' consistency,
        run meanwhile) passed, and book the nearest round ahead once its runs run."""
        config, dep = self.config, self.config.deployment
        booked = self.ahead.pop(rnd).result()[0] if rnd in self.ahead else None
        # sites not booked yet, whose booked run already ended (their worker died), or whose
        # booked run a worker holds after their last round's run did not complete
        self.unopened.add(rnd)
        runs, failed = book_site_runs.with_options(task_run_name=f"book-round-{rnd:02d}")(
            config, rnd, self.ticket, booked, self.last
        )
        self.started += [*(booked or {}).values(), *runs.values()]  # a replaced one stops too
        self.last = runs
        if check is not None:
            check.result()  # no round opens while sites disagree (close() stops the runs)
        open_site_round.with_options(task_run_name=f"open-round-{rnd:02d}")(
            config, rnd, self.ticket, fit
        )
        opened = time.time()
        self.unopened.discard(rnd)
        last = min(rnd + dep.book_ahead, config.rounds)
        self.later = [r for r in range(rnd + 1, last + 1) if r not in self.ahead]
        if self.later:  # once this round's runs run (their starts and the next ones' apart), the
            # nearest round's; the rest once the replies are in (one round's runs at a time)
            await_running.with_options(task_run_name=f"running-round-{rnd:02d}")(
                config, runs, opened + dep.round_deadline_s
            )
            self._book(self.later.pop(0))
        return runs, failed, opened

    def after_replies(self, rnd: int) -> None:
        for r in self.later:
            self._book(r)
        self.later = []

    def _book(self, rnd: int) -> None:
        self.unopened.add(rnd)
        self.ahead[rnd] = book_site_runs.with_options(task_run_name=f"book-round-{rnd:02d}").submit(
            self.config, rnd, self.ticket
        )

    def close(self) -> None:
        """The federation stopped: rounds booked ahead are withdrawn on the hub (their waiting
        runs end by themselves), and every run booked ends in a final state."""
        for future in self.ahead.values():
            made = future.result(raise_on_failure=False)  # a failed booking booked nothing
            if isinstance(made, tuple):
                self.started += made[0].values()
        if self.unopened:
            withdraw_site_rounds(self.config, sorted(self.unopened), self.ticket)
        self.ahead.clear()
        if self.started:
            stop_site_runs(sorted(set(self.started)), self.config.deployment.cancel_grace_s)


@flow(name="coordinator", flow_run_name="federation/{config.run_id}")
def coordinator(config: FederationConfig) -> list[RoundManifest]:
    """Run every round; return the committed round manifests (hashes, counts, metrics)."""
    reports = read_prepare_reports(config.hub_url, config.site_names, config.trust)
    committed = start(config, reports)  # a run already on the hub resumes where it stopped
    progress = create_progress_artifact(
        100.0 * (len(committed) - 1) / config.rounds,
        key=artifact_key(config.run_id, "progress"),
        description=f"federation {config.run_id}",
    )
    strategy = strategy_for(config)  # with site-level DP: wrapped, noise on the sum
    ticket = new_ticket()
    sites = (LocalSites if config.mode == "local" else DeployedSites)(config, ticket)
    reported = []
    try:
        for rnd in range(len(committed), config.rounds + 1):
            committed.append(_round(config, strategy, rnd, sites))
            # the round's table and the progress bar: not on the next round's critical path
            reported.append(report_round.submit(config, committed[-1], progress))
    finally:
        sites.close()
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
    config: FederationConfig, strategy: Strategy, rnd: int, sites: LocalSites | DeployedSites
) -> RoundManifest:
    """One round: start the sites' runs, collect their replies from the hub, commit."""
    logger = get_run_logger()
    started_at = time.time()
    # a site may have re-prepared since: no round starts while sites disagree (checked while
    # the round's runs are started or topped up)
    check = (
        read_prepare_reports.submit(config.hub_url, config.site_names, config.trust)
        if rnd > 1
        else None
    )
    fit = strategy.configure_fit(rnd).model_copy(
        update={
            "private_tasks": config.private_tasks(),
            "lr_factor": lr_factor(config.train, rnd - 1, config.rounds),
        }
    )
    runs, failed, opened = sites.start(rnd, fit, check)
    deadline = opened + config.deployment.round_deadline_s  # counts from the round's opening
    replies, missing = await_replies.with_options(task_run_name=f"await-round-{rnd:02d}")(
        config, rnd, runs, deadline
    )
    sites.after_replies(rnd)
    missing = {**missing, **failed}
    for site, why in missing.items():
        logger.warning("round %d: site %s missing: %s", rnd, site, why)
    manifest = aggregate(config, strategy, rnd, replies, missing, started_at)
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
    last = committed[-1]
    if last.dp:
        lines += [
            "",
            f"Site-level DP: noise multiplier {last.dp['noise_multiplier']:.3g}, clip "
            f"{last.dp['clip']:g}; epsilon {last.dp['epsilon_run']:.3f} at delta "
            f"{last.dp['delta']:g} after round {last.round}.",
        ]
    if last.site_epsilon:
        eps = ", ".join(f"{s} {e:.3f}" for s, e in sorted(last.site_epsilon.items()))
        lines += ["", f"Record-level DP (DP-SGD at the sites), epsilon of the run: {eps}."]
    return "\n".join(lines) + "\n"
