"""Losses on observed labels only; regression treats ``<`` and ``>`` values as bounds."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["censored_mse", "masked_bce", "multitask_loss"]


def masked_bce(
    logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of BCE-with-logits over entries where ``mask``; unobserved labels contribute 0.

    ``weight`` (per task, broadcast over the batch) scales each task's terms.
    """
    target = torch.where(mask, y, torch.zeros_like(y))
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if weight is not None:
        loss = loss * weight
    return (loss * mask).sum()


def censored_mse(
    pred: torch.Tensor,
    y: torch.Tensor,
    censor: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum of squared errors where ``mask``; a bound is only penalised when violated.

    ``censor`` 0: exact; -1: the true value is at most ``y`` (``<``), so only ``pred > y``
    costs; +1: at least ``y`` (``>``), so only ``pred < y`` costs.
    """
    target = torch.where(mask, y, pred.detach())
    r = pred - target
    r = torch.where(censor < 0, torch.clamp(r, min=0), r)
    r = torch.where(censor > 0, torch.clamp(r, max=0), r)
    sq = r.square() if weight is None else r.square() * weight
    return (sq * mask).sum()


def multitask_loss(
    out: torch.Tensor,
    y: torch.Tensor,
    censor: torch.Tensor,
    is_regression: torch.Tensor,
    y_mean: torch.Tensor,
    y_std: torch.Tensor,
    task_weights: torch.Tensor | None = None,
    kinds: tuple[bool, bool] | None = None,
) -> tuple[torch.Tensor, int]:
    """Mean loss over the observed labels of a batch, and how many there were.

    ``y`` holds raw labels with NaN where unobserved; regression labels are standardized with
    ``y_mean``/``y_std`` so both kinds of task weigh alike; ``task_weights`` (``T``) scale
    each task's terms. ``kinds``: whether there are (regression, classification) tasks at
    all, when the caller knows (a training loop asks once, not at every batch).
    """
    observed = torch.isfinite(y)
    w = task_weights.to(out.dtype) if task_weights is not None else None
    y0 = torch.nan_to_num(y)
    kinds = (
        kinds if kinds is not None else (bool(is_regression.any()), bool((~is_regression).any()))
    )
    total = out.new_zeros(())
    if kinds[1]:  # classification tasks (a batch's sums over the other kind would be zeros)
        cls = observed & ~is_regression if kinds[0] else observed
        total = total + masked_bce(out, y0, cls, w)
    if kinds[0]:
        reg = observed & is_regression if kinds[1] else observed
        y_std_safe = torch.where(y_std > 0, y_std, torch.ones_like(y_std))
        total = total + censored_mse(out, (y0 - y_mean) / y_std_safe, censor, reg, w)
    n = int(observed.sum())
    return total / max(n, 1), n
