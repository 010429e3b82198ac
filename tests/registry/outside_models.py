"""Outside architectures for the bring-your-own-model tests (importable as a module path)."""

from __future__ import annotations

import torch
from torch import nn


class TinyLinear(nn.Module):
    """A linear model over a bag of fingerprint columns: the interface fedchem expects."""

    def __init__(self, fp_size: int, n_tasks: int, scale: float = 1.0) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(fp_size, n_tasks, mode="sum")
        self.scale = scale

    def forward(
        self, indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        out: torch.Tensor = self.bag(indices, offsets, per_sample_weights=weights) * self.scale
        return out


class Broken(nn.Module):
    """Builds, but its forward pass gives NaN everywhere."""

    def __init__(self, fp_size: int, n_tasks: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.n_tasks = n_tasks

    def forward(
        self, indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.full((len(offsets), self.n_tasks), float("nan")) + self.w
