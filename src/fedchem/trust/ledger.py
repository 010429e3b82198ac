"""The audit ledger: per party, an append-only, hash-chained, signed log on the hub.

Each party (a site, the coordinator) appends to its own chain per scope (a run id, or
``_site`` for what is not one run's, such as a preparation report)::

    ledger/<scope>/<actor>/<seq:08d>.json

Entry ``n`` holds the SHA-256 of entry ``n - 1`` (its canonical JSON, signature included) and
is signed by its actor, so removing, inserting, reordering or altering an entry breaks every
link after it, and no party can write another's. A site appends an entry for every object it
sends (update, manifest, preparation report, calibration, local-only model, refusal,
evaluation report) and keeps a copy of its chain on its own disk; the coordinator for every
decision (round opened, update received or rejected, round committed, promotion). One writer
per chain: a site's appends go under a lock on its own disk, the coordinator is one process.

:func:`verify_run` checks a whole run and names the first broken link.
"""

from __future__ import annotations

import fcntl
import hashlib
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fedchem.messages import LedgerEntry, SiteUpdateManifest
from fedchem.storage.hub import HubStore
from fedchem.trust.signing import COORDINATOR, KeyRing, SignatureRejected, Signer, canonical_json

__all__ = [
    "SITE_SCOPE",
    "AuditReport",
    "Ledger",
    "copy_dir",
    "entry_sha256",
    "ledger_dir",
    "read_chain",
    "verify_run",
]

SITE_SCOPE = "_site"
KIND = "ledger-entry"
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def ledger_dir(scope: str, actor: str) -> str:
    return f"ledger/{scope}/{actor}"


def copy_dir(local_dir: Path, hub_url: str) -> Path:
    """Where a party keeps its own copy of the chains it writes to the hub at ``hub_url``
    (one folder per hub: a site may take part through several)."""
    return local_dir / f"hub-{hashlib.sha256(hub_url.rstrip('/').encode()).hexdigest()[:16]}"


def entry_sha256(entry: LedgerEntry) -> str:
    return hashlib.sha256(canonical_json(entry.model_dump(mode="json"))).hexdigest()


def _seq_of(path: str) -> int | None:
    name = path.rsplit("/", 1)[-1]
    stem = name[: -len(".json")] if name.endswith(".json") else ""
    return int(stem) if stem.isdigit() else None


def _chain_paths(hub: HubStore, scope: str, actor: str) -> list[tuple[int, str]]:
    return sorted(
        (s, p) for p in hub.list_files(ledger_dir(scope, actor)) if (s := _seq_of(p)) is not None
    )


def _read(hub: HubStore, paths: list[tuple[int, str]]) -> list[LedgerEntry]:
    return [LedgerEntry.model_validate(d) for d in hub.map(hub.get_json, [p for _, p in paths])]


def read_chain(hub: HubStore, scope: str, actor: str, start: int = 0) -> list[LedgerEntry]:
    """The entries of one chain on the hub from ``start``, in sequence order (as stored: a
    missing or extra entry shows as a gap or a duplicate, for :func:`verify_run` to name)."""
    return _read(hub, [(s, p) for s, p in _chain_paths(hub, scope, actor) if s >= start])


#: a writer's chains as this process last read or wrote them: the next append lists the chain
#: (one request) and reads only the entries it does not hold yet, not the whole chain again
_known: dict[str, list[LedgerEntry]] = {}


def _refreshed(hub: HubStore, scope: str, actor: str) -> list[LedgerEntry]:
    key = f"{hub.url}|{scope}|{actor}"
    known = _known.get(key, [])
    paths = _chain_paths(hub, scope, actor)
    held = [s for s, _ in paths[: len(known)]]
    if held != [e.seq for e in known]:  # not the chain this process knew: read it whole
        known = []
    chain = known + _read(hub, paths[len(known) :])
    _known[key] = chain
    return chain


