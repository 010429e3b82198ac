"""The round driver: the one loop over a federation's rounds, whatever starts the sites' runs.

Every federation runs :func:`run_rounds` (the Prefect coordinator flow, the benchmarks, the
tests). Each round goes the same way through the hub (:mod:`fedchem.federation.rounds`):

1. the driver asks the strategy what the round asks of the sites (:func:`fit_instructions`:
   the strategy's own ask, the heads that stay private, the learning-rate schedule);
2. a :class:`SiteLauncher` starts the sites' runs (in this process, as Prefect subflows, as
   each site's own Prefect deployment) and calls back to open the round on the hub once it
   may (:meth:`CoordinatorSteps.open`); each site's run reads the opening, trains under its
   own policy and publishes its reply;
3. the launcher collects the replies from the hub, naming every site that is missing and why;
4. the coordinator screens and aggregates them (:meth:`CoordinatorSteps.aggregate`). A round
   with fewer accepted updates than the quorum is *recorded as failed*: its manifest keeps the
   global model of the round before and names who was missing or rejected, and the run goes
   on or stops as ``faults.failed_rounds`` says (never an exception).

:class:`CoordinatorSteps` holds the coordinator's side as library calls; the flow subclasses
it so that each step runs as a Prefect task. Nothing here imports Prefect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from fedchem.config import ChemConfig, FederationConfig, ModelConfig, SiteConfig, TrainConfig
from fedchem.federation.commits import commit_failed_round, read_round
from fedchem.federation.coordinator import (
    aggregate_round,
    coordinator_trust,
    round_plan,
    strategy_for,
)
from fedchem.federation.rounds import (
    RunState,
    SiteReplies,
    await_round_open,
    collect_replies,
    new_ticket,
    open_round,
)
from fedchem.federation.secure import MaskedUpdates, commit_secure, screen_masked
from fedchem.federation.strategies import Strategy
from fedchem.messages import (
    FitInstructions,
    RoundManifest,
    RoundPlan,
    SiteRefusal,
    SiteUpdateManifest,
)
from fedchem.model.train import lr_factor
from fedchem.secagg.protocol import Reveal, SecAggError
from fedchem.secagg.rounds import SecureRound
from fedchem.storage.hub import HubLayout, HubStore
from fedchem.trust.signing import SignatureRejected

if TYPE_CHECKING:
    from fedchem.trust.coordinator import CoordinatorTrust

_log = logging.getLogger(__name__)

__all__ = [
    "CoordinatorSteps",
    "FederationStopped",
    "InProcessSites",
    "RoundStart",
    "RoundSteps",
    "RunOutcome",
    "SiteLauncher",
    "fit_instructions",
    "refusal_verifier",
    "run_rounds",
    "site_step",
    "stop_reason",
]


def fit_instructions(config: FederationConfig, strategy: Strategy, rnd: int) -> FitInstructions:
    """What round ``rnd`` asks of every site: the strategy's instructions (e.g. FedProx's mu),
    the tasks whose heads stay at the sites, and the round's learning-rate factor."""
    return strategy.configure_fit(rnd).model_copy(
        update={
            "private_tasks": config.private_tasks(),
            "lr_factor": lr_factor(config.train, rnd - 1, config.rounds),
        }
    )


@dataclass(frozen=True)
class RoundStart:
    """The sites' runs of a round once it is open: site -> its run's handle (a flow run id; in
    process, the site's name), site -> why it has no run, and when the round was opened."""

    runs: dict[str, str]
    failed: dict[str, str]
    opened_at: float


