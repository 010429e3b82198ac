"""One partition of molecules, featurized in the current process: standardize, fingerprint, fold.

Each molecule is handled on its own (its output never depends on the rest of the partition);
the result keeps input order, with a reason instead of features for a molecule that failed.
What determines a molecule's output is summed up by :func:`pipeline_fingerprint`, which names
caches and the sites' consistency check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rdkit

import fedchem
from fedchem.chem.csr import csr_take
from fedchem.chem.fingerprints import column_permutation, get_featurizer
from fedchem.chem.folds import fold_key, fold_of, key_fingerprint
from fedchem.chem.standardize import standardizer_for
from fedchem.config import ChemConfig

__all__ = [
    "PIPELINE_VERSION",
    "FeaturizedBatch",
    "concat_batches",
    "featurize_partition",
    "pipeline_fingerprint",
    "take_rows",
]


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
    smiles: Sequence[str | None], chem: ChemConfig, key: bytes, with_folds: bool = True
) -> FeaturizedBatch:
    """Process one partition in the current process. Each molecule is handled on its own.

    ``with_folds=False`` (prediction: a new molecule has no fold) leaves every fold at -1 and
    skips the scaffold work; the features are the same."""
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
            if with_folds:
                folds[i] = fold_of(fold_key(mol, chem.folds), key, n_folds)
        indptr[i + 1] = cols.size
    return FeaturizedBatch(
        canonical, reason, folds, indptr, cols.array(), vals.array() if vals is not None else None
    )


def concat_batches(parts: Sequence[FeaturizedBatch]) -> FeaturizedBatch:
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


#: bump when the per-molecule pipeline changes in a way the versions below would not show
PIPELINE_VERSION = "3"  # 3: a parent without carbon is refused


def pipeline_fingerprint(chem: ChemConfig, key: bytes) -> dict[str, str]:
    """What determines a molecule's output, component by component (the key only hashed)."""
    return {
        "config": hashlib.sha256(chem.model_dump_json().encode()).hexdigest(),
        "key": key_fingerprint(key),
        "versions": f"fedchem={fedchem.__version__};pipeline={PIPELINE_VERSION};"
        f"rdkit={rdkit.__version__};numpy={np.__version__}",
    }


def take_rows(b: FeaturizedBatch, rows: np.ndarray) -> FeaturizedBatch:
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
