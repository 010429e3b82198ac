"""The coordinator's side of a round: initialise a run, screen and aggregate a round's
updates, commit the result (:mod:`fedchem.federation.commits`). It never sees rows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedchem.config import ChemConfig, FaultConfig, FederationConfig, ModelConfig, TrainConfig
from fedchem.federation.commits import commit_failed_round, commit_round, read_round
from fedchem.federation.strategies import FedAvg, SiteLevelDP, Strategy, build_strategy
from fedchem.federation.validation import UpdateChanged, check_arrays, screen_updates
from fedchem.messages import RoundManifest, RoundPlan, SiteUpdateManifest
from fedchem.model.network import MultitaskNet, build_model
from fedchem.model.state import dump_arrays, model_to_arrays
from fedchem.policy import PrivacyConfig
from fedchem.storage.hub import HubLayout, HubStore
from fedchem.types import StateArrays

if TYPE_CHECKING:
    from fedchem.trust.coordinator import CoordinatorTrust

__all__ = [
    "ResumeError",
    "aggregate_round",
    "config_digest",
    "coordinator_trust",
    "initial_model",
    "pooled_label_stats",
    "round_plan",
    "round_settings",
    "start_run",
    "strategy_for",
    "trunk_of",
]


def coordinator_trust(config: FederationConfig, need_key: bool = True) -> CoordinatorTrust | None:
    """The coordinator's keys for ``config`` (None: an unsigned federation)."""
    if config.trust is None:
        return None
    from fedchem.trust.coordinator import CoordinatorTrust

    return CoordinatorTrust.from_config(config.trust, need_key)


def round_plan(config: FederationConfig) -> RoundPlan:
    """What every round asks of the sites, for their policies: strategy, members, quorum,
    rounds, heads and the DP (site level with its noise multiplier resolved)."""
    from fedchem.trust.coordinator import resolve_privacy

    return RoundPlan(
        strategy=config.strategy.name,
        sites=config.site_names,
        quorum=config.quorum(),
        rounds=config.rounds,
        heads=config.heads,
        privacy=resolve_privacy(config.privacy, config.rounds),
        settings=round_settings(config.chem, config.model, config.train),
        secure_aggregation=(
            None
            if config.secure_aggregation is None
            else config.secure_aggregation.model_copy(update={"graph_seed": config.run_id})
        ),
        compression=config.compression,
    )


def round_settings(chem: ChemConfig, model: ModelConfig, train: TrainConfig) -> dict[str, Any]:
    """The consortium settings a round trains with, as its plan carries them (signed)."""
    return {
        "chem": chem.model_dump(mode="json"),
        "model": model.model_dump(mode="json"),
        "train": train.model_dump(mode="json"),
    }


def strategy_for(config: FederationConfig) -> Strategy:
    """The configured strategy; with site-level DP, wrapped in
    :class:`~fedchem.federation.strategies.SiteLevelDP` (noise on the sum of clipped deltas;
    the model's target-scaling buffers are left alone)."""
    strategy = build_strategy(config.strategy)
    privacy = round_plan(config).privacy
    if privacy.level != "site":
        return strategy
    assert privacy.noise_multiplier is not None  # resolved by round_plan
    net = build_model(config.chem.fp_size, len(config.tasks), config.model)
    frozen = [name for name, _ in net.named_buffers()]
    return SiteLevelDP(strategy, privacy.clip, privacy.noise_multiplier, frozen)


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
    """The round-0 model: seeded weights; from the sites' aggregate statistics, a regression
    task's target scaling and, with ``cfg.head_bias == "prior"``, a classification task's
    head bias at the pooled log-odds of an active (the heads then start at the base rate, and
    the first clipped steps of DP-SGD learn structure, not that most compounds are inactive:
    measured, it lifts a private run; without DP it cost 0.003-0.03 ROC-AUC, so it is off
    by default)."""
    model = build_model(fp_size, len(tasks), cfg, seed)
    scaling = pooled_label_stats(label_stats)
    with torch.no_grad():
        for j, (name, kind) in enumerate(tasks):
            if name not in scaling:
                continue
            if kind == "regression":
                model.y_mean[j], model.y_std[j] = scaling[name]
            elif cfg.head_bias == "prior":
                rate = min(max(scaling[name][0], 1e-3), 1 - 1e-3)
                model.head.bias[j] = float(np.log(rate / (1 - rate)))
    return model


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
    trust: CoordinatorTrust | None = None,
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
    if init is not None and config.init_from is not None and config.init_from.parts == "trunk":
        init = trunk_of(init, arrays)
    if init is not None:
        why = check_arrays(init, arrays)
        if why is not None:
            raise ValueError(f"the model to start from does not fit this federation: {why}")
        arrays = init
    data = dump_arrays(arrays)
    how = "init" if init is None else "warm-start"
    return commit_round(hub, config.run_id, 0, data, how, {}, {}, config_digest=digest, trust=trust)


#: the arrays of a network's trunk: the sparse input layer, its bias and the hidden layers
TRUNK_PREFIXES = ("input.", "input_bias", "trunk.")