@contextmanager
def _site_lock(lock_path: Path | None, key: str) -> Iterator[None]:
    with _locks_guard:
        local = _locks.setdefault(key, threading.Lock())
    with local:
        if lock_path is None:
            yield
            return
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


class Ledger:
    """One party's chain in one scope. ``local_dir``: where a site keeps its own copy (its
    record of what left it, independent of the hub); the coordinator keeps none."""

    def __init__(
        self, hub: HubStore, scope: str, signer: Signer, local_dir: Path | None = None
    ) -> None:
        self.hub, self.scope, self.signer, self.actor = hub, scope, signer, signer.owner
        self.local = (
            copy_dir(local_dir, hub.url) / f"{scope}.jsonl" if local_dir is not None else None
        )
        self.lock_path = local_dir / ".lock" if local_dir is not None else None
        self._chain: list[LedgerEntry] | None = None

    def entries(self) -> list[LedgerEntry]:
        """The chain as this party knows it: its own copy where it keeps one, else the hub's."""
        if self._chain is None:
            if self.local is not None and self.local.exists():
                lines = self.local.read_text().splitlines()
                self._chain = [LedgerEntry.model_validate_json(x) for x in lines if x.strip()]
            else:
                self._chain = _refreshed(self.hub, self.scope, self.actor)
        return self._chain

    def received(self, rnd: int, m: SiteUpdateManifest) -> LedgerEntry:
        """The coordinator took ``m`` into round ``rnd`` (naming the site's own entry for it:
        what :meth:`fedchem.trust.coordinator.CoordinatorTrust` checks a replay against)."""
        return self.append(
            "received",
            round=rnd,
            subject=m.site,
            path=m.update_path,
            sha256=m.update_sha256,
            refs={m.site: str(m.ledger_sha256)},
        )

    def append(
        self,
        kind: str,
        *,
        round: int | None = None,
        subject: str | None = None,
        path: str | None = None,
        data: bytes | None = None,
        sha256: str | None = None,
        refs: Mapping[str, str] | None = None,
        note: str = "",
    ) -> LedgerEntry:
        """Sign and write the next entry. An object already recorded last with the same kind,
        path and hash is not recorded twice (a resumed step appends nothing)."""
        if data is not None:
            sha256 = hashlib.sha256(data).hexdigest()
        with _site_lock(self.lock_path, f"{self.hub.url}|{self.scope}|{self.actor}"):
            self._chain = None  # another process of this site may have appended meanwhile
            chain = self.entries()
            for e in reversed(chain):
                same = (e.kind, e.path, e.sha256, e.round, e.subject)
                if same == (kind, path, sha256, round, subject) and (
                    e.note == note and dict(e.refs) == dict(refs or {})
                ):
                    return e
            prev = chain[-1] if chain else None
            entry = self.signer.sign(
                KIND,
                LedgerEntry(
                    seq=len(chain),
                    prev_sha256=entry_sha256(prev) if prev is not None else None,
                    actor=self.actor,
                    scope=self.scope,
                    kind=kind,
                    round=round,
                    subject=subject,
                    path=path,
                    sha256=sha256,
                    size=len(data) if data is not None else None,
                    refs=dict(refs or {}),
                    note=note[:500],
                    at=datetime.now(UTC).isoformat(timespec="milliseconds"),
                ),
            )
            rel = f"{ledger_dir(self.scope, self.actor)}/{entry.seq:08d}.json"
            self.hub.put_json(rel, entry.model_dump(mode="json"))
            if self.local is not None:
                self.local.parent.mkdir(parents=True, exist_ok=True)
                with self.local.open("a") as f:
                    f.write(entry.model_dump_json() + "\n")
            chain.append(entry)
            return entry


