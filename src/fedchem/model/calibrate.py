"""Conformal calibration of a model at a site: on its validation fold, checked on its test fold.

:func:`calibrate` scores the validation fold per task and returns both what stays at the site
(the exact scores, for the site's own registry) and what may leave it (the scores binned into
histograms, tasks with enough samples only). :func:`conformal_report` measures coverage and
efficiency on the test fold, the figures MELLODDY compared between federated and
single-partner models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedchem.data.dataset import SiteDataset
from fedchem.model import conformal
from fedchem.model.network import MultitaskNet
from fedchem.model.train import predict

__all__ = ["MIN_CALIBRATION", "calibrate", "conformal_report"]

#: a task is calibrated, and its histogram published, only over at least this many samples
#: per class (classification) or in all (regression)
MIN_CALIBRATION = 10


def _scale(model: MultitaskNet, j: int) -> float:
    return float(model.y_std[j].item())


def calibrate(model: MultitaskNet, valid: SiteDataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """(exact, binned): per task, the validation scores (kept at the site) and their
    histograms (what the site may send). Regression uses exact, uncensored labels only."""
    pred = predict(model, valid)
    exact: dict[str, Any] = {}
    binned: dict[str, Any] = {}
    for j, (task, kind) in enumerate(zip(valid.task_names, valid.task_kinds, strict=True)):
        y = valid.y[:, j]
        seen = (
            np.isfinite(y)
            if kind == "classification"
            else np.isfinite(y) & (valid.censor[:, j] == 0)
        )
        if kind == "classification":
            yj, pj = y[seen] > 0.5, pred[seen, j].astype(np.float64)
            if min(int(yj.sum()), int((~yj).sum())) < MIN_CALIBRATION:
                continue
            exact[task] = {
                "kind": kind,
                "n": int(seen.sum()),
                "scores": {"0": sorted(pj[~yj].tolist()), "1": sorted((1.0 - pj[yj]).tolist())},
            }
            binned[task] = {
                "kind": kind,
                "n": int(seen.sum()),
                "hist": conformal.class_histograms(yj, pj),
            }
        else:
            if int(seen.sum()) < MIN_CALIBRATION:
                continue
            scale = _scale(model, j)
            residual = np.abs(y[seen].astype(np.float64) - pred[seen, j]) / scale
            exact[task] = {
                "kind": kind,
                "n": int(seen.sum()),
                "scale": scale,
                "scores": sorted(residual.tolist()),
            }
            binned[task] = {
                "kind": kind,
                "n": int(seen.sum()),
                "scale": scale,
                "hist": conformal.regression_histogram(y[seen], pred[seen, j], scale),
            }
    return exact, binned


def thresholds_of(doc: dict[str, Any], alpha: float) -> dict[str, dict[str, float]]:
    """Per task, the ``1 - alpha`` thresholds of an exact (site) calibration."""
    out: dict[str, dict[str, float]] = {}
    for task, c in doc.items():
        if c["kind"] == "classification":
            out[task] = {
                k: conformal.threshold_from_scores(np.asarray(c["scores"][k]), alpha)
                for k in ("0", "1")
            }
        else:
            out[task] = {"q": conformal.threshold_from_scores(np.asarray(c["scores"]), alpha)}
    return out


def conformal_report(
    model: MultitaskNet, test: SiteDataset, exact: dict[str, Any], alpha: float = 0.1
) -> dict[str, float]:
    """Mean coverage and efficiency over the calibrated tasks on the test fold: for
    classification the share of single-class sets (MELLODDY's efficiency), for regression the
    mean interval width in units of the task's scale."""
    pred = predict(model, test)
    th = thresholds_of(exact, alpha)
    cls_cov, cls_eff, reg_cov, reg_width = [], [], [], []
    index = {t: j for j, t in enumerate(test.task_names)}
    for task, c in exact.items():
        j = index[task]
        y = test.y[:, j]
        seen = (
            np.isfinite(y)
            if c["kind"] == "classification"
            else np.isfinite(y) & (test.censor[:, j] == 0)
        )
        if seen.sum() < 2:
            continue
        scale = float(c.get("scale", 1.0))
        r = conformal.coverage_and_efficiency(c["kind"], y[seen], pred[seen, j], th[task], scale)
        if c["kind"] == "classification":
            cls_cov.append(r["coverage"])
            cls_eff.append(r["efficiency"])
        else:
            reg_cov.append(r["coverage"])
            reg_width.append(r["width"] / scale)
    out: dict[str, float] = {"alpha": alpha}
    if cls_cov:
        out |= {"coverage": float(np.mean(cls_cov)), "efficiency": float(np.mean(cls_eff))}
    if reg_cov:
        out |= {
            "interval_coverage": float(np.mean(reg_cov)),
            "interval_width": float(np.mean(reg_width)),
        }
    out["n_tasks"] = float(len(cls_cov) + len(reg_cov))
    return out
