"""A federation that keeps learning: each cycle's candidate against production, by the sites.

A cycle warm-starts from ``production``, lets the sites bring their new rows, trains, and
registers the result under ``candidate``. Every site then scores both versions on its own
validation fold (:func:`evaluate_registered`; aggregates only leave it), and
:func:`decide_promotion` moves ``production`` to the candidate only when no site's validation
metric is worse than production's by more than the policy's tolerance. The decision and the
numbers behind it are recorded in the registry's history; rolling back is an alias move.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field

from fedchem.config import ChemConfig
from fedchem.data.dataset import SiteDataset
from fedchem.messages import EvalReport
from fedchem.model.architectures import build_architecture
from fedchem.model.evaluate import evaluate_at_site
from fedchem.model.selection import SELECTION_METRICS
from fedchem.registry.model import ModelSpec, find_site_part, load_weights
from fedchem.registry.store import Registry, RegistryError
from fedchem.strict import StrictModel

__all__ = ["Decision", "PromotionPolicy", "decide_promotion", "evaluate_registered"]


class PromotionPolicy(StrictModel):
    """When a candidate becomes production."""

    tolerance: float = Field(
        0.01,
        ge=0,
        description="how much worse than production any site's validation metric "
        "may be (ROC-AUC points, or RMSE in the task's units)",
    )
    metric: str | None = Field(
        None,
        description="the validation summary metric (default: mean_roc_auc, else "
        "mean_pr_auc, mean_r2, mean_rmse: the first that every site reports)",
    )


@dataclass
class Decision:
    """Whether the candidate was promoted, and the numbers per site behind it."""

    promote: bool
    reason: str
    metric: str | None
    per_site: dict[str, dict[str, float | bool | None]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "reason": self.reason,
            "metric": self.metric,
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
) -> Decision:
    """Promote unless a site's validation metric falls below production's by more than the
    tolerance (``production``: None when there is none yet, and the candidate goes in)."""
    if production is None:
        return Decision(True, "no production version yet", None)
    missing = sorted(set(production) - set(candidate))
    if missing:
        return Decision(False, f"sites {missing} did not score the candidate", None)
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
        ok = change >= -policy.tolerance
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


def evaluate_registered(
    registry: Registry,
    name: str,
    version: int,
    ds: SiteDataset,
    chem: ChemConfig,
    site: str,
    site_registry: Registry | None = None,
) -> EvalReport:
    """Version ``name:version`` on the site's validation fold (its own heads where it has a
    part for that version); the dataset's tasks must be the model's."""
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
    valid = ds.folds([chem.valid_fold])
    return evaluate_at_site(model, valid, site=site, model_name=f"{name}:{version}", fold="valid")
