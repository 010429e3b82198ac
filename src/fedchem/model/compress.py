"""Small updates: a site's model delta compressed, with error feedback.

A compressed update holds the delta from the round's global model, not the weights:

- ``fp16`` / ``bf16``: each value in 16 bits (half the bytes of fp32);
- ``int8``: each value in 8 bits with one fp32 scale per row (a 2-D array) or per array
  (``scale = max |x| / 127``, values rounded to the nearest step): about a quarter;
- any codec: the rows of a 2-D delta that are exactly zero (an input column no training
  molecule has, where the optimizer leaves its weights alone: plain SGD or Adam without
  weight decay) are left out and their indices sent instead;
- the parts are stored deflated (``np.savez_compressed``): 8-bit steps of a delta take fewer
  than 8 bits each.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019): what the codec lost this round
(the delta minus what it sends) stays at the site and is added to the next round's delta, so
that nothing is lost for good, only late. The coordinator decodes to full weights
(``reference + delta``) before it screens and aggregates; everything downstream (signatures
over the bytes sent, norm screening, the strategies) is unchanged. Stored as npz, no pickle.
"""

from __future__ import annotations

import io
from typing import IO, get_args

import numpy as np
import torch

from fedchem.model.state import npz_source
from fedchem.types import Codec, StateArrays

__all__ = ["CODECS", "decode_update", "encode_update"]

CODECS: tuple[Codec, ...] = get_args(Codec)
_MARK = "__codec__"
#: leave zero rows out only when at least this share of a 2-D delta's rows is zero
_SPARSE_AT = 0.1


def _to_bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).view(torch.int16).numpy()


def _from_bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(x)).view(torch.bfloat16).float().numpy()


def _quantize(x: np.ndarray, codec: Codec) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The parts that travel for ``x`` (rows of a 2-D array, or a flat array), and what
    decoding them gives back."""
    if codec == "fp16":
        q16 = x.astype(np.float16)
        return {"v": q16}, q16.astype(np.float32)
    if codec == "bf16":
        b = _to_bf16(x.astype(np.float32))
        return {"v": b}, _from_bf16(b)
    flat = x.reshape(x.shape[0], int(np.prod(x.shape[1:]))) if x.ndim >= 2 else x.reshape(1, -1)
    scale = np.abs(flat).max(axis=1, keepdims=True).astype(np.float32) / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    q8 = np.clip(np.rint(flat / safe), -127, 127).astype(np.int8)
    back = (q8.astype(np.float32) * scale).reshape(x.shape)
    return {"v": q8, "s": scale.ravel()}, back


def _dequantize(parts: dict[str, np.ndarray], codec: str, shape: tuple[int, ...]) -> np.ndarray:
    v = parts["v"]
    if codec == "fp16":
        return v.astype(np.float32).reshape(shape)
    if codec == "bf16":
        return _from_bf16(v).reshape(shape)
    scale = parts["s"].astype(np.float32)
    out = v.astype(np.float32)
    out *= scale.reshape(len(scale), *([1] * (v.ndim - 1)))  # in place: one float copy
    return out.reshape(shape)


def encode_update(
    upload: StateArrays,
    reference: StateArrays,
    codec: Codec,
    residual: StateArrays | None = None,
) -> tuple[bytes, StateArrays]:
    """``upload``'s delta from ``reference`` plus last round's ``residual``, compressed: the
    bytes to send and the new residual (what this round's encoding lost)."""
    if codec == "none":
        raise ValueError("codec 'none' sends the weights as they are (dump_arrays)")
    out: dict[str, np.ndarray] = {_MARK: np.array(codec)}
    kept: StateArrays = {}
    for name in sorted(upload):
        full = np.asarray(upload[name])
        if not np.issubdtype(full.dtype, np.floating):  # counters and the like: as they are
            out[f"{name}/raw"] = full
            continue
        delta = full.astype(np.float32) - np.asarray(reference[name], dtype=np.float32)
        if residual is not None and name in residual:
            delta = (delta + residual[name]).astype(np.float32)
        rows = None
        if delta.ndim == 2:
            nonzero = np.flatnonzero(np.any(delta != 0, axis=1))
            if len(nonzero) <= (1 - _SPARSE_AT) * len(delta):
                rows = nonzero
        part = delta if rows is None else delta[rows]
        sent, back = _quantize(part, codec)
        lost = part - back
        if rows is None:
            kept[name] = lost.astype(np.float32)
        else:
            k = np.zeros_like(delta)
            k[rows] = lost
            kept[name] = k
            out[f"{name}/rows"] = rows.astype(np.int32)
        out[f"{name}/shape"] = np.array(delta.shape, dtype=np.int64)
        for key, value in sent.items():
            out[f"{name}/{key}"] = value
    buf = io.BytesIO()
    np.savez_compressed(buf, **out)  # type: ignore[arg-type]
    return buf.getvalue(), kept


def decode_update(
    data: bytes | IO[bytes], reference: StateArrays, expected: str | None = None
) -> StateArrays:
    """An update's full weights (from its npz bytes or open file): plain npz as it is, a
    compressed one as ``reference`` plus its decoded delta. A part that does not fit
    ``reference``, or a codec other than ``expected`` (what its manifest names), raises
    ``ValueError``."""
    with np.load(npz_source(data), allow_pickle=False) as z:
        codec = str(z[_MARK]) if _MARK in z.files else "none"
        if expected is not None and codec != expected:
            raise ValueError(f"sent as {codec!r}, its manifest says {expected!r}")
        if codec == "none":
            return {k: z[k] for k in z.files}
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}")
        parts: dict[str, dict[str, np.ndarray]] = {}
        for key in z.files:
            if key == _MARK:
                continue
            name, _, part = key.rpartition("/")
            parts.setdefault(name, {})[part] = z[key]
    if set(parts) != set(reference):
        raise ValueError(f"parameter names differ: {sorted(set(parts) ^ set(reference))}")
    out: StateArrays = {}
    for name, p in parts.items():
        ref = np.asarray(reference[name])
        if "raw" in p:
            out[name] = p["raw"]
            continue
        shape = tuple(int(x) for x in p["shape"])
        if shape != ref.shape:
            raise ValueError(f"{name}: shape {shape} != the global model's {ref.shape}")
        rows = p.get("rows")
        if rows is None:
            delta = _dequantize(p, codec, shape)
        else:
            if rows.size and (rows.min() < 0 or rows.max() >= shape[0]):
                raise ValueError(f"{name}: row indices outside the array")
            delta = np.zeros(shape, dtype=np.float32)
            delta[rows] = _dequantize(p, codec, (len(rows), *shape[1:]))
        delta += ref  # in place (the coordinator holds one decoded update at a time)
        out[name] = delta if delta.dtype == ref.dtype else delta.astype(ref.dtype)
    return out
