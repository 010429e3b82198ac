"""When a candidate becomes production: every site's validation metric, within a tolerance."""

from __future__ import annotations

from fedchem.federation.continual import PromotionPolicy, decide_promotion

POLICY = PromotionPolicy(tolerance=0.01)


def test_a_candidate_better_everywhere_is_promoted():
    prod = {"a": {"mean_roc_auc": 0.70}, "b": {"mean_roc_auc": 0.75}}
    cand = {"a": {"mean_roc_auc": 0.72}, "b": {"mean_roc_auc": 0.745}}  # b within tolerance
    d = decide_promotion(prod, cand, POLICY)
    assert d.promote and d.metric == "mean_roc_auc"
    assert d.per_site["a"]["change"] == 0.02 and d.per_site["b"]["ok"] is True


def test_one_site_worse_beyond_the_tolerance_blocks_the_promotion():
    prod = {"a": {"mean_roc_auc": 0.70}, "b": {"mean_roc_auc": 0.75}}
    cand = {"a": {"mean_roc_auc": 0.80}, "b": {"mean_roc_auc": 0.73}}  # a much better, b not
    d = decide_promotion(prod, cand, POLICY)
    assert not d.promote and d.per_site["b"]["ok"] is False and d.per_site["a"]["ok"] is True
    assert "b (mean_roc_auc 0.7500 -> 0.7300)" in d.reason


def test_lower_is_better_for_rmse_and_missing_sites_block():
    prod = {"a": {"mean_rmse": 1.00}, "b": {"mean_rmse": 0.80}}
    cand = {"a": {"mean_rmse": 0.90}, "b": {"mean_rmse": 0.805}}
    assert decide_promotion(prod, cand, POLICY).promote  # b 0.005 worse: within 0.01
    assert not decide_promotion(prod, {**cand, "b": {"mean_rmse": 0.85}}, POLICY).promote
    lost = decide_promotion(prod, {"a": cand["a"]}, POLICY)
    assert not lost.promote and "did not score the candidate" in lost.reason
    assert decide_promotion(None, cand, POLICY).promote  # the first version goes in
