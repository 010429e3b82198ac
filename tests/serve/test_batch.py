"""Batch scoring at a site through the real ``batch-predict`` flow: the same CSV as
``fedchem predict``, every input line a row, progress in the UI."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedchem.config import SiteConfig
from tests.serve.conftest import Published


def test_a_large_file_is_scored_in_chunks_as_the_cli_scores_it(
    prefect_api: None, published: Published, tmp_path: Path
):
    from fedchem.cli import main
    from fedchem.flows.batch_predict import batch_predict

    d = published.out / "sites" / "site-a"
    site = SiteConfig(
        name="site-a",
        measurements=d / "measurements.csv",
        assays=d / "assays.csv",
        workdir=d / "work",
        key_file=d / "consortium.key",
        registry=str(d / "registry"),
        dask_workers=2,
    )
    smiles = pd.read_csv(d / "measurements.csv")["smiles"].drop_duplicates().head(1200).tolist()
    lines = ["name,smiles"] + [f"m{i},{s}" for i, s in enumerate(smiles)] + ['bad,"CC(', "x,CCX"]
    src = tmp_path / "in.csv"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scored.csv"
    scored = batch_predict(
        site=site,
        registry=str(published.out / "registry"),
        model="tox21-2000@production",
        input_path=str(src),
        output_path=str(out),
        id_col="name",
        chunk_rows=1000,
    )
    table = pd.read_csv(out, keep_default_na=False)
    assert scored.rows == len(lines) - 1 > 1000  # more than one chunk
    assert scored.errors == int((table["status"] != "ok").sum()) >= 2
    assert len(table) == scored.rows and table["id"].tolist()[:3] == ["m0", "m1", "m2"]
    assert table["status"].tolist()[-2:] == ["error", "error"]
    cli = tmp_path / "cli.csv"
    args = [
        "predict",
        "--registry",
        str(published.out / "registry"),
        "--model",
        "tox21-2000",
        "--in",
        str(src),
        "--out",
        str(cli),
        "--id-col",
        "name",
        "--key-file",
        str(site.key_file),
        "--site-registry",
        str(d / "registry"),
    ]
    assert main(args) == 0
    assert cli.read_text() == out.read_text()
