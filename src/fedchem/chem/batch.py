"""The one batch layer that owns parallelism: standardize + featurize + fold over partitions.

Per-molecule work is the pure functions of this package; this module cuts the input into
partitions and runs them in worker processes with Dask (RDKit holds the GIL, so threads would
not help): Dask's local process pool by default, or an existing ``distributed`` scheduler by
address.

With a ``cache_dir``, every partition is written by its worker as an on-disk shard named by a
hash of its content and of everything that determines its output (chemistry config, key
fingerprint, library versions). Partitions are cut where the content says (content-defined
chunking over the sorted unique SMILES), so a changed input recomputes only the partitions it
touches and an unchanged input recomputes nothing. The driver never holds more than one
shard's results at a time while computing.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import rdkit
from dask.callbacks import Callback

import fedchem
from fedchem.chem.fingerprints import column_permutation, get_featurizer
from fedchem.chem.folds import fold_of, key_fingerprint, scaffold_of
from fedchem.chem.standardize import standardizer_for
from fedchem.config import ChemConfig
from fedchem.data.csr import csr_take

__all__ = [
    "FeaturizedBatch",
    "ShardIndex",
    "featurize_many",
    "featurize_partition",
    "featurize_to_shards",
    "load_shards",
    "pipeline_fingerprint",
    "smiles_hashes",
]

#: progress callback: (partitions done, partitions total)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class FeaturizedBatch:
    """Result for ``N`` input SMILES, in input order.

    ``canonical[i]`` is the standardized SMILES or None; ``reason[i]`` says why not; rows with a
    reason have no features and fold -1. Features are CSR: the columns of row i are
    ``indices[indptr[i]:indptr[i+1]]``, with ``values`` alongside for count featurizers.
    """

    canonical: list[str | None]
    reason: list[str | None]
    fold: np.ndarray  # N, int8
    indptr: np.ndarray  # N+1, int64
    indices: np.ndarray  # nnz, int32
    values: np.ndarray | None = None  # nnz, float32 (count features) or None (bits)

    def __len__(self) -> int:
        return len(self.canonical)


class _Growing:
    """An append-only numeric buffer that doubles as it fills.

    A partition's columns go into one buffer instead of one small array per molecule: keeping
    one small array per molecule alive made every molecule ~6 % slower (measured in-process,
    8,000 MOSES molecules; ``benchmarks/README.md``), likely because they interleave with
    RDKit's own allocations on the heap.
    """

    def __init__(self, dtype: type, capacity: int) -> None:
        self.data: np.ndarray = np.empty(max(capacity, 16), dtype=dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        end = self.size + values.size
        if end > self.data.size:
            grown = np.empty(max(2 * self.data.size, end), dtype=self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : end] = values
        self.size = end

    def fill(self, value: float, count: int) -> None:
        self.extend(np.full(count, value, dtype=self.data.dtype))

    def array(self) -> np.ndarray:
        return self.data[: self.size].copy()


def featurize_partition(
    smiles: Sequence[str | None], chem: ChemConfig, key: bytes
) -> FeaturizedBatch:
    """Process one partition in the current process. Each molecule is handled on its own."""
    std = standardizer_for(chem.standardize)
    featurize = get_featurizer(chem.featurizer)
    perm = column_permutation(key, chem.fp_size) if chem.permute_columns else None
    radius, fp_size, n_folds = chem.fp_radius, chem.fp_size, chem.n_folds
    canonical: list[str | None] = []
    reason: list[str | None] = []
    folds = np.full(len(smiles), -1, dtype=np.int8)
    indptr = np.zeros(len(smiles) + 1, dtype=np.int64)
    cols = _Growing(np.int32, 64 * len(smiles))
    vals: _Growing | None = None  # created at the first count feature; earlier rows get 1.0
    for i, raw in enumerate(smiles):
        result, mol = std.smiles(raw)
        canonical.append(result.smiles)
        reason.append(result.reason)
        if mol is not None:
            idx, v = featurize(mol, radius, fp_size)
            if perm is not None:  # a bijection: the relabelled columns are distinct
                idx = perm[idx]
                if v is None:
                    idx.sort()
                else:
                    order = np.argsort(idx)
                    idx, v = idx[order], v[order]
            if v is not None and vals is None:
                vals = _Growing(np.float32, cols.data.size)
                vals.fill(1.0, cols.size)
            if vals is not None:
                vals.extend(np.ones(idx.size, np.float32) if v is None else v)
            cols.extend(idx)
            folds[i] = fold_of(scaffold_of(mol), key, n_folds)
        indptr[i + 1] = cols.size
    return FeaturizedBatch(canonical, reason, folds, indptr, cols.array(),
                           vals.array() if vals is not None else None)  # fmt: skip


def _concat(parts: Sequence[FeaturizedBatch]) -> FeaturizedBatch:
    canonical: list[str | None] = []
    reason: list[str | None] = []
    offsets = [0]
    for p in parts:
        canonical.extend(p.canonical)
        reason.extend(p.reason)
        offsets.append(offsets[-1] + int(p.indptr[-1]))
    indptr = np.concatenate(
        [np.zeros(1, dtype=np.int64)]
        + [p.indptr[1:] + off for p, off in zip(parts, offsets, strict=False)]
    )
    indices = np.concatenate([p.indices for p in parts]) if parts else np.zeros(0, dtype=np.int32)
    fold = np.concatenate([p.fold for p in parts]) if parts else np.zeros(0, dtype=np.int8)
    values = None
    if any(p.values is not None for p in parts):
        values = np.concatenate(
            [
                p.values if p.values is not None else np.ones(p.indices.size, np.float32)
                for p in parts
            ]
        )
    return FeaturizedBatch(canonical, reason, fold, indptr, indices, values)


# ---------------------------------------------------------------- partitions and shards

#: bump when the per-molecule pipeline changes in a way the versions below would not show
PIPELINE_VERSION = "2"


def pipeline_fingerprint(chem: ChemConfig, key: bytes) -> dict[str, str]:
    """What determines a molecule's output, component by component (the key only hashed)."""
    return {
        "config": hashlib.sha256(chem.model_dump_json().encode()).hexdigest(),
        "key": key_fingerprint(key),
        "versions": f"fedchem={fedchem.__version__};pipeline={PIPELINE_VERSION};"
        f"rdkit={rdkit.__version__};numpy={np.__version__}",
    }


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


