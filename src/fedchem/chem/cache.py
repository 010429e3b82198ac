"""The molecule-level feature cache: content-addressed shards, one per partition, and an index.

With a cache directory every partition is written by its worker as an on-disk shard named by a
hash of its content and of everything that determines its output (chemistry config, key
fingerprint, library versions). Only molecules not in the cache are computed, so a changed
input recomputes only what it adds and an unchanged input recomputes nothing; the driver never
holds more than one shard's results at a time while computing. Lookups go through 64-bit SMILES
hashes and are verified against the stored SMILES, so a collision or a damaged cache is an
error, never a wrong fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import pandas as pd

from fedchem.chem.featurize import (
    FeaturizedBatch,
    concat_batches,
    featurize_partition,
    pipeline_fingerprint,
    take_rows,
)
from fedchem.chem.parallel import Progress, offset_progress, run_tasks
from fedchem.config import ChemConfig

__all__ = ["ShardIndex", "featurize_to_shards", "load_shards", "smiles_hashes"]


def smiles_hashes(smiles: np.ndarray) -> np.ndarray:
    """A 64-bit hash per SMILES (vectorized); lookups verify the string itself afterwards."""
    return pd.util.hash_array(np.asarray(smiles, dtype=object), categorize=False).astype(np.uint64)


def _shard_name(smiles: Sequence[str], fingerprint: dict[str, str]) -> str:
    h = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode())
    for s in smiles:
        h.update(s.encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()[:32]


def _write_shard(path: Path, smiles: Sequence[str], batch: FeaturizedBatch) -> None:
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp.npz")
    arrays: dict[str, np.ndarray] = {
        "smiles": np.array(smiles, dtype=str),
        "canonical": np.array(["" if c is None else c for c in batch.canonical], dtype=str),
        "reason": np.array(["" if r is None else r for r in batch.reason], dtype=str),
        "fold": batch.fold,
        "indptr": batch.indptr,
        "indices": batch.indices,
    }
    if batch.values is not None:
        arrays["values"] = batch.values
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def _read_shard(path: Path) -> tuple[np.ndarray, FeaturizedBatch]:
    with np.load(path, allow_pickle=False) as z:
        ok = z["reason"] == ""
        batch = FeaturizedBatch(
            canonical=[str(c) if k else None for c, k in zip(z["canonical"], ok, strict=True)],
            reason=[None if k else str(r) for r, k in zip(z["reason"], ok, strict=True)],
            fold=z["fold"],
            indptr=z["indptr"],
            indices=z["indices"],
            values=z["values"] if "values" in z.files else None,
        )
        return z["smiles"], batch


def _shard_task(smiles: list[str], chem_json: str, key: bytes, path: str) -> dict[str, int]:
    """Worker side: featurize one partition and write its shard; return counts only."""
    batch = featurize_partition(smiles, ChemConfig.model_validate_json(chem_json), key)
    _write_shard(Path(path), smiles, batch)
    return {"rows": len(batch), "ok": sum(r is None for r in batch.reason)}


@dataclass(frozen=True)
class ShardIndex:
    """Where each requested SMILES' features lie: ``shards[shard_of[i]]``, row ``row_of[i]``."""

    smiles: np.ndarray  # N requested SMILES (object)
    shards: list[Path]
    shard_of: np.ndarray  # N int32
    row_of: np.ndarray  # N int32
    computed_shards: int
    computed_molecules: int

    @property
    def n_rows(self) -> int:
        return len(self.smiles)


_INDEX = "index.npz"


