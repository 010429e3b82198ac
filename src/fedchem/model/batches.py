"""Mini-batches from CSR fingerprints, as (indices, offsets) for the embedding bag."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fedchem.chem.csr import csr_take
from fedchem.data.dataset import SiteDataset

__all__ = ["Batch", "iter_batches"]


@dataclass(frozen=True)
class Batch:
    indices: torch.Tensor  # nnz, int64
    offsets: torch.Tensor  # B, int64
    y: torch.Tensor  # B x T float32 (NaN unobserved)
    censor: torch.Tensor  # B x T int8
    weights: torch.Tensor | None = None  # nnz float32 feature values (count featurizers)


def iter_batches(
    ds: SiteDataset, batch_size: int, rng: np.random.Generator | None, device: torch.device
) -> Iterator[Batch]:
    """Batches over ``ds``; shuffled when ``rng`` is given, in order otherwise."""
    order = rng.permutation(len(ds)) if rng is not None else np.arange(len(ds))
    for i in range(0, len(order), batch_size):
        rows = order[i : i + batch_size]
        indptr, flat = csr_take(ds.indptr, rows)
        idx = ds.indices[flat].astype(np.int64)
        yield Batch(
            indices=torch.from_numpy(idx).to(device, non_blocking=True),
            offsets=torch.from_numpy(indptr[:-1].copy()).to(device, non_blocking=True),
            weights=None if ds.values is None else torch.from_numpy(ds.values[flat]).to(device),
            y=torch.from_numpy(ds.y[rows]).to(device, non_blocking=True),
            censor=torch.from_numpy(ds.censor[rows]).to(device, non_blocking=True),
        )
