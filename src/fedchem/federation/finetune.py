"""Fine-tuning a published model at a site, on the site's own tasks (Lilly TuneLab's way).

The site takes a registered model, keeps its trunk, fits heads for its own tasks (new ones the
federation never saw, or its own measurements of shared ones, whose heads start from the
federation's), and optionally the last trunk layer too, with early stopping on its validation
fold. The result goes to the site's own registry and nowhere else. On the site's test fold it
is compared with the federated model as it is (on the tasks both have) and with a local-only
model of the same architecture and budget, trained from scratch the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field

from fedchem.config import ChemConfig, ModelConfig, TrainConfig
from fedchem.data.dataset import SiteDataset
from fedchem.federation.coordinator import initial_model
from fedchem.messages import EvalReport
from fedchem.model.calibrate import calibrate, conformal_report
from fedchem.model.evaluate import evaluate_at_site
from fedchem.model.network import MultitaskNet, build_model
from fedchem.model.paired import PairedDifference, paired_bootstrap
from fedchem.model.selection import BestSoFar
from fedchem.model.state import model_to_arrays
from fedchem.model.train import predict, train_epochs
from fedchem.registry.model import Lineage, ModelSpec, TaskEntry, dumps, save_weights
from fedchem.registry.store import Registry
from fedchem.strict import StrictModel
from fedchem.types import PairedMetric, StateArrays

__all__ = [
    "PERSONALIZATIONS",
    "FinetuneConfig",
    "Finetuned",
    "Personalized",
    "finetune",
    "personalize",
    "register_finetuned",
]


class FinetuneConfig(StrictModel):
    """How a site fine-tunes: its budget, what it trains, when it stops."""

    max_epochs: int = Field(30, ge=1, description="the budget; local-only gets the same")
    patience: int = Field(4, ge=1, description="epochs without a better validation score")
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(1e-5, ge=0)
    train_trunk: bool = Field(
        False, description="also the trunk's last layer (the input layer for depth 1)"
    )
    seed: int = 0
    switch_confidence: float = Field(
        0.9,
        ge=0.75,
        lt=1,
        description="personalizing: leave the federated model as it is unless a fine-tuned "
        "option is better on the validation fold with this confidence (paired bootstrap)",
    )


@dataclass
class Finetuned:
    """The fine-tuned model and the three models' scores on the site's test fold."""

    model: MultitaskNet
    tasks: list[TaskEntry]
    epochs: int
    finetuned: EvalReport
    federated: EvalReport | None
    local: EvalReport
    calibration: dict[str, object]


def _from_registered(
    arrays: StateArrays, spec: ModelSpec, ds: SiteDataset, label_stats: dict[str, dict[str, float]]
) -> MultitaskNet:
    """The site's model: the registered trunk, heads for the site's tasks (a task the model
    has starts from its head row and scaling; a new one from a fresh row, scaled by the site's
    own statistics)."""
    cfg = ModelConfig.model_validate(spec.model)
    fresh = initial_model(
        ds.fp_size, list(zip(ds.task_names, ds.task_kinds, strict=True)), cfg, 0, [label_stats]
    )
    own = {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}
    state = fresh.state_dict()
    for k, v in own.items():
        if not k.startswith(("head.", "y_mean", "y_std")):
            state[k] = v
    index = {t.name: j for j, t in enumerate(spec.tasks)}
    for i, task in enumerate(ds.task_names):
        j = index.get(task)
        if j is not None and not spec.tasks[j].private:
            state["head.weight"][i] = own["head.weight"][j]
            state["head.bias"][i] = own["head.bias"][j]
            state["y_mean"][i], state["y_std"][i] = own["y_mean"][j], own["y_std"][j]
    fresh.load_state_dict(state)
    return fresh


def _trainable(model: MultitaskNet, train_trunk: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(True)
    if train_trunk:
        linears = [m for m in model.trunk if isinstance(m, torch.nn.Linear)]
        last: list[torch.Tensor] = (
            list(linears[-1].parameters()) if linears else [model.input.weight, model.input_bias]
        )
        for q in last:
            q.requires_grad_(True)


def _fit(
    model: MultitaskNet, ds: SiteDataset, chem: ChemConfig, cfg: FinetuneConfig, site: str
) -> int:
    """Train with early stopping on the validation fold; keep the best epoch's weights."""
    train = ds.without_folds([chem.test_fold, chem.valid_fold])
    valid = ds.folds([chem.valid_fold])
    tcfg = TrainConfig(
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        device="cpu",
    )
    best, best_state, best_epoch, since = BestSoFar(), None, 0, 0
    state = None
    for epoch in range(cfg.max_epochs):
        _, state = train_epochs(model, train, tcfg, 1, cfg.seed + epoch, state)
        summary = evaluate_at_site(
            model, valid, site=site, model_name=f"epoch-{epoch + 1}", fold="valid"
        ).summary
        if best.offer(summary):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_epoch, since = epoch + 1, 0
        else:
            since += 1
            if since >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return best_epoch


