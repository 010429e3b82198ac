"""Record-level differential privacy at a site: DP-SGD with Opacus.

Each step takes a Poisson sample of the site's training molecules at rate ``q = B / n``
(what the accountant assumes), computes every molecule's gradient (Opacus'
``GradSampleModule``), clips each to L2 norm ``clip`` and adds Gaussian noise of standard
deviation ``noise_multiplier * clip`` to their sum, and steps on that sum over the expected
batch size (Opacus' ``DPOptimizer`` around Adam or SGD).
A molecule's loss is the sum of its own label terms, so no molecule's gradient depends on
another's (the batch-mean loss of :func:`~fedchem.model.train.train_epochs` would).

Opacus supports the network's layers, not its module: the embedding bag, the linear layers
and the input bias are trained through :class:`_PerExampleView`, a module over the very same
parameters, without the target-scaling buffers (the loss reads them from the network).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from fedchem.config import TrainConfig
from fedchem.data.dataset import SiteDataset
from fedchem.model.batches import iter_batches
from fedchem.model.losses import multitask_loss
from fedchem.model.network import MultitaskNet
from fedchem.model.train import (
    TrainStats,
    make_optimizer,
    resolve_device,
    trainable_parameters,
)

__all__ = ["train_epochs_private"]


class _Bias(nn.Module):
    def __init__(self, bias: nn.Parameter) -> None:
        super().__init__()
        self.bias = bias

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.bias


class _PerExampleView(nn.Module):
    """``MultitaskNet``'s forward over its own parameters, in layers Opacus knows."""

    def __init__(self, net: MultitaskNet) -> None:
        super().__init__()
        self.input, self.bias = net.input, _Bias(net.input_bias)
        self.trunk, self.act, self.head = net.trunk, net.act, net.head

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.act(self.trunk(self.bias(self.input(indices, offsets)))))
        return out


def train_epochs_private(
    model: MultitaskNet,
    ds: SiteDataset,
    cfg: TrainConfig,
    epochs: int,
    seed: int,
    *,
    noise_multiplier: float,
    clip: float,
    optimizer_state: dict[str, Any] | None = None,
    lr_factors: list[float] | None = None,
) -> tuple[TrainStats, dict[str, Any], int]:
    """DP-SGD for ``epochs`` epochs of ``ceil(n / B)`` Poisson-sampled steps each; returns the
    statistics, Adam's state (post-processing of the noisy gradients: it may stay at the
    site) and the number of noisy steps taken (what the accountant composes)."""
    if ds.values is not None:
        raise ValueError("record-level DP needs binary fingerprints (count features given)")
    if not isinstance(model, MultitaskNet):
        raise TypeError("record-level DP trains fedchem's MultitaskNet only")
    n = len(ds)
    q = min(1.0, cfg.batch_size / max(n, 1))
    per_epoch = math.ceil(1.0 / q)
    device = resolve_device(cfg.device)
    model.to(device).train()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    trained = trainable_parameters(model, cfg.trainable)
    frozen = [p for p in model.parameters() if all(p is not q for q in trained)]
    for p in frozen:  # the global model's: no gradient, no noise, nothing released
        p.requires_grad_(False)
    # The loss backpropagated is a sum over molecules, so each sample's gradient is taken
    # as it is (Opacus' "mean" would multiply it by the batch size); the optimizer then
    # steps on the noisy sum divided by the expected batch size: the DP-SGD mean gradient.
    view = GradSampleModule(_PerExampleView(model), loss_reduction="sum")
    inner = make_optimizer([p for p in view.parameters() if p.requires_grad], cfg)
    if optimizer_state is not None:
        inner.load_state_dict(optimizer_state)
    opt = DPOptimizer(
        inner,
        noise_multiplier=noise_multiplier,
        max_grad_norm=clip,
        expected_batch_size=max(1, round(q * n)),
        loss_reduction="mean",
    )
    is_reg = torch.tensor([k == "regression" for k in ds.task_kinds], device=device)
    kinds = (bool(is_reg.any()), bool((~is_reg).any()))  # asked once, not at every batch
    weights = (
        torch.from_numpy(ds.task_weights).to(device)
        if ds.task_weights is not None and not np.all(ds.task_weights == 1)
        else None
    )
    start = time.perf_counter()
    steps, loss_sum, n_labels = 0, 0.0, 0
    try:
        for epoch in range(epochs):
            for group in inner.param_groups:
                group["lr"] = cfg.lr * (lr_factors[epoch] if lr_factors is not None else 1.0)
            for _ in range(per_epoch):
                rows = np.flatnonzero(rng.random(n) < q)
                opt.zero_grad(set_to_none=True)
                if rows.size == 0:  # an empty sample still releases noise: the step counts
                    for p in view.parameters():
                        if p.requires_grad:
                            p.grad_sample = torch.zeros((0, *p.shape), device=device)
                    opt.step()
                    steps += 1
                    continue
                (b,) = iter_batches(ds.subset(rows), len(rows), None, device)
                out = view(b.indices, b.offsets)
                loss, k = multitask_loss(
                    out, b.y, b.censor, is_reg, model.y_mean, model.y_std, weights, kinds
                )
                total = loss * max(k, 1)  # the sum of every molecule's own terms
                with warnings.catch_warnings():  # Opacus' hooks on a view whose inputs are ids
                    warnings.filterwarnings("ignore", "Full backward hook", UserWarning)
                    total.backward()
                opt.step()
                steps += 1
                loss_sum += float(loss.detach())
                n_labels += k
    finally:
        view.remove_hooks()
        for p in frozen:
            p.requires_grad_(True)
        for p in model.parameters():
            p.grad = None
            if hasattr(p, "grad_sample"):
                p.grad_sample = None
    model.cpu()
    state = inner.state_dict()
    for per_param in state["state"].values():
        for key, v in per_param.items():
            if torch.is_tensor(v):
                per_param[key] = v.cpu()
    return (
        TrainStats(
            n_examples=n,
            n_labels=n_labels,
            steps=steps,
            mean_loss=loss_sum / max(steps, 1),
            seconds=time.perf_counter() - start,
            device=device.type,
        ),
        state,
        steps,
    )
