"""Two models on the same molecules: their difference and its confidence interval.

A promotion decision compares a candidate with production at each site. Scored on the same
validation fold, the two are *paired*: most of a fold's noise (which molecules it holds) moves
both scores alike, so the difference is far better known than either score. The paired
bootstrap resamples the fold's molecules (with replacement), scores both models on each
resample and reads the difference's spread off the resamples: no normality or independence
between tasks assumed, and it serves ROC-AUC and RMSE alike.

Every resample is a row of multiplicities (how often each molecule is drawn), so a task's
ROC-AUC on all resamples at once is the weighted Mann-Whitney statistic over the molecules
sorted once (ties count a half), and a task's RMSE a weighted mean: ``B`` resamples of a fold
of ``N`` molecules cost ``O(B·N)`` per task and model, with no per-resample loop in Python.
Only the aggregates leave the site (:class:`PairedDifference`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from fedchem.types import PairedMetric

__all__ = ["PairedDifference", "PairedMetric", "paired_bootstrap", "weighted_auc", "z_value"]


@dataclass(frozen=True)
class PairedDifference:
    """Candidate minus production on one fold, oriented so that > 0 means the candidate is
    better (for RMSE: production's error minus the candidate's), with its bootstrap spread."""

    metric: str
    #: the metric's mean over the tasks scored, each model (on the whole fold)
    candidate: float
    production: float
    #: candidate better by this much (the point estimate, on the whole fold)
    difference: float
    #: the bootstrap standard error of ``difference``
    se: float
    #: the percentile interval of ``difference`` at ``confidence``
    lower: float
    upper: float
    confidence: float
    n_bootstrap: int
    n_molecules: int
    n_tasks: int

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def weighted_auc(y: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC-AUC of ``score`` for binary ``y`` (``N``) under each row of weights ``w``
    (``B x N``; integer multiplicities for a bootstrap); ties count a half. ``B`` values;
    NaN where a row weighs one class only."""
    y = np.asarray(y, dtype=bool)
    order = np.argsort(score, kind="stable")
    s, pos = np.asarray(score)[order], y[order]
    w = np.asarray(w, dtype=np.float64)[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # the groups of tied scores
    w_pos = np.add.reduceat(np.where(pos, w, 0.0), starts, axis=1)
    w_neg = np.add.reduceat(np.where(pos, 0.0, w), starts, axis=1)
    below = np.cumsum(w_neg, axis=1) - w_neg  # negatives' weight strictly below each group
    wins = (w_pos * (below + 0.5 * w_neg)).sum(axis=1)
    n_pos, n_neg = w_pos.sum(axis=1), w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), wins / (n_pos * n_neg), np.nan)


def _weighted_rmse(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    r2 = (np.asarray(p, np.float64) - np.asarray(y, np.float64)) ** 2
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.sqrt((w * r2).sum(axis=1) / total), np.nan)


def _task_scores(
    metric: PairedMetric,
    y: np.ndarray,
    censor: np.ndarray,
    kinds: tuple[str, ...],
    pred: np.ndarray,
    w: np.ndarray,
    min_per_class: int,
) -> np.ndarray:
    """``B x T'``: the metric of each scored task under each row of weights."""
    cols = []
    for j, kind in enumerate(kinds):
        obs = np.isfinite(y[:, j])
        if metric == "roc_auc" and kind == "classification":
            yj = y[obs, j] > 0.5
            if yj.sum() < min_per_class or (~yj).sum() < min_per_class:
                continue  # as score_tasks: too few of a class to score
            cols.append(weighted_auc(yj, pred[obs, j], w[:, obs]))
        elif metric == "rmse" and kind == "regression":
            exact = obs & (censor[:, j] == 0)
            if exact.sum() < 2 * min_per_class:
                continue
            cols.append(_weighted_rmse(y[exact, j], pred[exact, j], w[:, exact]))
    return np.stack(cols, axis=1) if cols else np.zeros((w.shape[0], 0))


def paired_bootstrap(
    y: np.ndarray,
    censor: np.ndarray,
    kinds: tuple[str, ...],
    candidate: np.ndarray,
    production: np.ndarray,
    *,
    metric: PairedMetric,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    min_per_class: int = 5,
) -> PairedDifference:
    """The difference of the tasks' mean ``metric`` between two models' predictions
    (``N x T``, as :func:`fedchem.model.train.predict` returns them) on the same molecules,
    with a paired bootstrap over the molecules. The tasks scored are those
    :func:`fedchem.model.metrics.score_tasks` scores, so the point values are the
    ``mean_<metric>`` of its summary. Raises ``ValueError`` when no task can be scored."""
    if candidate.shape != y.shape or production.shape != y.shape:
        raise ValueError(f"predictions {candidate.shape}, {production.shape} for labels {y.shape}")
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), not {confidence}")
    n = len(y)
    ones = np.ones((1, n))
    point_c = _task_scores(metric, y, censor, kinds, candidate, ones, min_per_class)
    point_p = _task_scores(metric, y, censor, kinds, production, ones, min_per_class)
    if point_c.shape[1] == 0:
        raise ValueError(f"no task on these {n} molecules can be scored by {metric}")
    sign = 1.0 if metric == "roc_auc" else -1.0  # > 0: the candidate is better
    c, p = float(point_c.mean()), float(point_p.mean())
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, n_bootstrap, 250):  # blocks bound the memory: 250 x N weights
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(250, n_bootstrap - start))
        bc = _task_scores(metric, y, censor, kinds, candidate, w, min_per_class)
        bp = _task_scores(metric, y, censor, kinds, production, w, min_per_class)
        with np.errstate(invalid="ignore"):
            diffs.append(sign * np.nanmean(bc - bp, axis=1))
    d = np.concatenate(diffs)
    d = d[np.isfinite(d)]
    alpha = 1 - confidence
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2]) if len(d) else (np.nan, np.nan)
    return PairedDifference(
        metric=metric,
        candidate=c,
        production=p,
        difference=sign * (c - p),
        se=float(np.std(d, ddof=1)) if len(d) > 1 else float("nan"),
        lower=float(lo),
        upper=float(hi),
        confidence=confidence,
        n_bootstrap=len(d),
        n_molecules=n,
        n_tasks=point_c.shape[1],
    )


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of ``confidence`` (1.96 at 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)
