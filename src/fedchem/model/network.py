"""A SparseChem-like network: sparse input layer (an embedding bag over on-bits) → trunk → heads.

The input layer never builds dense ``fp_size``-wide vectors: a molecule's hidden vector is the
sum of the rows of its on-bits. Regression heads predict in standardized units; the per-task
``y_mean``/``y_std`` buffers (set from federated aggregate statistics) map them back.
"""

from __future__ import annotations

import torch
from torch import nn

from fedchem.config import ModelConfig

__all__ = ["MultitaskNet", "build_model"]


class MultitaskNet(nn.Module):
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, fp_size: int, n_tasks: int, hidden: int, depth: int, dropout: float):
        super().__init__()
        self.input = nn.EmbeddingBag(fp_size, hidden, mode="sum")
        self.input_bias = nn.Parameter(torch.zeros(hidden))
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)]
        self.trunk = nn.Sequential(*layers)
        self.act = nn.Sequential(nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, n_tasks)
        self.register_buffer("y_mean", torch.zeros(n_tasks))
        self.register_buffer("y_std", torch.ones(n_tasks))
        nn.init.normal_(self.input.weight, std=(2.0 / 60.0) ** 0.5 / 2)

    def forward(
        self, indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``indices``: flat on-columns of a batch; ``offsets``: ``B`` start positions;
        ``weights``: the columns' values for count features (``None``: all 1) → ``B x T``.

        Output is logits for classification tasks and standardized values for regression.
        """
        h = self.input(indices, offsets, per_sample_weights=weights) + self.input_bias
        h = self.trunk(h)
        out: torch.Tensor = self.head(self.act(h))
        return out


def build_model(fp_size: int, n_tasks: int, cfg: ModelConfig, seed: int = 0) -> MultitaskNet:
    """Deterministic initialisation: the same seed gives the same weights everywhere."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return MultitaskNet(fp_size, n_tasks, cfg.hidden, cfg.depth, cfg.dropout)
    finally:
        torch.random.set_rng_state(gen_state)
