"""The coordinator: R rounds over N sites, the configured strategy, one global model per round.

It sees only what sites publish: preparation counts, update manifests, weights on the hub.
Every round goes one way, through the library's round driver
(:func:`fedchem.federation.driver.run_rounds`): the coordinator opens it on the hub, each
site's run reads the opening, trains and publishes its update, and the coordinator collects the
replies from the hub, then screens, aggregates and commits (the quorum is decided there, once;
a round below it is recorded as failed). Here the coordinator's steps run as Prefect tasks
(:class:`TaskSteps`), and only how a site's run starts differs: ``mode: local`` runs it as a
subflow here (the one-machine simulation), or, for many sites (``simulation``), every site's
step at once in Dask worker processes; ``mode: deployed`` runs the site's own deployment on
its own work pool, booked rounds ahead so that the runs' start overlaps the rounds before.
Every run the coordinator started ends in a final state before it does. The UI shows a
progress artifact for the run and a table of site metrics per round.
"""

from __future__ import annotations

import time
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact
from prefect.futures import PrefectFuture, wait

from fedchem.config import FederationConfig, SiteConfig
from fedchem.federation.driver import (
    CoordinatorSteps,
    FederationStopped,
    RoundStart,
    SiteLauncher,
    run_rounds,
)
from fedchem.federation.parallel import DaskSites
from fedchem.federation.rounds import SiteReplies
from fedchem.federation.secure import MaskedUpdates
from fedchem.flows.site_round import site_round
from fedchem.messages import FitInstructions, RoundManifest, SiteUpdateManifest
from fedchem.secagg.protocol import Reveal
from fedchem.secagg.rounds import SecureRound
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
    ended_runs,
    open_site_round,
    stop_site_runs,
    withdraw_site_rounds,
)

#: site -> flow run id, site -> why not booked
Booked = tuple[dict[str, str], dict[str, str]]


class TaskSteps:
    """The coordinator's steps of a round (:class:`~fedchem.federation.driver.CoordinatorSteps`)
    as Prefect tasks: the UI shows each round's opening, wait and commit, and a table per
    round. From round 2 on, the sites' consistency is checked while the round's runs start."""

    def __init__(self, config: FederationConfig, progress: UUID) -> None:
        self.lib = CoordinatorSteps(config)
        self.strategy, self.plan = self.lib.strategy, self.lib.plan
        self.config, self.progress = config, progress
        self.check: PrefectFuture[Any] | None = None
        self.reported: list[PrefectFuture[None]] = []

    def begin(self, rnd: int) -> None:
        # a site may have re-prepared since: no round opens while sites disagree
        config = self.config
        self.check = (
            read_prepare_reports.submit(config.hub_url, config.site_names, config.trust)
            if rnd > 1
            else None
        )

    def open(self, rnd: int, ticket: str, fit: FitInstructions) -> None:
        if self.check is not None:
            self.check.result()  # no round opens while sites disagree
        open_site_round.with_options(task_run_name=f"open-round-{rnd:02d}")(
            self.lib, rnd, ticket, fit
        )

    def aggregate(
        self, rnd: int, replies: SiteReplies, missing: dict[str, str], started_at: float
    ) -> RoundManifest:
        logger = get_run_logger()
        for site, why in missing.items():
            logger.warning("round %d: site %s missing: %s", rnd, site, why)
        return aggregate.with_options(task_run_name=f"commit-round-{rnd:02d}")(
            self.lib, rnd, replies, missing, started_at
        )

    def committed(self, manifest: RoundManifest) -> None:
        # the round's table and the progress bar: not on the next round's critical path
        self.reported.append(report_round.submit(self.config, manifest, self.progress))

    # secure aggregation: the coordinator's lists and the unmasking, as the library does them
    def secure(self, rnd: int) -> SecureRound:
        return self.lib.secure(rnd)

    def screen_masked(
        self, rnd: int, replies: list[SiteUpdateManifest], secure: SecureRound
    ) -> MaskedUpdates:
        return self.lib.screen_masked(rnd, replies, secure)

    def commit_secure(
        self,
        rnd: int,
        taken: MaskedUpdates,
        secure: SecureRound,
        reveals: list[Reveal],
        missing: dict[str, str],
        started_at: float,
    ) -> RoundManifest:
        manifest = self.lib.commit_secure(rnd, taken, secure, reveals, missing, started_at)
        get_run_logger().info(
            "round %d committed from the secure sum of %d sites (%s)",
            rnd,
            len(manifest.sites),
            ", ".join(manifest.sites),
        )
        return manifest

    def fail(
        self,
        rnd: int,
        reason: str,
        missing: dict[str, str],
        rejected: dict[str, str],
        started_at: float,
    ) -> RoundManifest:
        get_run_logger().error("round %d failed: %s", rnd, reason)
        return self.lib.fail(rnd, reason, missing, rejected, started_at)


