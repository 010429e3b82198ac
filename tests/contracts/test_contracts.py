from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from fedchem.contracts import (
    ContractSchemaError,
    MissingColumnError,
    UnsupportedContractFeature,
    compile_table,
    load_contract,
    read_table,
    validate_frame,
)
from tests.conftest import ASSAYS_CSV, CONTRACTS, MEASUREMENT_HEADER


def _measurements_table(assay_ids: set[str] | None = None):
    return compile_table(
        load_contract(CONTRACTS / "measurements.odcs.yaml"),
        references={"assays.assay_id": assay_ids or {"tox1", "pot1", "sol1"}},
    )


def _frame(body: str):
    return read_table(io.StringIO(MEASUREMENT_HEADER + body))


def test_shipped_contracts_load_and_compile():
    for name in ("measurements.odcs.yaml", "assays.odcs.yaml"):
        c = load_contract(CONTRACTS / name)
        assert c.model.apiVersion == "v3.1.0"
    table = compile_table(load_contract(CONTRACTS / "assays.odcs.yaml"))
    result = validate_frame(read_table(io.StringIO(ASSAYS_CSV)), table)
    assert result.account.accepted == 3 and result.account.quarantined == 0


def test_good_rows_are_all_accepted_and_typed():
    res = validate_frame(
        _frame("c1,CCO,tox1,1,=,\nc2,CCN,sol1,-2.5,<,log\n"), _measurements_table()
    )
    assert (res.account.rows_in, res.account.accepted, res.account.quarantined) == (2, 2, 0)
    assert res.accepted["value"].tolist() == [1.0, -2.5]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("c1,CCO,tox1,abc,=,", "value: not a finite number"),
        ("c1,CCO,tox1,nan,=,", "value: not a finite number"),
        ("c1,CCO,tox1,inf,=,", "value: not a finite number"),
        ("c1,CCO,tox1,1,~,", "qualifier: not one of"),
        ("c1,CCO,tox1,1,≤,", "qualifier: not one of"),
        (",CCO,tox1,1,=,", "compound_id: missing value"),
        ("c1,,tox1,1,=,", "smiles: missing value"),
        ("c1,CCO,nope,1,=,", "assay_id: unknown assay_id"),
        ("c1,CCO,tox1,1,=,milligrams-per-litre-of-something-long", "unit: longer than 32"),
    ],
)
def test_each_kind_of_bad_row_is_quarantined_with_its_reason(row: str, reason: str):
    res = validate_frame(_frame(f"ok,CCO,tox1,0,=,\n{row}\n"), _measurements_table())
    assert res.account.rows_in == 2 and res.account.accepted == 1 and res.account.quarantined == 1
    q = res.quarantine.iloc[0]
    assert q["source_row"] == 1 and q["step"] == "contract"
    assert reason in q["reason"]


def test_missing_required_column_names_column_and_contract():
    df = read_table(io.StringIO("compound_id,smiles,assay_id,qualifier,unit\nc1,CCO,tox1,=,\n"))
    with pytest.raises(MissingColumnError) as err:
        validate_frame(df, _measurements_table(), source="site.csv")
    assert "'value'" in str(err.value)
    assert "fedchem-site-measurements" in str(err.value) and "site.csv" in str(err.value)


def test_row_count_rule_fails_on_an_empty_table():
    from fedchem.contracts import ContractViolation

    with pytest.raises(ContractViolation, match="rowCount"):
        validate_frame(_frame(""), _measurements_table())


def _write_contract(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load((CONTRACTS / "measurements.odcs.yaml").read_text())
    mutate(raw)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_a_typo_in_a_nested_key_is_a_schema_error(tmp_path: Path):
    def typo(raw):
        raw["schema"][0]["properties"][0]["requred"] = True

    with pytest.raises(ContractSchemaError, match="requred"):
        load_contract(_write_contract(tmp_path, typo))


def test_an_unimplemented_feature_is_an_error_not_skipped(tmp_path: Path):
    def sql_rule(raw):
        raw["schema"][0]["properties"][3]["quality"] = [
            {"type": "sql", "query": "SELECT COUNT(*) FROM t", "mustBe": 0}
        ]

    contract = load_contract(_write_contract(tmp_path, sql_rule))
    with pytest.raises(UnsupportedContractFeature, match="quality type 'sql'"):
        compile_table(contract, references={"assays.assay_id": set()})


def test_a_new_builtin_check_needs_no_code(tmp_path: Path):
    def bound(raw):
        raw["schema"][0]["properties"][3]["logicalTypeOptions"] = {"minimum": 0, "maximum": 14}

    table = compile_table(
        load_contract(_write_contract(tmp_path, bound)), references={"assays.assay_id": {"tox1"}}
    )
    res = validate_frame(_frame("a,CCO,tox1,3,=,\nb,CCO,tox1,15,=,\n"), table)
    assert res.account.quarantined == 1
    assert res.quarantine["reason"].iloc[0] == "value: not <= 14"