def finetune(
    arrays: StateArrays,
    spec: ModelSpec,
    ds: SiteDataset,
    site: str,
    cfg: FinetuneConfig,
    label_stats: dict[str, dict[str, float]] | None = None,
) -> Finetuned:
    """Fine-tune the registered model (``arrays``, ``spec``) on ``ds`` (prepared with the
    model's chemistry); score it, the federated model as is, and local-only on the test fold."""
    if spec.architecture != "fedchem.multitask":
        raise ValueError(f"fine-tuning needs the federation's network, not {spec.architecture!r}")
    chem, stats = spec.chem, label_stats or {}
    test = ds.folds([chem.test_fold])
    model = _from_registered(arrays, spec, ds, stats)
    _trainable(model, cfg.train_trunk)
    epochs = _fit(model, ds, chem, cfg, site)
    exact, _ = calibrate(model, ds.folds([chem.valid_fold]))

    def scored(m: MultitaskNet, name: str, data: SiteDataset) -> EvalReport:
        r = evaluate_at_site(m, data, site=site, model_name=name, fold="test")
        own, _ = calibrate(m, ds.folds([chem.valid_fold]))
        return r.model_copy(update={"conformal": conformal_report(m, data, own)})

    finetuned = scored(model, "finetuned", test)
    federated = _federated_as_is(arrays, spec, ds, site)
    local = build_model(ds.fp_size, ds.n_tasks, ModelConfig.model_validate(spec.model), cfg.seed)
    base = initial_model(
        ds.fp_size,
        list(zip(ds.task_names, ds.task_kinds, strict=True)),
        ModelConfig.model_validate(spec.model),
        cfg.seed,
        [stats],
    )
    local.load_state_dict(base.state_dict())
    local_epochs = _fit(local, ds, chem, cfg, site)
    tasks = [
        TaskEntry.model_validate({"name": n, "kind": k})
        for n, k in zip(ds.task_names, ds.task_kinds, strict=True)
    ]
    local_report = scored(local, "local", test).model_copy(update={"selected": local_epochs})
    return Finetuned(
        model=model,
        tasks=tasks,
        epochs=epochs,
        finetuned=finetuned.model_copy(update={"selected": epochs}),
        federated=federated,
        local=local_report,
        calibration={"tasks": exact, "source": f"site {site}"},
    )


#: what a site may personalize, in the order a tie goes: the federated model as it is first
PERSONALIZATIONS = ("federated", "heads", "heads+last layer")


@dataclass
class Personalized:
    """The site's personalized federated model: which option its validation fold chose, each
    option's validation score, and the chosen model on the test fold."""

    model: MultitaskNet
    choice: str
    #: each option's validation score (the mean over tasks of ``metric``)
    valid: dict[str, float]
    #: each fine-tuned option's gain over the federated model on validation: the lower end of
    #: its one-sided interval at ``switch_confidence``
    gain_lower: dict[str, float]
    metric: str
    epochs: int
    test: EvalReport


def personalize(
    arrays: StateArrays,
    spec: ModelSpec,
    ds: SiteDataset,
    site: str,
    cfg: FinetuneConfig,
    label_stats: dict[str, dict[str, float]] | None = None,
) -> Personalized:
    """The federated model made the site's own: its heads, or its heads and the trunk's last
    layer, fine-tuned on the site's training folds (early stopping on the validation fold);
    the option better than the federated model as it is on the validation fold with
    ``cfg.switch_confidence`` (paired bootstrap; the larger gain of the two), else the
    federated model as it is. The test fold is touched only to report the choice."""
    if spec.architecture != "fedchem.multitask":
        raise ValueError(f"personalizing needs the federation's network, not {spec.architecture!r}")
    chem, stats = spec.chem, label_stats or {}
    valid = ds.folds([chem.valid_fold])
    options: dict[str, tuple[MultitaskNet, int]] = {}
    for option in PERSONALIZATIONS:
        model = _from_registered(arrays, spec, ds, stats)
        epochs = 0
        if option != "federated":
            _trainable(model, train_trunk=option == "heads+last layer")
            epochs = _fit(model, ds, chem, cfg, site)
        model.eval()
        options[option] = (model, epochs)
    # each fine-tuned option against the federated model on the same validation molecules;
    # the site switches only to an option better with confidence (its fold is small, and an
    # option's epochs were chosen on it too, so its point score flatters it)
    metric: PairedMetric = "roc_auc" if "classification" in valid.task_kinds else "rmse"
    base = predict(options["federated"][0], valid).astype(np.float64)
    compared: dict[str, PairedDifference] = {}
    for option in PERSONALIZATIONS[1:]:
        pred = predict(options[option][0], valid).astype(np.float64)
        # no task the fold can score: nothing to choose on, the federated model stays
        with contextlib.suppress(ValueError):
            compared[option] = paired_bootstrap(
                valid.y,
                valid.censor,
                valid.task_kinds,
                pred,
                base,
                metric=metric,
                n_bootstrap=1000,
                confidence=2 * cfg.switch_confidence - 1,  # one-sided: the lower end
                seed=cfg.seed,
            )
    better = [o for o, r in compared.items() if r.lower > 0]
    choice = max(better, key=lambda o: compared[o].difference) if better else "federated"
    model, epochs = options[choice]
    test = ds.folds([chem.test_fold])
    report = evaluate_at_site(model, test, site=site, model_name="personalized", fold="test")
    own, _ = calibrate(model, valid)
    report = report.model_copy(
        update={"conformal": conformal_report(model, test, own), "selected": epochs or None}
    )
    valid_scores = {"federated": next(iter(compared.values())).production} if compared else {}
    valid_scores |= {o: r.candidate for o, r in compared.items()}
    return Personalized(
        model=model,
        choice=choice,
        valid=valid_scores,
        gain_lower={o: r.lower for o, r in compared.items()},
        metric=f"mean_{metric}",
        epochs=epochs,
        test=report,
    )


