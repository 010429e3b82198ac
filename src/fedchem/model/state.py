"""Model weights as plain named arrays: what travels to and from the hub (npz, no pickle)."""

from __future__ import annotations

import io
from typing import IO

import numpy as np
import torch
from torch import nn

from fedchem.types import StateArrays

__all__ = ["arrays_to_model", "dump_arrays", "load_arrays", "model_to_arrays", "npz_source"]


def model_to_arrays(model: nn.Module) -> StateArrays:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def arrays_to_model(model: nn.Module, arrays: StateArrays) -> nn.Module:
    """Load ``arrays`` into ``model``; names and shapes must match exactly."""
    own = model.state_dict()
    if set(own) != set(arrays):
        raise ValueError(f"parameter names differ: {sorted(set(own) ^ set(arrays))}")
    for k, v in arrays.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise ValueError(f"{k}: shape {v.shape} != model's {tuple(own[k].shape)}")
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
    return model


def dump_arrays(arrays: StateArrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def npz_source(data: bytes | IO[bytes]) -> IO[bytes]:
    """What ``np.load`` reads: the bytes, or the file from its start."""
    if isinstance(data, bytes | bytearray | memoryview):
        return io.BytesIO(data)
    data.seek(0)
    return data


def load_arrays(data: bytes | IO[bytes]) -> StateArrays:
    """Named arrays from npz bytes or an open npz file (read one array at a time)."""
    with np.load(npz_source(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
