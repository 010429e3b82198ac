"""Local training and prediction on one site's dataset (CUDA when present, else CPU)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedchem.config import TrainConfig
from fedchem.data.dataset import SiteDataset
from fedchem.model.batches import iter_batches
from fedchem.model.losses import multitask_loss
from fedchem.model.network import MultitaskNet

__all__ = ["TrainStats", "predict", "resolve_device", "train_epochs"]


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


def train_epochs(
    model: MultitaskNet,
    ds: SiteDataset,
    cfg: TrainConfig,
    epochs: int,
    seed: int,
    optimizer_state: dict[str, Any] | None = None,
    proximal_mu: float = 0.0,
) -> tuple[TrainStats, dict[str, Any]]:
    """Train ``model`` in place on every row of ``ds`` for ``epochs`` epochs with Adam.

    ``optimizer_state`` resumes Adam's moments (a site keeps them between rounds, privately);
    the new state is returned with the statistics. ``proximal_mu > 0`` adds FedProx's
    ``mu/2 * ||w - w_start||^2`` (``w_start``: the weights the call began with) to the loss.
    """
    device = resolve_device(cfg.device)
    model.to(device).train()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    is_reg = torch.tensor([k == "regression" for k in ds.task_kinds], device=device)
    weights = (
        torch.from_numpy(ds.task_weights).to(device)
        if ds.task_weights is not None and not np.all(ds.task_weights == 1)
        else None
    )
    amp = cfg.bf16 and device.type == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    start = time.perf_counter()
    steps, loss_sum, n_labels = 0, 0.0, 0
    for _ in range(epochs):
        for b in iter_batches(ds, cfg.batch_size, rng, device):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(b.indices, b.offsets, b.weights)
            out = out.float()  # the loss in float32, whatever the forward pass ran in
            loss, n = multitask_loss(out, b.y, b.censor, is_reg, model.y_mean, model.y_std, weights)
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
def predict(model: MultitaskNet, ds: SiteDataset, batch_size: int = 1024) -> np.ndarray:
    """``N x T`` predictions: probabilities for classification, raw units for regression."""
    model.eval()
    is_reg = np.array([k == "regression" for k in ds.task_kinds])
    outs = [
        model(b.indices, b.offsets, b.weights).numpy()
        for b in iter_batches(ds, batch_size, None, torch.device("cpu"))
    ]
    raw = np.concatenate(outs) if outs else np.zeros((0, ds.n_tasks), np.float32)
    mean, std = model.y_mean.numpy(), model.y_std.numpy()
    prob = 1.0 / (1.0 + np.exp(-raw))
    return np.where(is_reg, raw * std + mean, prob).astype(np.float32)