class LocalSites:
    """Simulation: every site's round is a subflow of the coordinator, one after another (a
    securely aggregated round: one subflow per site and step)."""

    def __init__(self, config: FederationConfig) -> None:
        self.config = config
        self.ticket = ""

    def _runs(self, rnd: int, step: str | None) -> dict[str, str]:
        config, runs = self.config, {}
        for site in config.sites:
            assert isinstance(site, SiteConfig)  # local mode: checked by FederationConfig
            name = f"round-{rnd:02d}/{site.name}" + (f"/{step}" if step else "")
            state = site_round.with_options(flow_run_name=name)(
                site=site,
                hub_url=config.hub_url,
                run_id=config.run_id,
                round=rnd,
                chem=config.chem,
                model=config.model,
                train=config.train,
                ticket=self.ticket,
                step=step,
                return_state=True,
            )
            runs[site.name] = str(state.state_details.flow_run_id)
        return runs

    def start(self, rnd: int, ticket: str, open_round: Any) -> RoundStart:
        open_round()
        opened = time.time()
        self.ticket = ticket
        secure = self.config.secure_aggregation is not None
        return RoundStart(self._runs(rnd, "keys" if secure else None), {}, opened)

    def step(self, rnd: int, step: str) -> None:
        self._runs(rnd, step)

    def ended(self, rnd: int, started: RoundStart) -> set[str]:
        return set(started.runs)  # each step's subflows ran to their end

    def collect(self, rnd: int, started: RoundStart, deadline: float) -> SiteReplies:
        return await_replies.with_options(task_run_name=f"await-round-{rnd:02d}")(
            self.config, rnd, started.runs, deadline
        )

    def after_replies(self, rnd: int) -> None:
        return None

    def close(self) -> None:
        return None


class DeployedSites:
    """Every site's own deployment, one run per round, booked rounds ahead.

    While round ``r`` trains, the runs of rounds up to ``r + deployment.book_ahead`` are
    created; the sites' workers start them and they wait on the hub until their round opens.
    """

    def __init__(self, config: FederationConfig) -> None:
        self.config = config
        self.ticket = ""
        self.ahead: dict[int, PrefectFuture[Booked]] = {}
        self.later: list[int] = []
        self.started: list[str] = []  # every run booked, for close()
        self.last: dict[str, str] = {}  # the runs of the round opened last
        self.unopened: set[int] = set()  # rounds with runs booked, not opened yet

    def start(self, rnd: int, ticket: str, open_round: Any) -> RoundStart:
        """Top up round ``rnd``'s booked runs, open it (once the sites' consistency, checked
        meanwhile, passed), and book the nearest round ahead once its runs run."""
        config, dep = self.config, self.config.deployment
        self.ticket = ticket
        booked = self.ahead.pop(rnd).result()[0] if rnd in self.ahead else None
        # sites not booked yet, whose booked run already ended (their worker died), or whose
        # booked run a worker holds after their last round's run did not complete
        self.unopened.add(rnd)
        runs, failed = book_site_runs.with_options(task_run_name=f"book-round-{rnd:02d}")(
            config, rnd, ticket, booked, self.last
        )
        self.started += [*(booked or {}).values(), *runs.values()]  # a replaced one stops too
        self.last = runs
        open_round()
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
        return RoundStart(runs, failed, opened)

    def collect(self, rnd: int, started: RoundStart, deadline: float) -> SiteReplies:
        return await_replies.with_options(task_run_name=f"await-round-{rnd:02d}")(
            self.config, rnd, started.runs, deadline
        )

    def step(self, rnd: int, step: str) -> None:
        return None  # a site's run takes its steps by itself, once the coordinator's list is out

    def ended(self, rnd: int, started: RoundStart) -> set[str]:
        return ended_runs(started.runs)

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
        if self.unopened and self.ticket:
            withdraw_site_rounds(self.config, sorted(self.unopened), self.ticket)
        self.ahead.clear()
        if self.started:
            stop_site_runs(sorted(set(self.started)), self.config.deployment.cancel_grace_s)


@flow(name="coordinator", flow_run_name="federation/{config.run_id}")
def coordinator(config: FederationConfig) -> list[RoundManifest]:
    """Run every round (:func:`~fedchem.federation.driver.run_rounds`); return the committed
    round manifests (hashes, counts, metrics; a failed round says so). A run that its fault
    policy stops early, or whose last round failed, ends Failed, naming why, after recording
    every round."""
    reports = read_prepare_reports(config.hub_url, config.site_names, config.trust)
    committed = start(config, reports)  # a run already on the hub resumes where it stopped
    progress = create_progress_artifact(
        100.0 * (len(committed) - 1) / config.rounds,
        key=artifact_key(config.run_id, "progress"),
        description=f"federation {config.run_id}",
    )
    steps = TaskSteps(config, cast(UUID, progress))  # sync context: the id, not a coroutine
    sites: SiteLauncher
    if config.mode == "deployed":
        sites = DeployedSites(config)
    elif config.simulation.uses_dask(len(config.sites)):
        sim = config.simulation
        sites = DaskSites(config, sim.dask_address, sim.workers)
        get_run_logger().info(
            "%d sites: their steps run in Dask worker processes (%s), not as subflows",
            len(config.sites),
            sim.dask_address or "a local cluster",
        )
    else:
        sites = LocalSites(config)
    try:
        outcome = run_rounds(config, steps, sites, committed)
    finally:
        wait(steps.reported)
    best = record_best(config, outcome.rounds)
    create_markdown_artifact(
        key=artifact_key(config.run_id, "summary"),
        markdown=_summary(config, outcome.rounds, outcome.stopped)
        + (
            f"\nBest round by the sites' validation {best['metric']}: **{best['round']}** "
            f"({best['value']:.4f}); kept as `runs/{config.run_id}/best.json` on the hub.\n"
            if best.get("round")
            else ""
        ),
        description=f"federation {config.run_id}: every round",
    )
    if outcome.failure is not None:
        raise FederationStopped(f"federation {config.run_id} failed: {outcome.failure}")
    return outcome.rounds


def _summary(
    config: FederationConfig, committed: list[RoundManifest], stopped: str | None = None
) -> str:
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
        if m.outcome == "failed":
            vals = f"failed: {m.reason}"
        lines.append(f"| {m.round} | {len(m.sites)} | {', '.join(m.missing) or '-'} | {vals} |")
    if stopped is not None:
        lines += ["", f"**The run stopped early**: {stopped}."]
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
