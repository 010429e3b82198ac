"""Secure aggregation over the hub: each party's steps of :mod:`fedchem.secagg.protocol`,
signed, recorded in its ledger, and checked by whoever reads them.

A site's messages live in its own area (``rounds/<r>/sites/<site>/secagg-<step>.json``), the
coordinator's in ``rounds/<r>/secagg/`` (roster, cohort, survivors, consistent). A site keeps
its round secrets on its own disk (``<workdir>/runs/<run>/secagg/``, mode 0600) and trusts a
party's keys and shares only when signed by the identity key its policy pins for that party
(``members``), and the coordinator's lists only when signed by the pinned coordinator key.

The steps, in order (:data:`STEPS`): ``keys`` (after the round's opening), ``shares`` (once
the roster is out), ``upload`` (the masked update, once the cohort is out: the site trains
then), ``check`` (once the survivors are out), ``reveal`` (once ``t`` survivors' checks on
the same list are out). A site reveals once per round at most; a second request for a round
it revealed in (another coordinator attempt, another cohort: a differencing attack) is
refused.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from pydantic import BaseModel

from fedchem.messages import RoundOpen
from fedchem.policy import SecAggPlan
from fedchem.secagg.protocol import (
    Advert,
    Check,
    Cohort,
    Consistent,
    Reveal,
    Roster,
    SecAggError,
    SharesBundle,
    SiteSecrets,
    Survivors,
    make_shares,
    masked_input,
    neighbours,
    reveal,
)
from fedchem.storage.hub import HubLayout, HubStore, json_bytes
from fedchem.trust.keys import public_key_text
from fedchem.trust.signing import KeyRing, SignatureRejected

if TYPE_CHECKING:
    from fedchem.trust.coordinator import CoordinatorTrust
    from fedchem.trust.site import SiteGuard

__all__ = ["STEPS", "SecureRound", "SiteParty", "gather", "site_waits", "threshold_for"]

STEPS = ("keys", "shares", "upload", "check", "reveal")
#: the coordinator's object each step waits for (none for keys: the opening)
AWAITS = {"shares": "roster", "upload": "cohort", "check": "survivors", "reveal": "consistent"}

M = TypeVar("M", bound=BaseModel)


def threshold_for(n_neighbours: int, plan: SecAggPlan) -> int:
    """Shares that rebuild a secret: the plan's, else a majority of a site's neighbours."""
    t = plan.threshold or n_neighbours // 2 + 1
    if not 2 <= t <= n_neighbours:
        raise SecAggError(f"threshold {t} for {n_neighbours} neighbours: needs 2..{n_neighbours}")
    return t


def _read(hub: HubStore, path: str, model: type[M]) -> M | None:
    blob = hub.get_bytes_or_none(path)
    return None if blob is None else model.model_validate_json(blob)


def gather(
    hub: HubStore,
    paths: Mapping[str, str],
    deadline: float,
    ended: Callable[[], set[str]] | None = None,
    poll_s: float = 0.25,
) -> dict[str, bytes]:
    """The objects of ``paths`` (party -> path) on the hub once every party wrote its own or
    its run ended (``ended()``), or at ``deadline`` (epoch s): party -> bytes."""
    got: dict[str, bytes] = {}
    while True:
        for party, path in paths.items():
            if party not in got:
                blob = hub.get_bytes_or_none(path)
                if blob is not None:
                    got[party] = blob
        gone = ended() if ended is not None else set()
        waiting = [p for p in paths if p not in got and p not in gone]
        if not waiting or time.time() >= deadline:
            return got
        time.sleep(poll_s)


# ----------------------------------------------------------------------------- a site


@dataclass
class SiteParty:
    """Site ``name``'s part in the secure aggregation of the round ``opened`` opened."""

    name: str
    workdir: Path
    hub: HubStore
    opened: RoundOpen
    guard: SiteGuard

    @property
    def plan(self) -> SecAggPlan:
        assert self.opened.plan is not None and self.opened.plan.secure_aggregation is not None
        return self.opened.plan.secure_aggregation

    @property
    def _dir(self) -> Path:
        return self.workdir / "runs" / self.opened.run_id / "secagg"

    @property
    def _layout(self) -> HubLayout:
        return HubLayout(self.opened.run_id)

    def _secrets(self) -> SiteSecrets:
        """This attempt's secrets (one set per round and coordinator ticket), drawn once."""
        path = self._dir / f"round-{self.opened.round:04d}-{self.opened.ticket}.json"
        if path.exists():
            return SiteSecrets.from_json(path.read_text())
        fresh = SiteSecrets.fresh()
        self._dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(fresh.to_json())
        return fresh

    def _members(self) -> KeyRing:
        keys = dict(self.guard.policy.members)
        if self.guard.signer is not None:
            keys[self.name] = public_key_text(self.guard.signer.key.public_key())
        return KeyRing(keys)

    def _publish(self, step: str, message: M) -> M:
        signed = self.guard.sign(f"secagg-{step}", message)
        path = self._layout.site_secagg(self.opened.round, self.name, step)
        data = json_bytes(signed.model_dump(mode="json"))
        ledger = self.guard.ledger(self.hub, self.opened.run_id)
        if ledger is not None:
            ledger.append(f"secagg-{step}", round=self.opened.round, path=path, data=data)
        self.hub.put_bytes(path, data)
        return signed

    def _coordinator(self, name: str, model: type[M]) -> M:
        message = _read(self.hub, self._layout.secagg(self.opened.round, name), model)
        if message is None:
            raise SecAggError(f"the coordinator's {name} is not on the hub")
        self.guard.verify_coordinator(f"secagg-{name}", message)
        self._same_round(message, name)
        return message

    def _same_round(self, message: BaseModel, what: str) -> None:
        run_id, rnd = getattr(message, "run_id", None), getattr(message, "round", None)
        if (run_id, rnd) != (self.opened.run_id, self.opened.round):
            raise SecAggError(f"the {what} is of run {run_id!r} round {rnd}, not this round's")

    def keys(self, n_examples: int) -> Advert:
        """Step 1: fresh public keys for the round, and the site's (public) weight."""
        advert = self._secrets().advert(
            self.opened.run_id, self.opened.round, self.name, n_examples
        )
        return self._publish("keys", advert)

    def roster(self) -> Roster:
        """The coordinator's roster, every advertisement checked against the pinned keys."""
        roster = self._coordinator("roster", Roster)
        members = self._members()
        for advert in roster.adverts:
            try:
                members.verify("secagg-keys", advert, advert.site)
            except SignatureRejected as exc:
                raise SecAggError(f"the roster's keys of {advert.site}: {exc}") from exc
            self._same_round(advert, f"keys of {advert.site}")
        if self.name not in roster.names:
            raise SecAggError("the roster leaves this site out")
        mine = self._secrets().advert(self.opened.run_id, self.opened.round, self.name, 1)
        if roster.advert(self.name).mask_key != mine.mask_key:
            raise SecAggError("the roster holds keys of this site it did not advertise")
        if roster.plan != self.plan:
            raise SecAggError("the roster's plan is not the opening's")
        minimum = self.guard.policy.secure_aggregation.min_cohort
        if len(roster.names) < minimum:
            raise SecAggError(f"a roster of {len(roster.names)}: the policy needs {minimum}")
        peers = neighbours(roster.names, self.name, roster.plan)
        if roster.threshold != threshold_for(len(peers), roster.plan):
            raise SecAggError(f"threshold {roster.threshold} is not the plan's")
        return roster

    def shares(self) -> SharesBundle:
        """Step 2: the self-mask seed and mask key, shared and sealed to each neighbour."""
        return self._publish("shares", make_shares(self._secrets(), self.roster(), self.name))

    def cohort(self, roster: Roster) -> Cohort:
        cohort = self._coordinator("cohort", Cohort)
        members = self._members()
        for bundle in cohort.bundles:
            if bundle.site not in roster.names:
                raise SecAggError(f"the cohort holds {bundle.site}, not on the roster")
            try:
                members.verify("secagg-shares", bundle, bundle.site)
            except SignatureRejected as exc:
                raise SecAggError(f"the shares of {bundle.site}: {exc}") from exc
            self._same_round(bundle, f"shares of {bundle.site}")
        if self.name not in cohort.names:
            raise SecAggError("the cohort leaves this site out")
        return cohort

    def masked(self, weighted_delta: np.ndarray, weight: float) -> np.ndarray:
        """Step 3 (the update itself is published by the site's round): the masked input."""
        roster = self.roster()
        cohort = self.cohort(roster)
        return masked_input(self._secrets(), roster, cohort, self.name, weighted_delta, weight)

    def survivors(self, cohort: Cohort) -> Survivors:
        survivors = self._coordinator("survivors", Survivors)
        minimum = max(self.guard.policy.secure_aggregation.min_cohort, self.plan.min_cohort)
        if not set(survivors.sites) <= set(cohort.names):
            raise SecAggError("survivors that never shared")
        if len(survivors.sites) < minimum:
            raise SecAggError(
                f"{len(survivors.sites)} survivor(s): the site reveals nothing for fewer than "
                f"{minimum}"
            )
        return survivors

    def check(self) -> Check:
        """Step 4: the site's signed word on the survivors list it was shown."""
        roster = self.roster()
        survivors = self.survivors(self.cohort(roster))
        check = Check(
            run_id=self.opened.run_id,
            round=self.opened.round,
            site=self.name,
            survivors_sha256=survivors.digest(),
        )
        return self._publish("check", check)

    def reveal(self) -> Reveal:
        """Step 5: the shares the unmasking needs, once per round, after ``t`` survivors
        signed the same survivors list."""
        roster = self.roster()
        cohort = self.cohort(roster)
        survivors = self.survivors(cohort)
        digest = survivors.digest()
        consistent = self._coordinator("consistent", Consistent)
        members = self._members()
        agreeing = set()
        for check in consistent.checks:
            try:
                members.verify("secagg-check", check, check.site)
            except SignatureRejected as exc:
                raise SecAggError(f"the check of {check.site}: {exc}") from exc
            if check.survivors_sha256 != digest:
                raise SecAggError(
                    f"{check.site} was shown another survivors list: the site reveals nothing"
                )
            if check.site in survivors.sites:
                agreeing.add(check.site)
        if len(agreeing) < roster.threshold:
            raise SecAggError(
                f"{len(agreeing)} survivors checked the list; {roster.threshold} needed"
            )
        record = self._dir / f"revealed-{self.opened.round:04d}.json"
        if record.exists():
            before = json.loads(record.read_text())
            if before != {"ticket": self.opened.ticket, "survivors": digest}:
                raise SecAggError(
                    "the site already revealed for this round (another attempt or another "
                    "survivors list): it reveals once"
                )
        else:
            self._dir.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"ticket": self.opened.ticket, "survivors": digest}))
        return self._publish(
            "reveal", reveal(self._secrets(), roster, cohort, survivors, self.name)
        )


