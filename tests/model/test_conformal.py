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


def _exact_venn_abers(cal_p: np.ndarray, cal_y: np.ndarray, p: float) -> tuple[float, float]:
    """Venn-ABERS as Vovk & Petej define it, with scikit-learn's isotonic regression."""
    from sklearn.isotonic import IsotonicRegression

    out = []
    for label in (0, 1):
        x, y = np.append(cal_p, p), np.append(cal_y, label)
        fit = IsotonicRegression(out_of_bounds="clip").fit(x, y)
        out.append(float(fit.predict([p])[0]))
    return out[0], out[1]


def test_venn_abers_on_bins_equals_the_exact_method_when_bins_lose_nothing():
    rng = np.random.default_rng(3)
    centres = (np.arange(conformal.BINS) + 0.5) / conformal.BINS
    cal_p = rng.choice(centres, 400)  # scores on bin centres: binning keeps their order
    cal_y = (rng.random(400) < cal_p**2).astype(float)  # an over-confident model
    h = conformal.class_histograms(cal_y, cal_p)
    table = conformal.venn_abers_table(h["0"], h["1"])
    test_p = np.array([0.005, 0.215, 0.505, 0.875, 0.995])
    got = conformal.venn_abers(test_p, table)
    for row, p in zip(got, test_p, strict=True):
        p0, p1 = _exact_venn_abers(cal_p, cal_y, p)
        assert row[1] == pytest.approx(p0) and row[2] == pytest.approx(p1)
        assert row[0] == pytest.approx(p1 / (1 - p0 + p1))
        assert p0 <= row[0] <= p1
    assert np.isnan(conformal.venn_abers(np.array([np.nan]), table)).all()


def test_venn_abers_repairs_an_over_confident_model():
    """Scores p whose true rate is p**2: the raw score is off by up to 0.25; the calibrated
    probability is within a few hundredths of the truth on fresh molecules."""
    rng = np.random.default_rng(4)
    cal_p, test_p = rng.random(5000), rng.random(5000)
    cal_y = rng.random(5000) < cal_p**2
    h = conformal.class_histograms(cal_y, cal_p)
    prob = conformal.venn_abers(test_p, conformal.venn_abers_table(h["0"], h["1"]))[:, 0]
    raw_error = np.abs(test_p - test_p**2).mean()
    calibrated_error = np.abs(prob - test_p**2).mean()
    assert raw_error > 0.15 and calibrated_error < 0.03
