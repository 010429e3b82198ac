"""Local training and prediction on one site's dataset (CUDA when present, else CPU)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedchem.config import TrainConfig
from fedchem.data.dataset import SiteDataset
from fedchem.model.batches import iter_batches
from fedchem.model.losses import multitask_loss
from fedchem.model.network import MultitaskNet

__all__ = [
    "TrainStats",
    "epoch_lr_factors",
    "lr_factor",
    "make_optimizer",
    "predict",
    "resolve_device",
    "train_epochs",
    "trainable_parameters",
]


@dataclass(frozen=True)
class TrainStats:
    n_examples: int
    n_labels: int
    steps: int
    mean_loss: float
    seconds: float
    device: str


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """The schedule's factor on ``cfg.lr`` at ``step`` of ``total`` (0-based; rounds)."""
    if cfg.lr_schedule == "constant" or total <= 1:
        return 1.0
    t = min(max(step, 0), total - 1) / (total - 1)
    lo = cfg.lr_min_factor
    if cfg.lr_schedule == "linear":
        return 1.0 - (1.0 - lo) * t
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * t))


def epoch_lr_factors(cfg: TrainConfig, epochs: int) -> list[float]:
    """Factors for ``epochs`` epochs in one go, scheduled as the federation schedules its rounds
    (``cfg.local_epochs`` epochs per round): a baseline gets the federated model's schedule."""
    per_round = max(cfg.local_epochs, 1)
    rounds = max(math.ceil(epochs / per_round), 1)
    return [lr_factor(cfg, e // per_round, rounds) for e in range(epochs)]


def trainable_parameters(model: torch.nn.Module, which: str) -> list[torch.nn.Parameter]:
    """The parameters local training changes (``TrainConfig.trainable``): all; the top (the
    heads and the last hidden layer; at depth 1 the input layer's bias); or the heads."""
    if which == "all" or not isinstance(model, MultitaskNet):
        return list(model.parameters())
    chosen = list(model.head.parameters())
    if which == "top":
        linears = [m for m in model.trunk if isinstance(m, torch.nn.Linear)]
        chosen += list(linears[-1].parameters()) if linears else [model.input_bias]
    return chosen


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (fused: one kernel a step over each parameter, where the default's per-op
    temporaries of the 4,096 x 512 input layer cost more than the batch itself on a CPU:
    about 2x the molecules a second, ``benchmarks/bench_moses_federation.py``), or SGD with
    momentum."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def train_epochs(
    model: MultitaskNet,
    ds: SiteDataset,
    cfg: TrainConfig,
    epochs: int,
    seed: int,
    optimizer_state: dict[str, Any] | None = None,
    proximal_mu: float = 0.0,
    lr_factors: Sequence[float] | None = None,
    after_epoch: Callable[[int], None] | None = None,
) -> tuple[TrainStats, dict[str, Any]]:
    """Train ``model`` in place on every row of ``ds`` for ``epochs`` epochs with Adam.

    ``optimizer_state`` resumes Adam's moments (a site keeps them between rounds, privately);
    the new state is returned with the statistics. ``proximal_mu > 0`` adds FedProx's
    ``mu/2 * ||w - w_start||^2`` (``w_start``: the weights the call began with) to the loss.
    ``lr_factors`` scales ``cfg.lr`` per epoch (the schedule; default 1.0 throughout).
    ``after_epoch(epoch)`` is called after each epoch (0-based), e.g. to score the model on a
    validation fold; training resumes in train mode afterwards.
    """
    if lr_factors is not None and len(lr_factors) != epochs:
        raise ValueError(f"{len(lr_factors)} learning-rate factors for {epochs} epochs")
    device = resolve_device(cfg.device)
    model.to(device).train()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    trained = trainable_parameters(model, cfg.trainable)
    frozen = [p for p in model.parameters() if all(p is not q for q in trained)]
    for p in frozen:  # the global model's, unchanged this round
        p.requires_grad_(False)
    opt = make_optimizer(trained, cfg)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    is_reg = torch.tensor([k == "regression" for k in ds.task_kinds], device=device)
    weights = (
        torch.from_numpy(ds.task_weights).to(device)
        if ds.task_weights is not None and not np.all(ds.task_weights == 1)
        else None
    )
    kinds = (bool(is_reg.any()), bool((~is_reg).any()))
    amp = cfg.bf16 and device.type == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    start = time.perf_counter()
    steps, loss_sum, n_labels = 0, 0.0, 0
    for epoch in range(epochs):
        for group in opt.param_groups:  # after any resumed state, which carries its own lr
            group["lr"] = cfg.lr * (lr_factors[epoch] if lr_factors is not None else 1.0)
        for b in iter_batches(ds, cfg.batch_size, rng, device):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(b.indices, b.offsets, b.weights)
            out = out.float()  # the loss in float32, whatever the forward pass ran in
            loss, n = multitask_loss(
                out, b.y, b.censor, is_reg, model.y_mean, model.y_std, weights, kinds
            )
            if n == 0:
                continue
            data_loss = float(loss.detach())
            if anchor:
                loss = loss + 0.5 * proximal_mu * sum(
                    (p - a).square().sum() for p, a in zip(params, anchor, strict=True)
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            loss_sum += data_loss
            n_labels += n
        if after_epoch is not None:
            after_epoch(epoch)
            model.train()
    for p in frozen:
        p.requires_grad_(True)
    model.cpu()
    state = opt.state_dict()
    for per_param in state["state"].values():
        for k, v in per_param.items():
            if torch.is_tensor(v):
                per_param[k] = v.cpu()
    return TrainStats(
        n_examples=len(ds),
        n_labels=n_labels,
        steps=steps,
        mean_loss=loss_sum / max(steps, 1),
        seconds=time.perf_counter() - start,
        device=device.type,
    ), state


@torch.no_grad()
def predict(model: torch.nn.Module, ds: SiteDataset, batch_size: int = 1024) -> np.ndarray:
    """``N x T`` predictions: probabilities for classification, raw units for regression."""
    model.eval()
    device = next(model.parameters()).device  # where training left it (during training: GPU)
    is_reg = np.array([k == "regression" for k in ds.task_kinds])
    outs = [
        model(b.indices, b.offsets, b.weights).float().cpu().numpy()
        for b in iter_batches(ds, batch_size, None, device)
    ]
    raw = np.concatenate(outs) if outs else np.zeros((0, ds.n_tasks), np.float32)
    # an architecture without target scaling predicts in raw units
    mean_t, std_t = getattr(model, "y_mean", None), getattr(model, "y_std", None)
    mean = mean_t.cpu().numpy() if mean_t is not None else np.zeros(ds.n_tasks, np.float32)
    std = std_t.cpu().numpy() if std_t is not None else np.ones(ds.n_tasks, np.float32)
    with np.errstate(invalid="ignore"):  # a non-finite output stays NaN, for callers to check
        prob = np.exp(-np.logaddexp(0.0, -raw))  # the logistic, no overflow at large |raw|
    return np.where(is_reg, raw * std + mean, prob).astype(np.float32)
