"""Serving tasks at a site: score a file with a registered model (counts logged, never rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fedchem.config import SiteConfig, SiteRef
from fedchem.data.prepare import read_key
from fedchem.federation.continual import PromotionPolicy
from fedchem.federation.finetune import FinetuneConfig
from fedchem.messages import EvalReport, PersonalizedReport
from fedchem.registry.model import ModelSpec, load_weights
from fedchem.registry.store import Registry
from fedchem.serve.batch import ScoredFile, predict_file
from fedchem.serve.predictor import Predictor, check_consistency
from fedchem.tasks.progress import ArtifactProgress
from fedchem.tasks.site import guard_site_logs
from fedchem.trust.sovereign import check_featurizer, own_site

__all__ = [
    "finetune_at_site",
    "personalize_at_site",
    "score_file",
    "validate_registered",
]


@task(cache_policy=NO_CACHE)
def score_file(
    site: SiteConfig | SiteRef,
    registry: str,
    model: str,
    input_path: str,
    output_path: str,
    smiles_col: str,
    id_col: str | None,
    alpha: float | None,
    use_site_part: bool,
    chunk_rows: int,
) -> ScoredFile:
    # the site's key and own registry from its own config; the model's registry and the
    # files must be ones its config names
    site = own_site(site, registries=[registry], paths=[input_path, output_path])
    guard_site_logs(site)
    site_registry = Registry(site.registry_url()) if use_site_part else None
    predictor = Predictor.load(Registry(registry), model, read_key(site), site_registry)
    key = f"batch-predict-{site.name}"
    scored = predict_file(
        predictor,
        Path(input_path),
        Path(output_path),
        smiles_col,
        id_col,
        alpha,
        chunk_rows=chunk_rows,
        n_workers=site.dask_workers,
        progress=ArtifactProgress(key, "scored {done}/{total} rows"),
    )
    get_run_logger().info(
        "site %s: %d rows scored with %s:%d (%d with an error)",
        site.name,
        scored.rows,
        predictor.name,
        predictor.version,
        scored.errors,
    )
    if scored.duplicate_ids:
        get_run_logger().warning(
            "site %s: %d id(s) carried by more than one row", site.name, scored.duplicate_ids
        )
    return scored


@task(cache_policy=NO_CACHE)
def finetune_at_site(
    site: SiteConfig | SiteRef,
    registry: str,
    model: str,
    name: str | None,
    config: FinetuneConfig,
) -> dict[str, EvalReport | None]:
    """Fine-tune ``model`` on the site's own data; register it in the site's own registry.
    Returns the test-fold reports (aggregates): fine-tuned, federated as is, local-only."""
    from fedchem.data.prepare import prepare_site
    from fedchem.federation.finetune import finetune, register_finetuned
    from fedchem.federation.site import load_site_dataset

    site = own_site(site, registries=[registry])
    guard_site_logs(site)
    reg = Registry(registry)
    ref_name, version = reg.resolve(model)
    spec = ModelSpec.model_validate(reg.read_json(ref_name, version, "spec.json"))
    check_featurizer(site, spec.chem)  # the model's featurizer runs on the site's molecules
    check_consistency(spec, read_key(site))  # the site featurizes as the model was trained
    arrays = load_weights(reg.read(ref_name, version, "model.safetensors"))
    report = prepare_site(site, spec.chem, None)  # its own tasks, the model's featurizer
    result = finetune(arrays, spec, load_site_dataset(site), site.name, config, report.label_stats)
    target = name or f"{ref_name}-{site.name}"
    mine = register_finetuned(
        Registry(site.registry_url()), target, result, f"{ref_name}:{version}", spec, site.name
    )
    get_run_logger().info(
        "site %s: %s:%d fine-tuned as %s:%d in its own registry (%d epochs); test %s vs local %s",
        site.name,
        ref_name,
        version,
        target,
        mine,
        result.epochs,
        result.finetuned.summary.get("mean_roc_auc", result.finetuned.summary.get("mean_rmse")),
        result.local.summary.get("mean_roc_auc", result.local.summary.get("mean_rmse")),
    )
    return {"finetuned": result.finetuned, "federated": result.federated, "local": result.local}


@task(cache_policy=NO_CACHE)
def personalize_at_site(
    site: SiteConfig | SiteRef, registry: str, model: str, config: FinetuneConfig
) -> PersonalizedReport:
    """The registered federated model made the site's own (as it is, heads, or heads and last
    layer: chosen on its validation fold); returns the aggregates, the model stays here."""
    from fedchem.federation.finetune import personalize
    from fedchem.federation.site import load_site_dataset

    site = own_site(site, registries=[registry])
    guard_site_logs(site)
    reg = Registry(registry)
    name, version = reg.resolve(model)
    spec = ModelSpec.model_validate(reg.read_json(name, version, "spec.json"))
    check_featurizer(site, spec.chem)
    check_consistency(spec, read_key(site))
    arrays = load_weights(reg.read(name, version, "model.safetensors"))
    result = personalize(arrays, spec, load_site_dataset(site), site.name, config)
    get_run_logger().info(
        "site %s: %s:%d personalized as %r (validation %s: %s)",
        site.name,
        name,
        version,
        result.choice,
        result.metric,
        ", ".join(f"{k} {v:.4f}" for k, v in result.valid.items()),
    )
    return PersonalizedReport(
        site=site.name,
        choice=result.choice,
        metric=result.metric,
        valid=result.valid,
        gain_lower=result.gain_lower,
        test=result.test,
    )


@task(cache_policy=NO_CACHE)
def validate_registered(
    site: SiteConfig | SiteRef,
    registry: str,
    refs: list[str],
    fold: Literal["valid", "test"] = "valid",
    compare: PromotionPolicy | None = None,
) -> dict[str, EvalReport]:
    """Each registered version of ``refs`` on the site's current validation (or test) fold
    (aggregates). ``compare`` with two refs (candidate, production) and the confidence rule:
    the candidate's report carries the paired comparison with production on the same
    molecules (the difference and its bootstrap interval)."""
    from fedchem.federation import steps

    own = own_site(site, registries=[registry])
    guard_site_logs(own)
    out, paired = steps.validate_registered(site, registry, refs, fold, compare)
    if paired is not None:
        get_run_logger().info(
            "site %s: %s against %s on %d molecules: %s change %+.4f (%.0f%% interval "
            "[%+.4f, %+.4f])",
            own.name,
            refs[0],
            refs[1],
            paired.n_molecules,
            paired.metric,
            paired.difference,
            100 * paired.confidence,
            paired.lower,
            paired.upper,
        )
    return out
