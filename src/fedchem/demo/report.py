"""The demo's comparison: federated vs each site's local-only model vs the pooled model.

All numbers are aggregates each site computed on its own test fold. ``overall`` is the mean
over sites of each site's mean over its scored tasks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedchem.messages import EvalReport
from fedchem.model.metrics import improve_to_perfect

__all__ = ["build_report", "cross_site_matrix", "render_markdown", "write_report"]

#: the demo's models, in the order its tables list them (personalized: where the demo ran it)
MODELS = ("federated", "personalized", "local", "pooled")


def _metric_keys(reports: Sequence[EvalReport]) -> list[str]:
    return sorted({k for r in reports for k in r.summary if k.startswith("mean_")})


def cross_site_matrix(
    evals: dict[str, list[EvalReport]], cross: Sequence[EvalReport], metric: str
) -> dict[str, dict[str, float | None]]:
    """``matrix[model][site]``: ``metric`` of each model on each site's test fold.

    Rows: ``federated`` (the global model), ``local:<owner>`` (each site's local-only model)
    and ``pooled``; the diagonal of the local rows is each site's own local model.
    """
    key = f"mean_{metric}"
    rows: dict[str, dict[str, float | None]] = {}

    def put(model: str, r: EvalReport) -> None:
        v = r.summary.get(key)
        rows.setdefault(model, {})[r.site] = None if v is None or not np.isfinite(v) else float(v)

    for r in evals["federated"]:
        put("federated", r)
    for r in evals["local"]:
        put(f"local:{r.site}", r)
    for r in cross:
        put(r.model, r)
    for r in evals["pooled"]:
        put("pooled", r)
    return rows


def build_report(
    evals: dict[str, list[EvalReport]],
    meta: dict[str, Any],
    cross: Sequence[EvalReport] | None = None,
) -> dict[str, Any]:
    """``evals[model]`` holds one test-fold EvalReport per site; ``cross`` the other sites'
    local models scored at each site (the off-diagonal of the cross-site matrix)."""
    keys = _metric_keys([r for rs in evals.values() for r in rs])
    out: dict[str, Any] = {"meta": meta, "metrics": [k.removeprefix("mean_") for k in keys]}
    for model in (m for m in MODELS if m in evals):
        per_site: dict[str, dict[str, Any]] = {
            r.site: {k.removeprefix("mean_"): r.summary.get(k) for k in keys}
            | {
                "n_tasks_scored": r.summary.get("n_tasks_scored", 0.0),
                "n_test_molecules": r.n_molecules,
                "selected": r.selected,
                "conformal": r.conformal,
            }
            for r in evals[model]
        }
        overall = {
            k.removeprefix("mean_"): float(
                np.nanmean([r.summary.get(k, np.nan) for r in evals[model]])
            )
            for k in keys
        }
        out[model] = {"overall": overall, "per_site": per_site}
    # MELLODDY's per-site gain of the federated model over the site's own: (MP - SP) / (1 - SP)
    if "roc_auc" in out["metrics"]:
        out["improve_to_perfect_roc_auc"] = {
            site: improve_to_perfect(v["roc_auc"], out["local"]["per_site"][site]["roc_auc"])
            for site, v in out["federated"]["per_site"].items()
            if v.get("roc_auc") is not None and site in out["local"]["per_site"]
        }
    if cross:
        metric = "roc_auc" if "roc_auc" in out["metrics"] else "rmse"
        out["cross_site"] = {"metric": metric, "matrix": cross_site_matrix(evals, cross, metric)}
    return out


def render_markdown(report: dict[str, Any]) -> str:
    metrics = report["metrics"]
    models = [m for m in MODELS if m in report]
    sites = sorted(report["federated"]["per_site"])
    lines = ["# fedchem demo: federated vs local-only vs pooled", ""]
    meta = report["meta"]
    lines.append(
        f"Dataset `{meta['dataset']}`, {meta['sites']} sites, {meta['rounds']} rounds × "
        f"{meta['local_epochs']} local epoch(s); each model trained for the same number of "
        "epochs over its data. Scores are each site's own test fold (scaffold folds)."
    )
    if meta.get("select") == "best_valid":
        picked = {
            m: sorted({p.get("selected") for p in report[m]["per_site"].values()} - {None})
            for m in models
        }
        lines.append(
            "Every model is the one best on the validation fold: the federated model's round "
            "chosen by each site on its own, the baselines' epoch likewise (chosen: "
            + "; ".join(f"{m} {', '.join(map(str, picked[m])) or 'n/a'}" for m in models)
            + ")."
        )
    lines += _privacy_lines(meta.get("privacy") or {})
    if meta.get("secure_aggregation"):
        lines += [
            "",
            "The updates were aggregated securely: the coordinator and the hub held masked "
            "updates and their sum only (no cross-site matrix: no site's local model is "
            "published).",
        ]
    lines.append("")
    header = "| model | site | " + " | ".join(metrics) + " |"
    lines += [header, "|" + "---|" * (len(metrics) + 2)]
    for model in models:
        o = report[model]["overall"]
        lines.append(f"| {model} | **all** | " + " | ".join(f"{o[m]:.3f}" for m in metrics) + " |")
    for site in sites:
        for model in models:
            p = report[model]["per_site"][site]
            vals = " | ".join("n/a" if p.get(m) is None else f"{p[m]:.3f}" for m in metrics)
            lines.append(f"| {model} | {site} | {vals} |")
    lines += _personalized_lines(report, sites)
    lines += _conformal_lines(report, sites)
    lines += _cycle_lines(meta.get("cycles") or [], sites)
    if meta.get("registered"):
        lines += [
            "",
            f"Registered as `{meta['registered']}` (alias `production`) in "
            f"`{meta['registry']}`; each site's part in `sites/<site>/registry`.",
        ]
    gains = report.get("improve_to_perfect_roc_auc")
    if gains:
        lines += [
            "",
            "Federated over local-only, (MP − SP) / (1 − SP) on ROC-AUC: "
            + ", ".join(f"{s} {g:+.3f}" for s, g in sorted(gains.items())),
        ]
    cross = report.get("cross_site")
    sample = report.get("meta", {}).get("cross_site_sample")
    if cross and sample:  # many sites: the pairs drawn, one a line (a matrix would be n/a)
        lines += [
            "",
            f"Cross-site evaluation ({cross['metric']} on each site's test fold), sampled: each "
            f"site scores {sample} other sites' local models:",
            "",
            "| site | local model | score |",
            "|---|---|---|",
        ]
        for model, row in cross["matrix"].items():
            if not model.startswith("local:"):
                continue
            for s in sites:
                if row.get(s) is not None and f"local:{s}" != model:
                    lines.append(f"| {s} | {model.removeprefix('local:')} | {row[s]:.3f} |")
    elif cross:
        lines += [
            "",
            f"Cross-site evaluation ({cross['metric']} on each site's test fold; "
            "rows: models, columns: sites):",
            "",
            "| model | " + " | ".join(sites) + " |",
            "|" + "---|" * (len(sites) + 1),
        ]
        for model, row in cross["matrix"].items():
            vals = " | ".join("n/a" if row.get(s) is None else f"{row[s]:.3f}" for s in sites)
            lines.append(f"| {model} | {vals} |")
    return "\n".join(lines) + "\n"


def _privacy_lines(privacy: dict[str, Any]) -> list[str]:
    level = privacy.get("level", "none")
    if level == "site":
        return [
            f"The federated model is site-level DP (clip {privacy['clip']:g}, noise multiplier "
            f"{privacy['noise_multiplier']:.3g}): epsilon {privacy['epsilon_run']:.3f} at delta "
            f"{privacy['delta']:g}; the baselines are not private."
        ]
    if level == "record":
        eps = ", ".join(f"{s} {e:.3f}" for s, e in sorted(privacy["epsilon_per_site"].items()))
        return [
            f"The federated model is record-level DP (DP-SGD, clip {privacy['clip']:g}): epsilon "
            f"at delta {privacy['delta']:g} per site: {eps}; the baselines are not private."
        ]
    return []


def _cycle_lines(cycles: list[dict[str, Any]], sites: list[str]) -> list[str]:
    """The federation that keeps learning, cycle by cycle: each version's test-fold score per
    site and the decision; then, per later cycle, the numbers the decision read (validation,
    paired) beside what it could not see (the same comparison on the test fold)."""
    if len(cycles) < 2:
        return []
    metric = next(
        (m for m in ("mean_roc_auc", "mean_rmse") if m in cycles[0]["test"].get(sites[0], {})), None
    )
    if metric is None:
        return []
    out = [
        "",
        f"Cycles (a federation that keeps learning; {metric.removeprefix('mean_')} on each "
        "site's test fold; cycle 2 on: the held-back rows arrive, the candidate starts from "
        "production and each site compares the two on the same validation molecules):",
        "",
        "| cycle | version | " + " | ".join(sites) + " | production? |",
        "|" + "---|" * (len(sites) + 3),
    ]
    for c in cycles:
        vals = " | ".join(f"{c['test'].get(s, {}).get(metric, float('nan')):.3f}" for s in sites)
        verdict = "yes" if c["promoted"] else f"no: {c['decision']}"
        out.append(f"| {c['cycle']} | {c['version']} | {vals} | {verdict} |")
    for c in cycles[1:]:
        if not c.get("test_paired"):
            continue
        arrivals = " (their values shuffled: a drill)" if c.get("arrivals") == "shuffled" else ""
        old = c["threshold_rule"]
        out += [
            "",
            f"Cycle {c['cycle']}{arrivals}: candidate {c['version']} against production "
            f"{c['production']}, **{c['outcome']}**; the threshold rule (each site's validation "
            f"score against a fixed tolerance) would have "
            f"{'promoted' if old['promote'] else 'refused'}. Change > 0: the candidate is "
            "better; intervals from the paired bootstrap at each site:",
            "",
            "| site | validation change [interval] | worse beyond tolerance | "
            "test change [interval] |",
            "|---|---|---|---|",
        ]
        for s in sites:
            v, t = c["per_site"].get(s, {}), c["test_paired"].get(s) or {}
            valid = (
                f"{v['change']:+.4f} [{v['lower']:+.4f}, {v['upper']:+.4f}]"
                if "lower" in v
                else f"{v.get('change', float('nan')):+.4f}"
            )
            test = f"{t['difference']:+.4f} [{t['lower']:+.4f}, {t['upper']:+.4f}]" if t else ""
            worse = "" if not v else ("no" if v.get("ok") else "yes")
            out.append(f"| {s} | {valid} | {worse} | {test} |")
        if o := c.get("overall"):
            out.append(f"| all | {o['change']:+.4f} [{o['lower']:+.4f}, {o['upper']:+.4f}] | | |")
    return out


def _personalized_lines(report: dict[str, Any], sites: list[str]) -> list[str]:
    """Each site's personalization (chosen on its validation fold) and how it compares with
    the pooled model on the site's test fold."""
    chosen = report["meta"].get("personalized") or {}
    if not chosen or "personalized" not in report:
        return []
    metric = "roc_auc" if "roc_auc" in report["metrics"] else "rmse"
    higher = metric == "roc_auc"
    at_least = [
        s
        for s in sites
        if (p := report["personalized"]["per_site"][s].get(metric)) is not None
        and (q := report["pooled"]["per_site"][s].get(metric)) is not None
        and (p >= q if higher else p <= q)
    ]
    return [
        "",
        "Personalized: each site's choice on its validation fold (its heads, or heads and "
        "last layer, fine-tuned on the site's own rows where better than the federated model "
        "with 90 % confidence; else the federated model as it is): "
        + ", ".join(f"{s} {chosen[s]['choice']}" for s in sites if s in chosen)
        + f". At least as good as pooled ({metric}, test fold): {len(at_least)} of "
        f"{len(sites)} sites.",
    ]


def _conformal_lines(report: dict[str, Any], sites: list[str]) -> list[str]:
    """Conformal prediction per site and model (α = 0.1, calibrated on the site's validation
    fold, measured on its test fold): MELLODDY compared the efficiency of federated and
    single-partner models this way."""
    rows = []
    for site in sites:
        for model in (m for m in MODELS if m in report):
            c = report[model]["per_site"][site].get("conformal") or {}
            if not c:
                continue
            cells = [
                c.get(k) for k in ("coverage", "efficiency", "interval_coverage", "interval_width")
            ]
            rows.append(
                f"| {model} | {site} | "
                + " | ".join("" if v is None else f"{v:.3f}" for v in cells)
                + " |"
            )
    if not rows:
        return []
    return [
        "",
        "Conformal prediction (α = 0.1; calibrated on each site's validation fold, "
        "measured on its test fold; efficiency: share of single-class sets; interval width "
        "in units of the task's scale):",
        "",
        "| model | site | coverage | efficiency | interval coverage | interval width |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j, m = out_dir / "report.json", out_dir / "report.md"
    j.write_text(json.dumps(report, indent=2, sort_keys=True))
    m.write_text(render_markdown(report))
    return j, m
