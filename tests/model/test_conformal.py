"""Conformal prediction from binned counts keeps its coverage, and bins cost only a little."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedchem.model import conformal


def _classification(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.random(n) < 0.3
    logit = rng.normal(loc=np.where(y, 1.0, -1.0), scale=1.2)
    return y, 1 / (1 + np.exp(-logit))


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_class_sets_from_summed_site_histograms_cover_held_out_data(alpha: float):
    """Three sites send histograms; their sum calibrates; fresh data is covered at >= 1 - alpha
    less a tolerance of 0.02 (5,000 held-out molecules: the binomial spread is ~0.004)."""
    rng = np.random.default_rng(7)
    sites = [_classification(rng, n) for n in (400, 250, 150)]
    hists = [conformal.class_histograms(y, p) for y, p in sites]
    total = {c: list(np.sum([h[c] for h in hists], axis=0)) for c in ("0", "1")}
    q = {c: conformal.threshold_from_histogram(total[c], alpha, 1.0) for c in ("0", "1")}
    y, p = _classification(rng, 5000)
    r = conformal.coverage_and_efficiency("classification", y, p, q)
    assert r["coverage"] >= 1 - alpha - 0.02
    # the binned threshold is the exact one rounded up to a bin edge: never below it
    all_y = np.concatenate([s[0] for s in sites])
    all_p = np.concatenate([s[1] for s in sites])
    exact = conformal.threshold_from_scores(1 - all_p[all_y], alpha)
    assert exact <= q["1"] <= exact + 1 / conformal.BINS


def test_regression_intervals_cover_and_overflow_is_counted():
    rng = np.random.default_rng(3)
    y_cal = rng.normal(size=800)
    pred_cal = y_cal + rng.normal(scale=0.5, size=800)
    counts = conformal.regression_histogram(y_cal, pred_cal, scale=1.0)
    assert len(counts) == conformal.BINS + 1 and sum(counts) == 800
    q = conformal.threshold_from_histogram(counts, 0.1, conformal.REGRESSION_RANGE)
    y = rng.normal(size=5000)
    r = conformal.coverage_and_efficiency(
        "regression", y, y + rng.normal(scale=0.5, size=5000), {"q": q}
    )
    assert r["coverage"] >= 0.88 and r["width"] == pytest.approx(2 * q)
    far = conformal.regression_histogram(np.zeros(3), np.array([0.0, 20.0, 30.0]), 1.0)
    assert far[-1] == 2 and sum(far) == 3  # beyond the range: the overflow bin
    assert conformal.threshold_from_histogram(far, 0.5, conformal.REGRESSION_RANGE) == math.inf


def test_too_few_calibration_samples_give_no_finite_threshold():
    assert conformal.threshold_from_histogram([1] + [0] * conformal.BINS, 0.1, 1.0) == math.inf
    assert conformal.threshold_from_scores(np.array([0.1, 0.2]), 0.1) == math.inf
    assert conformal.threshold_from_scores(np.arange(1, 101) / 100, 0.1) == pytest.approx(0.91)
