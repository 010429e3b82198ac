from __future__ import annotations

from fedchem.model.selection import pick_best


def test_model_selection_prefers_roc_auc_then_lowest_rmse_and_the_earliest_on_ties():
    assert pick_best([{"mean_roc_auc": 0.6}, {"mean_roc_auc": 0.7}, {"mean_roc_auc": 0.7}]) == (
        1,
        "mean_roc_auc",
        0.7,
    )
    # a summary without the metric (or NaN) is not a candidate for it
    assert pick_best([{"mean_roc_auc": float("nan")}, {"mean_roc_auc": 0.5}])[0] == 1  # type: ignore[index]
    assert pick_best([{"mean_rmse": 1.2, "mean_r2": float("nan")}, {"mean_rmse": 0.9}]) == (
        1,
        "mean_rmse",
        0.9,
    )
    assert pick_best([{"mean_r2": 0.1, "mean_rmse": 0.5}, {"mean_r2": 0.3, "mean_rmse": 0.7}]) == (
        1,
        "mean_r2",
        0.3,
    )
    assert pick_best([{"n_tasks_scored": 0.0}]) is None and pick_best([]) is None
