"""Batch scoring at a site through the real ``batch-predict`` flow: the same CSV as
``fedchem predict``, every input line a row, progress in the UI."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

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


SDF = """aspirin
     RDKit          2D

  0  0  0  0  0  0  0  0  0  0999 V2000
M  END
> <potency>
5.2

$$$$
phenol
  by hand

  7  7  0  0  0  0  0  0  0  0999 V2000
    0.0000    1.4000    0.0000 C   0  0
    1.2124    0.7000    0.0000 C   0  0
    1.2124   -0.7000    0.0000 C   0  0
    0.0000   -1.4000    0.0000 C   0  0
   -1.2124   -0.7000    0.0000 C   0  0
   -1.2124    0.7000    0.0000 C   0  0
    0.0000    2.8000    0.0000 O   0  0
  1  2  2  0
  2  3  1  0
  3  4  2  0
  4  5  1  0
  5  6  2  0
  6  1  1  0
  1  7  1  0
M  END
> <potency>
6.1

> <smiles>
not-this-one

$$$$
broken
  by hand

  2  1  0  0  0  0  0  0  0  0999 V2000
    0.0000    0.0000    0.0000 C   0  0
M  END
$$$$
"""


def test_an_sd_file_reads_as_one_row_per_record_with_its_fields(tmp_path: Path):
    from fedchem.serve.batch import read_input

    src = tmp_path / "in.sdf"
    src.write_text(SDF)
    rows = read_input(src, "smiles", None)
    assert rows.ids == ["1", "2", "3"]  # records by 1-based position, as CSV lines are
    assert rows.smiles[1] == "OC1=CC=CC=C1"  # the molecule block's (the featurizer sanitizes)
    assert rows.errors[0] == "" and rows.smiles[0] == ""  # an empty molecule: the featurizer says
    assert rows.errors[2].startswith("SDF record 3: RDKit cannot read")
    assert rows.extra["title"].tolist() == ["aspirin", "phenol", "broken"]
    assert rows.extra["potency"].tolist()[:2] == ["5.2", "6.1"]
    assert rows.extra["sdf_smiles"].tolist()[1] == "not-this-one"  # a field kept, renamed
    # the title as the id column, as a CSV names its id column
    assert read_input(src, "smiles", "TITLE").ids == ["aspirin", "phenol", "broken"]


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_a_table_reads_whatever_its_delimiter(tmp_path: Path, sep: str):
    from fedchem.serve.batch import read_input, with_inputs

    src = tmp_path / "in.txt"
    lines = [["Compound", "SMILES", "batch", "status"], ["c1", "CCO", "b7", "new"]]
    lines += [["c2", "c1ccccc1O", "b8", "old"], ["c1", "CCN", "b9", "new"], ["c4", "CC"]]
    src.write_text("\n".join(sep.join(x) for x in lines) + "\n")
    rows = read_input(src, "smiles", "compound")
    assert rows.ids == ["c1", "c2", "c1", ""] and rows.smiles[:3] == ["CCO", "c1ccccc1O", "CCN"]
    assert rows.errors[3] == "malformed line: 2 fields, the header has 4"
    assert rows.duplicate_ids() == ["c1"]
    table = pd.DataFrame(
        {"id": rows.ids, "smiles": rows.smiles, "status": ["ok"] * 4, "x": [0.1] * 4}
    )
    out = with_inputs(table, rows.extra)
    # the input's own columns follow the id; one the output also has is called input_<name>
    assert list(out.columns) == ["id", "batch", "input_status", "smiles", "status", "x"]
    assert out["batch"].tolist()[:3] == ["b7", "b8", "b9"]


def test_a_missing_column_is_named_with_the_columns_there(tmp_path: Path):
    from fedchem.serve.batch import read_input

    src = tmp_path / "in.csv"
    src.write_text("name;structure\na;CCO\n")
    with pytest.raises(
        ValueError, match=r"no column 'smiles' \(columns: \['name', 'structure'\]\)"
    ):
        read_input(src, "smiles", None)
