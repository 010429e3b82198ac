"""What a site does in a federation: train on the global model, evaluate, publish an update.

The site's local-only baseline is :mod:`fedchem.federation.baselines`; how a model is scored
and chosen on a fold is :mod:`fedchem.model.evaluate` and :mod:`fedchem.model.selection`.

Only the update (weights) and a manifest of counts and aggregate metrics reach the hub.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from fedchem.config import ChemConfig, ModelConfig, Selection, SiteConfig, TrainConfig
from fedchem.data.dataset import SiteDataset, current_dataset_path
from fedchem.messages import (
    EvalReport,
    FitInstructions,
    RoundManifest,
    RoundOpen,
    SiteRefusal,
    SiteUpdateManifest,
)
from fedchem.model.calibrate import calibrate, conformal_report
from fedchem.model.compress import encode_update
from fedchem.model.evaluate import evaluate_at_site
from fedchem.model.network import MultitaskNet, build_model
from fedchem.model.selection import BestSoFar
from fedchem.model.state import arrays_to_model, dump_arrays, load_arrays, model_to_arrays
from fedchem.model.train import train_epochs
from fedchem.secagg.protocol import SecAggError, flatten
from fedchem.secagg.rounds import STEPS, SiteParty, site_waits
from fedchem.storage.hub import HubLayout, HubStore, json_bytes
from fedchem.trust.dp import clip_delta, delta_norm
from fedchem.trust.ledger import Ledger, entry_sha256
from fedchem.trust.signing import Signer
from fedchem.trust.site import PolicyRefused, SiteGuard, site_signer
from fedchem.types import StateArrays

__all__ = [
    "evaluate_global_at_site",
    "fetch_global",
    "global_model_at_site",
    "load_site_dataset",
    "model_for",
    "private_head_path",
    "refuse_round",
    "run_site_round",
    "scored_on_test",
    "selected_round",
    "site_seed",
    "take_part",
]


def load_site_dataset(site: SiteConfig) -> SiteDataset:
    return SiteDataset.load(current_dataset_path(site))


def site_seed(base: int, site: str, rnd: int) -> int:
    """A seed per (run seed, site, round): reproducible, different across sites and rounds."""
    return (base * 1_000_003 + zlib.crc32(site.encode()) + rnd * 7919) % (2**31)


def fetch_global(
    hub: HubStore,
    run_id: str,
    rnd: int,
    verify: Callable[[RoundManifest], None] | None = None,
) -> tuple[StateArrays, str]:
    """The committed global model of round ``rnd``; its hash must match the round manifest,
    and ``verify`` (a site's check of the coordinator's signature) must accept the manifest."""
    layout = HubLayout(run_id)
    manifest = RoundManifest.model_validate(hub.get_json(layout.round_manifest(rnd)))
    if verify is not None:
        verify(manifest)
    what = f"global model of round {rnd}"
    data = hub.get_verified(manifest.global_path, manifest.global_sha256, what)
    return load_arrays(data), manifest.global_sha256


def model_for(ds: SiteDataset, cfg: ModelConfig, arrays: StateArrays | None) -> MultitaskNet:
    model = build_model(ds.fp_size, ds.n_tasks, cfg)
    if arrays is not None:
        arrays_to_model(model, arrays)
    return model


def private_rows(ds: SiteDataset, private_tasks: list[str]) -> np.ndarray:
    index = {t: j for j, t in enumerate(ds.task_names)}
    return np.array(sorted(index[t] for t in private_tasks if t in index), dtype=np.int64)


def _load_private_head(model: MultitaskNet, path: Path, rows: np.ndarray | None = None) -> None:
    """The site's own head rows from earlier rounds (round 1 starts from the global init).

    ``rows``: the rows this round expects (checked); None takes the rows the file holds.
    """
    if not path.exists():
        return
    with np.load(path, allow_pickle=False) as z:
        if rows is None:
            rows = z["rows"]
        elif not np.array_equal(z["rows"], rows):
            raise ValueError(f"{path}: private head rows differ from this round's private tasks")
        with torch.no_grad():
            model.head.weight[torch.from_numpy(rows)] = torch.from_numpy(z["weight"])
            model.head.bias[torch.from_numpy(rows)] = torch.from_numpy(z["bias"])


def _save_private_head(model: MultitaskNet, path: Path, rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    idx = torch.from_numpy(rows)
    np.savez(
        tmp,
        rows=rows,
        weight=model.head.weight.detach()[idx].numpy(),
        bias=model.head.bias.detach()[idx].numpy(),
    )
    tmp.replace(path)


def private_head_path(state_dir: Path, rnd: int) -> Path:
    """The site's private head rows after round ``rnd`` (small; every round's is kept)."""
    return state_dir / f"private_head-{rnd:04d}.npz"


def _save_optimizer(state: dict[str, object], state_dir: Path, rnd: int) -> None:
    """Adam's state after round ``rnd``, written atomically; states before ``rnd - 1`` go."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / f"optimizer-{rnd:04d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    for old in state_dir.glob("optimizer-*.pt"):
        if int(old.stem.split("-")[1]) < rnd - 1:
            old.unlink(missing_ok=True)


