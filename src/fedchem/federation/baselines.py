"""The baselines a federation is measured against: each site's local-only model.

A site's own model with the federation's budget, scored on its test fold; with shared heads,
it may be published to the hub so that every other site scores it too (the cross-site matrix).
"""

from __future__ import annotations

import hashlib

from fedchem.config import ChemConfig, ModelConfig, SiteConfig, TrainConfig
from fedchem.federation.coordinator import initial_model
from fedchem.federation.site import load_site_dataset, model_for, scored_on_test, site_seed
from fedchem.messages import EvalReport
from fedchem.model.evaluate import evaluate_at_site
from fedchem.model.selection import EpochSelector
from fedchem.model.state import dump_arrays, load_arrays, model_to_arrays
from fedchem.model.train import epoch_lr_factors, train_epochs
from fedchem.storage.hub import HubLayout, HubStore, json_bytes
from fedchem.trust.ledger import Ledger
from fedchem.types import StateArrays

__all__ = ["evaluate_baseline_at_site", "publish_baseline", "train_local_only"]


def train_local_only(
    site: SiteConfig,
    chem: ChemConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    epochs: int,
    label_stats: dict[str, dict[str, float]] | None = None,
) -> tuple[EvalReport, StateArrays]:
    """The site's own model with the same budget, scored on its test fold (a baseline).

    Returns the report and the model's weights (they stay at the site unless published).
    """
    ds = load_site_dataset(site)
    train = ds.without_folds([chem.test_fold, chem.valid_fold])
    model = initial_model(
        ds.fp_size,
        list(zip(ds.task_names, ds.task_kinds, strict=True)),
        model_cfg,
        train_cfg.seed,
        [label_stats or {}],
    )
    selector = (
        EpochSelector(model, ds.folds([chem.valid_fold]), site.name)
        if train_cfg.select == "best_valid"
        else None
    )
    train_epochs(
        model,
        train,
        train_cfg,
        epochs,
        site_seed(train_cfg.seed, site.name, 0),
        lr_factors=epoch_lr_factors(train_cfg, epochs),
        after_epoch=selector,
    )
    selected = selector.restore() if selector is not None else None
    report = scored_on_test(model, ds, chem, site.name, "local")
    return report.model_copy(update={"selected": selected}), model_to_arrays(model)


def publish_baseline(
    hub: HubStore, run_id: str, site: str, arrays: StateArrays, ledger: Ledger | None = None
) -> str:
    """Put a site's local-only model on the hub for the cross-site evaluation (opt-in, by the
    site's policy; the demo does it only with shared heads, so no private head ever leaves
    its site). ``ledger``: the site's, which records both objects and signs the manifest."""
    layout = HubLayout(run_id)
    data = dump_arrays(arrays)
    hub.put_bytes(layout.baseline_model(site), data)
    sha = hashlib.sha256(data).hexdigest()
    doc: dict[str, object] = {"run_id": run_id, "site": site, "sha256": sha}
    if ledger is not None:  # signed like every message that leaves the site
        signature = ledger.signer.signature("local-model", doc)
        doc["signature"] = signature.model_dump(mode="json")
    manifest = json_bytes(doc)
    if ledger is not None:
        ledger.append("local-model", path=layout.baseline_model(site), data=data)
        ledger.append("local-model-manifest", path=layout.baseline_manifest(site), data=manifest)
    hub.put_bytes(layout.baseline_manifest(site), manifest)
    return sha


def evaluate_baseline_at_site(
    site: SiteConfig,
    hub: HubStore,
    run_id: str,
    owner: str,
    chem: ChemConfig,
    model_cfg: ModelConfig,
) -> EvalReport:
    """Score site ``owner``'s published local-only model on this site's test fold."""
    layout = HubLayout(run_id)
    sha = str(hub.get_json(layout.baseline_manifest(owner))["sha256"])
    arrays = load_arrays(
        hub.get_verified(layout.baseline_model(owner), sha, f"local model of {owner}")
    )
    ds = load_site_dataset(site)
    model = model_for(ds, model_cfg, arrays)
    return evaluate_at_site(
        model, ds.folds([chem.test_fold]), site=site.name, model_name=f"local:{owner}", fold="test"
    )
