"""The commit log of a run on the hub: one global model (and strategy state) per round.

A round is committed when its manifest is written, after the global model it names, so a
reader that finds a round manifest always finds the model it describes; a coordinator killed
before the manifest leaves an uncommitted round, which readers ignore and a resumed run redoes
(overwriting the same paths).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fedchem.messages import RoundManifest
from fedchem.model.selection import pick_best
from fedchem.model.state import dump_arrays, load_arrays
from fedchem.storage.hub import HubLayout, HubStore, json_bytes
from fedchem.types import StateArrays

if TYPE_CHECKING:
    from fedchem.trust.coordinator import CoordinatorTrust

__all__ = [
    "best_round",
    "commit_failed_round",
    "commit_round",
    "committed_rounds",
    "read_round",
    "record_best_round",
]


def commit_round(
    hub: HubStore,
    run_id: str,
    rnd: int,
    data: bytes,
    aggregation: str,
    n_examples: dict[str, int],
    valid: dict[str, dict[str, float]],
    *,
    server_state: StateArrays | None = None,
    missing: dict[str, str] | None = None,
    rejected: dict[str, str] | None = None,
    excluded: Sequence[str] = (),
    valid_score: dict[str, float] | None = None,
    started_at: float | None = None,
    config_digest: dict[str, str] | None = None,
    dp: dict[str, float] | None = None,
    site_epsilon: dict[str, float] | None = None,
    trust: CoordinatorTrust | None = None,
    refs: dict[str, str] | None = None,
) -> RoundManifest:
    """Write the model (and strategy state), then the manifest that commits them.

    The manifest goes last: a coordinator killed before it leaves an uncommitted round, which
    readers ignore and a resumed run redoes (overwriting the same paths). With ``trust`` the
    manifest is signed by the coordinator (a site trains only from a signed commit) and the
    commit is recorded in the coordinator's ledger, with ``refs``: the sites' ledger entries
    of the updates it was made from.
    """
    layout = HubLayout(run_id)
    hub.put_bytes(layout.global_model(rnd), data)
    state_path = state_sha = None
    if server_state:
        blob = dump_arrays(server_state)
        state_path, state_sha = layout.server_state(rnd), hashlib.sha256(blob).hexdigest()
        hub.put_bytes(state_path, blob)
    missing = missing or {}
    manifest = RoundManifest(
        run_id=run_id,
        round=rnd,
        global_path=layout.global_model(rnd),
        global_sha256=hashlib.sha256(data).hexdigest(),
        aggregation=aggregation,
        server_state_path=state_path,
        server_state_sha256=state_sha,
        sites=sorted(n_examples),
        missing=sorted(missing),
        missing_reasons=missing,
        rejected=rejected or {},
        config_digest=config_digest or {},
        excluded=sorted(excluded),
        n_examples=n_examples,
        valid_summary=valid,
        valid_score=valid_score or {},
        round_seconds=None if started_at is None else time.time() - started_at,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        dp=dp or {},
        site_epsilon=site_epsilon or {},
    )
    if trust is None:
        hub.put_json(layout.round_manifest(rnd), manifest.model_dump(mode="json"))
        return manifest
    manifest = trust.sign("round-commit", manifest)
    ledger = trust.ledger(hub, run_id)
    ledger.append("global", round=rnd, path=layout.global_model(rnd), data=data)
    if state_path is not None and state_sha is not None:
        ledger.append("server-state", round=rnd, path=state_path, sha256=state_sha)
    written = json_bytes(manifest.model_dump(mode="json"))
    # recorded before it is written: a commit on the hub is always in the ledger
    ledger.append(
        "round-commit", round=rnd, path=layout.round_manifest(rnd), data=written, refs=refs
    )
    hub.put_bytes(layout.round_manifest(rnd), written)
    return manifest


def commit_failed_round(
    hub: HubStore,
    previous: RoundManifest,
    rnd: int,
    reason: str,
    *,
    missing: dict[str, str] | None = None,
    rejected: dict[str, str] | None = None,
    started_at: float | None = None,
    trust: CoordinatorTrust | None = None,
) -> RoundManifest:
    """Record round ``rnd`` as failed: its manifest names the global model (and strategy state)
    of ``previous`` (the round before), unchanged, with ``reason`` and who was missing or
    rejected. The next round starts from that model; nothing new is written but the manifest
    (signed and in the coordinator's ledger with ``trust``)."""
    layout = HubLayout(previous.run_id)
    missing = missing or {}
    manifest = RoundManifest(
        run_id=previous.run_id,
        round=rnd,
        global_path=previous.global_path,
        global_sha256=previous.global_sha256,
        aggregation=previous.aggregation if rnd > 1 else "init",
        outcome="failed",
        reason=reason,
        server_state_path=previous.server_state_path,
        server_state_sha256=previous.server_state_sha256,
        sites=[],
        missing=sorted(missing),
        missing_reasons=missing,
        rejected=rejected or {},
        n_examples={},
        valid_summary={},
        round_seconds=None if started_at is None else time.time() - started_at,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if trust is None:
        hub.put_json(layout.round_manifest(rnd), manifest.model_dump(mode="json"))
        return manifest
    manifest = trust.sign("round-commit", manifest)
    written = json_bytes(manifest.model_dump(mode="json"))
    trust.ledger(hub, previous.run_id).append(
        "round-commit", round=rnd, path=layout.round_manifest(rnd), data=written, note="failed"
    )
    hub.put_bytes(layout.round_manifest(rnd), written)
    return manifest


def read_round(
    hub: HubStore, run_id: str, rnd: int
) -> tuple[RoundManifest, StateArrays, StateArrays]:
    """A committed round: its manifest, global model and strategy state, hashes checked."""
    layout = HubLayout(run_id)
    manifest = RoundManifest.model_validate(hub.get_json(layout.round_manifest(rnd)))
    what = f"round {rnd}"
    arrays = load_arrays(
        hub.get_verified(manifest.global_path, manifest.global_sha256, f"global model of {what}")
    )
    state: StateArrays = {}
    if manifest.server_state_path and manifest.server_state_sha256:
        blob = hub.get_verified(
            manifest.server_state_path, manifest.server_state_sha256, f"server state of {what}"
        )
        state = load_arrays(blob)
    return manifest, arrays, state


def committed_rounds(hub: HubStore, run_id: str) -> list[RoundManifest]:
    """The run's committed rounds 0..k, in order: those whose manifest is on the hub, up to the
    first gap. Anything else under the run (an uploaded model without its manifest, a
    temporary file) is uncommitted and ignored."""
    layout = HubLayout(run_id)
    out: list[RoundManifest] = []
    while True:
        try:
            doc = hub.get_json(layout.round_manifest(len(out)))
        except FileNotFoundError:
            return out
        out.append(RoundManifest.model_validate(doc))


def best_round(manifests: Sequence[RoundManifest]) -> tuple[int, str, float] | None:
    """The committed round with the best example-weighted validation score at the sites.

    Classification federations select on ROC-AUC, regression ones on R² (then RMSE).
    Returns (round, metric, value), or None when no round has a validation score.
    """
    scored = [m for m in manifests if m.round > 0 and m.valid_score]
    best = pick_best([m.valid_score for m in scored])
    if best is None:
        return None
    i, metric, value = best
    return scored[i].round, metric, value


def record_best_round(
    hub: HubStore,
    run_id: str,
    manifests: Sequence[RoundManifest],
    trust: CoordinatorTrust | None = None,
) -> dict[str, object]:
    """Write ``runs/<run>/best.json`` (round, metric, value, global model hash): what a registry
    would publish. Nothing but aggregates and hashes; in the coordinator's ledger with
    ``trust``."""
    best = best_round(manifests)
    doc: dict[str, object] = {"run_id": run_id, "round": None}
    if best is not None:
        rnd, metric, value = best
        chosen = next(m for m in manifests if m.round == rnd)
        doc = {
            "run_id": run_id,
            "round": rnd,
            "metric": metric,
            "value": value,
            "global_path": chosen.global_path,
            "global_sha256": chosen.global_sha256,
        }
    written = json_bytes(doc)
    if trust is not None:
        trust.ledger(hub, run_id).append("best", path=HubLayout(run_id).best(), data=written)
    hub.put_bytes(HubLayout(run_id).best(), written)
    return doc