class _Counter(Callback):
    """Dask local-scheduler callback: count finished shard tasks."""

    def __init__(self, total: int, progress: Progress | None):
        super().__init__()
        self.total, self.done, self.progress = total, 0, progress

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        name = key[0] if isinstance(key, tuple) else key
        if str(name).startswith("featurize-shard"):
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.total)


def _run_tasks(tasks: list[Any], n_workers: int, dask_address: str | None,
               progress: Progress | None, total: int) -> list[Any]:  # fmt: skip
    """Compute the ``featurize-shard-*`` tasks; results in task order.

    On an existing scheduler by address, or Dask's local process pool; one task, or one
    worker, runs in this process (no process start-up to pay).
    """
    if not tasks:
        return []
    if dask_address is not None:
        from distributed import Client, as_completed

        with Client(dask_address) as client:
            futures = client.compute(tasks)
            for done, fut in enumerate(as_completed(futures), start=1):
                fut.result()
                if progress is not None:
                    progress(done, total)
            return list(client.gather(futures))
    with _Counter(total, progress):
        if n_workers == 1 or len(tasks) == 1:
            return list(dask.compute(*tasks, scheduler="synchronous"))
        with dask.config.set({"multiprocessing.context": "spawn"}):
            return list(dask.compute(*tasks, scheduler="processes", num_workers=n_workers,
                                     chunksize=1))  # fmt: skip


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
    _run_tasks(tasks, n_workers, dask_address, _offset(progress, total - len(tasks)), total)

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


def _offset(progress: Progress | None, already: int) -> Progress | None:
    if progress is None:
        return None
    return lambda done, total: progress(already + done, total)


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
        parts.append(_take(batch, rows))
        order.append(mine)
    if not parts:
        return _concat([])
    merged = _concat(parts)
    inverse = np.empty(len(index.smiles), np.int64)
    inverse[np.concatenate(order)] = np.arange(len(index.smiles))
    return _take(merged, inverse)


def featurize_many(
    smiles: Sequence[str | None],
    chem: ChemConfig,
    key: bytes,
    *,
    partition_rows: int = 5000,
    n_workers: int = 2,
    dask_address: str | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> FeaturizedBatch:
    """Featurize ``smiles`` (any order, repeats allowed); the result is in input order.

    With ``cache_dir`` the work goes through :func:`featurize_to_shards`; without it, small
    inputs run in memory (over Dask when there are several partitions).
    """
    texts = np.array(["" if s is None else str(s) for s in smiles], dtype=object)
    uniq, inverse = np.unique(texts, return_inverse=True) if len(texts) else (texts, texts)
    if cache_dir is not None:
        index = featurize_to_shards(
            uniq, chem, key, cache_dir, partition_rows=partition_rows, n_workers=n_workers,
            dask_address=dask_address, progress=progress,
        )  # fmt: skip
        feats = load_shards(index)
    else:
        tasks = [
            dask.delayed(featurize_partition, pure=False)(
                list(uniq[a : a + partition_rows]),
                chem,
                key,
                dask_key_name=f"featurize-shard-mem-{a}",
            )
            for a in range(0, len(uniq), partition_rows)
        ]
        feats = _concat(_run_tasks(tasks, n_workers, dask_address, progress, len(tasks)))
    return _take(feats, np.asarray(inverse, dtype=np.int64))


def _take(b: FeaturizedBatch, rows: np.ndarray) -> FeaturizedBatch:
    """Rows ``rows`` of ``b`` (repeats allowed), as a new batch."""
    indptr, flat = csr_take(b.indptr, rows)
    return FeaturizedBatch(
        canonical=[b.canonical[i] for i in rows],
        reason=[b.reason[i] for i in rows],
        fold=b.fold[rows],
        indptr=indptr,
        indices=b.indices[flat],
        values=b.values[flat] if b.values is not None else None,
    )
