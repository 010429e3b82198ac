"""The batch entry point: featurize many SMILES (any order, repeats allowed), in input order.

Per-molecule work is :mod:`fedchem.chem.featurize`; this cuts the input into partitions and
runs them through :mod:`fedchem.chem.parallel`, through the feature cache
(:mod:`fedchem.chem.cache`) when the caller has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dask
import numpy as np

from fedchem.chem.cache import featurize_to_shards, load_shards
from fedchem.chem.featurize import FeaturizedBatch, concat_batches, featurize_partition, take_rows
from fedchem.chem.parallel import Progress, run_tasks
from fedchem.config import ChemConfig

__all__ = ["featurize_many"]


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
    with_folds: bool = True,
) -> FeaturizedBatch:
    """Featurize ``smiles`` (any order, repeats allowed); the result is in input order.

    With ``cache_dir`` the work goes through :func:`featurize_to_shards`; without it, small
    inputs run in memory (over Dask when there are several partitions). ``with_folds=False``
    (prediction, no cache) skips the folds.
    """
    texts = np.array(["" if s is None else str(s) for s in smiles], dtype=object)
    uniq, inverse = np.unique(texts, return_inverse=True) if len(texts) else (texts, texts)
    if cache_dir is not None:
        index = featurize_to_shards(
            uniq,
            chem,
            key,
            cache_dir,
            partition_rows=partition_rows,
            n_workers=n_workers,
            dask_address=dask_address,
            progress=progress,
        )
        feats = load_shards(index)
    else:
        tasks = [
            dask.delayed(featurize_partition, pure=False)(
                list(uniq[a : a + partition_rows]),
                chem,
                key,
                with_folds,
                dask_key_name=f"featurize-shard-mem-{a}",
            )
            for a in range(0, len(uniq), partition_rows)
        ]
        feats = concat_batches(run_tasks(tasks, n_workers, dask_address, progress, len(tasks)))
    return take_rows(feats, np.asarray(inverse, dtype=np.int64))
