"""A site's strings out of the log lines that leave it: every SMILES and compound id of its
table replaced, wherever a message or a traceback quotes it; counts left alone."""

from __future__ import annotations

import logging
from pathlib import Path

from fedchem.trust.redact import REDACTED, SiteDataFilter, redact, site_strings


def _table(tmp_path: Path) -> Path:
    path = tmp_path / "measurements.csv"
    path.write_text(
        "compound_id,smiles,assay_id,value,qualifier,unit\n"
        "CPD-0001,CC(=O)Oc1ccccc1C(=O)O,tox1,1,=,\n"
        "CPD-0002,[Na+].[Cl-],tox1,0,=,\n"
        "1437,CCO,tox1,0,=,\n"
        "8841734,c1ccccc1O,tox1,1,=,\n"
    )
    return path


def test_every_quoted_smiles_and_id_is_replaced_and_counts_are_not(tmp_path: Path) -> None:
    private = site_strings(_table(tmp_path))
    assert "1437" not in private and "8841734" in private and "CCO" in private
    line = (
        "round 1: 1437 examples; ValueError('could not parse CC(=O)Oc1ccccc1C(=O)O'), "
        'rows [CPD-0001, "CPD-0002"] and ([Na+].[Cl-]); id=8841734 CCO.'
    )
    clean = redact(line, private)
    for secret in ("CC(=O)Oc1ccccc1C(=O)O", "CPD-0001", "CPD-0002", "[Na+].[Cl-]", "8841734"):
        assert secret not in clean, secret
    assert clean.startswith("round 1: 1437 examples;") and clean.count(REDACTED) == 6
    assert " CCO" not in clean


def test_the_filter_redacts_the_record_and_its_traceback(tmp_path: Path) -> None:
    private = site_strings(_table(tmp_path))
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed on %s", ("CPD-0001",), None)
    try:
        raise ValueError("bad SMILES c1ccccc1O in row CPD-0002")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert SiteDataFilter("site-a", private).filter(record)
    text = logging.Formatter().format(record)
    assert "CPD-0001" not in text and "CPD-0002" not in text and "c1ccccc1O" not in text
    assert "ValueError: bad SMILES [site data] in row [site data]" in text