class SiteLauncher(Protocol):
    """How the sites' runs of a round start and are watched: the one part of a federation
    that differs between a simulation and a deployment."""

    def start(self, rnd: int, ticket: str, open_round: Callable[[], None]) -> RoundStart:
        """Start (or top up) round ``rnd``'s runs under ``ticket``; call ``open_round`` once,
        when the runs may begin (before or after they were started)."""
        ...

    def collect(self, rnd: int, started: RoundStart, deadline: float) -> SiteReplies:
        """The round's replies from the hub, waiting at most until ``deadline`` (epoch s)."""
        ...

    def after_replies(self, rnd: int) -> None:
        """The replies are in (a deployed launcher books the rounds ahead now)."""
        ...

    def close(self) -> None:
        """The federation stopped: every run started ends."""
        ...

    def step(self, rnd: int, step: str) -> None:
        """Secure aggregation: every site takes ``step`` now (one-machine runs; a deployed
        site's run takes its steps by itself once the coordinator's object is out)."""
        ...

    def ended(self, rnd: int, started: RoundStart) -> set[str]:
        """The sites whose runs of round ``rnd`` ended (the coordinator waits no longer for
        them)."""
        ...


class RoundSteps(Protocol):
    """The coordinator's side of a round, as the driver calls it."""

    strategy: Strategy
    plan: RoundPlan

    def begin(self, rnd: int) -> None: ...

    def open(self, rnd: int, ticket: str, fit: FitInstructions) -> None: ...

    def aggregate(
        self, rnd: int, replies: SiteReplies, missing: dict[str, str], started_at: float
    ) -> RoundManifest: ...

    def committed(self, manifest: RoundManifest) -> None: ...

    def secure(self, rnd: int) -> SecureRound: ...

    def screen_masked(
        self, rnd: int, replies: list[SiteUpdateManifest], secure: SecureRound
    ) -> MaskedUpdates: ...

    def commit_secure(
        self,
        rnd: int,
        taken: MaskedUpdates,
        secure: SecureRound,
        reveals: list[Reveal],
        missing: dict[str, str],
        started_at: float,
    ) -> RoundManifest: ...

    def fail(
        self,
        rnd: int,
        reason: str,
        missing: dict[str, str],
        rejected: dict[str, str],
        started_at: float,
    ) -> RoundManifest: ...


class FederationStopped(RuntimeError):
    """A run that ended before its last round by its fault policy (``faults.failed_rounds``);
    every round up to there is recorded on the hub."""


class CoordinatorSteps:
    """The coordinator's side of every round, as library calls on the hub.

    The Prefect flow runs each of these steps as a task (it wraps an instance); the driver
    does not know the difference.
    """

    def __init__(self, config: FederationConfig, hub: HubStore | None = None) -> None:
        self.config = config
        self.hub = hub if hub is not None else HubStore(config.hub_url)
        self.strategy = strategy_for(config)  # with site-level DP: wrapped, noise on the sum
        self.plan = round_plan(config)
        self.trust: CoordinatorTrust | None = coordinator_trust(config)

    def begin(self, rnd: int) -> None:
        """Round ``rnd`` starts (the flow checks the sites' consistency meanwhile)."""

    def open(self, rnd: int, ticket: str, fit: FitInstructions) -> None:
        """The go for round ``rnd``: the opening carries the fit instructions and the round's
        plan (what the sites' policies check); signed and in the coordinator's ledger in a
        signed federation."""
        trust = self.trust
        sign = trust.sign if trust is not None else None
        run_id = self.config.run_id
        _, data = open_round(self.hub, run_id, rnd, ticket, fit, self.plan, sign)
        if trust is not None:
            path = HubLayout(run_id).round_open(rnd)
            trust.ledger(self.hub, run_id).append("round-open", round=rnd, path=path, data=data)

    def aggregate(
        self,
        rnd: int,
        replies: SiteReplies,
        missing: dict[str, str],
        started_at: float,
    ) -> RoundManifest:
        """Screen, aggregate and commit the round (recorded as failed below the quorum)."""
        config = self.config
        return aggregate_round(
            self.hub,
            config.run_id,
            rnd,
            [replies.replies[s] for s in sorted(replies.replies)],
            self.strategy,
            missing,
            started_at,
            members=config.site_names,
            quorum=config.quorum(),
            faults=config.faults,
            trust=self.trust,
            privacy=self.plan.privacy,
        )

    def committed(self, manifest: RoundManifest) -> None:
        """Round ``manifest.round`` is on the hub (the flow reports it to the UI)."""

    def secure(self, rnd: int) -> SecureRound:
        """The coordinator's side of round ``rnd``'s secure aggregation."""
        plan = self.plan.secure_aggregation
        if plan is None or self.trust is None:
            raise ValueError("secure aggregation needs its plan and the coordinator's key")
        return SecureRound(
            self.hub, self.config.run_id, rnd, self.config.site_names, plan, self.trust
        )

    def screen_masked(
        self, rnd: int, replies: list[SiteUpdateManifest], secure: SecureRound
    ) -> MaskedUpdates:
        assert self.trust is not None and secure.roster is not None
        return screen_masked(
            self.hub, self.config.run_id, rnd, replies, secure.roster.names, self.trust
        )

    def commit_secure(
        self,
        rnd: int,
        taken: MaskedUpdates,
        secure: SecureRound,
        reveals: list[Reveal],
        missing: dict[str, str],
        started_at: float,
    ) -> RoundManifest:
        assert self.trust is not None
        return commit_secure(
            self.hub,
            self.config.run_id,
            rnd,
            taken,
            secure,
            reveals,
            self.strategy,
            missing,
            started_at,
            self.trust,
        )

    def fail(
        self,
        rnd: int,
        reason: str,
        missing: dict[str, str],
        rejected: dict[str, str],
        started_at: float,
    ) -> RoundManifest:
        """Record round ``rnd`` as failed (the global model of the round before kept)."""
        previous = read_round(self.hub, self.config.run_id, rnd - 1)[0]
        return commit_failed_round(
            self.hub,
            previous,
            rnd,
            reason,
            missing=missing,
            rejected=rejected,
            started_at=started_at,
            trust=self.trust,
        )


