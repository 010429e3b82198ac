"""Reading a site's file: one row per physical line, so that rows in = the file's lines, whatever
a broken line does (an unterminated quote, a stray field, a control character)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedchem.contracts import compile_table, load_contract, read_table, validate_frame
from fedchem.contracts.validate import MALFORMED, RAW_LINE
from tests.conftest import CONTRACTS, MEASUREMENT_HEADER


def _table():
    return compile_table(
        load_contract(CONTRACTS / "measurements.odcs.yaml"),
        references={"assays.assay_id": {"tox1", "sol1"}},
    )


def test_an_unterminated_quote_costs_its_own_line_only(tmp_path: Path):
    """The case found by hand: one quote left open on data line 5 of a 31-line file. A CSV
    reader takes the next 20 lines into that one value (10 rows in); here the line alone is
    quarantined, with its text, and the 29 others are read as they are."""
    lines = [f"c{i},CC{'C' * (i % 7)}O,tox1,{i % 2},=," for i in range(30)]
    lines[4] = 'c4,"CCO,tox1,1,=,'
    path = tmp_path / "m.csv"
    path.write_text(MEASUREMENT_HEADER + "\n".join(lines) + "\n")
    assert len(path.read_text().splitlines()) == 31
    # what a plain CSV reader makes of it: the quote runs to the end of the file
    with pytest.raises(pd.errors.ParserError, match="EOF inside string"):
        pd.read_csv(path)

    raw = read_table(path)
    assert len(raw) == 30 and list(raw["source_row"]) == list(range(30))
    result = validate_frame(raw, _table(), source=str(path))
    assert (result.account.rows_in, result.account.accepted, result.account.quarantined) == (
        30,
        29,
        1,
    )
    (bad,) = result.quarantine.to_dict("records")
    assert bad["source_row"] == 4
    assert bad["reason"] == "malformed line: unterminated quote (a value cannot span lines here)"
    assert raw.loc[4, RAW_LINE] == 'c4,"CCO,tox1,1,=,'
    assert list(result.accepted["compound_id"][4:8]) == ["c5", "c6", "c7", "c8"]


def test_every_kind_of_broken_line_is_one_row_with_its_reason(tmp_path: Path):
    body = [
        "c0,CCO,tox1,1,=,",
        "",  # an empty line inside the file
        "c2,CCO,tox1,1,=,,surplus",
        'c3,"C,C",tox1,1,=,',  # a quoted comma is fine on one line
        "c4,CC\x00O,tox1,1,=,",  # a NUL inside a SMILES
        "c5,CCO,tox1,1,=,",
    ]
    path = tmp_path / "m.csv"
    path.write_bytes((MEASUREMENT_HEADER + "\r\n".join(body) + "\r\n").encode())  # CRLF too
    raw = read_table(path)
    assert len(raw) == 6
    assert raw[MALFORMED].tolist() == [
        None,
        "malformed line: empty",
        "malformed line: 7 fields, the header has 6",
        None,
        None,
        None,
    ]
    assert raw.loc[3, "smiles"] == "C,C" and raw.loc[5, "unit"] is None
    result = validate_frame(raw, _table())
    reasons = dict(zip(result.quarantine["source_row"], result.quarantine["reason"], strict=True))
    assert reasons == {
        1: "malformed line: empty",
        2: "malformed line: 7 fields, the header has 6",
        4: "smiles: control character U+0000 at position 3",
    }
    assert result.account.rows_in == 6 == result.account.accepted + result.account.quarantined


def test_a_contract_may_allow_records_that_span_lines(tmp_path: Path):
    doc = yaml.safe_load((CONTRACTS / "measurements.odcs.yaml").read_text())
    doc["schema"][0]["customProperties"] = [{"property": "multilineRecords", "value": True}]
    contract = tmp_path / "measurements.odcs.yaml"
    contract.write_text(yaml.safe_dump(doc))
    table = compile_table(load_contract(contract), references={"assays.assay_id": {"tox1"}})
    assert table.multiline_records
    path = tmp_path / "m.csv"
    path.write_text(MEASUREMENT_HEADER + 'c0,CCO,tox1,1,=,"a\nnote"\nc1,CCN,tox1,0,=,\n')
    assert len(read_table(path, table.multiline_records)) == 2  # records, not lines
    assert len(read_table(path)) == 3  # line by line: the note's second line is a line