@dataclass
class AuditReport:
    """What :func:`verify_run` found: entries checked per chain, and every problem in order
    (the first one is the first broken link)."""

    run_id: str
    chains: dict[str, int] = field(default_factory=dict)
    objects_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_chain(
    hub: HubStore, scope: str, actor: str, keys: KeyRing, report: AuditReport
) -> list[LedgerEntry]:
    where = f"ledger {scope}/{actor}"
    try:
        chain = read_chain(hub, scope, actor)
    except (ValueError, OSError) as exc:
        report.problems.append(f"{where}: unreadable entry ({type(exc).__name__}: {exc})"[:300])
        return []
    report.chains[actor if scope == report.run_id else f"{actor} ({scope})"] = len(chain)
    prev: LedgerEntry | None = None
    for i, e in enumerate(chain):
        at = f"{where} entry {i}"
        if e.seq != i:
            report.problems.append(f"{at}: sequence {e.seq} where {i} belongs (a gap or a copy)")
            return chain
        if (e.actor, e.scope) != (actor, scope):
            report.problems.append(f"{at}: says actor {e.actor!r} scope {e.scope!r}")
            return chain
        try:
            keys.verify(KIND, e, actor)
        except SignatureRejected as exc:
            report.problems.append(f"{at}: {exc}")
            return chain
        expected = entry_sha256(prev) if prev is not None else None
        if e.prev_sha256 != expected:
            report.problems.append(
                f"{at}: its link to entry {i - 1} does not match (an entry was altered, "
                "removed or inserted)"
            )
            return chain
        prev = e
    return chain


def _check_objects(
    hub: HubStore, actor: str, chain: list[LedgerEntry], report: AuditReport
) -> dict[str, LedgerEntry]:
    """Every object the chain recorded is on the hub as last recorded; returns path -> its
    last record."""
    latest: dict[str, LedgerEntry] = {}
    for e in chain:
        if e.path is not None and e.sha256 is not None:
            latest[e.path] = e  # an object written again (a resumed step): its last record
    present = set(hub.map(lambda p: p if hub.exists(p) else "", sorted(latest))) - {""}
    for path, e in latest.items():
        if path not in present:
            report.problems.append(
                f"ledger {e.scope}/{actor} entry {e.seq}: {path} ({e.kind}) is gone from the hub"
            )
            continue
        report.objects_checked += 1
        if hashlib.sha256(hub.get_bytes(path)).hexdigest() != e.sha256:
            report.problems.append(
                f"ledger {e.scope}/{actor} entry {e.seq}: {path} on the hub is not what was "
                "recorded (altered after it was sent)"
            )
    return latest


def _check_copy(
    scope: str, actor: str, chain: list[LedgerEntry], copy: Path, report: AuditReport
) -> None:
    """A party's own copy of its chain (what it wrote, on its own disk) against the hub's."""
    path = copy / f"{scope}.jsonl"
    if not path.exists():
        return
    mine = [LedgerEntry.model_validate_json(x) for x in path.read_text().splitlines() if x]
    for i, e in enumerate(mine):
        if i >= len(chain):
            report.problems.append(
                f"ledger {scope}/{actor}: entries {i} to {len(mine) - 1} of {actor}'s own copy "
                "are gone from the hub (deleted or rolled back)"
            )
            return
        if entry_sha256(chain[i]) != entry_sha256(e):
            report.problems.append(
                f"ledger {scope}/{actor} entry {i}: not the entry in {actor}'s own copy "
                "(replaced on the hub)"
            )
            return


def _owner(run_id: str, path: str) -> str:
    """The party that writes ``path`` of run ``run_id``: a site's replies, local-only model
    and calibration are its own; everything else under the run is the coordinator's."""
    parts = path.split("/")[2:]  # after runs/<run>
    if len(parts) >= 4 and parts[0] == "rounds" and parts[2] == "sites":
        return parts[3]
    if len(parts) >= 2 and parts[0] == "baselines":
        return parts[1]
    if len(parts) == 2 and parts[0] == "calibration":
        return parts[1].removesuffix(".json")
    return COORDINATOR