def refusal_verifier(config: FederationConfig) -> Callable[[SiteRefusal], str | None] | None:
    """Why a site's refusal is not its own (a bad signature), in a signed federation."""
    trust = coordinator_trust(config, need_key=False)
    if trust is None:
        return None
    keys = trust.keys

    def verify(refusal: SiteRefusal) -> str | None:
        try:
            keys.verify("refusal", refusal, refusal.site)
        except SignatureRejected as exc:
            return str(exc)
        return None

    return verify


@dataclass
class RunOutcome:
    """A run's committed rounds 0..k (failed rounds included: their ``outcome`` says so) and,
    when it ended before its last round, why."""

    rounds: list[RoundManifest]
    stopped: str | None = None
    round_seconds: list[float] = field(default_factory=list)

    @property
    def failed(self) -> list[int]:
        return [m.round for m in self.rounds if m.outcome == "failed"]

    @property
    def failure(self) -> str | None:
        """Why the run as a whole failed: it stopped early, or its last round failed (a run
        that ends on a failed round has no model of its last round). None: it succeeded,
        failed rounds before its last one included (each is recorded)."""
        if self.stopped is not None:
            return self.stopped
        last = self.rounds[-1]
        if last.outcome == "failed":
            return f"its last round, {last.round}, failed ({last.reason})"
        return None


def stop_reason(config: FederationConfig, rounds: Sequence[RoundManifest]) -> str | None:
    """Why the run stops after its last round in ``rounds`` (None: it goes on).

    ``faults.failed_rounds``: ``stop`` ends the run at the first failed round; ``continue``
    goes on until ``faults.max_failed_in_a_row`` rounds in a row have failed."""
    last = rounds[-1]
    if last.outcome != "failed":
        return None
    faults = config.faults
    in_a_row = 0
    for m in reversed(rounds):
        if m.outcome != "failed":
            break
        in_a_row += 1
    if faults.failed_rounds == "stop":
        return f"round {last.round} failed ({last.reason}); faults.failed_rounds is 'stop'"
    if in_a_row >= faults.max_failed_in_a_row:
        return (
            f"{in_a_row} rounds in a row failed (faults.max_failed_in_a_row = "
            f"{faults.max_failed_in_a_row}); the last: {last.reason}"
        )
    return None


