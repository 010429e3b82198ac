"""Batch scoring at a site: a large CSV of SMILES through a registered model, at the site.

The same CSV as ``fedchem predict`` (one row per input line, in order), written chunk by chunk
with featurization on the site's Dask workers and a progress artifact in the UI. The site's
own key and, with ``use_site_part``, its private heads and calibration come from its config.
"""

from __future__ import annotations

from prefect import flow

from fedchem.config import SiteConfig, SiteRef
from fedchem.serve.batch import ScoredFile
from fedchem.tasks.serve import score_file


@flow(name="batch-predict", flow_run_name="batch-predict/{site.name}")
def batch_predict(
    site: SiteConfig | SiteRef,
    registry: str,
    model: str,
    input_path: str,
    output_path: str,
    smiles_col: str = "smiles",
    id_col: str | None = None,
    alpha: float | None = None,
    use_site_part: bool = True,
    chunk_rows: int = 20_000,
) -> ScoredFile:
    return score_file(
        site,
        registry,
        model,
        input_path,
        output_path,
        smiles_col,
        id_col,
        alpha,
        use_site_part,
        chunk_rows,
    )
