"""Two models on the same molecules: the paired bootstrap's numbers against scikit-learn's and
against the truth of simulated folds."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedchem.model.metrics import score_tasks, summarize
from fedchem.model.paired import paired_bootstrap, weighted_auc


def test_weighted_auc_is_scikit_learns_on_the_rows_each_weight_repeats():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = np.round(rng.random(200), 1)  # many ties: they count a half
    w = rng.multinomial(200, np.full(200, 1 / 200), size=5)
    got = weighted_auc(y, s, np.vstack([np.ones(200), w]))
    assert got[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    for b in range(5):
        rows = np.repeat(np.arange(200), w[b])
        assert got[b + 1] == pytest.approx(roc_auc_score(y[rows], s[rows]), abs=1e-12)
    # a resample with one class only has no ROC-AUC
    assert np.isnan(weighted_auc(y, s, np.where(y, 0.0, 1.0)[None, :]))[0]


def _fold(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """A fold of 3 classification tasks (some labels missing) and one regression task."""
    rng = np.random.default_rng(seed)
    y = np.where(rng.random((n, 4)) < 0.3, 1.0, 0.0)
    y[rng.random((n, 4)) < 0.2] = np.nan
    y[:, 3] = rng.normal(size=n)
    censor = np.zeros_like(y, dtype=np.int8)
    censor[:10, 3] = 1  # censored values are not in the RMSE
    return y, censor, ("classification",) * 3 + ("regression",)


def test_the_point_values_are_the_summary_metrics_the_sites_report():
    y, censor, kinds = _fold(300, 1)
    rng = np.random.default_rng(2)
    a = np.where(np.isfinite(y), y, 0) * 0.3 + 0.7 * rng.random(y.shape)  # probabilities
    b = rng.random(y.shape)
    names = tuple("abcd")
    for metric in ("roc_auc", "rmse"):
        r = paired_bootstrap(y, censor, kinds, a, b, metric=metric, n_bootstrap=200)
        sa = summarize(score_tasks(y, censor, a, names, kinds))
        sb = summarize(score_tasks(y, censor, b, names, kinds))
        assert r.candidate == pytest.approx(sa[f"mean_{metric}"])
        assert r.production == pytest.approx(sb[f"mean_{metric}"])
        sign = 1 if metric == "roc_auc" else -1  # > 0: the candidate is better
        assert r.difference == pytest.approx(sign * (r.candidate - r.production))
        assert r.n_tasks == (3 if metric == "roc_auc" else 1) and r.n_molecules == 300
    assert paired_bootstrap(y, censor, kinds, a, b, metric="roc_auc").lower > 0  # a is better
    # the same model twice: no difference, no spread
    same = paired_bootstrap(y, censor, kinds, a, a, metric="roc_auc", n_bootstrap=200)
    assert same.difference == same.lower == same.upper == same.se == 0


def test_the_interval_covers_the_true_difference_as_often_as_it_claims():
    """Two equally good models (independent noise on the same signal): over 200 simulated
    folds the 90 % interval holds the true difference, 0, about 90 % of the time; a bootstrap
    without the pairing, or one that ignored the tasks' correlation, would not."""
    covered, widths = 0, []
    for rep in range(200):
        rng = np.random.default_rng(100 + rep)
        n = 250
        y = (rng.random((n, 2)) < 0.3).astype(np.float64)
        signal = y + rng.normal(scale=1.0, size=(n, 1))  # both tasks share molecules' noise
        a = signal + rng.normal(scale=0.7, size=(n, 2))
        b = signal + rng.normal(scale=0.7, size=(n, 2))
        r = paired_bootstrap(
            y,
            np.zeros_like(y, dtype=np.int8),
            ("classification",) * 2,
            a,
            b,
            metric="roc_auc",
            n_bootstrap=300,
            confidence=0.9,
            seed=rep,
        )
        covered += r.lower <= 0 <= r.upper
        widths.append(r.upper - r.lower)
    assert 0.84 <= covered / 200 <= 0.96
    assert 0.01 < float(np.median(widths)) < 0.2


def test_bad_input_is_refused_with_the_reason():
    y, censor, kinds = _fold(50, 3)
    with pytest.raises(ValueError, match="predictions"):
        paired_bootstrap(y, censor, kinds, y[:, :2], y[:, :2], metric="roc_auc")
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(y, censor, kinds, y, y, metric="roc_auc", confidence=1.0)
    with pytest.raises(ValueError, match="no task"):
        paired_bootstrap(y[:4], censor[:4], kinds, y[:4], y[:4], metric="roc_auc")