def run_rounds(
    config: FederationConfig,
    steps: RoundSteps,
    sites: SiteLauncher,
    committed: list[RoundManifest],
    ticket: str | None = None,
    clock: Callable[[], float] = time.time,
) -> RunOutcome:
    """Run the rounds after the last of ``committed`` (round 0 at least) up to
    ``config.rounds``; ``sites`` is closed whatever happens. ``ticket`` names this coordinator
    attempt (a new one by default: runs booked by an earlier attempt are superseded)."""
    if not committed:
        raise ValueError("run_rounds needs the run's round 0 (start the run first)")
    ticket = ticket or new_ticket()
    outcome = RunOutcome(list(committed))
    try:
        for rnd in range(len(committed), config.rounds + 1):
            t0 = clock()
            steps.begin(rnd)
            fit = fit_instructions(config, steps.strategy, rnd)
            started = sites.start(rnd, ticket, partial(steps.open, rnd, ticket, fit))
            # the deadline counts from the round's opening
            deadline = started.opened_at + config.deployment.round_deadline_s
            if steps.plan.secure_aggregation is not None:
                manifest = _secure_round(steps, sites, rnd, started, deadline, t0)
            else:
                got = sites.collect(rnd, started, deadline)
                sites.after_replies(rnd)
                missing = {**got.missing, **started.failed}
                manifest = steps.aggregate(rnd, got, missing, t0)
            outcome.rounds.append(manifest)
            outcome.round_seconds.append(clock() - t0)
            steps.committed(manifest)
            outcome.stopped = stop_reason(config, outcome.rounds)
            if outcome.stopped is not None:
                break
    finally:
        sites.close()
    return outcome


def _secure_round(
    steps: RoundSteps,
    sites: SiteLauncher,
    rnd: int,
    started: RoundStart,
    deadline: float,
    t0: float,
) -> RoundManifest:
    """One round with secure aggregation (:mod:`fedchem.secagg`): the sites advertised keys
    as their runs started; the coordinator lists them (roster), relays their sealed shares
    (cohort), takes their masked updates and lists the survivors, relays the survivors'
    checks, and unmasks the sum from the survivors' reveals. Between its steps the sites take
    theirs (:meth:`SiteLauncher.step`: at once in one-machine runs; deployed runs step by
    themselves). A step that cannot be taken fails the round, recorded with the reason."""
    secure = steps.secure(rnd)

    def ended() -> set[str]:  # runs that ended, and sites whose run never started
        return sites.ended(rnd, started) | set(started.failed)

    missing: dict[str, str] = dict(started.failed)
    rejected: dict[str, str] = {}
    try:
        secure.publish_roster(deadline, ended)
        sites.step(rnd, "shares")
        secure.publish_cohort(deadline, ended)
        sites.step(rnd, "upload")
        got = sites.collect(rnd, started, deadline)
        missing.update(got.missing)
        taken = steps.screen_masked(rnd, list(got.replies.values()), secure)
        rejected = taken.rejected
        secure.publish_survivors([m.site for m in taken.manifests])
        sites.step(rnd, "check")
        secure.publish_consistent(deadline, ended)
        sites.step(rnd, "reveal")
        reveals = secure.reveals(deadline, ended)
        manifest = steps.commit_secure(rnd, taken, secure, reveals, missing, t0)
    except SecAggError as exc:
        manifest = steps.fail(rnd, f"secure aggregation: {exc}", missing, rejected, t0)
    sites.after_replies(rnd)
    return manifest


def site_step(
    site: SiteConfig,
    hub_url: str,
    run_id: str,
    rnd: int,
    ticket: str,
    chem: ChemConfig,
    model: ModelConfig,
    train: TrainConfig,
    step: str | None,
) -> tuple[str, str | None]:
    """One site's step of an open round, wherever it runs (this process, a Dask worker): it
    reads the opening under ``ticket``, answers under its own guard and publishes its reply
    on the hub. Returns its run's final state (``Completed``; ``Failed`` for a refusal or an
    error) and, for an error, the exception's type only: its text could quote a site's
    data."""
    from fedchem.federation.site import take_part

    hub = HubStore(hub_url)
    try:
        opened = await_round_open(hub, run_id, rnd, ticket, timeout_s=0)
        reply = take_part(site, hub, opened, chem, model, train, step)
    except Exception as exc:
        _log.debug("site %s's failure", site.name, exc_info=True)
        return "Failed", type(exc).__name__
    return ("Failed" if isinstance(reply, SiteRefusal) else "Completed"), None