def _read_index(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(sorted hashes, shard id, row, shard names) of every molecule already computed."""
    path = root / _INDEX
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["hash"], z["shard"], z["row"], [str(n) for n in z["names"]]
        except (OSError, ValueError, KeyError):
            pass  # a damaged index only costs a rebuild from the shards themselves
    hashes, shard_ids, rows, names = [], [], [], []
    for i, shard in enumerate(sorted((root / "shards").glob("*.npz"))):
        with np.load(shard, allow_pickle=False) as z:
            h = smiles_hashes(z["smiles"].astype(object))
        names.append(shard.stem)
        hashes.append(h)
        shard_ids.append(np.full(len(h), i, np.int32))
        rows.append(np.arange(len(h), dtype=np.int32))
    return _sorted_index(hashes, shard_ids, rows, names)


def _sorted_index(
    hashes: list[np.ndarray], shard_ids: list[np.ndarray], rows: list[np.ndarray], names: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.int32), names
    h, sh, r = np.concatenate(hashes), np.concatenate(shard_ids), np.concatenate(rows)
    order = np.argsort(h, kind="stable")
    return h[order], sh[order], r[order], names


def _write_index(
    root: Path, h: np.ndarray, sh: np.ndarray, r: np.ndarray, names: list[str]
) -> None:
    tmp = root / f".index.{uuid.uuid4().hex}.tmp.npz"
    np.savez(tmp, hash=h, shard=sh, row=r, names=np.array(names, dtype=str))
    os.replace(tmp, root / _INDEX)


def featurize_to_shards(
    unique_smiles: np.ndarray,
    chem: ChemConfig,
    key: bytes,
    cache_dir: Path,
    *,
    partition_rows: int = 5000,
    n_workers: int = 2,
    dask_address: str | None = None,
    progress: Progress | None = None,
) -> ShardIndex:
    """Featurize unique SMILES into a content-addressed, molecule-level cache under ``cache_dir``.

    The cache is keyed by :func:`pipeline_fingerprint` (config, key fingerprint, versions): a
    molecule computed before under the same pipeline is looked up, not recomputed. Only the
    new molecules are cut into partitions of ``partition_rows`` and computed in worker
    processes, each writing its own shard; the driver never holds the features meanwhile.
    """
    smiles = np.asarray(unique_smiles, dtype=object)
    fingerprint = pipeline_fingerprint(chem, key)
    root = (
        cache_dir
        / hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    )
    (root / "shards").mkdir(parents=True, exist_ok=True)
    hashes = smiles_hashes(smiles)
    if len(np.unique(hashes)) != len(hashes):
        raise ValueError("featurize_to_shards needs unique SMILES")
    idx_h, idx_sh, idx_r, names = _read_index(root)
    pos = np.searchsorted(idx_h, hashes)
    found = pos < len(idx_h)
    found[found] = idx_h[pos[found]] == hashes[found]
    missing = np.sort(smiles[~found])
    chem_json = chem.model_dump_json()
    tasks, new_parts = [], []
    for start in range(0, len(missing), partition_rows):
        part = [str(x) for x in missing[start : start + partition_rows]]
        name = _shard_name(part, fingerprint)
        path = root / "shards" / f"{name}.npz"
        new_parts.append((name, part))
        if not path.exists():
            tasks.append(
                dask.delayed(_shard_task, pure=False)(
                    part, chem_json, key, str(path), dask_key_name=f"featurize-shard-{name}"
                )
            )
    total = len(new_parts)
    if progress is not None:
        progress(total - len(tasks), total)
    run_tasks(tasks, n_workers, dask_address, offset_progress(progress, total - len(tasks)), total)

    if new_parts:
        add_h, add_sh, add_r = [idx_h], [idx_sh], [idx_r]
        for name, part in new_parts:
            names.append(name)
            add_h.append(smiles_hashes(np.array(part, dtype=object)))
            add_sh.append(np.full(len(part), len(names) - 1, np.int32))
            add_r.append(np.arange(len(part), dtype=np.int32))
        idx_h, idx_sh, idx_r, names = _sorted_index(add_h, add_sh, add_r, names)
        _write_index(root, idx_h, idx_sh, idx_r, names)
    pos = np.searchsorted(idx_h, hashes)
    if len(hashes) and (pos.max() >= len(idx_h) or not (idx_h[pos] == hashes).all()):
        raise RuntimeError(f"feature cache {root} is missing molecules after computing them")
    return ShardIndex(
        smiles=smiles,
        shards=[root / "shards" / f"{n}.npz" for n in names],
        shard_of=idx_sh[pos] if len(hashes) else np.zeros(0, np.int32),
        row_of=idx_r[pos] if len(hashes) else np.zeros(0, np.int32),
        computed_shards=len(tasks),
        computed_molecules=int(sum(len(p) for _, p in new_parts)),
    )


def load_shards(index: ShardIndex) -> FeaturizedBatch:
    """The features of ``index.smiles``, in that order, read from their shards.

    Each molecule's stored input SMILES is compared with the requested one: a hash collision or
    a damaged cache is an error, never a wrong fingerprint.
    """
    parts: list[FeaturizedBatch] = []
    order: list[np.ndarray] = []
    for sid in np.unique(index.shard_of):
        mine = np.flatnonzero(index.shard_of == sid)
        stored, batch = _read_shard(index.shards[int(sid)])
        rows = index.row_of[mine].astype(np.int64)
        if not (stored[rows].astype(object) == index.smiles[mine]).all():
            raise RuntimeError(
                f"feature cache shard {index.shards[int(sid)]} does not hold the molecules "
                "its index says (hash collision or damage)"
            )
        parts.append(take_rows(batch, rows))
        order.append(mine)
    if not parts:
        return concat_batches([])
    merged = concat_batches(parts)
    inverse = np.empty(len(index.smiles), np.int64)
    inverse[np.concatenate(order)] = np.arange(len(index.smiles))
    return take_rows(merged, inverse)
