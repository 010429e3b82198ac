"""The coordinator's side of a round: initialise a run, screen and aggregate a round's
updates, commit the result (:mod:`fedchem.federation.commits`). It never sees rows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import torch

from fedchem.config import FaultConfig, FederationConfig, ModelConfig
from fedchem.federation.commits import commit_round, read_round
from fedchem.federation.strategies import FedAvg, Strategy
from fedchem.federation.validation import check_arrays, screen_updates
from fedchem.messages import RoundManifest, SiteUpdateManifest
from fedchem.model.network import MultitaskNet, build_model
from fedchem.model.state import dump_arrays, model_to_arrays
from fedchem.storage.hub import HubLayout, HubStore
from fedchem.types import StateArrays

__all__ = [
    "QuorumError",
    "ResumeError",
    "aggregate_round",
    "config_digest",
    "initial_model",
    "pooled_label_stats",
    "start_run",
]


def pooled_label_stats(
    stats: Sequence[dict[str, dict[str, float]]],
) -> dict[str, tuple[float, float]]:
    """Combine sites' (n, sum, sumsq) per task into a mean and standard deviation."""
    acc: dict[str, list[float]] = {}
    for site_stats in stats:
        for task, s in site_stats.items():
            a = acc.setdefault(task, [0.0, 0.0, 0.0])
            a[0] += s["n"]
            a[1] += s["sum"]
            a[2] += s["sumsq"]
    out = {}
    for task, (n, s1, s2) in acc.items():
        mean = s1 / n
        var = max(s2 / n - mean * mean, 0.0)
        out[task] = (mean, float(np.sqrt(var)) if var > 0 else 1.0)
    return out


def initial_model(
    fp_size: int,
    tasks: Sequence[tuple[str, str]],
    cfg: ModelConfig,
    seed: int,
    label_stats: Sequence[dict[str, dict[str, float]]],
) -> MultitaskNet:
    """The round-0 model: seeded weights, regression scaling from sites' aggregate statistics."""
    model = build_model(fp_size, len(tasks), cfg, seed)
    scaling = pooled_label_stats(label_stats)
    with torch.no_grad():
        for j, (name, kind) in enumerate(tasks):
            if kind == "regression" and name in scaling:
                model.y_mean[j], model.y_std[j] = scaling[name]
    return model


class QuorumError(RuntimeError):
    """Too few accepted updates for a round to commit; committed rounds stay as they are."""


class ResumeError(RuntimeError):
    """A run id already on the hub was started with a different configuration."""


#: the config sections that decide the model a run produces; ``mode``, ``deployment``,
#: ``faults``, ``hub_url`` and ``rounds`` may change when a run is resumed
_DIGEST_SECTIONS = (
    "tasks",
    "chem",
    "model",
    "train",
    "strategy",
    "heads",
    "shared_tasks",
)  # not init_from: it decides round 0 only, which a resumed run has committed already


def config_digest(config: FederationConfig) -> dict[str, str]:
    """A hash per config section that decides the model (and of the site names)."""
    dumped = config.model_dump(mode="json")
    parts: dict[str, object] = {k: dumped[k] for k in _DIGEST_SECTIONS}
    parts["sites"] = config.site_names
    return {
        k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest()[:16]
        for k, v in parts.items()
    }


def start_run(
    hub: HubStore,
    config: FederationConfig,
    label_stats: Sequence[dict[str, dict[str, float]]],
    init: StateArrays | None = None,
) -> RoundManifest:
    """Commit round 0 (the initial global model), or return it if this run already has one.

    A run that exists must have been started with the same model-deciding settings: resuming
    it with others is refused, naming the sections that differ. ``init``: the weights round 0
    starts from (a registered model, ``config.init_from``); they must fit the configured
    network exactly.
    """
    layout = HubLayout(config.run_id)
    digest = config_digest(config)
    if hub.exists(layout.round_manifest(0)):
        first = RoundManifest.model_validate(hub.get_json(layout.round_manifest(0)))
        differ = sorted(k for k in digest if first.config_digest.get(k) != digest[k])
        if first.config_digest and differ:
            raise ResumeError(
                f"run {config.run_id!r} exists on the hub with other settings in: "
                f"{', '.join(differ)}; resume it with its own config or choose a new run_id"
            )
        return first
    tasks = [(t.name, t.kind) for t in config.tasks]
    model = initial_model(config.chem.fp_size, tasks, config.model, config.train.seed, label_stats)
    arrays = model_to_arrays(model)
    if init is not None:
        why = check_arrays(init, arrays)
        if why is not None:
            raise ValueError(f"the model to start from does not fit this federation: {why}")
        arrays = init
    data = dump_arrays(arrays)
    how = "init" if init is None else "warm-start"
    return commit_round(hub, config.run_id, 0, data, how, {}, {}, config_digest=digest)