def _sent_copy(state_dir: Path, rnd: int, base_sha: str) -> tuple[Path, Path]:
    """Where the site keeps its own copy of the update (and manifest) it sent for round
    ``rnd`` from ``base_sha``."""
    stem = f"sent-{rnd:04d}-{base_sha[:16]}"
    return state_dir / f"{stem}.npz", state_dir / f"{stem}.json"


def _keep_sent(state_dir: Path, rnd: int, base_sha: str, data: bytes, manifest: bytes) -> None:
    """Keep the site's copy of what it sent (only the last round's: rounds only go up)."""
    update_path, manifest_path = _sent_copy(state_dir, rnd, base_sha)
    for old in state_dir.glob("sent-*"):
        old.unlink(missing_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for path, blob in ((update_path, data), (manifest_path, manifest)):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        tmp.replace(path)


def _send_again(
    hub: HubStore, state_dir: Path, run_id: str, rnd: int, site: str, base_sha: str
) -> SiteUpdateManifest | None:
    """The update this site already sent for round ``rnd`` from ``base_sha``, sent again from
    its own copy (a resumed coordinator asks twice): the same bytes, no training, no new
    release. None: the site has not sent one (what the hub holds is not its word)."""
    update_path, manifest_path = _sent_copy(state_dir, rnd, base_sha)
    if not (update_path.exists() and manifest_path.exists()):
        return None
    written = manifest_path.read_bytes()
    manifest = SiteUpdateManifest.model_validate_json(written)
    layout = HubLayout(run_id)
    if hub.get_bytes_or_none(manifest.update_path) != (data := update_path.read_bytes()):
        hub.put_bytes(layout.site_update(rnd, site), data)
    if hub.get_bytes_or_none(layout.site_manifest(rnd, site)) != written:
        hub.put_bytes(layout.site_manifest(rnd, site), written)
    return manifest


def run_site_round(
    site: SiteConfig,
    hub: HubStore,
    run_id: str,
    rnd: int,
    chem: ChemConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    fit: FitInstructions | None = None,
    *,
    opened: RoundOpen | None = None,
    guard: SiteGuard | None = None,
) -> SiteUpdateManifest:
    """Train round ``rnd`` from the global model of ``rnd - 1``; write update + manifest.

    ``fit`` carries what the coordinator's strategy asks of every site (e.g. FedProx's mu);
    with ``opened`` (the coordinator's opening of the round) its instructions and plan. With
    ``guard`` (the site's policy, key and budget) the opening and the model the round starts
    from must be signed by the pinned coordinator, the plan must pass every clause of the
    policy and the round's privacy releases must fit the site's budget (else
    :class:`~fedchem.trust.site.PolicyRefused`, before anything is trained); the update and
    its manifest are then signed and recorded in the site's ledger. The plan's DP is applied:
    record level trains with DP-SGD, site level clips the model delta to the plan's norm.
    """
    if opened is not None:
        fit = opened.fit
    fit = fit or FitInstructions()
    start = time.perf_counter()
    ds = load_site_dataset(site)
    plan = None
    if guard is not None:
        if opened is None:
            raise ValueError("a guarded round needs the coordinator's opening")
        plan = guard.check_round(opened, list(ds.task_names))
        guard.check_settings(opened, chem, model_cfg, train_cfg)
    verify = None
    if guard is not None:
        g = guard

        def verify(m: RoundManifest) -> None:
            g.verify_coordinator("round-commit", m)

    arrays, base_sha = fetch_global(hub, run_id, rnd - 1, verify)
    state_dir = site.workdir / "runs" / run_id
    done = _send_again(hub, state_dir, run_id, rnd, site.name, base_sha)
    if done is not None:  # a resumed coordinator asks again: the same answer, not a new one
        return done
    train = ds.without_folds([chem.test_fold, chem.valid_fold])
    valid = ds.folds([chem.valid_fold])
    if len(train) == 0:
        raise ValueError(
            f"site {site.name}: no training molecules (all {len(ds)} are in its test and "
            "validation folds); it has nothing to train on"
        )
    privacy = (
        guard.privacy(run_id, plan, len(train), train_cfg.batch_size, train_cfg.local_epochs)
        if guard is not None and plan is not None
        else None
    )
    model = model_for(ds, model_cfg, arrays)
    private = private_rows(ds, fit.private_tasks)
    if private.size:
        _load_private_head(model, private_head_path(state_dir, rnd - 1), private)
    # Adam's moments stay at the site between rounds (private state, never uploaded); kept per
    # round, so that training round r again after a coordinator restart starts from the same
    # state as the first time (bitwise-identical result)
    opt_path = state_dir / f"optimizer-{rnd - 1:04d}.pt"
    opt_state = torch.load(opt_path, weights_only=True) if rnd > 1 and opt_path.exists() else None
    seed = site_seed(train_cfg.seed, site.name, rnd)
    factors = [fit.lr_factor] * train_cfg.local_epochs
    if privacy is not None and privacy.level == "record":
        from fedchem.model.private import train_epochs_private  # Opacus: DP runs only

        stats, opt_state, _ = train_epochs_private(
            model,
            train,
            train_cfg,
            train_cfg.local_epochs,
            seed,
            noise_multiplier=privacy.noise_multiplier,
            clip=privacy.clip,
            optimizer_state=opt_state,
            lr_factors=factors,
        )
    else:
        stats, opt_state = train_epochs(
            model,
            train,
            train_cfg,
            train_cfg.local_epochs,
            seed,
            opt_state,
            proximal_mu=fit.proximal_mu,
            lr_factors=factors,
        )
    _save_optimizer(opt_state, state_dir, rnd)
    report = evaluate_at_site(model, valid, site=site.name, model_name=f"round-{rnd}", fold="valid")
    upload = model_to_arrays(model)
    site_dp = privacy is not None and privacy.level == "site"
    secure = plan is not None and plan.secure_aggregation is not None
    codec = opened.plan.compression if opened and opened.plan else "none"
    if secure and codec != "none":  # a coordinator's plan the config would have refused
        raise ValueError(f"round {rnd}: compression {codec!r} with secure aggregation")
    if private.size:  # the site's own heads stay here; the hub gets zeros in their rows
        _save_private_head(model, private_head_path(state_dir, rnd), private)
        for name in ("head.weight", "head.bias"):  # (site-level DP, secure aggregation: the
            keep = site_dp or secure  # global's rows, so no delta)
            upload[name][private] = arrays[name][private] if keep else 0.0
    norm = None
    if site_dp:
        assert privacy is not None
        upload, _ = clip_delta(upload, arrays, privacy.clip)
        norm = delta_norm(upload, arrays)
    if secure:  # only the masked, weighted delta leaves (the coordinator learns the sum)
        assert guard is not None and opened is not None
        data = _masked_update(
            site.name, site.workdir, hub, opened, guard, upload, arrays, len(train)
        )
    elif codec != "none":  # the delta, compressed; what the codec lost stays here for later
        data, residual = encode_update(upload, arrays, codec, _load_residual(state_dir, rnd - 1))
        _save_residual(state_dir, rnd, residual)
    else:
        data = dump_arrays(upload)
    layout = HubLayout(run_id)
    if guard is not None:  # before anything leaves: a release is never under-counted
        guard.spend(run_id, rnd, base_sha, privacy)
    ledger = guard.ledger(hub, run_id) if guard is not None else None
    hub.put_bytes(layout.site_update(rnd, site.name), data)
    # anchors in the site's own chain: the coordinator's opening and the global model it
    # trained from; an audit finds them in the coordinator's chain, or names a rollback
    anchors = {"global": base_sha}
    if opened is not None:
        anchors["round-open"] = hashlib.sha256(
            json_bytes(opened.model_dump(mode="json"))
        ).hexdigest()
    entry = (
        ledger.append(
            "update", round=rnd, path=layout.site_update(rnd, site.name), data=data, refs=anchors
        )
        if ledger is not None
        else None
    )
    manifest = SiteUpdateManifest(
        run_id=run_id,
        round=rnd,
        site=site.name,
        n_examples=len(train),
        n_labels=train.n_labels(),
        steps=max(stats.steps, 1),
        update_path=layout.site_update(rnd, site.name),
        update_sha256=hashlib.sha256(data).hexdigest(),
        update_bytes=len(data),
        codec=codec,
        base_sha256=base_sha,
        train_loss=stats.mean_loss,
        train_seconds=stats.seconds,
        site_seconds=time.perf_counter() - start,
        device=stats.device,
        valid=report,
        shapes={k: list(v.shape) for k, v in sorted(upload.items())},
        policy_sha256=guard.policy_sha256 if guard is not None else None,
        dp=privacy.report(norm) if privacy is not None else None,
        secure=secure,
        ledger_seq=entry.seq if entry is not None else None,
        ledger_sha256=entry_sha256(entry) if entry is not None else None,
    )
    if guard is not None:
        manifest = guard.sign("site-update", manifest)
    written = json_bytes(manifest.model_dump(mode="json"))
    if ledger is not None:  # recorded before it is sent
        ledger.append(
            "manifest", round=rnd, path=layout.site_manifest(rnd, site.name), data=written
        )
    _keep_sent(state_dir, rnd, base_sha, data, written)
    hub.put_bytes(layout.site_manifest(rnd, site.name), written)  # the reply: written last
    return manifest


def _residual_path(state_dir: Path, rnd: int) -> Path:
    return state_dir / f"residual-{rnd:04d}.npz"


def _load_residual(state_dir: Path, rnd: int) -> StateArrays | None:
    """What compression lost in round ``rnd`` (error feedback), kept at the site: added to the
    next round's delta (None: nothing kept)."""
    path = _residual_path(state_dir, rnd)
    return load_arrays(path.read_bytes()) if rnd >= 1 and path.exists() else None


def _save_residual(state_dir: Path, rnd: int, residual: StateArrays) -> None:
    """Kept per round: a round retrained (a coordinator restarted) reads the same residual of
    the round before as the first time did."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = _residual_path(state_dir, rnd).with_suffix(".partial")
    tmp.write_bytes(dump_arrays(residual))
    tmp.replace(_residual_path(state_dir, rnd))


def _masked_update(
    name: str,
    workdir: Path,
    hub: HubStore,
    opened: RoundOpen,
    guard: SiteGuard,
    upload: StateArrays,
    base: StateArrays,
    n_examples: int,
) -> bytes:
    """The site's update as secure aggregation sends it: ``(n / W) * (upload - base)`` and
    ``n / W`` (``W``: the roster's total weight) in fixed point, masked."""
    party = SiteParty(name, workdir, hub, opened, guard)
    roster = party.roster()
    if roster.advert(name).n_examples != n_examples:
        raise SecAggError("the roster holds another weight for this site than it advertised")
    alpha = n_examples / roster.total_weight
    names = sorted(base)
    delta: StateArrays = {n: upload[n].astype(np.float64) - base[n] for n in names}
    masked = party.masked(alpha * flatten(delta, names), alpha)
    return dump_arrays({"masked": masked})


def take_part(
    site: SiteConfig,
    hub: HubStore,
    opened: RoundOpen,
    chem: ChemConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    step: str | None = None,
    timeout_s: float = 1800.0,
) -> SiteUpdateManifest | SiteRefusal | None:
    """A site's answer to the opening of round ``rnd``: its update, trained under its own guard
    (its policy, key and budget, read from its own disk: fail-closed without a valid policy),
    or its refusal with the clause, published for the coordinator.

    A round aggregated securely (:mod:`fedchem.secagg`) goes in steps: ``step`` does one of
    them (the coordinator drives them, one-machine modes) or, None, all in turn, each once
    the coordinator's object it needs is on the hub (deployed runs, waiting at most
    ``timeout_s`` each). The update comes back from the ``upload`` step; the others return
    None. A step the protocol cannot take (too few parties, a message not its sender's) is
    refused like a clause of the policy (clause ``secure_aggregation``)."""
    rnd, guard = opened.round, None
    try:
        guard = SiteGuard.load(site)
        plan = opened.plan
        if plan is None or plan.secure_aggregation is None:
            return run_site_round(
                site,
                hub,
                opened.run_id,
                rnd,
                chem,
                model_cfg,
                train_cfg,
                opened=opened,
                guard=guard,
            )
        return _secure_steps(site, hub, opened, chem, model_cfg, train_cfg, guard, step, timeout_s)
    except (PolicyRefused, SecAggError) as exc:
        refused = (
            exc
            if isinstance(exc, PolicyRefused)
            else PolicyRefused("secure_aggregation", str(exc)[:300])
        )
        signer = None
        if guard is None:  # no valid policy: the refusal is signed all the same
            try:
                signer = site_signer(site)
            except (OSError, ValueError):
                signer = None
        return refuse_round(hub, opened.run_id, rnd, site.name, refused, guard, signer, site)


def _secure_steps(
    site: SiteConfig,
    hub: HubStore,
    opened: RoundOpen,
    chem: ChemConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    guard: SiteGuard,
    step: str | None,
    timeout_s: float,
) -> SiteUpdateManifest | None:
    party = SiteParty(site.name, site.workdir, hub, opened, guard)
    out = None
    for s in STEPS if step is None else (step,):
        if step is None:
            site_waits(hub, opened, s, timeout_s)
        if s == "keys":  # the policy and the settings first: nothing leaves before them
            ds = load_site_dataset(site)
            guard.check_round(opened, list(ds.task_names))
            guard.check_settings(opened, chem, model_cfg, train_cfg)
            party.keys(len(ds.without_folds([chem.test_fold, chem.valid_fold])))
        elif s == "shares":
            party.shares()
        elif s == "upload":
            out = run_site_round(
                site, hub, opened.run_id, opened.round, chem, model_cfg, train_cfg,
                opened=opened, guard=guard,
            )  # fmt: skip
        elif s == "check":
            party.check()
        elif s == "reveal":
            party.reveal()
        else:
            raise ValueError(f"no secure-aggregation step {s!r} (steps: {', '.join(STEPS)})")
    return out


def refuse_round(
    hub: HubStore,
    run_id: str,
    rnd: int,
    site: str,
    refused: PolicyRefused,
    guard: SiteGuard | None,
    signer: Signer | None = None,
    config: SiteConfig | None = None,
) -> SiteRefusal:
    """Publish the site's no to round ``rnd`` (the clause and its limit; signed and recorded
    when the site has a key): the coordinator counts the site missing with that reason.
    Without a guard (the site's policy did not load: fail-closed), ``signer`` and ``config``
    (the site's key and its own config) still sign and record it."""
    refusal = SiteRefusal(
        run_id=run_id,
        round=rnd,
        site=site,
        clause=refused.clause,
        reason=refused.reason,
        policy_sha256=guard.policy_sha256 if guard is not None else None,
        at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    ledger = None
    if guard is not None:
        refusal = guard.sign("refusal", refusal)
        ledger = guard.ledger(hub, run_id)
    elif signer is not None:
        refusal = signer.sign("refusal", refusal)
        local = config.workdir / "ledger" if config is not None else None
        ledger = Ledger(hub, run_id, signer, local)
    path = HubLayout(run_id).site_refusal(rnd, site)
    written = json_bytes(refusal.model_dump(mode="json"))
    if ledger is not None:
        ledger.append("refusal", round=rnd, path=path, data=written, note=refused.clause)
    hub.put_bytes(path, written)
    return refusal


def global_model_at_site(
    site: SiteConfig, hub: HubStore, run_id: str, rnd: int, ds: SiteDataset, model_cfg: ModelConfig
) -> tuple[MultitaskNet, str]:
    """The committed global model of round ``rnd`` as this site uses it: with its own private
    head rows (kept at the site) where it has them; its commit must carry the pinned
    coordinator's signature where the site's policy requires signatures (a model that does not
    is refused, whatever it is loaded for). Returns the model and the global hash."""
    guard = SiteGuard.load(site)  # fail-closed: a model is loaded only under the site's policy
    arrays, sha = fetch_global(
        hub, run_id, rnd, lambda m: guard.verify_coordinator("round-commit", m)
    )
    model = model_for(ds, model_cfg, arrays)
    _load_private_head(model, private_head_path(site.workdir / "runs" / run_id, rnd))
    return model, sha


def selected_round(
    site: SiteConfig,
    hub: HubStore,
    run_id: str,
    rnd: int,
    chem: ChemConfig,
    model_cfg: ModelConfig,
    select: Selection,
    ds: SiteDataset,
) -> tuple[MultitaskNet, int | None]:
    """The global model the site reports: round ``rnd``'s, or with ``select="best_valid"`` the
    committed round up to ``rnd`` best on the site's validation fold (and its number)."""
    if select != "best_valid":
        return global_model_at_site(site, hub, run_id, rnd, ds, model_cfg)[0], None
    model, selected = None, None
    layout, valid, best = HubLayout(run_id), ds.folds([chem.valid_fold]), BestSoFar()
    for r in (r for r in range(1, rnd + 1) if hub.exists(layout.round_manifest(r))):
        candidate = global_model_at_site(site, hub, run_id, r, ds, model_cfg)[0]
        scored = evaluate_at_site(
            candidate, valid, site=site.name, model_name=f"round-{r}", fold="valid"
        )
        if best.offer(scored.summary):  # one round's model in memory at a time: the best
            model, selected = candidate, r
    if model is None:
        return global_model_at_site(site, hub, run_id, rnd, ds, model_cfg)[0], None
    return model, selected


def evaluate_global_at_site(
    site: SiteConfig,
    hub: HubStore,
    run_id: str,
    rnd: int,
    chem: ChemConfig,
    model_cfg: ModelConfig,
    select: Selection = "last",
) -> EvalReport:
    """Score the committed global model of round ``rnd`` on the site's test fold, with its
    conformal prediction calibrated on the site's validation fold.

    With private heads, the site's own head rows (kept at the site) complete the model.
    ``select="best_valid"``: the committed round up to ``rnd`` that scores best on this site's
    validation fold instead (its number is ``selected`` in the report; nothing else leaves).
    """
    ds = load_site_dataset(site)
    model, selected = selected_round(site, hub, run_id, rnd, chem, model_cfg, select, ds)
    return scored_on_test(model, ds, chem, site.name, "federated").model_copy(
        update={"selected": selected}
    )


def scored_on_test(
    model: MultitaskNet, ds: SiteDataset, chem: ChemConfig, site: str, name: str
) -> EvalReport:
    """A model on the site's test fold: its metrics, and conformal prediction calibrated on the
    validation fold (coverage and efficiency, MELLODDY's comparison)."""
    test = ds.folds([chem.test_fold])
    report = evaluate_at_site(model, test, site=site, model_name=name, fold="test")
    exact, _ = calibrate(model, ds.folds([chem.valid_fold]))
    return report.model_copy(update={"conformal": conformal_report(model, test, exact)})
