"""The demo's report of a federation that keeps learning and of personalization: what the
decision read beside what it could not see, each site's choice, the count against pooled."""

from __future__ import annotations

from fedchem.demo.report import build_report, render_markdown
from fedchem.messages import EvalReport


def _reports(model: str, scores: dict[str, float]) -> list[EvalReport]:
    return [
        EvalReport(
            site=s,
            model=model,
            fold="test",
            n_molecules=100,
            per_task={},
            summary={"mean_roc_auc": v, "n_tasks_scored": 12.0},
        )
        for s, v in scores.items()
    ]


def _paired(d: float, lo: float, hi: float) -> dict[str, float | int | str]:
    return {"metric": "roc_auc", "difference": d, "lower": lo, "upper": hi, "n_molecules": 100}


def test_a_later_cycle_shows_the_decision_its_numbers_and_the_test_folds_verdict():
    evals = {
        "federated": _reports("federated", {"site-a": 0.70, "site-b": 0.75}),
        "personalized": _reports("personalized", {"site-a": 0.70, "site-b": 0.80}),
        "local": _reports("local", {"site-a": 0.65, "site-b": 0.70}),
        "pooled": _reports("pooled", {"site-a": 0.69, "site-b": 0.78}),
    }
    meta = {
        "dataset": "tox21.csv.gz",
        "sites": 2,
        "rounds": 2,
        "local_epochs": 1,
        "personalized": {
            "site-a": {"choice": "federated", "metric": "mean_roc_auc", "valid": {}},
            "site-b": {"choice": "heads+last layer", "metric": "mean_roc_auc", "valid": {}},
        },
        "cycles": [
            {
                "cycle": 1,
                "version": 1,
                "promoted": True,
                "decision": "the first version: production",
                "test": {"site-a": {"mean_roc_auc": 0.70}, "site-b": {"mean_roc_auc": 0.75}},
            },
            {
                "cycle": 2,
                "version": 2,
                "production": 1,
                "arrivals": "shuffled",
                "promoted": False,
                "outcome": "not enough evidence",
                "decision": "not enough evidence: production stays",
                "per_site": {
                    "site-a": {"change": 0.01, "lower": -0.02, "upper": 0.04, "ok": True},
                    "site-b": {"change": -0.03, "lower": -0.06, "upper": 0.0, "ok": True},
                },
                "overall": {"change": -0.01, "lower": -0.03, "upper": 0.01},
                "threshold_rule": {"promote": False, "reason": "site-b dropped"},
                "test": {"site-a": {"mean_roc_auc": 0.71}, "site-b": {"mean_roc_auc": 0.74}},
                "test_paired": {
                    "site-a": _paired(0.01, -0.01, 0.03),
                    "site-b": _paired(-0.01, -0.03, 0.01),
                },
            },
        ],
    }
    md = render_markdown(build_report(evals, meta))
    assert "| 2 | 2 | 0.710 | 0.740 | no: not enough evidence: production stays |" in md
    assert "Cycle 2 (their values shuffled: a drill): candidate 2 against production 1" in md
    assert "**not enough evidence**; the threshold rule" in md and "would have refused" in md
    assert "| site-b | -0.0300 [-0.0600, +0.0000] | no | -0.0100 [-0.0300, +0.0100] |" in md
    assert "| all | -0.0100 [-0.0300, +0.0100] | | |" in md
    # personalization: a row per site, each site's choice, and the count against pooled
    assert "| personalized | site-b | 0.800 |" in md
    assert "site-a federated, site-b heads+last layer" in md
    assert "At least as good as pooled (roc_auc, test fold): 2 of 2 sites." in md
