"""Aggregation math as pure functions over named arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedchem.types import StateArrays

__all__ = ["aggregate_weighted"]


def aggregate_weighted(updates: Sequence[tuple[StateArrays, float]]) -> StateArrays:
    """Example-weighted FedAvg: ``sum_i w_i * x_i / sum_i w_i`` per array (float64 accumulation).

    Every update must carry the same names and shapes; weights must be positive.
    """
    if not updates:
        raise ValueError("nothing to aggregate")
    names = set(updates[0][0])
    total = 0.0
    for arrays, w in updates:
        if set(arrays) != names:
            raise ValueError("updates carry different parameter names")
        if not w > 0:
            raise ValueError(f"weights must be positive, got {w}")
        total += w
    out: StateArrays = {}
    for name in sorted(names):
        ref = updates[0][0][name]
        acc = np.zeros(ref.shape, dtype=np.float64)
        for arrays, w in updates:
            if arrays[name].shape != ref.shape:
                raise ValueError(f"{name}: shapes differ across updates")
            acc += arrays[name].astype(np.float64) * (w / total)
        out[name] = acc.astype(ref.dtype)
    return out