def _read_or_error(hub: HubStore, rel: str) -> bytes | Exception:
    try:
        return hub.get_bytes(rel)
    except Exception as exc:
        return exc


def _raise(blob: bytes | Exception) -> bytes:
    if isinstance(blob, Exception):
        raise blob
    return blob


def aggregate_round(
    hub: HubStore,
    run_id: str,
    rnd: int,
    replies: Sequence[SiteUpdateManifest],
    strategy: Strategy | None = None,
    failures: dict[str, str] | Sequence[str] = (),
    started_at: float | None = None,
    *,
    members: Sequence[str] | None = None,
    quorum: int = 1,
    faults: FaultConfig | None = None,
) -> RoundManifest:
    """Screen the sites' updates for round ``rnd``, aggregate the accepted ones, commit.

    Updates are checked by :func:`~fedchem.federation.validation.screen_updates` against the
    committed global model of ``rnd - 1``; rejected ones are recorded with their reason. The
    round commits only when at least ``quorum`` updates were accepted (else
    :class:`QuorumError`, and nothing is written). ``members``: the federation's sites
    (default: the replying ones). Updates are combined in site-name order, so the committed
    bytes do not depend on the order in which the replies arrived.
    """
    replies = sorted(replies, key=lambda m: m.site)
    strategy = strategy or FedAvg()
    faults = faults or FaultConfig()
    missing = dict(failures) if isinstance(failures, dict) else {s: "no reply" for s in failures}
    previous, current, server_state = read_round(hub, run_id, rnd - 1)
    # the updates are read concurrently; a read error surfaces when its update is screened
    paths = [m.update_path for m in replies]
    blobs = dict(zip(paths, hub.map(lambda p: _read_or_error(hub, p), paths), strict=True))
    screened = screen_updates(
        replies,
        run_id=run_id,
        rnd=rnd,
        base_sha256=previous.global_sha256,
        reference=current,
        members=list(members) if members is not None else [m.site for m in replies],
        fetch=lambda m: hub.get_verified(
            m.update_path, m.update_sha256, f"update of {m.site}", _raise(blobs[m.update_path])
        ),
        max_norm_ratio=faults.max_norm_ratio,
        min_for_norm=faults.min_for_norm_check,
    )
    if len(screened.accepted) < max(quorum, 1):
        raise QuorumError(
            f"round {rnd}: {len(screened.accepted)} accepted update(s), quorum is "
            f"{max(quorum, 1)}; missing: {missing or '-'}; rejected: {screened.rejected or '-'}. "
            "Committed rounds stay intact."
        )
    result = strategy.aggregate_fit(
        rnd, current, server_state, screened.accepted, sorted({*missing, *screened.rejected})
    )
    used = {m.site: m for m in screened.manifests if m.site in result.used_sites}
    weights = {s: m.n_examples for s, m in used.items()}
    summaries = {m.site: m.valid.summary for m in screened.manifests}
    return commit_round(
        hub,
        run_id,
        rnd,
        dump_arrays(result.arrays),
        strategy.name,
        weights,
        summaries,
        server_state=result.server_state,
        missing=missing,
        rejected=screened.rejected,
        excluded=[m.site for m in screened.manifests if m.site not in used],
        valid_score=strategy.evaluate(
            rnd, summaries, {m.site: m.n_examples for m in screened.manifests}
        ),
        started_at=started_at,
    )
