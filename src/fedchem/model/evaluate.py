"""A model scored on a site's fold: per-task metrics and their means, aggregates only."""

from __future__ import annotations

import numpy as np
import torch

from fedchem.data.dataset import SiteDataset
from fedchem.messages import EvalReport
from fedchem.model.metrics import score_tasks, summarize
from fedchem.model.train import predict

__all__ = ["evaluate_at_site", "report_predictions"]


def evaluate_at_site(
    model: torch.nn.Module, ds: SiteDataset, *, site: str, model_name: str, fold: str
) -> EvalReport:
    return report_predictions(predict(model, ds), ds, site=site, model_name=model_name, fold=fold)


def report_predictions(
    pred: np.ndarray, ds: SiteDataset, *, site: str, model_name: str, fold: str
) -> EvalReport:
    """The report of predictions already made on ``ds`` (``N x T``, as ``predict`` gives)."""
    per_task = score_tasks(ds.y, ds.censor, pred, ds.task_names, ds.task_kinds)
    return EvalReport(
        site=site,
        model=model_name,
        fold=fold,
        n_molecules=len(ds),
        per_task=per_task,
        summary=summarize(per_task),
    )
