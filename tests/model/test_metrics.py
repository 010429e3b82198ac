from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, r2_score, roc_auc_score

from fedchem.model.metrics import (
    average_precision,
    brier,
    calibrated_average_precision,
    censored_rmse,
    expected_calibration_error,
    improve_to_perfect,
    r2,
    rmse,
    roc_auc,
)


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed: int):
    rng = np.random.default_rng(seed)
    y = rng.random(200) < 0.3
    p = np.round(rng.random(200) * 0.5 + y * 0.3, 2)  # rounding makes ties
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y, p = rng.normal(size=100), rng.normal(size=100)
    assert r2(y, p) == pytest.approx(r2_score(y, p))
    assert rmse(y, p) == pytest.approx(float(np.sqrt(np.mean((y - p) ** 2))))


def test_single_class_gives_nan():
    assert np.isnan(roc_auc(np.zeros(5, bool), np.arange(5.0)))


def test_brier_and_calibrated_pr_auc_against_sklearn():
    from sklearn.metrics import average_precision_score, brier_score_loss

    rng = np.random.default_rng(3)
    y = np.r_[np.ones(100, bool), np.zeros(100, bool)]  # prevalence 0.5
    p = np.clip(rng.random(200) * 0.6 + y * 0.3, 0, 1)
    assert abs(brier(y, p) - brier_score_loss(y, p)) < 1e-12
    # at the reference prevalence the calibrated PR-AUC is the plain one
    assert abs(calibrated_average_precision(y, p) - average_precision_score(y, p)) < 1e-12
    # at a low prevalence it is higher than the plain PR-AUC (false positives weigh less)
    y2, p2 = y.copy(), p.copy()
    keep = np.r_[np.arange(20), np.arange(100, 200)]
    assert calibrated_average_precision(y2[keep], p2[keep]) > average_precision_score(
        y2[keep], p2[keep]
    )


def test_expected_calibration_error_by_hand():
    y = np.array([1, 0, 1, 1], dtype=bool)
    p = np.array([0.95, 0.95, 0.15, 0.15])
    # bin 9: acc 0.5 vs conf 0.95 → 0.45 × 2/4; bin 1: acc 1.0 vs conf 0.15 → 0.85 × 2/4
    assert abs(expected_calibration_error(y, p) - (0.45 * 0.5 + 0.85 * 0.5)) < 1e-12
    assert expected_calibration_error(np.array([1, 0], bool), np.array([1.0, 0.0])) == 0.0


def test_censored_rmse_counts_only_broken_bounds():
    y = np.array([2.0, 2.0, 2.0, 2.0])
    p = np.array([3.0, 1.0, 1.0, 2.5])
    censor = np.array([-1, -1, 1, 0])  # '<2' broken by 3; '<2' kept by 1; '>2' broken by 1
    assert abs(censored_rmse(y, p, censor) - np.sqrt((1 + 0 + 1 + 0.25) / 4)) < 1e-12


def test_improve_to_perfect():
    assert improve_to_perfect(0.8, 0.6) == pytest.approx(0.5)
    assert improve_to_perfect(0.5, 0.6) == pytest.approx(-0.25)


def test_model_selection_prefers_roc_auc_then_lowest_rmse_and_the_earliest_on_ties():
    from fedchem.model.selection import pick_best

    assert pick_best([{"mean_roc_auc": 0.6}, {"mean_roc_auc": 0.7}, {"mean_roc_auc": 0.7}]) == (
        1, "mean_roc_auc", 0.7,
    )  # fmt: skip
    # a summary without the metric (or NaN) is not a candidate for it
    assert pick_best([{"mean_roc_auc": float("nan")}, {"mean_roc_auc": 0.5}])[0] == 1  # type: ignore[index]
    assert pick_best([{"mean_rmse": 1.2, "mean_r2": float("nan")}, {"mean_rmse": 0.9}]) == (
        1, "mean_rmse", 0.9,
    )  # fmt: skip
    assert pick_best([{"mean_r2": 0.1, "mean_rmse": 0.5}, {"mean_r2": 0.3, "mean_rmse": 0.7}]) == (
        1, "mean_r2", 0.3,
    )  # fmt: skip
    assert pick_best([{"n_tasks_scored": 0.0}]) is None and pick_best([]) is None
