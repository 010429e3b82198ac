"""The training-ready dataset of one site: sparse features, folds, labels, censoring.

It stays at the site. It holds no SMILES or compound ids, only what training needs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedchem.chem.csr import csr_take
from fedchem.config import SiteConfig

__all__ = ["CENSOR_CODES", "MIN_SUPPORT", "SiteDataset", "supported_columns"]

#: a column counts as supported at a site when at least this many training molecules have it
#: (the applicability domain, :mod:`fedchem.model.domain`, is built from these columns)
MIN_SUPPORT = 5

#: qualifier -> censor code: 0 exact, -1 the true value is at most the reported one, +1 at least
CENSOR_CODES = {"=": 0, "<": -1, "<=": -1, ">": 1, ">=": 1}


@dataclass(frozen=True)
class SiteDataset:
    """``N`` molecules x ``T`` tasks of the federation's catalogue.

    indptr: ``N+1`` int64 and indices: ``nnz`` int32, the CSR on-bits of each molecule;
    fold: ``N`` int8; y: ``N x T`` float32 with NaN where unlabelled; censor: ``N x T`` int8.
    """

    indptr: np.ndarray
    indices: np.ndarray
    fold: np.ndarray
    y: np.ndarray
    censor: np.ndarray
    task_names: tuple[str, ...]
    task_kinds: tuple[str, ...]
    fp_size: int
    values: np.ndarray | None = None
    """``nnz`` float32 feature values (count featurizers); ``None`` means every value is 1."""
    task_weights: np.ndarray | None = None
    """``T`` float32 loss weights from the task catalogue; ``None`` means all 1."""

    def __post_init__(self) -> None:
        n = len(self.fold)
        if self.indptr.shape != (n + 1,) or self.y.shape != (n, len(self.task_names)):
            raise ValueError("inconsistent SiteDataset shapes")
        if self.censor.shape != self.y.shape or len(self.task_kinds) != len(self.task_names):
            raise ValueError("inconsistent SiteDataset shapes")
        if self.values is not None and self.values.shape != self.indices.shape:
            raise ValueError("inconsistent SiteDataset shapes: values must match indices")

    def __len__(self) -> int:
        return len(self.fold)

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    def subset(self, rows: np.ndarray) -> SiteDataset:
        """Rows ``rows`` (indices) as a new dataset."""
        rows = np.asarray(rows, dtype=np.int64)
        indptr, take = csr_take(self.indptr, rows)
        return SiteDataset(
            indptr=indptr,
            indices=self.indices[take],
            values=self.values[take] if self.values is not None else None,
            task_weights=self.task_weights,
            fold=self.fold[rows],
            y=self.y[rows],
            censor=self.censor[rows],
            task_names=self.task_names,
            task_kinds=self.task_kinds,
            fp_size=self.fp_size,
        )

    @classmethod
    def unlabelled(
        cls,
        indptr: np.ndarray,
        indices: np.ndarray,
        values: np.ndarray | None,
        rows: np.ndarray,
        tasks: Sequence[tuple[str, str]],
        fp_size: int,
    ) -> SiteDataset:
        """Rows ``rows`` of featurized CSR arrays, to be scored: no labels, no folds.

        ``tasks`` is the model's ``(name, kind)`` per output, in its order.
        """
        rows = np.asarray(rows, dtype=np.int64)
        new_indptr, take = csr_take(indptr, rows)
        n, t = len(rows), len(tasks)
        return cls(
            indptr=new_indptr,
            indices=indices[take],
            values=values[take] if values is not None else None,
            fold=np.full(n, -1, np.int8),
            y=np.full((n, t), np.nan, np.float32),
            censor=np.zeros((n, t), np.int8),
            task_names=tuple(name for name, _ in tasks),
            task_kinds=tuple(kind for _, kind in tasks),
            fp_size=fp_size,
        )

    def folds(self, folds: list[int] | tuple[int, ...]) -> SiteDataset:
        return self.subset(np.flatnonzero(np.isin(self.fold, folds)))

    def without_folds(self, folds: list[int] | tuple[int, ...]) -> SiteDataset:
        return self.subset(np.flatnonzero(~np.isin(self.fold, folds)))

    def n_labels(self) -> int:
        return int(np.isfinite(self.y).sum())

    def save(self, path: Path) -> str:
        """Write to ``path`` (npz, no pickles); return the SHA-256 of the file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            indptr=self.indptr,
            indices=self.indices,
            fold=self.fold,
            y=self.y,
            censor=self.censor,
            task_names=np.array(self.task_names, dtype=str),
            task_kinds=np.array(self.task_kinds, dtype=str),
            fp_size=np.array(self.fp_size),
            **({"values": self.values} if self.values is not None else {}),  # type: ignore[arg-type]
            **({"task_weights": self.task_weights} if self.task_weights is not None else {}),  # type: ignore[arg-type]
        )
        tmp.replace(path)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    @classmethod
    def load(cls, path: Path) -> SiteDataset:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                indptr=z["indptr"],
                indices=z["indices"],
                fold=z["fold"],
                y=z["y"],
                censor=z["censor"],
                task_names=tuple(str(t) for t in z["task_names"]),
                task_kinds=tuple(str(t) for t in z["task_kinds"]),
                fp_size=int(z["fp_size"]),
                values=z["values"] if "values" in z.files else None,
                task_weights=z["task_weights"] if "task_weights" in z.files else None,
            )

    @classmethod
    def concat(cls, parts: list[SiteDataset]) -> SiteDataset:
        """Stack datasets with the same task catalogue (the demo's pooled baseline)."""
        first = parts[0]
        offsets = np.cumsum([0] + [int(p.indptr[-1]) for p in parts])
        indptr = np.concatenate(
            [np.zeros(1, np.int64)]
            + [p.indptr[1:] + o for p, o in zip(parts, offsets, strict=False)]
        )
        return cls(
            indptr=indptr,
            indices=np.concatenate([p.indices for p in parts]),
            fold=np.concatenate([p.fold for p in parts]),
            y=np.concatenate([p.y for p in parts]),
            censor=np.concatenate([p.censor for p in parts]),
            task_names=first.task_names,
            task_kinds=first.task_kinds,
            fp_size=first.fp_size,
            task_weights=first.task_weights,
            values=(
                np.concatenate(
                    [
                        p.values if p.values is not None else np.ones(p.indices.size, np.float32)
                        for p in parts
                    ]
                )
                if any(p.values is not None for p in parts)
                else None
            ),
        )


def current_dataset_path(site: SiteConfig) -> Path:
    """Where the latest prepared dataset of ``site`` lies (written by ``prepare_site``)."""
    pointer = site.workdir / "prepared" / "current.json"
    if not pointer.exists():
        raise FileNotFoundError(
            f"site {site.name} has no prepared data: run site preparation first"
        )
    return site.workdir / "prepared" / json.loads(pointer.read_text())["cache_key"] / "dataset.npz"


def supported_columns(ds: SiteDataset, min_support: int = MIN_SUPPORT) -> list[int]:
    """The columns on in at least ``min_support`` of ``ds``'s molecules (sorted): all a site
    says of its molecules for the applicability domain."""
    counts = np.bincount(ds.indices.astype(np.int64), minlength=ds.fp_size)
    return [int(c) for c in np.flatnonzero(counts >= min_support)]
