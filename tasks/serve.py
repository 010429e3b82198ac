"""Serving tasks at a site: score a file with a registered model (counts logged, never rows)."""

from __future__ import annotations

import time
from pathlib import Path
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from fedchem.config import SiteConfig, SiteRef, resolve_site
from fedchem.data.prepare import read_key
from fedchem.registry.store import Registry
from fedchem.serve.batch import ScoredFile, predict_file
from fedchem.serve.predictor import Predictor

__all__ = ["score_file"]


class _Progress:
    """Rows scored as a Prefect progress artifact (a count only), at most every ``every_s``."""

    def __init__(self, key: str, every_s: float = 2.0) -> None:
        self.key, self.every_s, self.last = key, every_s, 0.0
        self.artifact: UUID | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < self.every_s:
            return
        self.last = now
        pct = 100.0 * done / total if total else 100.0
        text = f"scored {done}/{total} rows"
        if self.artifact is None:
            self.artifact = create_progress_artifact(pct, key=self.key, description=text)  # type: ignore[assignment]
        else:
            update_progress_artifact(self.artifact, pct, description=text)


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
    site = resolve_site(site)  # the site's key and own registry, from its own config
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
        progress=_Progress(key),
    )
    get_run_logger().info(
        "site %s: %d rows scored with %s:%d (%d with an error)",
        site.name,
        scored.rows,
        predictor.name,
        predictor.version,
        scored.errors,
    )
    return scored
