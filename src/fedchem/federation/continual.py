"""A federation that keeps learning: each cycle's candidate against production, by the sites.

A cycle warm-starts from ``production``, lets the sites bring their new rows, trains, and
registers the result under ``candidate``. Every site then scores both versions on the same
molecules of its own validation fold and sends the paired difference with its bootstrap
interval (:func:`score_registered`; aggregates only leave it). :func:`decide_promotion`
promotes when the candidate is better over all sites with confidence and no site is worse
beyond its tolerance with confidence, refuses when one is (or when it is worse overall), and
otherwise says there is not enough evidence: production stays. A fold of a few hundred
molecules moves a site's mean ROC-AUC by a few hundredths; two such numbers compared against a
fixed tolerance (``rule: threshold``, the gate before) block improvements and pass
regressions alike. The decision and the numbers behind it are recorded in the registry's
history; rolling back is an alias move.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from fedchem.data.dataset import SiteDataset
from fedchem.messages import EvalReport
from fedchem.model.architectures import build_architecture
from fedchem.model.evaluate import report_predictions
from fedchem.model.paired import PairedDifference, paired_bootstrap, z_value
from fedchem.model.selection import SELECTION_METRICS
from fedchem.model.train import predict
from fedchem.policy import PromotionPolicy
from fedchem.registry.model import ModelSpec, find_site_part, load_weights
from fedchem.registry.store import Registry, RegistryError

__all__ = [
    "Decision",
    "PromotionPolicy",
    "decide_promotion",
    "decision_table",
    "registered_model",
    "score_registered",
]


Fold = Literal["valid", "test"]
Outcome = Literal["promoted", "refused", "not enough evidence"]


@dataclass
class Decision:
    """Whether the candidate was promoted, and the numbers per site behind it."""

    promote: bool
    reason: str
    metric: str | None
    per_site: dict[str, dict[str, float | bool | None]] = field(default_factory=dict)
    outcome: Outcome | None = None
    rule: str = "threshold"
    overall: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome is None:
            self.outcome = "promoted" if self.promote else "refused"

    def as_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "outcome": self.outcome,
            "rule": self.rule,
            "reason": self.reason,
            "metric": self.metric,
            "overall": self.overall,
            "per_site": self.per_site,
        }


def _metric(
    summaries: list[Mapping[str, float]], policy: PromotionPolicy
) -> tuple[str, bool] | None:
    higher = dict(SELECTION_METRICS)
    candidates = [policy.metric] if policy.metric else [m for m, _ in SELECTION_METRICS]
    for m in candidates:
        if m is not None and all(np.isfinite(s.get(m, np.nan)) for s in summaries):
            return m, higher.get(m, not m.endswith(("rmse", "brier", "ece")))
    return None


def decide_promotion(
    production: Mapping[str, Mapping[str, float]] | None,
    candidate: Mapping[str, Mapping[str, float]],
    policy: PromotionPolicy,
    paired: Mapping[str, Mapping[str, Any]] | None = None,
) -> Decision:
    """The consortium's decision from the sites' validation summaries (``rule: threshold``)
    or their paired comparisons (``rule: confidence``: ``paired`` maps each site to its
    :class:`~fedchem.model.paired.PairedDifference` as a dict). ``production``: None when
    there is none yet, and the candidate goes in."""
    if production is None:
        return Decision(True, "no production version yet", None, rule=policy.rule)
    missing = sorted(set(production) - set(candidate))
    if missing:
        return Decision(
            False, f"sites {missing} did not score the candidate", None, rule=policy.rule
        )
    if policy.rule == "confidence":
        return _decide_with_confidence(sorted(production), paired or {}, policy)
    sites = sorted(production)
    found = _metric([*(production[s] for s in sites), *(candidate[s] for s in sites)], policy)
    if found is None:
        return Decision(False, "no validation metric that every site reports", policy.metric)
    metric, higher = found
    per_site: dict[str, dict[str, float | bool | None]] = {}
    worse = []
    for s in sites:
        p, c = float(production[s][metric]), float(candidate[s][metric])
        change = c - p if higher else p - c  # > 0: the candidate is better
        ok = change >= -policy.tolerance_at(s)
        per_site[s] = {"production": p, "candidate": c, "change": round(change, 6), "ok": ok}
        if not ok:
            worse.append(f"{s} ({metric} {p:.4f} -> {c:.4f})")
    if worse:
        reason = (
            f"worse than production beyond the tolerance {policy.tolerance:g} at: "
            + ", ".join(worse)
        )
        return Decision(False, reason, metric, per_site)
    return Decision(
        True,
        f"no site worse than production by more than {policy.tolerance:g} ({metric})",
        metric,
        per_site,
    )


def decision_table(decision: Decision) -> list[str]:
    """The decision's numbers as markdown lines: per site, then overall (confidence rule)."""
    if decision.rule != "confidence":
        lines = ["| site | production | candidate | change | ok |", "|---|---|---|---|---|"]
        for site, row in decision.per_site.items():
            lines.append(
                f"| {site} | {row['production']:.4f} | {row['candidate']:.4f} | "
                f"{row['change']:+.4f} | {'yes' if row['ok'] else 'no'} |"
            )
        return lines
    level = f"{float(decision.overall.get('confidence', 0.95)):.0%}"
    lines = [
        f"| site | molecules | production | candidate | change | {level} interval | "
        "tolerance | worse beyond it |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for site, row in decision.per_site.items():
        lines.append(
            f"| {site} | {row['n_molecules']} | {row['production']:.4f} | "
            f"{row['candidate']:.4f} | {row['change']:+.4f} | "
            f"[{row['lower']:+.4f}, {row['upper']:+.4f}] | {row['tolerance']:g} | "
            f"{'no' if row['ok'] else '**yes**'} |"
        )
    if decision.overall:
        o = decision.overall
        lines.append(
            f"| **all (weighted by molecules)** | | | | {o['change']:+.4f} | "
            f"[{o['lower']:+.4f}, {o['upper']:+.4f}] | gain > {o['min_gain']:g} | |"
        )
    return lines


def _decide_with_confidence(
    sites: list[str], paired: Mapping[str, Mapping[str, Any]], policy: PromotionPolicy
) -> Decision:
    rule = "confidence"
    lacking = [s for s in sites if s not in paired]
    if lacking:
        return Decision(False, f"sites {lacking} sent no paired comparison", None, rule=rule)
    metrics = {str(paired[s]["metric"]) for s in sites}
    if len(metrics) != 1:
        return Decision(
            False, f"the sites compared on different metrics {metrics}", None, rule=rule
        )
    metric = metrics.pop()
    per_site: dict[str, dict[str, float | bool | None]] = {}
    worse = []
    for s in sites:
        r, tol = paired[s], policy.tolerance_at(s)
        # worse beyond its tolerance with confidence: the whole interval below -tolerance
        is_worse = float(r["upper"]) < -tol
        per_site[s] = {
            "production": float(r["production"]),
            "candidate": float(r["candidate"]),
            "change": round(float(r["difference"]), 6),
            "se": float(r["se"]),
            "lower": float(r["lower"]),
            "upper": float(r["upper"]),
            "tolerance": tol,
            "n_molecules": int(r["n_molecules"]),
            "n_tasks": int(r["n_tasks"]),
            "ok": not is_worse,
        }
        if is_worse:
            worse.append(
                f"{s} ({metric} change {float(r['difference']):+.4f}, "
                f"{policy.confidence:.0%} interval [{float(r['lower']):+.4f}, "
                f"{float(r['upper']):+.4f}] below -{tol:g})"
            )
    # the consortium's difference: the sites' differences weighted by their molecules; the
    # sites' folds are independent, so their standard errors add in quadrature
    n = np.array([float(paired[s]["n_molecules"]) for s in sites])
    w = n / n.sum()
    d = float(np.dot(w, [float(paired[s]["difference"]) for s in sites]))
    se = float(np.sqrt(np.dot(w**2, [float(paired[s]["se"]) ** 2 for s in sites])))
    z = z_value(policy.confidence)
    overall = {
        "change": round(d, 6),
        "se": se,
        "lower": d - z * se,
        "upper": d + z * se,
        "confidence": policy.confidence,
        "min_gain": policy.min_gain,
    }
    interval = f"{d:+.4f} [{d - z * se:+.4f}, {d + z * se:+.4f}]"
    name = f"mean_{metric}"
    if worse:
        reason = "refused: worse than production beyond the tolerance at " + "; ".join(worse)
        return Decision(False, reason, name, per_site, "refused", rule, overall)
    if overall["upper"] < 0:
        reason = f"refused: worse overall with confidence ({name} change {interval})"
        return Decision(False, reason, name, per_site, "refused", rule, overall)
    if overall["lower"] > policy.min_gain:
        reason = (
            f"better overall with confidence ({name} change {interval}) and no site worse "
            "beyond its tolerance"
        )
        return Decision(True, reason, name, per_site, "promoted", rule, overall)
    reason = (
        f"not enough evidence: {name} change {interval} at {policy.confidence:.0%} does not "
        f"exclude a gain of {policy.min_gain:g} or less; production stays"
    )
    return Decision(False, reason, name, per_site, "not enough evidence", rule, overall)


def registered_model(
    registry: Registry,
    name: str,
    version: int,
    ds: SiteDataset,
    site_registry: Registry | None = None,
) -> tuple[torch.nn.Module, ModelSpec]:
    """Version ``name:version`` ready to predict at a site (its own heads where it has a part
    for that version), and its spec; the dataset's tasks must be the model's."""
    spec = ModelSpec.model_validate(registry.read_json(name, version, "spec.json"))
    if tuple(spec.task_names()) != ds.task_names:
        raise ValueError(
            f"{name}:{version} has tasks {spec.task_names()}, the site {ds.task_names}"
        )
    model = build_architecture(spec.architecture, spec.chem.fp_size, len(spec.tasks), spec.model)
    arrays = load_weights(registry.read(name, version, "model.safetensors"))
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
    if site_registry is not None and any(t.private for t in spec.tasks):
        try:
            part_version, _ = find_site_part(site_registry, name, spec.lineage.global_sha256)
        except RegistryError:
            pass  # no part of this version at the site: the hosted rows
        else:
            heads = load_weights(site_registry.read(name, part_version, "heads.safetensors"))
            head = model.get_submodule("head")
            assert isinstance(head, torch.nn.Linear)
            rows = torch.from_numpy(heads["rows"].astype(np.int64))
            with torch.no_grad():
                head.weight[rows] = torch.from_numpy(heads["weight"])
                head.bias[rows] = torch.from_numpy(heads["bias"])
    model.eval()
    return model, spec


def score_registered(
    registry: Registry,
    versions: list[tuple[str, int]],
    ds: SiteDataset,
    site: str,
    site_registry: Registry | None = None,
    fold: Fold = "valid",
    compare: PromotionPolicy | None = None,
) -> tuple[list[EvalReport], PairedDifference | None]:
    """Each version on the site's validation (or test) fold, each loaded and predicting once;
    with ``compare`` (the confidence rule) and two versions (candidate, production), their
    paired bootstrap on the same molecules too (aggregates only; the resamples are seeded by
    the site and the two versions, so the same comparison gives the same numbers again)."""
    preds, part = [], None
    for name, version in versions:
        model, spec = registered_model(registry, name, version, ds, site_registry)
        if part is None:  # the fold as the first version's featurizer and folds define it
            chem = spec.chem
            part = ds.folds([chem.valid_fold if fold == "valid" else chem.test_fold])
        preds.append(predict(model, part).astype(np.float64))
    if part is None:
        return [], None
    reports = [
        report_predictions(p, part, site=site, model_name=f"{n}:{v}", fold=fold)
        for p, (n, v) in zip(preds, versions, strict=True)
    ]
    if compare is None or compare.rule != "confidence" or len(versions) != 2:
        return reports, None
    (cn, cv), (pn, pv) = versions
    seed = int.from_bytes(
        hashlib.sha256(f"{site}:{cn}:{cv}:{pn}:{pv}:{fold}".encode()).digest()[:8]
    )
    paired = paired_bootstrap(
        part.y,
        part.censor,
        part.task_kinds,
        preds[0],
        preds[1],
        metric=compare.paired_metric(part.task_kinds),
        n_bootstrap=compare.n_bootstrap,
        confidence=compare.confidence,
        seed=seed,
    )
    return reports, paired
