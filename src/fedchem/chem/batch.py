"""The one batch layer that owns parallelism: standardize + fingerprint + fold over partitions.

Per-molecule work is the pure functions of this package; this module only cuts the input into
partitions of thousands of molecules and runs them in worker processes with Dask (RDKit holds
the GIL, so threads would not help). An existing ``distributed`` scheduler can be named by
address; otherwise Dask's local process pool is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dask
import dask.bag as db
import numpy as np
from rdkit import Chem

from fedchem.chem.fingerprints import morgan_bits
from fedchem.chem.folds import fold_of, scaffold_of
from fedchem.chem.standardize import standardize_mol

__all__ = ["FeaturizedBatch", "featurize_many", "featurize_partition"]


@dataclass(frozen=True)
class FeaturizedBatch:
    """Result for ``N`` input SMILES, in input order.

    ``canonical[i]`` is the standardized SMILES or None; ``reason[i]`` says why not; rows with a
    reason have no fingerprint bits and fold -1. Fingerprints are CSR: the on-bits of row i are
    ``indices[indptr[i]:indptr[i+1]]``.
    """

    canonical: list[str | None]
    reason: list[str | None]
    fold: np.ndarray  # N, int8
    indptr: np.ndarray  # N+1, int64
    indices: np.ndarray  # nnz, int32

    def __len__(self) -> int:
        return len(self.canonical)


def featurize_partition(
    smiles: Sequence[str | None],
    radius: int,
    fp_size: int,
    max_heavy_atoms: int,
    key: bytes,
    n_folds: int,
) -> FeaturizedBatch:
    """Process one partition in the current process. Each molecule is handled on its own."""
    canonical: list[str | None] = []
    reason: list[str | None] = []
    folds = np.full(len(smiles), -1, dtype=np.int8)
    counts = np.zeros(len(smiles), dtype=np.int64)
    bits: list[np.ndarray] = []
    for i, raw in enumerate(smiles):
        text = "" if raw is None else str(raw).strip()
        mol = Chem.MolFromSmiles(text) if text else None
        if mol is None:
            canonical.append(None)
            reason.append("empty SMILES" if not text else "unparsable SMILES")
            continue
        parent = standardize_mol(mol, max_heavy_atoms)
        if isinstance(parent, str):
            canonical.append(None)
            reason.append(parent)
            continue
        canon = Chem.MolToSmiles(parent)
        reparsed = Chem.MolFromSmiles(canon)
        if reparsed is None:
            canonical.append(None)
            reason.append("canonical SMILES does not round-trip")
            continue
        on = morgan_bits(reparsed, radius, fp_size)
        canonical.append(canon)
        reason.append(None)
        folds[i] = fold_of(scaffold_of(reparsed), key, n_folds)
        counts[i] = on.size
        bits.append(on.astype(np.int32))
    indptr = np.zeros(len(smiles) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.concatenate(bits) if bits else np.zeros(0, dtype=np.int32)
    return FeaturizedBatch(canonical, reason, folds, indptr, indices)


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
    return FeaturizedBatch(canonical, reason, fold, indptr, indices)


def featurize_many(
    smiles: Sequence[str | None],
    *,
    radius: int,
    fp_size: int,
    max_heavy_atoms: int,
    key: bytes,
    n_folds: int,
    partition_rows: int = 5000,
    n_workers: int = 2,
    dask_address: str | None = None,
) -> FeaturizedBatch:
    """Featurize ``smiles`` over partitions in worker processes; output in input order.

    ``n_workers=1`` without an address runs in this process (small inputs, debugging).
    """
    chunks = [list(smiles[i : i + partition_rows]) for i in range(0, len(smiles), partition_rows)]
    if not chunks:
        return _concat([])
    args = (radius, fp_size, max_heavy_atoms, key, n_folds)
    if dask_address is None and (n_workers == 1 or len(chunks) == 1):
        return _concat([featurize_partition(c, *args) for c in chunks])
    bag = db.from_sequence(chunks, npartitions=len(chunks)).map(
        lambda c: featurize_partition(c, *args)
    )
    if dask_address is not None:
        from distributed import Client

        with Client(dask_address) as client:
            parts = client.compute(bag).result()
    else:
        with dask.config.set({"multiprocessing.context": "spawn"}):
            parts = bag.compute(scheduler="processes", num_workers=n_workers)
    return _concat(parts)