def trunk_of(base: StateArrays, fresh: StateArrays) -> StateArrays:
    """``fresh`` (a new model's arrays) with the trunk of ``base`` (a model of other tasks):
    every trunk array must be there, of the same shape (the same featurizer, width, depth)."""
    out = dict(fresh)
    for name, array in fresh.items():
        if not name.startswith(TRUNK_PREFIXES):
            continue
        if name not in base or base[name].shape != array.shape:
            got = base[name].shape if name in base else "nothing"
            raise ValueError(
                f"the base model's trunk does not fit: {name} is {got}, this network's is "
                f"{array.shape} (the same featurizer, fp_size, hidden and depth are needed)"
            )
        out[name] = base[name].astype(array.dtype)
    return out


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
    trust: CoordinatorTrust | None = None,
    privacy: PrivacyConfig | None = None,
) -> RoundManifest:
    """Screen the sites' updates for round ``rnd``, aggregate the accepted ones, commit.

    Updates are checked by :func:`~fedchem.federation.validation.screen_updates` against the
    committed global model of ``rnd - 1``; rejected ones are recorded with their reason. With
    fewer than ``quorum`` accepted updates the round is recorded as failed
    (:func:`~fedchem.federation.commits.commit_failed_round`: the global model stays that of
    ``rnd - 1``) and its manifest says why. ``members``: the federation's sites
    (default: the replying ones). Updates are combined in site-name order, so the committed
    bytes do not depend on the order in which the replies arrived.

    With ``trust``, an update must first pass
    :meth:`~fedchem.trust.coordinator.CoordinatorTrust.check_update` (its site's signature,
    backed by its site's ledger, no second update); every update taken or rejected, and the
    commit, go into the coordinator's ledger. ``privacy`` (resolved: site level carries its
    noise multiplier): with site-level DP an update whose delta exceeds the clip norm is
    rejected, and the round manifest reports the run's epsilon so far.
    """
    replies = sorted(replies, key=lambda m: m.site)
    pre_rejected: dict[str, str] = {}
    ledger = trust.ledger(hub, run_id) if trust is not None else None
    if trust is not None:
        checked = []
        for m in replies:
            why = trust.check_update(hub, m, ledger)
            if why is None:
                checked.append(m)
            else:
                pre_rejected[m.site] = why[:300]
        replies = checked
    strategy = strategy or FedAvg()
    faults = faults or FaultConfig()
    missing = dict(failures) if isinstance(failures, dict) else {s: "no reply" for s in failures}
    previous, current, server_state = read_round(hub, run_id, rnd - 1)
    # each update is read when it is screened and again when it is aggregated (its hash
    # checked both times): the coordinator holds one update at a time, not N
    screened = screen_updates(
        replies,
        run_id=run_id,
        rnd=rnd,
        base_sha256=previous.global_sha256,
        reference=current,
        members=list(members) if members is not None else [m.site for m in replies],
        # read through a verified temporary file: no whole copy of an update's bytes in memory
        fetch=lambda m: hub.get_verified_file(
            m.update_path, m.update_sha256, f"update of {m.site}"
        ),
        max_norm_ratio=faults.max_norm_ratio,
        min_for_norm=faults.min_for_norm_check,
        max_delta_norm=privacy.clip if privacy is not None and privacy.level == "site" else None,
    )
    screened.rejected = {**pre_rejected, **screened.rejected}
    if ledger is not None:
        for m in screened.manifests:
            ledger.received(rnd, m)
        for site, why in sorted(screened.rejected.items()):
            ledger.append("rejected", round=rnd, subject=site, note=why)
    result = None
    while len(screened.accepted) >= max(quorum, 1):
        try:
            result = strategy.aggregate_fit(
                rnd,
                current,
                server_state,
                screened.accepted,
                sorted({*missing, *screened.rejected}),
            )
            break
        except UpdateChanged as exc:  # its object changed on the hub since it was screened
            why = f"update changed after it was screened: {exc}"[:300]
            screened.rejected[exc.site] = why
            screened.accepted = [r for r in screened.accepted if r.site != exc.site]
            screened.manifests = [m for m in screened.manifests if m.site != exc.site]
            if ledger is not None:
                ledger.append("rejected", round=rnd, subject=exc.site, note=why)
    if result is None:
        reason = (
            f"{len(screened.accepted)} accepted update(s), quorum is {max(quorum, 1)}; "
            f"missing: {', '.join(sorted(missing)) or '-'}; "
            f"rejected: {', '.join(sorted(screened.rejected)) or '-'}"
        )
        return commit_failed_round(
            hub,
            previous,
            rnd,
            reason,
            missing=missing,
            rejected=screened.rejected,
            started_at=started_at,
            trust=trust,
        )
    used = {m.site: m for m in screened.manifests if m.site in result.used_sites}
    weights = {s: m.n_examples for s, m in used.items()}
    summaries = {m.site: m.valid.summary for m in screened.manifests}
    dp: dict[str, float] = {}
    if privacy is not None and privacy.level == "site" and privacy.noise_multiplier:
        from fedchem.trust.dp import Steps, epsilon

        z = privacy.noise_multiplier
        dp = {
            "noise_multiplier": z,
            "clip": privacy.clip,
            "delta": privacy.delta,
            "epsilon_run": epsilon([Steps(1.0, z, rnd)], privacy.delta),
        }
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
        dp=dp,
        site_epsilon={
            m.site: m.dp.epsilon_run
            for m in screened.manifests
            if m.site in used and m.dp is not None and m.dp.level == "record"
        },
        trust=trust,
        refs={s: str(m.ledger_sha256) for s, m in used.items() if m.ledger_sha256},
    )
