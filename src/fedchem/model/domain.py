"""The applicability domain from counts: how much of a molecule the training data has seen.

A molecule's *domain score* is the share of its fingerprint columns that the federation's
training molecules *support*: columns on in at least ``MIN_SUPPORT`` training molecules at one
site. Sites send only which columns they support (counted over their training fold; a column
seen in fewer molecules is not reported, so no small group of molecules shows), the
coordinator takes the union. Each site then scores its validation fold against that union and
sends a histogram of the scores; the thresholds are the validation scores' 5th and 1st
percentiles: a molecule scoring like the upper 95 % of validation molecules is ``in``, like the
next 4 % ``edge``, below that ``out``. No neighbour, similarity or training molecule is ever
returned, only the flag and the score.
"""

from __future__ import annotations

import numpy as np

from fedchem.data.dataset import MIN_SUPPORT, supported_columns

__all__ = [
    "DOMAIN_BINS",
    "MIN_SUPPORT",
    "domain_flags",
    "domain_scores",
    "domain_thresholds",
    "score_histogram",
    "supported_columns",
]

DOMAIN_BINS = 100


def domain_scores(indptr: np.ndarray, indices: np.ndarray, supported: np.ndarray) -> np.ndarray:
    """Per molecule (CSR rows), the share of its columns in ``supported`` (a boolean mask over
    the columns); 0 for a molecule without any column."""
    lengths = np.diff(indptr)
    hits = np.concatenate([[0.0], np.cumsum(supported[indices.astype(np.int64)])])
    sums = hits[indptr[1:]] - hits[indptr[:-1]]
    return np.where(lengths > 0, sums / np.maximum(lengths, 1), 0.0)


def score_histogram(scores: np.ndarray) -> list[int]:
    """Counts of domain scores over ``DOMAIN_BINS`` equal bins of [0, 1]."""
    counts, _ = np.histogram(np.clip(scores, 0.0, 1.0), bins=np.linspace(0, 1, DOMAIN_BINS + 1))
    return [int(c) for c in counts]


def _lower_quantile(counts: np.ndarray, q: float) -> float:
    """The lower edge of the bin holding the ``q`` quantile of binned scores."""
    n = counts.sum()
    if n == 0:
        return 0.0
    b = int(np.searchsorted(np.cumsum(counts), q * n, side="left"))
    return b / DOMAIN_BINS


def domain_thresholds(counts: list[int]) -> dict[str, float]:
    """``in`` and ``edge`` thresholds from the validation scores' histogram (5 %, 1 %)."""
    c = np.asarray(counts, dtype=np.int64)
    return {"in": _lower_quantile(c, 0.05), "edge": _lower_quantile(c, 0.01), "n": float(c.sum())}


def domain_flags(scores: np.ndarray, thresholds: dict[str, float]) -> list[str]:
    return [
        "in" if s >= thresholds["in"] else "edge" if s >= thresholds["edge"] else "out"
        for s in scores
    ]
