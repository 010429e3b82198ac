"""Metrics computed at a site, leaving it only as aggregates (per task and means).

The standard ones are scikit-learn's (ROC-AUC, average precision as PR-AUC, Brier, RMSE,
R²), returning NaN where a score is undefined (one class only, too few values) instead of
raising; fedchem adds what scikit-learn lacks: the calibrated PR-AUC, the expected
calibration error, the RMSE of censored values and MELLODDY's improve-to-perfect. RMSE and R²
use exact (uncensored) regression labels. A classification task is scored only with at least
``min_per_class`` of each class.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

__all__ = [
    "average_precision",
    "brier",
    "calibrated_average_precision",
    "censored_rmse",
    "expected_calibration_error",
    "improve_to_perfect",
    "r2",
    "rmse",
    "roc_auc",
    "score_tasks",
    "summarize",
]


def _both_classes(y: np.ndarray) -> bool:
    y = np.asarray(y, dtype=bool)
    return bool(y.any() and not y.all())


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """scikit-learn's ROC-AUC; NaN with one class only."""
    return float(skm.roc_auc_score(y, p)) if _both_classes(y) else float("nan")


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """scikit-learn's average precision (PR-AUC); NaN without a positive."""
    return float(skm.average_precision_score(y, p)) if np.any(y) else float("nan")


def calibrated_average_precision(y: np.ndarray, p: np.ndarray, pi0: float = 0.5) -> float:
    """PR-AUC with precision recomputed at a reference prevalence ``pi0`` (Siblini et al. 2020).

    ``precision_c = TPR*pi0 / (TPR*pi0 + FPR*(1 - pi0))``: comparable across tasks and sites
    whose prevalences differ; equals :func:`average_precision` when the prevalence is ``pi0``.
    """
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(-np.asarray(p, dtype=np.float64), kind="mergesort")
    ys, ps = y[order], np.asarray(p, dtype=np.float64)[order]
    last = np.r_[ps[1:] != ps[:-1], True]
    tp, fp = np.cumsum(ys)[last], np.cumsum(~ys)[last]
    tpr, fpr = tp / n_pos, fp / n_neg
    precision = tpr * pi0 / (tpr * pi0 + fpr * (1 - pi0))
    prev = np.r_[0.0, tpr[:-1]]
    return float(np.sum((tpr - prev) * precision))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """scikit-learn's Brier score: mean squared difference of probability and 0/1 label."""
    return float(skm.brier_score_loss(y, p)) if len(y) else float("nan")


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE over ``n_bins`` equal-width probability bins: sum of |accuracy − confidence| × share."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if not len(y):
        return float("nan")
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        m = bins == b
        total += abs(float(y[m].mean()) - float(p[m].mean())) * m.sum() / len(y)
    return total


def censored_rmse(y: np.ndarray, p: np.ndarray, censor: np.ndarray) -> float:
    """RMSE over exact and censored values; a bound counts only when the prediction breaks it."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    r = p - y
    r = np.where(censor < 0, np.maximum(r, 0.0), r)  # '<': only a prediction above y errs
    r = np.where(censor > 0, np.minimum(r, 0.0), r)  # '>': only a prediction below y errs
    return float(np.sqrt(np.mean(r**2))) if len(y) else float("nan")


def improve_to_perfect(federated: float, local: float) -> float:
    """MELLODDY's relative gain ``(MP - SP) / (1 - SP)`` for a metric whose best value is 1."""
    return (federated - local) / (1.0 - local) if local < 1.0 else float("nan")


def rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(skm.root_mean_squared_error(y, p)) if len(y) else float("nan")


def r2(y: np.ndarray, p: np.ndarray) -> float:
    """scikit-learn's R²; NaN for fewer than two values or constant labels."""
    if len(y) < 2 or float(np.ptp(np.asarray(y, dtype=np.float64))) == 0.0:
        return float("nan")
    return float(skm.r2_score(y, p))


def score_tasks(
    y: np.ndarray,
    censor: np.ndarray,
    pred: np.ndarray,
    names: tuple[str, ...],
    kinds: tuple[str, ...],
    min_per_class: int = 5,
) -> dict[str, dict[str, float]]:
    """Per-task aggregate metrics; tasks without enough data are left out."""
    out: dict[str, dict[str, float]] = {}
    for j, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        obs = np.isfinite(y[:, j])
        if kind == "classification":
            yj = y[obs, j] > 0.5
            if yj.sum() < min_per_class or (~yj).sum() < min_per_class:
                continue
            pj = pred[obs, j]
            out[name] = {
                "roc_auc": roc_auc(yj, pj),
                "pr_auc": average_precision(yj, pj),
                "pr_auc_calibrated": calibrated_average_precision(yj, pj),
                "brier": brier(yj, pj),
                "ece": expected_calibration_error(yj, pj),
                "n": float(obs.sum()),
            }
        else:
            exact = obs & (censor[:, j] == 0)
            if exact.sum() < 2 * min_per_class:
                continue
            out[name] = {
                "rmse": rmse(y[exact, j], pred[exact, j]),
                "r2": r2(y[exact, j], pred[exact, j]),
                "rmse_censored": censored_rmse(y[obs, j], pred[obs, j], censor[obs, j]),
                "n": float(exact.sum()),
            }
    return out


def summarize(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the scored tasks, plus how many tasks were scored."""
    keys = sorted({k for m in per_task.values() for k in m if k != "n"})
    out = {
        f"mean_{k}": float(np.nanmean([m[k] for m in per_task.values() if k in m])) for k in keys
    }
    out["n_tasks_scored"] = float(len(per_task))
    return out