def _federated_as_is(
    arrays: StateArrays, spec: ModelSpec, ds: SiteDataset, site: str
) -> EvalReport | None:
    """The registered model, unchanged, on the site's tasks that it has (shared heads)."""
    shared = [t.name for t in spec.tasks if not t.private and t.name in ds.task_names]
    if not shared:
        return None
    cfg = ModelConfig.model_validate(spec.model)
    model = build_model(spec.chem.fp_size, len(spec.tasks), cfg)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
    model.eval()
    names = tuple(t.name for t in spec.tasks)
    kinds = tuple(t.kind for t in spec.tasks)
    # the site's labels, laid out as the model's task columns (NaN where the site has none)
    y = np.full((len(ds), len(names)), np.nan, np.float32)
    censor = np.zeros_like(y, dtype=np.int8)
    for t in shared:
        i, j = ds.task_names.index(t), names.index(t)
        y[:, j], censor[:, j] = ds.y[:, i], ds.censor[:, i]
    as_model = SiteDataset(
        indptr=ds.indptr,
        indices=ds.indices,
        values=ds.values,
        fold=ds.fold,
        y=y,
        censor=censor,
        task_names=names,
        task_kinds=kinds,
        fp_size=ds.fp_size,
    )
    test = as_model.folds([spec.chem.test_fold])
    report = evaluate_at_site(model, test, site=site, model_name="federated", fold="test")
    own, _ = calibrate(model, as_model.folds([spec.chem.valid_fold]))
    return report.model_copy(update={"conformal": conformal_report(model, test, own)})


def register_finetuned(
    site_registry: Registry, name: str, result: Finetuned, parent: str, base: ModelSpec, site: str
) -> int:
    """The fine-tuned model as the next version of ``name`` in the site's own registry."""
    data = save_weights(model_to_arrays(result.model))

    spec = ModelSpec(
        architecture=base.architecture,
        chem=base.chem,
        consistency=base.consistency,
        model=base.model,
        tasks=result.tasks,
        lineage=Lineage(
            run_id=f"finetune-{site}",
            round=result.epochs,
            strategy="finetune",
            n_sites=1,
            global_sha256=hashlib.sha256(data).hexdigest(),
            parent=parent,
        ),
    )
    reports = {"finetuned": result.finetuned, "federated": result.federated, "local": result.local}
    metrics = {
        k: (v.model_dump(mode="json") if v is not None else None) for k, v in reports.items()
    }
    version = site_registry.next_version(name)
    md = (
        f"# {name} v{version}\n\n{parent} fine-tuned at {site} on its own tasks "
        f"({', '.join(t.name for t in result.tasks)}), {result.epochs} epoch(s) chosen on its "
        "validation fold. It stays at the site.\n\n## Test fold (the site's own)\n\n"
        + "\n".join(f"- {k}: {v.summary}" for k, v in reports.items() if v is not None)
        + "\n"
    )
    files = {
        "model.safetensors": data,
        "spec.json": dumps(spec.model_dump(mode="json")),
        "calibration.json": dumps(result.calibration),
        "metrics.json": dumps(metrics),
        "card.md": md.encode(),
        "card.json": dumps(
            {"name": name, "version": version, "parent": parent, "site": site, "metrics": metrics}
        ),
    }
    return site_registry.publish(
        name, files, version=version, alias="production", note=f"fine-tuned from {parent}"
    )
