"""Mini-batches from CSR fingerprints, as (indices, offsets) for the embedding bag."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fedchem.data.dataset import SiteDataset

__all__ = ["Batch", "iter_batches"]


@dataclass(frozen=True)
class Batch:
    indices: torch.Tensor  # nnz, int64
    offsets: torch.Tensor  # B, int64
    y: torch.Tensor  # B x T float32 (NaN unobserved)
    censor: torch.Tensor  # B x T int8


def _gather(ds: SiteDataset, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts, ends = ds.indptr[rows], ds.indptr[rows + 1]
    lengths = ends - starts
    offsets = np.zeros(len(rows), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    flat = np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
    return ds.indices[flat].astype(np.int64), offsets


def iter_batches(
    ds: SiteDataset, batch_size: int, rng: np.random.Generator | None, device: torch.device
) -> Iterator[Batch]:
    """Batches over ``ds``; shuffled when ``rng`` is given, in order otherwise."""
    order = rng.permutation(len(ds)) if rng is not None else np.arange(len(ds))
    for i in range(0, len(order), batch_size):
        rows = order[i : i + batch_size]
        idx, off = _gather(ds, rows)
        yield Batch(
            indices=torch.from_numpy(idx).to(device, non_blocking=True),
            offsets=torch.from_numpy(off).to(device, non_blocking=True),
            y=torch.from_numpy(ds.y[rows]).to(device, non_blocking=True),
            censor=torch.from_numpy(ds.censor[rows]).to(device, non_blocking=True),
        )