def _unrecorded(
    path: str, owner: str, latest: Mapping[str, Mapping[str, LedgerEntry]]
) -> str | None:
    if path in latest.get(owner, {}):
        return None  # recorded (its content was compared with the record)
    name = path.rsplit("/", 1)[-1]
    if owner != COORDINATOR and name == "update.json":
        return f"{path}: a site manifest not in {owner}'s ledger"
    if owner == COORDINATOR and name == "manifest.json" and path.count("/") == 4:
        return f"{path}: a committed round not in the coordinator's ledger"
    return f"{path}: not in {owner}'s ledger (written outside the audit trail)"


def verify_run(
    hub: HubStore,
    run_id: str,
    keys: KeyRing,
    copies: Mapping[str, Path] | None = None,
) -> AuditReport:
    """Check run ``run_id`` on the hub, naming the first broken link first:

    - every chain of the run (and the preparation chains of its sites): sequence, links, each
      entry signed by its actor's pinned key;
    - ``copies`` (party -> its own copy of what it wrote to this hub: the folder
      :func:`copy_dir` names under its ``<workdir>/ledger``): the hub holds every entry the
      party wrote, unchanged; entries deleted or rolled back on the hub show here even when
      the rest of the chain still links;
    - every object a chain recorded is still on the hub, unchanged (a deleted update, global
      model or side file is named), and every object of the run on the hub was recorded by
      the party that writes it (a file written outside the trail is named);
    - the coordinator's records name the sites' entries of the updates it took, and the
      sites' update entries name the coordinator's opening and the global model they trained
      from: a coordinator that rolls its chain back below what a site saw is named.
    """
    report = AuditReport(run_id)
    actors = sorted(
        {p.split("/")[2] for p in hub.list_files(f"ledger/{run_id}") if p.count("/") >= 3}
    )
    chains: dict[str, list[LedgerEntry]] = {}
    for actor in actors:
        if actor not in keys.keys:
            report.problems.append(f"ledger {run_id}/{actor}: an actor with no pinned key")
            continue
        chains[actor] = _check_chain(hub, run_id, actor, keys, report)
    sites = [a for a in chains if a != COORDINATOR]
    prepared: dict[str, list[LedgerEntry]] = {}
    for site in sites:
        if hub.list_files(ledger_dir(SITE_SCOPE, site)):
            prepared[site] = _check_chain(hub, SITE_SCOPE, site, keys, report)
    for actor, directory in sorted((copies or {}).items()):
        _check_copy(run_id, actor, chains.get(actor, []), directory, report)
        _check_copy(SITE_SCOPE, actor, prepared.get(actor, []), directory, report)
    latest = {actor: _check_objects(hub, actor, chain, report) for actor, chain in chains.items()}
    for site, chain in prepared.items():
        _check_objects(hub, site, chain, report)
        for path in hub.list_files(f"sites/{site}"):
            if not any(e.path == path for e in chain):
                report.problems.append(
                    f"{path}: not in {site}'s ledger (written outside the audit trail)"
                )
    by_sha = {entry_sha256(e): (actor, e) for actor, chain in chains.items() for e in chain}
    for e in chains.get(COORDINATOR, []):
        for site, ref in e.refs.items():
            target = by_sha.get(ref)
            if target is None or target[0] != site:
                report.problems.append(
                    f"ledger {run_id}/{COORDINATOR} entry {e.seq}: refers to an entry of "
                    f"{site} that is not in {site}'s chain"
                )
    seen = {
        kind: {e.sha256 for e in chains.get(COORDINATOR, []) if e.kind == kind}
        for kind in ("round-open", "global")
    }
    for site in sites:
        for e in chains[site]:
            for kind, sha in sorted(e.refs.items()):
                if kind in seen and sha not in seen[kind]:
                    report.problems.append(
                        f"ledger {run_id}/{site} entry {e.seq}: the coordinator's {kind} it "
                        f"trained from ({sha[:12]}) is not in the coordinator's chain (rolled "
                        "back or removed)"
                    )
    for path in hub.list_files(f"runs/{run_id}"):
        why = _unrecorded(path, _owner(run_id, path), latest)
        if why is not None:
            report.problems.append(why)
    return report