class InProcessSites:
    """Every site's round in this process, one after another, through the hub protocol a
    deployed site uses: each reads the opening under the ticket, trains under its own guard
    (policy, key, budget; a refusal is published with its clause) and publishes its reply;
    the replies are then read from the hub. A securely aggregated round goes step by step,
    every site taking each step when the coordinator calls for it. Sites named in
    ``down(rnd)`` do not run in that round; those named in ``drop(rnd, step)`` stop at that
    secure-aggregation step (a site that goes away mid-protocol). No Prefect."""

    def __init__(
        self,
        config: FederationConfig,
        hub: HubStore | None = None,
        down: Callable[[int], Sequence[str]] | None = None,
        drop: Callable[[int, str], Sequence[str]] | None = None,
    ) -> None:
        self.config = config
        self.hub = hub if hub is not None else HubStore(config.hub_url)
        self.down, self.drop = down, drop
        self.ended_states: dict[str, RunState] = {}
        self.ticket = ""
        self.gone: set[str] = set()

    def _take(self, rnd: int, step: str | None) -> None:
        config = self.config
        if step is not None and self.drop is not None:
            self.gone |= set(self.drop(rnd, step))
        todo = []
        for site in config.sites:
            assert isinstance(site, SiteConfig)  # checked by FederationConfig in local mode
            if site.name in self.gone:
                self.ended_states[site.name] = RunState("Crashed", True)
            else:
                todo.append(site)
        for site, (state, failure) in zip(todo, self.run_sites(todo, rnd, step), strict=True):
            if failure is not None:  # a site that fails is counted missing; the round goes on
                _log.warning("round %d: site %s failed (%s)", rnd, site.name, failure)
            self.ended_states[site.name] = RunState(state, True)
            if state != "Completed":
                self.gone.add(site.name)

    def step_args(self, site: SiteConfig, rnd: int, step: str | None) -> tuple[Any, ...]:
        """:func:`site_step`'s arguments for ``site`` in round ``rnd``."""
        c = self.config
        return (site, c.hub_url, c.run_id, rnd, self.ticket, c.chem, c.model, c.train, step)

    def run_sites(
        self, sites: Sequence[SiteConfig], rnd: int, step: str | None
    ) -> list[tuple[str, str | None]]:
        """Each site's step of round ``rnd``, one after another in this process: (its run's
        final state, the type of the exception it failed with)."""
        return [site_step(*self.step_args(site, rnd, step)) for site in sites]

    def start(self, rnd: int, ticket: str, open_round: Callable[[], None]) -> RoundStart:
        open_round()
        opened_at = time.time()
        self.ticket, self.ended_states = ticket, {}
        self.gone = set(self.down(rnd)) if self.down is not None else set()
        failed = {s: "site down (not started)" for s in sorted(self.gone)}
        opened = await_round_open(self.hub, self.config.run_id, rnd, ticket, timeout_s=0)
        secure = opened.plan is not None and opened.plan.secure_aggregation is not None
        self._take(rnd, "keys" if secure else None)
        runs = {s.name: s.name for s in self.config.sites if s.name not in failed}
        return RoundStart(runs, failed, opened_at)

    def step(self, rnd: int, step: str) -> None:
        self._take(rnd, step)

    def ended(self, rnd: int, started: RoundStart) -> set[str]:
        return set(started.runs)  # every site took the step already (or could not)

    def collect(self, rnd: int, started: RoundStart, deadline: float) -> SiteReplies:
        return collect_replies(
            self.hub,
            self.config.run_id,
            rnd,
            list(started.runs),
            lambda: self.ended_states,
            deadline,
            verify=refusal_verifier(self.config),
        )

    def after_replies(self, rnd: int) -> None:
        return None

    def close(self) -> None:
        return None
