"""One input, five ways in: the CLI, the HTTP service's CSV and JSON endpoints, the Open
Inference Protocol v2 and the site's ``batch-predict`` flow return the same table (the same
ids, rows, statuses, errors and numbers) for the same molecules and the same site part."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import yaml

from fedchem.config import PrepareConfig, SiteConfig
from tests.serve.conftest import Published
from tests.serve.test_service import NAME, start_service, stop_service

ROWS = [
    ("cpd-1", "CCO"),
    ("cpd-2", "c1ccccc1O"),
    ("cpd-3", "not a smiles"),
    ("cpd-4", "CC(=O)Oc1ccccc1C(=O)O"),
    ("cpd-5", "[Na+].[Cl-]"),
    ("cpd-6", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C"),
]


def _same(table: pd.DataFrame, reference: pd.DataFrame, how: str) -> None:
    assert list(table.columns) == list(reference.columns), how
    assert table["id"].astype(str).tolist() == [i for i, _ in ROWS], how
    for col in reference.columns:
        want = reference[col]
        if pd.api.types.is_numeric_dtype(want):
            got = pd.to_numeric(table[col].replace("", np.nan)).astype(float)
            np.testing.assert_allclose(got, want.astype(float), rtol=1e-9, err_msg=f"{how}: {col}")
        else:
            got_text = table[col].fillna("").astype(str).tolist()
            assert got_text == want.fillna("").astype(str).tolist(), f"{how}: {col}"


def test_cli_http_csv_json_oip_and_the_batch_flow_return_one_table(
    prefect_api: None, published: Published, tmp_path: Path
) -> None:
    from fedchem.cli import main
    from fedchem.flows.batch_predict import batch_predict

    site_dir = published.out / "sites" / "site-a"
    src = tmp_path / "in.csv"
    src.write_text("id,smiles\n" + "".join(f'{i},"{s}"\n' for i, s in ROWS))
    registry = str(published.out / "registry")
    # the CLI: the reference
    cli = tmp_path / "cli.csv"
    args = ["predict", "--registry", registry, "--model", NAME, "--in", str(src)]
    args += ["--out", str(cli), "--id-col", "id", "--key-file", str(published.key_file)]
    assert main([*args, "--site-registry", str(site_dir / "registry")]) == 0
    text = cli.read_text()
    reference = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""])
    assert reference["status"].tolist() == ["ok", "ok", "error", "ok", "error", "ok"]
    # the site's batch flow, on its own worker's config
    site = SiteConfig(
        name="site-a",
        measurements=site_dir / "measurements.csv",
        assays=site_dir / "assays.csv",
        workdir=site_dir / "work",
        key_file=site_dir / "consortium.key",
        registry=str(site_dir / "registry"),
    )
    # the same, run by the site itself: its key and its registry from its own config
    site_yaml = tmp_path / "site.yaml"
    site_yaml.write_text(yaml.safe_dump(PrepareConfig(site=site).model_dump(mode="json")))
    by_site = tmp_path / "by-site.csv"
    own = ["predict", "--registry", registry, "--model", NAME, "--in", str(src)]
    own += ["--out", str(by_site), "--id-col", "id", "--site-config", str(site_yaml)]
    assert main(own) == 0 and by_site.read_text() == text
    flow_out = tmp_path / "flow.csv"
    batch_predict(
        site=site,
        registry=registry,
        model=f"{NAME}@production",
        input_path=str(src),
        output_path=str(flow_out),
        id_col="id",
    )
    assert flow_out.read_text() == text
    # the HTTP service
    svc, proc = start_service(published, tmp_path)
    try:
        alice = svc.headers("alice")
        raw = httpx.post(
            f"{svc.url}/models/{NAME}/predict.csv?id_col=id&site=site-a",
            content=src.read_bytes(),
            headers={**alice, "Content-Type": "text/csv"},
            timeout=60,
        )
        assert raw.status_code == 200, raw.text
        assert raw.text == text
        ids, smiles = [i for i, _ in ROWS], [s for _, s in ROWS]
        body = httpx.post(
            f"{svc.url}/models/{NAME}/predict?site=site-a",
            json={"smiles": smiles, "ids": ids},
            headers=alice,
            timeout=60,
        )
        assert body.status_code == 200, body.text
        _same(pd.DataFrame(body.json()["rows"]), reference, "HTTP JSON")
        request = {
            "inputs": [
                {"name": "smiles", "datatype": "BYTES", "shape": [len(ROWS)], "data": smiles},
                {"name": "ids", "datatype": "BYTES", "shape": [len(ROWS)], "data": ids},
            ],
            "parameters": {"site": "site-a"},
        }
        oip = httpx.post(
            f"{svc.url}/v2/models/{NAME}/infer", json=request, headers=alice, timeout=60
        )
        assert oip.status_code == 200, oip.text
        table = pd.DataFrame({o["name"]: o["data"] for o in oip.json()["outputs"]})
        _same(table, reference, "OIP v2")
    finally:
        stop_service(proc)
