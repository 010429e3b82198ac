"""Calibrating a federated model for serving: each site on its own validation fold.

A site scores the model it uses (the global model of the chosen round, with its own private
heads) on its validation fold. The exact conformal scores and its head rows go to the site's
own registry and stay there; what leaves the site for the hosted model is
:class:`~fedchem.messages.SiteCalibration`: the scores as counts over fixed bins, and a
histogram of the fold's applicability-domain scores against the federation's supported columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedchem.config import ChemConfig, ModelConfig, SiteConfig
from fedchem.federation.site import global_model_at_site, load_site_dataset, private_rows
from fedchem.messages import SiteCalibration
from fedchem.model.calibrate import calibrate
from fedchem.model.domain import domain_scores, score_histogram
from fedchem.model.network import MultitaskNet
from fedchem.registry.model import SitePart, dumps, save_weights
from fedchem.registry.store import Registry
from fedchem.storage.hub import HubLayout, HubStore

__all__ = ["SiteCalibrationResult", "calibrate_site", "publish_site_part"]


class SiteCalibrationResult:
    """What a site's calibration produced: the message that may leave, what stays."""

    def __init__(
        self,
        message: SiteCalibration,
        exact: dict[str, Any],
        heads: dict[str, np.ndarray],
        private_tasks: list[str],
    ) -> None:
        self.message, self.exact, self.heads, self.private_tasks = (
            message,
            exact,
            heads,
            private_tasks,
        )


def _heads(model: MultitaskNet, rows: np.ndarray) -> dict[str, np.ndarray]:
    idx = rows.astype(np.int64)
    return {
        "rows": idx,
        "weight": model.head.weight.detach().numpy()[idx].copy(),
        "bias": model.head.bias.detach().numpy()[idx].copy(),
    }


def calibrate_site(
    site: SiteConfig,
    hub: HubStore,
    run_id: str,
    rnd: int,
    chem: ChemConfig,
    model_cfg: ModelConfig,
    private_tasks: list[str],
) -> SiteCalibrationResult:
    """Calibrate round ``rnd``'s model at ``site`` (see the module docstring)."""
    ds = load_site_dataset(site)
    model, sha = global_model_at_site(site, hub, run_id, rnd, ds, model_cfg)
    model.eval()
    valid = ds.folds([chem.valid_fold])
    exact, binned = calibrate(model, valid)
    domain_hist = None
    support_path = HubLayout(run_id).domain_support()
    if hub.exists(support_path):
        mask = np.zeros(ds.fp_size, dtype=bool)
        mask[np.asarray(hub.get_json(support_path)["supported_columns"], dtype=np.int64)] = True
        domain_hist = score_histogram(domain_scores(valid.indptr, valid.indices, mask))
    message = SiteCalibration(
        run_id=run_id,
        round=rnd,
        site=site.name,
        global_sha256=sha,
        n_valid=len(valid),
        tasks=binned,
        domain_hist=domain_hist,
    )
    rows = private_rows(ds, private_tasks)
    mine = [t for t in private_tasks if t in ds.task_names]
    return SiteCalibrationResult(message, exact, _heads(model, rows), mine)


def publish_site_part(site_registry: Registry, name: str, result: SiteCalibrationResult) -> int:
    """The site's part of model ``name`` in its own registry: private heads and its exact
    calibration, for the global model the calibration was made on."""
    part = SitePart(
        site=result.message.site,
        completes=result.message.global_sha256,
        private_tasks=result.private_tasks,
    )
    files = {
        "spec.json": dumps(part.model_dump(mode="json")),
        "heads.safetensors": save_weights(result.heads),
        "calibration.json": dumps({"tasks": result.exact, "source": f"site {part.site}"}),
    }
    return site_registry.publish(name, files, note=f"site part of {part.completes[:12]}")
