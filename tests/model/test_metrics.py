from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, r2_score, roc_auc_score

from fedchem.model.metrics import average_precision, r2, rmse, roc_auc


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
