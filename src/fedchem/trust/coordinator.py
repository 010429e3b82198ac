"""The coordinator's side of trust: the allowlist, its own key, its ledger, update checks.

Before an update is screened, :meth:`CoordinatorTrust.check_update` rejects it, with the
reason, when its signature is not its site's pinned key's (an unknown key, another site's key,
a bad signature) or when the site's own ledger does not back it: the entry the manifest names
must be that site's record of exactly this update for this round, and no later entry of the
site may record another update for the same round (a second update). A manifest of another
run or an earlier round (a replay) is caught by the screen after it: the run id and the round
are signed fields.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel

from fedchem.messages import SiteUpdateManifest
from fedchem.policy import PrivacyConfig, TrustConfig
from fedchem.storage.hub import HubStore
from fedchem.trust.dp import noise_for_epsilon
from fedchem.trust.ledger import Ledger, entry_sha256, read_chain
from fedchem.trust.signing import COORDINATOR, KeyRing, SignatureRejected, Signer

__all__ = ["CoordinatorTrust", "resolve_privacy"]

M = TypeVar("M", bound=BaseModel)


@functools.lru_cache(maxsize=64)
def resolve_privacy(cfg: PrivacyConfig, rounds: int) -> PrivacyConfig:
    """Site-level DP with a target epsilon: the noise multiplier that meets it over the
    planned rounds (one release per round, every site in every round). Record level is
    calibrated by each site for its own data; none is returned as is."""
    if cfg.level != "site" or cfg.noise_multiplier is not None:
        return cfg
    z = noise_for_epsilon(float(cfg.target_epsilon or 0), cfg.delta, 1.0, rounds)
    return cfg.model_copy(update={"noise_multiplier": z, "target_epsilon": None})


@dataclass
class CoordinatorTrust:
    keys: KeyRing
    signer: Signer | None

    @classmethod
    def from_config(cls, trust: TrustConfig, need_key: bool = True) -> CoordinatorTrust:
        keys = KeyRing(trust.keyring_entries())
        signer = None
        if trust.coordinator_key_file is not None:
            signer = Signer.from_file(COORDINATOR, trust.coordinator_key_file)
            if keys.by_id.get(signer.key_id) != COORDINATOR:
                raise ValueError("the coordinator's key file does not match trust.coordinator")
        elif need_key:
            raise ValueError("trust.coordinator_key_file is needed to run rounds")
        return cls(keys, signer)

    def sign(self, kind: str, message: M) -> M:
        if self.signer is None:
            raise ValueError("the coordinator has no signing key")
        return self.signer.sign(kind, message)

    def ledger(self, hub: HubStore, scope: str) -> Ledger:
        if self.signer is None:
            raise ValueError("the coordinator has no signing key")
        return Ledger(hub, scope, self.signer)

    def check_update(
        self, hub: HubStore, m: SiteUpdateManifest, received: Ledger | None = None
    ) -> str | None:
        """Why the coordinator may not take ``m`` (None: signed, and backed by the site's
        ledger). ``received``: the coordinator's ledger of this run, for an update of this
        site and round already taken with other bytes."""
        try:
            self.keys.verify("site-update", m, m.site)
        except SignatureRejected as exc:
            return f"signature: {exc}"
        if m.ledger_seq is None or m.ledger_sha256 is None:
            return "the manifest names no entry of the site's ledger"
        chain = read_chain(hub, m.run_id, m.site, start=m.ledger_seq)
        if not chain or chain[0].seq != m.ledger_seq or entry_sha256(chain[0]) != m.ledger_sha256:
            return f"the site's ledger has no entry {m.ledger_seq} as the manifest names it"
        first = chain[0]
        try:
            self.keys.verify("ledger-entry", first, m.site)
        except SignatureRejected as exc:
            return f"the site's ledger entry {first.seq}: {exc}"
        if (first.kind, first.round, first.sha256) != ("update", m.round, m.update_sha256):
            return f"the site's ledger entry {first.seq} records another object"
        later = [e for e in chain[1:] if e.kind == "update" and e.round == m.round]
        if later:
            return (
                f"a second update from {m.site} for round {m.round} (ledger entries "
                f"{first.seq} and {later[0].seq})"
            )
        if received is not None:
            for e in received.entries():
                taken = (e.kind, e.round, e.subject) == ("received", m.round, m.site)
                if taken and e.sha256 != m.update_sha256:
                    return (
                        f"a second update from {m.site} for round {m.round}: the "
                        f"coordinator took {str(e.sha256)[:12]} before"
                    )
        return None
