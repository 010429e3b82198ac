"""The coordinator's side of a round: initialise, aggregate, commit. It never sees rows.

A round is committed when its manifest is written (after the global model it names), so a
reader that finds a round manifest always finds the model it describes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import torch

from fedchem.config import FederationConfig, ModelConfig
from fedchem.federation.aggregate import aggregate_weighted
from fedchem.federation.manifest import RoundManifest, SiteUpdateManifest
from fedchem.model.network import MultitaskNet, build_model
from fedchem.model.state import dump_arrays, load_arrays, model_to_arrays
from fedchem.storage.hub import HubLayout, HubStore

__all__ = ["aggregate_round", "initial_model", "pooled_label_stats", "start_run"]


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


def _commit(
    hub: HubStore, run_id: str, rnd: int, data: bytes, aggregation: str,
    n_examples: dict[str, int], valid: dict[str, dict[str, float]],
) -> RoundManifest:  # fmt: skip
    layout = HubLayout(run_id)
    hub.put_bytes(layout.global_model(rnd), data)
    manifest = RoundManifest(
        run_id=run_id,
        round=rnd,
        global_path=layout.global_model(rnd),
        global_sha256=hashlib.sha256(data).hexdigest(),
        aggregation=aggregation,
        sites=sorted(n_examples),
        n_examples=n_examples,
        valid_summary=valid,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    hub.put_json(layout.round_manifest(rnd), manifest.model_dump(mode="json"))
    return manifest


def start_run(
    hub: HubStore, config: FederationConfig, label_stats: Sequence[dict[str, dict[str, float]]]
) -> RoundManifest:
    """Commit round 0 (the initial global model), or return it if this run already has one."""
    layout = HubLayout(config.run_id)
    if hub.exists(layout.round_manifest(0)):
        return RoundManifest.model_validate(hub.get_json(layout.round_manifest(0)))
    tasks = [(t.name, t.kind) for t in config.tasks]
    model = initial_model(config.chem.fp_size, tasks, config.model, config.train.seed, label_stats)
    return _commit(hub, config.run_id, 0, dump_arrays(model_to_arrays(model)), "init", {}, {})


def aggregate_round(
    hub: HubStore, run_id: str, rnd: int, replies: Sequence[SiteUpdateManifest]
) -> RoundManifest:
    """Example-weighted FedAvg of the sites' updates for round ``rnd``, then commit it."""
    if not replies:
        raise ValueError(f"round {rnd}: no site replied; nothing to aggregate")
    updates = []
    for m in replies:
        if m.round != rnd or m.run_id != run_id:
            raise ValueError(f"update of {m.site} is for {m.run_id} round {m.round}, not {rnd}")
        data = hub.get_bytes(m.update_path)
        if hashlib.sha256(data).hexdigest() != m.update_sha256:
            raise ValueError(f"update of {m.site} for round {rnd} does not match its manifest")
        updates.append((load_arrays(data), float(m.n_examples)))
    merged = aggregate_weighted(updates)
    return _commit(
        hub, run_id, rnd, dump_arrays(merged), "fedavg",
        {m.site: m.n_examples for m in replies},
        {m.site: m.valid.summary for m in replies},
    )  # fmt: skip
