"""Conformal prediction from histograms: what sites may send, and the guarantee it keeps.

Split (inductive) conformal prediction, per task, calibrated on validation folds:

- classification, Mondrian by class: a sample of true class ``c`` scores ``1 - p_c``; the
  prediction set of a new molecule is every class ``c`` whose score is at most class ``c``'s
  threshold ``q_c``, the ``ceil((n_c + 1)(1 - alpha))``-th smallest calibration score;
- regression: a sample scores ``|y - y_hat| / s`` (``s``: the task's scale); the interval is
  ``y_hat ± q * s``.

A site sends its calibration scores only as counts over fixed bins (``BINS`` per class or
task), never the scores themselves; the coordinator adds the counts up. Reading a threshold off
binned counts takes the upper edge of the bin that holds the ``k``-th score, which is at least
the exact threshold: the sets and intervals keep their ``1 - alpha`` coverage (a little wider).
A site calibrating its own model keeps the exact scores at the site and may use them directly.

The same counts give a calibrated probability (inductive Venn-ABERS, Vovk & Petej 2014, on the
binned scores): isotonic regression of the label on the model's score over the calibration
samples with the new molecule added once as inactive (``p0``) and once as active (``p1``); the
probability is ``p1 / (1 - p0 + p1)`` and ``[p0, p1]`` its spread, narrow when the calibration
set is large. Scores are ordered at the bins' resolution (``1 / BINS``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = [
    "BINS",
    "REGRESSION_RANGE",
    "class_histograms",
    "coverage_and_efficiency",
    "prediction_sets",
    "regression_histogram",
    "threshold_from_histogram",
    "threshold_from_scores",
    "venn_abers",
    "venn_abers_table",
]

#: bins of a histogram of scores (classification: [0, 1]; regression: [0, REGRESSION_RANGE])
BINS = 100
#: regression scores (residuals in units of the task's scale) binned up to this, then overflow
REGRESSION_RANGE = 10.0


def _histogram(scores: np.ndarray, upper: float) -> list[int]:
    """Counts over ``BINS`` equal bins of ``[0, upper]``, and one overflow bin above."""
    edges = np.linspace(0.0, upper, BINS + 1)
    counts, _ = np.histogram(np.clip(scores, 0.0, upper), bins=edges)
    over = int((scores > upper).sum())
    counts[-1] -= over  # np.histogram put the clipped overflow in the last bin
    return [int(c) for c in counts] + [over]


def class_histograms(y: np.ndarray, p: np.ndarray) -> dict[str, list[int]]:
    """Per class ("0", "1"), counts of the scores ``1 - p_class`` of its calibration samples."""
    y, p = np.asarray(y, dtype=bool), np.asarray(p, dtype=np.float64)
    return {"0": _histogram(p[~y], 1.0), "1": _histogram(1.0 - p[y], 1.0)}


def regression_histogram(y: np.ndarray, pred: np.ndarray, scale: float) -> list[int]:
    """Counts of the scores ``|y - pred| / scale`` over ``[0, REGRESSION_RANGE]`` + overflow."""
    scores = np.abs(np.asarray(y, np.float64) - np.asarray(pred, np.float64)) / scale
    return _histogram(scores, REGRESSION_RANGE)


def _rank(n: int, alpha: float) -> int:
    """The rank of the conformal threshold among ``n`` calibration scores (1-based)."""
    return math.ceil((n + 1) * (1.0 - alpha))


def threshold_from_histogram(counts: list[int], alpha: float, upper: float) -> float:
    """The ``1 - alpha`` conformal threshold of binned scores over ``[0, upper]`` (+ overflow):
    the upper edge of the bin holding the rank's score; ``inf`` when it lies beyond ``upper``
    or the calibration set is too small for ``alpha``."""
    n = int(sum(counts))
    k = _rank(n, alpha)
    if n == 0 or k > n:
        return math.inf
    cum = np.cumsum(counts)
    b = int(np.searchsorted(cum, k))  # first bin whose cumulative count reaches k
    if b >= BINS:
        return math.inf
    return (b + 1) * upper / BINS


def threshold_from_scores(scores: np.ndarray, alpha: float) -> float:
    """The exact threshold from the scores themselves (what a site may use for its own)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    k = _rank(len(s), alpha)
    return math.inf if not len(s) or k > len(s) else float(s[k - 1])


def prediction_sets(p: np.ndarray, q0: float, q1: float) -> np.ndarray:
    """``N x 2`` booleans: class 0 and class 1 in each molecule's set (``p``: P(class 1))."""
    p = np.asarray(p, dtype=np.float64)
    return np.stack([p <= q0, 1.0 - p <= q1], axis=1)


def coverage_and_efficiency(
    kind: str, y: np.ndarray, pred: np.ndarray, thresholds: Mapping[str, float], scale: float = 1.0
) -> dict[str, float]:
    """On held-out labels: coverage (share of true values inside the set or interval) and
    efficiency (classification: share of single-class sets; regression: the interval's mean
    width in the task's units, smaller is better)."""
    y = np.asarray(y, dtype=np.float64)
    if kind == "classification":
        sets = prediction_sets(pred, thresholds["0"], thresholds["1"])
        truth = y > 0.5
        covered = np.where(truth, sets[:, 1], sets[:, 0])
        single = sets.sum(axis=1) == 1
        return {
            "coverage": float(covered.mean()),
            "efficiency": float(single.mean()),
            "empty": float((sets.sum(axis=1) == 0).mean()),
            "n": float(len(y)),
        }
    half = thresholds["q"] * scale
    covered = np.abs(y - np.asarray(pred, dtype=np.float64)) <= half
    return {
        "coverage": float(covered.mean()),
        "width": float(2 * half),
        "n": float(len(y)),
    }


def _isotonic(means: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted non-decreasing least-squares fit of ``means`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for m, w in zip(means, weights, strict=True):
        blocks.append([float(m), float(w), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks[-1]
            blocks[-1] = [(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2]
    return np.concatenate([np.full(int(n), m) for m, _, n in blocks])


def venn_abers_table(hist0: list[int], hist1: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(p0, p1)`` per score bin (``BINS`` each) from a task's class histograms: what a
    molecule whose P(class 1) falls in bin ``j`` gets, as inactive (``p0[j]``) and as active
    (``p1[j]``). ``hist0`` counts ``p`` of inactives, ``hist1`` counts ``1 - p`` of actives."""
    n0 = np.asarray(hist0[:BINS], dtype=np.float64)
    n1 = np.asarray(hist1[:BINS], dtype=np.float64)[::-1]  # 1 - p, binned -> p's bins
    p0, p1 = np.zeros(BINS), np.zeros(BINS)
    for j in range(BINS):
        for label, out in ((0, p0), (1, p1)):
            a, b = n0.copy(), n1.copy()
            (b if label else a)[j] += 1
            total = a + b
            used = np.flatnonzero(total > 0)
            fit = _isotonic(b[used] / total[used], total[used])
            out[j] = fit[int(np.searchsorted(used, j))]
    return p0, p1


def venn_abers(p: np.ndarray, table: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``N x 3``: the calibrated probability of class 1, and ``p0``, ``p1`` (its spread), for
    scores ``p`` (NaN stays NaN), from :func:`venn_abers_table`."""
    p = np.asarray(p, dtype=np.float64)
    bins = np.clip(np.floor(np.nan_to_num(p) * BINS).astype(np.int64), 0, BINS - 1)
    p0, p1 = table[0][bins], table[1][bins]
    merged = p1 / (1.0 - p0 + p1)
    out = np.stack([merged, p0, p1], axis=1)
    out[~np.isfinite(p)] = np.nan
    return out
