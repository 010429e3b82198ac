from __future__ import annotations

import numpy as np
import pytest

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


def test_standard_metrics_by_hand_ties_included():
    y = np.array([1, 1, 0, 0, 1], dtype=bool)
    p = np.array([0.9, 0.5, 0.5, 0.1, 0.2])
    # positive-negative pairs: (0.9 > both) 2, (0.5 vs 0.5) 0.5 + (0.5 > 0.1) 1, (0.2 > 0.1) 1
    assert roc_auc(y, p) == pytest.approx(4.5 / 6)
    # thresholds 0.9, 0.5 (two tied), 0.2: precision 1, 2/3, 3/4 at recall 1/3, 2/3, 1
    assert average_precision(y, p) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert rmse(np.array([1.0, 3.0]), np.array([2.0, 1.0])) == pytest.approx(np.sqrt(2.5))
    assert r2(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0])) == pytest.approx(0.5)


def test_undefined_scores_are_nan_not_errors():
    """One class only, no positive, too few or constant regression labels: NaN (the task is
    then left out of the means), where scikit-learn itself would raise or warn."""
    assert np.isnan(roc_auc(np.zeros(5, bool), np.arange(5.0)))
    assert np.isnan(roc_auc(np.ones(5, bool), np.arange(5.0)))
    assert np.isnan(average_precision(np.zeros(5, bool), np.arange(5.0)))
    assert np.isnan(r2(np.array([1.0]), np.array([2.0])))
    assert np.isnan(r2(np.array([2.0, 2.0, 2.0]), np.array([1.0, 2.0, 3.0])))
    assert np.isnan(rmse(np.zeros(0), np.zeros(0))) and np.isnan(brier(np.zeros(0), np.zeros(0)))


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
