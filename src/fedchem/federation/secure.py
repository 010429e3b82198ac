"""The coordinator's round with secure aggregation: it screens the masked updates it can
(each site's signature and ledger, run, round, base model, size: never a norm, it cannot see
one), lists the survivors, and commits the global model from the unmasked sum.

The strategies that aggregate a sum (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi) run on it:
the sum of the survivors' weighted deltas over the sum of their weights is the FedAvg target,
handed to the strategy as the round's single reply (as site-level DP does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedchem.federation.commits import commit_round, read_round
from fedchem.federation.strategies import SiteReply, Strategy
from fedchem.messages import RoundManifest, SiteUpdateManifest
from fedchem.model.state import dump_arrays, load_arrays
from fedchem.secagg.protocol import Reveal, SecAggError, unflatten, unmask
from fedchem.secagg.rounds import SecureRound
from fedchem.storage.hub import HubStore, IntegrityError
from fedchem.types import StateArrays

if TYPE_CHECKING:
    from fedchem.trust.coordinator import CoordinatorTrust

__all__ = ["MaskedUpdates", "commit_secure", "screen_masked"]


@dataclass
class MaskedUpdates:
    """The round's masked updates the coordinator took, and per refused site why."""

    manifests: list[SiteUpdateManifest] = field(default_factory=list)
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)


def screen_masked(
    hub: HubStore,
    run_id: str,
    rnd: int,
    replies: Sequence[SiteUpdateManifest],
    roster_names: Sequence[str],
    trust: CoordinatorTrust,
) -> MaskedUpdates:
    """Every masked update that is its site's (signed, in its ledger), of this run, round and
    base model, of the model's size; the others rejected with the reason."""
    out = MaskedUpdates()
    ledger = trust.ledger(hub, run_id)
    previous, current, _ = read_round(hub, run_id, rnd - 1)
    size = sum(a.size for a in current.values()) + 1
    for m in sorted(replies, key=lambda r: r.site):
        why = trust.check_update(hub, m, ledger)
        if why is None and m.site not in roster_names:
            why = "not on the round's roster"
        if why is None and (m.run_id, m.round) != (run_id, rnd):
            why = f"an update of run {m.run_id!r} round {m.round}, not this round"
        if why is None and m.base_sha256 != previous.global_sha256:
            why = "stale update: not from the committed global model of the round before"
        if why is None and not m.secure:
            why = "not masked: a secure round takes masked updates only"
        masked = None
        if why is None:
            try:
                blob = hub.get_verified(m.update_path, m.update_sha256, f"update of {m.site}")
                masked = load_arrays(blob).get("masked")
            except (IntegrityError, ValueError, OSError) as exc:
                why = f"unreadable update ({type(exc).__name__})"
        if why is None and (masked is None or masked.dtype != np.uint32 or masked.size != size):
            why = f"a masked update of another size than the model's {size}"
        if why is not None:
            out.rejected[m.site] = why[:300]
            ledger.append("rejected", round=rnd, subject=m.site, note=why[:300])
            continue
        assert masked is not None
        out.manifests.append(m)
        out.masked[m.site] = masked
        ledger.received(rnd, m)
    return out


def commit_secure(
    hub: HubStore,
    run_id: str,
    rnd: int,
    taken: MaskedUpdates,
    secure: SecureRound,
    reveals: Sequence[Reveal],
    strategy: Strategy,
    missing: dict[str, str],
    started_at: float | None,
    trust: CoordinatorTrust,
) -> RoundManifest:
    """Unmask the survivors' sum and commit the round's global model from it (raises
    :class:`~fedchem.secagg.protocol.SecAggError` when the sum cannot be rebuilt)."""
    assert secure.roster is not None and secure.cohort is not None
    assert secure.survivors is not None
    _, current, server_state = read_round(hub, run_id, rnd - 1)
    alive = {s: taken.masked[s] for s in secure.survivors.sites}
    total, weight = unmask(secure.roster, secure.cohort, secure.survivors, alive, reveals)
    if not weight > 0:
        raise SecAggError(f"the unmasked weights sum to {weight}: nothing to average")
    names = sorted(current)
    mean = unflatten(total / weight, {n: current[n].astype(np.float64) for n in names}, names)
    target: StateArrays = {
        n: (current[n].astype(np.float64) + mean[n]).astype(current[n].dtype) for n in names
    }
    result = strategy.combine(rnd, current, server_state, [SiteReply("secure-sum", target, 1)])
    used = [m for m in taken.manifests if m.site in alive]
    return commit_round(
        hub,
        run_id,
        rnd,
        dump_arrays(result.arrays),
        f"{strategy.name}+secagg",
        {m.site: m.n_examples for m in used},
        {m.site: m.valid.summary for m in used},
        server_state=result.server_state,
        missing=missing,
        rejected=taken.rejected,
        valid_score=strategy.evaluate(
            rnd, {m.site: m.valid.summary for m in used}, {m.site: m.n_examples for m in used}
        ),
        started_at=started_at,
        site_epsilon={
            m.site: m.dp.epsilon_run for m in used if m.dp is not None and m.dp.level == "record"
        },
        trust=trust,
        refs={m.site: str(m.ledger_sha256) for m in used if m.ledger_sha256},
    )
