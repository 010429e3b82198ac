"""Model selection on a validation fold: the best of several candidates, by one rule.

Every model fedchem reports can be chosen the same way (``train.select: best_valid``): the
federated round a site scores best on its own validation fold, and a baseline's best epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedchem.data.dataset import SiteDataset
from fedchem.model.evaluate import evaluate_at_site
from fedchem.model.network import MultitaskNet

__all__ = ["SELECTION_METRICS", "BestSoFar", "EpochSelector", "pick_best"]


#: validation metrics a model is selected on, by preference, and whether higher is better:
#: classification on ROC-AUC (then PR-AUC), regression on R² (then RMSE)
SELECTION_METRICS = (
    ("mean_roc_auc", True),
    ("mean_pr_auc", True),
    ("mean_r2", True),
    ("mean_rmse", False),
)


def pick_best(summaries: Sequence[dict[str, float]]) -> tuple[int, str, float] | None:
    """Index of the best of ``summaries`` (validation summaries of candidate models) by the
    first metric of ``SELECTION_METRICS`` that any of them has; the earliest wins a tie.

    Returns (index, metric, value), or None when none has a finite selection metric.
    """
    for metric, higher in SELECTION_METRICS:
        have = [
            (i, s[metric]) for i, s in enumerate(summaries) if np.isfinite(s.get(metric, np.nan))
        ]
        if have:
            i, v = (max if higher else min)(have, key=lambda iv: iv[1])
            return i, metric, float(v)
    return None


class BestSoFar:
    """Validation summaries of candidate models, offered one at a time: ``offer`` says whether
    the latest is now the best (``pick_best``; the earliest wins a tie)."""

    def __init__(self) -> None:
        self.summaries: list[dict[str, float]] = []

    def offer(self, summary: dict[str, float]) -> bool:
        self.summaries.append(summary)
        best = pick_best(self.summaries)
        return best is not None and best[0] == len(self.summaries) - 1


class EpochSelector:
    """Model selection for a baseline trained epoch by epoch (``train_epochs(after_epoch=)``):
    scores the model on a validation fold after every epoch, keeps the best epoch's weights
    (``SELECTION_METRICS``; the earliest wins a tie) and puts them back in ``restore``."""

    def __init__(self, model: MultitaskNet, valid: SiteDataset, site: str) -> None:
        self.model, self.valid, self.site = model, valid, site
        self._best = BestSoFar()
        self.best_epoch: int | None = None
        self._best_state: dict[str, torch.Tensor] | None = None

    def __call__(self, epoch: int) -> None:
        report = evaluate_at_site(
            self.model, self.valid, site=self.site, model_name=f"epoch-{epoch + 1}", fold="valid"
        )
        if self._best.offer(report.summary):
            self.best_epoch = epoch + 1
            self._best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }

    @property
    def summaries(self) -> list[dict[str, float]]:
        """The validation summary of every epoch so far."""
        return self._best.summaries

    def restore(self) -> int | None:
        """Load the best epoch's weights into the model; returns that epoch (from 1)."""
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        return self.best_epoch
