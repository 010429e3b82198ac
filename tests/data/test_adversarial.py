"""An adversarial site export: every bad row is quarantined with its reason, nothing crashes,
and rows in = accepted + quarantined at every step."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedchem.config import ChemConfig, LabelConfig, SiteConfig, TaskSpec
from fedchem.contracts import ContractViolation
from fedchem.data.dataset import SiteDataset
from fedchem.data.prepare import current_dataset_path, prepare_site

CATALOGUE = [
    TaskSpec(name="tox1", kind="classification"),
    TaskSpec(name="pot1", kind="classification"),
    TaskSpec(name="sol1", kind="regression"),
]
HEADER = "compound_id,smiles,assay_id,value,qualifier,unit"
SMILES = [
    "CCO",
    "CCN",
    "c1ccccc1O",
    "CC(=O)O",
    "c1ccncc1",
    "CCCCCl",
    "OCC(O)CO",
    "CCOC(=O)C",
    "c1ccc2ccccc2c1",
    "CC(C)O",
    "NCCO",
    "c1ccsc1",
    "C1CCCCC1",
    "CC(=O)Nc1ccc(O)cc1",
    "COc1ccccc1",
    "Cc1ccccc1",
    "ClCCl",
    "OC(=O)c1ccccc1",
    "CCCCCCO",
    "c1ccoc1",
]

# (line, expected reason fragment or None when the row must be accepted)
ADVERSARIAL: list[tuple[str, str | None]] = [
    ("a01,C1CC,tox1,1,=,", "smiles: unparsable SMILES"),
    ("a02,not a molecule,tox1,1,=,", "smiles: unparsable SMILES"),
    ("a03,,tox1,1,=,", "smiles: missing value"),
    ("a04," + "C" * 150 + ",sol1,1.0,=,log", "too many heavy atoms (150 >= 100)"),
    ("a05,[Na]OC(=O)c1ccccc1,tox1,1,=,", None),  # metal: disconnected, parent kept
    ("a06,[Na+].[O-]C(=O)c1ccccc1,tox1,1,=,", None),  # salt
    ("a07,CCO.c1ccccc1CCCC,tox1,0,=,", None),  # mixture: largest fragment
    ("a08,[13CH3]CO,sol1,0.5,=,log", None),  # isotope: merges with CCO
    ("a09,C[NH3+],tox1,0,=,", None),  # charged: neutralized
    ("a10,CCO,sol1,7.0,=,nM", "unit 'nM' does not match the assay's unit 'log'"),
    ("a11,CCO,sol1,1.0,≤,log", "qualifier: not one of"),
    ("a12,CCO,sol1,1.0,~,log", "qualifier: not one of"),
    ("a13,CCO,sol1,high,=,log", "value: not a finite number"),
    ("a14,CCO,sol1,NaN,=,log", "value: not a finite number"),
    ("a15,CCO,sol1,inf,=,log", "value: not a finite number"),
    ("a16,CCO,sol1,-Infinity,=,log", "value: not a finite number"),
    ("a17,CCN,tox1,1,=,", None),
    ("a17,CCN,tox1,1,=,", "duplicate of an earlier row"),  # exact duplicate row
    ("a18,c1ccccc1O,pot1,6.5,=,log", None),  # one compound under two ids:
    ("a19,c1ccccc1O,pot1,6.7,=,log", None),  # both accepted, merged by structure
    ("a20,CCO,zzz,1,=,", "assay_id: unknown assay_id"),  # unknown assay
    ("a21,CCO,tox1,2,=,", "binary assay value is not 0 or 1"),
    ("a22,CCO,tox1,1,<,", "censored value in a binary assay"),
    ("a23,CCO,pot1,6.2,<,log", "censored value is ambiguous at the threshold"),
    ("a24,C\ufffdO,tox1,1,=,", "smiles: unparsable SMILES"),  # non-UTF-8 byte (below)
    ("a25,CCO,tox1,1,=,,extra,fields", "malformed line: 8 fields, the header has 6"),
    ('a26,"CCO,tox1,1,=,', "malformed line: unterminated quote"),  # the lines after it count
    ("a27,CCN,tox1,0,=,", None),
    ("a28,CCO,sol1,-1e308,=,log", "value -1e+308 is outside the credible range [-20, 20]"),
    ("a29,CCO,sol1,1e30,=,", "outside the credible range [-20, 20] for unit 'log'"),  # the assay's
    ("a30,[Na+].[Cl-],tox1,1,=,", "smiles: no organic part"),  # an inorganic salt alone
    ("a31,O=S(=O)([O-])[O-].[Na+].[Na+],tox1,0,=,", "smiles: no organic part"),
    ("a32,CC\x00O,tox1,1,=,", "smiles: control character U+0000 at position 3"),
    ("a33,CCO\x07,tox1,1,=,", "smiles: control character U+0007 at position 4"),
    ("", "malformed line: empty"),
]


def _write(tmp_path: Path, assays_file: Path, n_good: int, tail_bad: bool) -> SiteConfig:
    lines = [HEADER]
    for i in range(n_good):
        s = SMILES[i % len(SMILES)]
        lines.append(f"g{i},{s},tox1,{(i % len(SMILES)) % 2},=,")  # replicates agree
        lines.append(f"g{i},{s},sol1,{i / 1000:.3f},=,log")
    lines += [line for line, _ in ADVERSARIAL]
    if tail_bad:
        lines.append("zlast,CCO,sol1,oops,=,log")  # a bad row at the very end of a large file
    data = ("\n".join(lines) + "\n").encode("utf-8")
    # a non-UTF-8 byte where the replacement character stands in the SMILES of a24
    data = data.replace("C\ufffdO".encode(), b"C\xffO")
    path = tmp_path / "measurements.csv"
    path.write_bytes(data)
    key = tmp_path / "key"
    key.write_bytes(b"adversarial-key")
    return SiteConfig(
        name="site-adv",
        measurements=path,
        assays=assays_file,
        workdir=tmp_path / "w",
        key_file=key,
        dask_workers=1,
    )


def test_every_bad_row_is_quarantined_with_its_reason(tmp_path: Path, assays_file: Path):
    n_good = 6000  # 12,000 good rows over 20 molecules: a large file, cheap to featurize
    site = _write(tmp_path, assays_file, n_good, tail_bad=True)
    rep = prepare_site(site, ChemConfig(fp_size=256), CATALOGUE)
    n_rows = 2 * n_good + len(ADVERSARIAL) + 1
    assert rep.rows_in == n_rows == rep.rows_accepted + rep.rows_quarantined
    for acc in rep.accounts:
        assert acc.rows_in == acc.accepted + acc.quarantined, acc
    q = pd.read_csv(current_dataset_path(site).parent / "quarantine_measurements.csv")
    assert q["reason"].notna().all() and q["source_row"].is_unique
    reasons = dict(zip(q["source_row"], q["reason"], strict=True))
    first = 2 * n_good
    for offset, (_, expected) in enumerate(ADVERSARIAL):
        row = first + offset
        if expected is None:
            assert row not in reasons, (ADVERSARIAL[offset], reasons.get(row))
        else:
            assert row in reasons and expected in reasons[row], (
                ADVERSARIAL[offset],
                reasons.get(row),
            )
    assert "value: not a finite number" in reasons[n_rows - 1]  # the last line of the file
    expected_bad = sum(e is not None for _, e in ADVERSARIAL) + 1
    assert rep.rows_quarantined == expected_bad
    ds = SiteDataset.load(current_dataset_path(site))
    assert len(ds) >= len(SMILES) and ds.n_labels() > 0


def test_quarantine_threshold_fails_the_run_naming_threshold_and_counts(
    tmp_path: Path, assays_file: Path
):
    site = _write(tmp_path, assays_file, n_good=5, tail_bad=False)
    site = site.model_copy(update={"max_quarantine_fraction": 0.2})
    with pytest.raises(ContractViolation, match=r"max_quarantine_fraction=0.2") as err:
        prepare_site(site, ChemConfig(fp_size=256), CATALOGUE)
    bad = sum(e is not None for _, e in ADVERSARIAL)
    assert f"{bad} of {10 + len(ADVERSARIAL)} measurement rows quarantined" in str(err.value)


def test_automatic_threshold_and_quorum_drop_with_reasons(tmp_path: Path, assays_file: Path):
    # sol1 (continuous, no threshold) declared as classification → the automatic rule
    lines = [HEADER] + [f"m{i},{'C' * (i + 1)}O,sol1,{4 + i / 20:.2f},=,log" for i in range(80)]
    path = tmp_path / "m.csv"
    path.write_text("\n".join(lines) + "\n")
    key = tmp_path / "key"
    key.write_bytes(b"k")
    site = SiteConfig(
        name="s",
        measurements=path,
        assays=assays_file,
        workdir=tmp_path / "w",
        key_file=key,
        dask_workers=1,
        max_quarantine_fraction=1.0,
    )
    cat = [TaskSpec(name="sol1", kind="classification")]
    rules = LabelConfig(auto_min_per_class=10)
    rep = prepare_site(site, ChemConfig(fp_size=256, labels=rules), cat)
    # values 4.00..7.95: 7 gives 20 actives of 80 (25 %) and >= 10 per class → threshold 7
    assert rep.auto_thresholds == {"sol1": 7.0}
    ds = SiteDataset.load(current_dataset_path(site))
    assert int((ds.y[:, 0] == 1).sum()) == 20
    strict = LabelConfig(auto_min_per_class=10, min_actives=25)
    rep2 = prepare_site(site, ChemConfig(fp_size=256, labels=strict), cat)
    assert "sol1" in rep2.tasks_below_quorum and rep2.rows_accepted == 0
    assert rep2.rows_quarantined == rep2.rows_in == 80
