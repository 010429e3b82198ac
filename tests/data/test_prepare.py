"""The site pipeline on a file with broken rows: exact accounting, reasons, caching, threshold."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedchem.config import ChemConfig, SiteConfig, TaskSpec
from fedchem.contracts import ContractViolation, MissingColumnError
from fedchem.data.dataset import SiteDataset
from fedchem.data.prepare import current_dataset_path, prepare_site
from tests.conftest import MEASUREMENT_HEADER

CATALOGUE = [TaskSpec(name="tox1", kind="classification"), TaskSpec(name="sol1", kind="regression")]
GOOD = [
    f"g{i},{s},tox1,{i % 2},=,\ng{i},{s},sol1,{i / 10},=,log"
    for i, s in enumerate(
        ["CCO", "CCN", "c1ccccc1O", "CC(=O)O", "c1ccncc1", "CCCCCl", "OCC(O)CO", "c1ccc2ccccc2c1"]
    )
]
BAD = [
    "b1,C1CC,tox1,1,=,",  # unparsable SMILES
    "b2,CCO,tox1,1,~,",  # unknown qualifier
    "b3,CCO,sol1,high,=,",  # non-numeric value
    ",CCO,tox1,0,=,",  # missing id
    "b5,[Na+].[Cl-],tox1,1,=,",  # an inorganic salt alone: no organic part
    "b6,CCO,tox1,7,=,",  # binary value not 0/1
]


def _site(tmp_path: Path, assays_file: Path, lines: list[str], **kw) -> SiteConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    m = tmp_path / "m.csv"
    m.write_text(MEASUREMENT_HEADER + "\n".join(lines) + "\n")
    key = tmp_path / "key"
    key.write_bytes(b"secret")
    return SiteConfig(
        name="site-x",
        measurements=m,
        assays=assays_file,
        workdir=tmp_path / "w",
        key_file=key,
        dask_workers=1,
        **kw,
    )


def test_broken_rows_are_quarantined_and_accounted(tmp_path: Path, assays_file: Path):
    site = _site(tmp_path, assays_file, GOOD + BAD)
    rep = prepare_site(site, ChemConfig(fp_size=256), CATALOGUE)
    assert rep.rows_in == 2 * len(GOOD) + len(BAD)
    assert rep.rows_accepted == 2 * len(GOOD) and rep.rows_quarantined == len(BAD)
    for acc in rep.accounts:
        assert acc.rows_in == acc.accepted + acc.quarantined
    q = pd.read_csv(current_dataset_path(site).parent / "quarantine_measurements.csv")
    by_id = dict(zip(q["compound_id"].fillna("<missing>"), q["reason"], strict=True))
    assert by_id["b1"] == "smiles: unparsable SMILES"
    assert "qualifier: not one of" in by_id["b2"]
    assert by_id["b3"] == "value: not a finite number"
    assert by_id["<missing>"] == "compound_id: missing value"
    assert by_id["b5"].startswith("smiles: no organic part")
    assert by_id["b6"] == "binary assay value is not 0 or 1"
    ds = SiteDataset.load(current_dataset_path(site))
    assert len(ds) == len(GOOD) and ds.n_labels() == 2 * len(GOOD)


def test_unchanged_input_is_a_cache_hit(tmp_path: Path, assays_file: Path):
    site = _site(tmp_path, assays_file, GOOD)
    first = prepare_site(site, ChemConfig(fp_size=256), CATALOGUE)
    again = prepare_site(site, ChemConfig(fp_size=256), CATALOGUE)
    assert not first.cache_hit and again.cache_hit and again.cache_key == first.cache_key
    other = prepare_site(site, ChemConfig(fp_size=512), CATALOGUE)
    assert not other.cache_hit and other.cache_key != first.cache_key


def test_too_many_quarantined_rows_fail_naming_the_threshold(tmp_path: Path, assays_file: Path):
    site = _site(tmp_path, assays_file, GOOD[:1] + BAD, max_quarantine_fraction=0.2)
    with pytest.raises(ContractViolation, match=r"6 of 8 .*max_quarantine_fraction=0.2"):
        prepare_site(site, ChemConfig(fp_size=256), CATALOGUE)


def test_missing_column_fails_naming_column_and_contract(tmp_path: Path, assays_file: Path):
    m = tmp_path / "m.csv"
    m.write_text("compound_id,smiles,assay_id,value,unit\nc1,CCO,tox1,1,\n")
    key = tmp_path / "key"
    key.write_bytes(b"secret")
    site = SiteConfig(
        name="site-x", measurements=m, assays=assays_file, workdir=tmp_path / "w", key_file=key
    )
    with pytest.raises(MissingColumnError, match=r"'qualifier'.*fedchem-site-measurements"):
        prepare_site(site, ChemConfig(fp_size=256), CATALOGUE)


def test_the_report_gives_each_folds_share_and_warns_of_a_lopsided_one(
    tmp_path: Path, assays_file: Path
):
    """All acyclic: the Murcko rule puts every molecule in one fold, and the report says so;
    the default rule spreads them (one warning fewer, shares that add up to 1)."""
    chains = [f"C{'C' * n}{end}" for n in range(1, 9) for end in ("O", "N", "Cl", "C(=O)O")]
    lines = [f"a{i},{s},tox1,{i % 2},=," for i, s in enumerate(chains)]
    old = prepare_site(
        _site(tmp_path / "old", assays_file, lines),
        ChemConfig(fp_size=256, folds={"method": "scaffold"}),
        CATALOGUE,
    )
    assert sorted(old.fold_shares.values()) == [0.0, 0.0, 0.0, 0.0, 1.0]
    (lopsided,) = [f for f, share in old.fold_shares.items() if share == 1.0]
    assert old.warnings == [
        f"fold {lopsided}{' (test)' if lopsided == '0' else ''} holds 100% of the site's 32 "
        "molecules, more than 35%: its scores would measure that fold's chemistry "
        "(folds: scaffold)"
    ]
    new = prepare_site(
        _site(tmp_path / "new", assays_file, lines), ChemConfig(fp_size=256), CATALOGUE
    )
    assert sum(new.fold_shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert max(new.fold_shares.values()) < 0.5 and new.warnings == []
