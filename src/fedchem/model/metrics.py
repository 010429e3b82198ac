"""Metrics computed at a site, leaving it only as aggregates (per task and means).

ROC-AUC (Mann-Whitney with average ranks for ties) and PR-AUC (average precision, the
step-wise definition scikit-learn uses); RMSE and R² on exact (uncensored) regression labels.
A classification task is scored only with at least ``min_per_class`` of each class.
"""

from __future__ import annotations


import numpy as np

__all__ = [
    "average_precision",
    "r2",
    "rmse",
    "roc_auc",
    "score_tasks",
    "summarize",
]


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (what ROC-AUC's U statistic needs)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks start..end-1 (0-based) → mean, 1-based
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(p, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(p, dtype=np.float64), kind="mergesort")
    ys, ps = y[order], np.asarray(p, dtype=np.float64)[order]
    tp = np.cumsum(ys)
    # evaluate only at the last position of each run of tied scores (threshold points)
    last = np.r_[ps[1:] != ps[:-1], True]
    tp, k = tp[last], (np.flatnonzero(last) + 1)
    precision = tp / k
    recall = tp / n_pos
    prev_recall = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev_recall) * precision))


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
    """Mean squared difference between predicted probability and the 0/1 label."""
    y = np.asarray(y, dtype=np.float64)
    return float(np.mean((np.asarray(p, dtype=np.float64) - y) ** 2)) if len(y) else float("nan")


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
    return float(np.sqrt(np.mean((np.asarray(y) - np.asarray(p)) ** 2))) if len(y) else float("nan")


def r2(y: np.ndarray, p: np.ndarray) -> float:
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if len(y) < 2:
        return float("nan")
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - p) ** 2)) / ss_tot if ss_tot > 0 else float("nan")


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