# ----------------------------------------------------------------------------- the coordinator


class SecureRound:
    """The coordinator's side of one secure round: it relays and lists, it never holds a
    site's secret unless ``t`` survivors reveal it for the unmasking."""

    def __init__(
        self,
        hub: HubStore,
        run_id: str,
        rnd: int,
        members: list[str],
        plan: SecAggPlan,
        trust: CoordinatorTrust,
    ) -> None:
        self.hub, self.run_id, self.rnd, self.members = hub, run_id, rnd, members
        self.plan, self.trust = plan, trust
        self.layout = HubLayout(run_id)
        self.roster: Roster | None = None
        self.cohort: Cohort | None = None
        self.survivors: Survivors | None = None

    def _publish(self, name: str, message: M) -> M:
        signed = self.trust.sign(f"secagg-{name}", message)
        path = self.layout.secagg(self.rnd, name)
        data = json_bytes(signed.model_dump(mode="json"))
        self.trust.ledger(self.hub, self.run_id).append(
            f"secagg-{name}", round=self.rnd, path=path, data=data
        )
        self.hub.put_bytes(path, data)
        return signed

    def _from_sites(
        self,
        step: str,
        sites: list[str],
        model: type[M],
        deadline: float,
        ended: Callable[[], set[str]] | None,
    ) -> dict[str, M]:
        paths = {s: self.layout.site_secagg(self.rnd, s, step) for s in sites}
        out = {}
        for site, blob in gather(self.hub, paths, deadline, ended).items():
            try:
                message = model.model_validate_json(blob)
                self.trust.keys.verify(f"secagg-{step}", message, site)
            except (ValueError, SignatureRejected):
                continue  # not the site's: as if it had not answered
            if (getattr(message, "run_id", None), getattr(message, "round", None)) == (
                self.run_id,
                self.rnd,
            ) and getattr(message, "site", site) == site:
                out[site] = message
        return out

    def _enough(self, what: str, n: int) -> None:
        need = max(self.plan.min_cohort, self.roster.threshold if self.roster else 2)
        if n < need:
            raise SecAggError(f"{n} {what}: secure aggregation needs {need}")

    def publish_roster(
        self, deadline: float, ended: Callable[[], set[str]] | None = None
    ) -> Roster:
        adverts = self._from_sites("keys", self.members, Advert, deadline, ended)
        names = sorted(adverts)
        self._enough("sites advertised keys", len(names))
        peers = min(len(neighbours(names, s, self.plan)) for s in names)
        roster = Roster(
            run_id=self.run_id,
            round=self.rnd,
            adverts=[adverts[s] for s in names],
            threshold=threshold_for(peers, self.plan),
            plan=self.plan,
        )
        self.roster = self._publish("roster", roster)
        return self.roster

    def publish_cohort(
        self, deadline: float, ended: Callable[[], set[str]] | None = None
    ) -> Cohort:
        assert self.roster is not None
        bundles = self._from_sites("shares", self.roster.names, SharesBundle, deadline, ended)
        self._enough("sites shared", len(bundles))
        cohort = Cohort(
            run_id=self.run_id, round=self.rnd, bundles=[bundles[s] for s in sorted(bundles)]
        )
        self.cohort = self._publish("cohort", cohort)
        return self.cohort

    def publish_survivors(self, uploaded: list[str]) -> Survivors:
        assert self.cohort is not None
        alive = sorted(set(uploaded) & set(self.cohort.names))
        self._enough("masked inputs", len(alive))
        self.survivors = self._publish(
            "survivors", Survivors(run_id=self.run_id, round=self.rnd, sites=alive)
        )
        return self.survivors

    def publish_consistent(
        self, deadline: float, ended: Callable[[], set[str]] | None = None
    ) -> Consistent:
        assert self.survivors is not None
        checks = self._from_sites("check", self.survivors.sites, Check, deadline, ended)
        digest = self.survivors.digest()
        agreeing = [checks[s] for s in sorted(checks) if checks[s].survivors_sha256 == digest]
        self._enough("survivors checked the list", len(agreeing))
        return self._publish(
            "consistent", Consistent(run_id=self.run_id, round=self.rnd, checks=agreeing)
        )

    def reveals(self, deadline: float, ended: Callable[[], set[str]] | None = None) -> list[Reveal]:
        assert self.survivors is not None
        got = self._from_sites("reveal", self.survivors.sites, Reveal, deadline, ended)
        digest = self.survivors.digest()
        return [got[s] for s in sorted(got) if got[s].survivors_sha256 == digest]

    def marker(self, step: str) -> str:
        """The coordinator object a site's ``step`` waits for."""
        return self.layout.secagg(self.rnd, AWAITS[step])


def site_waits(
    hub: HubStore, opened: RoundOpen, step: str, timeout_s: float, poll_s: float = 0.25
) -> None:
    """Wait until the coordinator's object that ``step`` needs is on the hub (deployed runs
    step through the round by themselves)."""
    if step not in AWAITS:
        return
    path = HubLayout(opened.run_id).secagg(opened.round, AWAITS[step])
    deadline = time.monotonic() + timeout_s
    while not hub.exists(path):
        if time.monotonic() >= deadline:
            raise SecAggError(f"the coordinator's {AWAITS[step]} did not come in {timeout_s:.0f}s")
        time.sleep(poll_s)
