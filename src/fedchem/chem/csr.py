"""Row selection on CSR matrices: the one implementation every caller shares."""

from __future__ import annotations

import numpy as np

__all__ = ["csr_take"]


def csr_take(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``rows`` (any order, repeats allowed) of a CSR with ``indptr``.

    Returns the new ``indptr`` (``len(rows) + 1``, int64) and the positions into the old
    ``indices``/``values`` arrays to take, in order (int64). Vectorized: no per-row loop.
    """
    rows = np.asarray(rows, dtype=np.int64)
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    new_indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_indptr[1:])
    flat = np.repeat(starts - new_indptr[:-1], lengths) + np.arange(
        int(new_indptr[-1]), dtype=np.int64
    )
    return new_indptr, flat
