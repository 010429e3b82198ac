"""Compile one table of an ODCS contract into a pandera schema over string columns.

Data is read as text so that nothing is lost before validation: a non-numeric ``value`` is a
failing row with a reason, not a whole-file parse error. Each rule becomes a vectorized pandera
check whose name is the reason written to the quarantine file.

Implemented (anything else is an ``UnsupportedContractFeature``, never skipped):
- property ``logicalType``: string, number, integer, boolean
- ``required``, ``unique``, ``primaryKey`` (= required + unique), ``enum``
- ``logicalTypeOptions``: minLength, maxLength, pattern (strings); minimum, maximum,
  exclusiveMinimum, exclusiveMaximum (numbers)
- property ``quality``: nullValues / invalidValues (``validValues``) / duplicateValues with
  ``mustBe: 0``; ``type: text`` rules are documentation
- property ``relationships``: foreignKey ``to: table.column``, checked against reference values
- table ``quality``: ``rowCount`` with any ODCS operator, checked on the accepted rows
- table ``customProperties``: ``multilineRecords`` (bool, default false: one record per line)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from fedchem.contracts.errors import ContractViolation, UnsupportedContractFeature
from fedchem.contracts.load import Contract

__all__ = ["CompiledTable", "compile_table"]

_DOC_ONLY = {
    "id",
    "name",
    "description",
    "businessName",
    "tags",
    "examples",
    "classification",
    "criticalDataElement",
    "physicalType",
    "physicalName",
    "authoritativeDefinitions",
    "dataGranularityDescription",
}
_PROPERTY_KEYS = _DOC_ONLY | {
    "logicalType",
    "required",
    "unique",
    "primaryKey",
    "logicalTypeOptions",
    "quality",
    "relationships",
    "enum",
}
_TABLE_KEYS = _DOC_ONLY | {"logicalType", "properties", "quality", "customProperties"}
#: the table-level custom properties fedchem reads (any other is refused, never ignored)
_TABLE_CUSTOM = {"multilineRecords"}
_TYPE_OPTIONS = {
    "string": {"minLength", "maxLength", "pattern"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "boolean": set(),
}
_OPERATORS: dict[str, Callable[[float, Any], bool]] = {
    "mustBe": lambda n, v: n == v,
    "mustNotBe": lambda n, v: n != v,
    "mustBeGreaterThan": lambda n, v: n > v,
    "mustBeGreaterOrEqualTo": lambda n, v: n >= v,
    "mustBeLessThan": lambda n, v: n < v,
    "mustBeLessOrEqualTo": lambda n, v: n <= v,
    "mustBeBetween": lambda n, v: v[0] <= n <= v[1],
    "mustNotBeBetween": lambda n, v: not (v[0] <= n <= v[1]),
}
_QUALITY_DOC_KEYS = {"description", "name", "dimension", "severity", "businessImpact", "id", "tags"}
_PANDERA_REASONS = {"not_nullable": "missing value", "field_uniqueness": "duplicate value"}


@dataclass(frozen=True)
class CompiledTable:
    """A table's validator: the pandera schema, how to type accepted rows, table-level rules."""

    contract: Contract
    table: str
    columns: tuple[str, ...]
    schema: pa.DataFrameSchema
    numeric_columns: tuple[str, ...]
    row_count_rules: tuple[tuple[str, Any], ...] = ()
    reasons: Mapping[str, str] = field(default_factory=dict)
    optional_columns: tuple[str, ...] = ()
    """columns whose values are not required: a file may leave the column out altogether"""
    multiline_records: bool = False
    """a quoted value may span lines (``customProperties: multilineRecords``); by default a
    record is one line, and a line that is not one is quarantined on its own"""

    def reason_for(self, column: str | None, check: str) -> str:
        text = self.reasons.get(check) or _PANDERA_REASONS.get(check, check)
        return f"{column}: {text}" if column else text

    def typed(self, accepted: pd.DataFrame) -> pd.DataFrame:
        """Accepted rows with numeric columns as float64 (safe: they passed the number check)."""
        out = accepted.copy()
        for col in self.numeric_columns:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
        return out

    def check_table_rules(self, n_accepted: int) -> None:
        for op, arg in self.row_count_rules:
            if not _OPERATORS[op](n_accepted, arg):
                raise ContractViolation(
                    f"contract {self.contract.label}, table {self.table!r}: rowCount {op} {arg} "
                    f"failed with {n_accepted} accepted rows"
                )


def _unsupported(contract: Contract, where: str, what: str) -> UnsupportedContractFeature:
    return UnsupportedContractFeature(
        f"contract {contract.label}: {where}: {what} is not implemented by fedchem's contract "
        "compiler (see data_contracts/README.md for what is)"
    )


def _numbers(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce")


def _finite_number(s: pd.Series) -> pd.Series:
    v = _numbers(s)
    return pd.Series(np.isfinite(v.to_numpy(dtype="float64", na_value=np.nan)), index=s.index)


def _integer(s: pd.Series) -> pd.Series:
    v = _numbers(s).to_numpy(dtype="float64", na_value=np.nan)
    return pd.Series(np.isfinite(v) & (np.floor(v) == v), index=s.index)


def _bound(op: Callable[[np.ndarray, float], np.ndarray], limit: float) -> Callable[..., pd.Series]:
    def check(s: pd.Series) -> pd.Series:
        v = _numbers(s).to_numpy(dtype="float64", na_value=np.nan)
        ok = ~np.isfinite(v)  # unparsable values are the type check's to report
        ok |= np.where(np.isfinite(v), op(v, limit), False)
        return pd.Series(ok, index=s.index)

    return check


def _mk(fn: Callable[..., pd.Series], reason: str, reasons: dict[str, str]) -> pa.Check:
    name = f"c{len(reasons)}"
    reasons[name] = reason
    return pa.Check(fn, name=name, error=reason)


def _quality_checks(
    contract: Contract, where: str, rules: list[dict[str, Any]], reasons: dict[str, str]
) -> tuple[list[pa.Check], bool, bool]:
    checks: list[pa.Check] = []
    not_null = unique = False
    for i, rule in enumerate(rules):
        rwhere = f"{where}.quality[{i}]"
        if rule.get("type") == "text":
            continue
        if rule.get("type") not in (None, "library"):
            raise _unsupported(contract, rwhere, f"quality type {rule.get('type')!r}")
        metric = rule.get("metric") or rule.get("rule")
        extra = set(rule) - _QUALITY_DOC_KEYS - {"type", "metric", "rule", "arguments", "mustBe"}
        if extra:
            raise _unsupported(contract, rwhere, f"keys {sorted(extra)} on a {metric} rule")
        if rule.get("mustBe") != 0:
            raise _unsupported(contract, rwhere, f"{metric} with a threshold other than mustBe: 0")
        args = dict(rule.get("arguments") or {})
        if metric == "nullValues" and not args:
            not_null = True
        elif metric == "duplicateValues" and not args:
            unique = True
        elif metric == "invalidValues" and set(args) == {"validValues"}:
            valid = [str(v) for v in args["validValues"]]
            checks.append(_mk(lambda s, v=valid: s.isin(v), f"not one of {valid}", reasons))
        else:
            raise _unsupported(contract, rwhere, f"metric {metric!r} with arguments {sorted(args)}")
    return checks, not_null, unique


def compile_table(
    contract: Contract,
    table: str | None = None,
    references: Mapping[str, set[str]] | None = None,
) -> CompiledTable:
    """Build the validator for ``table`` (default: the contract's only table).

    ``references`` maps ``"table.column"`` to the allowed values of each foreign key.
    """
    tables = contract.raw.get("schema") or []
    if table is None:
        if len(tables) != 1:
            raise ValueError(f"contract {contract.label} has {len(tables)} tables; name one")
        spec = tables[0]
    else:
        matches = [t for t in tables if t.get("name") == table]
        if not matches:
            raise ValueError(f"contract {contract.label} has no table {table!r}")
        spec = matches[0]
    tname = spec["name"]
    for key in set(spec) - _TABLE_KEYS:
        raise _unsupported(contract, f"schema[{tname}]", f"table key {key!r}")

    reasons: dict[str, str] = {}
    columns: dict[str, pa.Column] = {}
    numeric: list[str] = []
    optional: list[str] = []
    for prop in spec.get("properties") or []:
        name = prop["name"]
        where = f"schema[{tname}].properties[{name}]"
        for key in set(prop) - _PROPERTY_KEYS:
            raise _unsupported(contract, where, f"property key {key!r}")
        ltype = prop.get("logicalType", "string")
        if ltype not in _TYPE_OPTIONS:
            raise _unsupported(contract, where, f"logicalType {ltype!r}")
        checks: list[pa.Check] = []
        if ltype == "number":
            checks.append(_mk(_finite_number, "not a finite number", reasons))
            numeric.append(name)
        elif ltype == "integer":
            checks.append(_mk(_integer, "not an integer", reasons))
            numeric.append(name)
        elif ltype == "boolean":
            ok = ["true", "false", "0", "1"]
            checks.append(_mk(lambda s, v=ok: s.str.lower().isin(v), "not a boolean", reasons))
        options = prop.get("logicalTypeOptions") or {}
        for opt in set(options) - _TYPE_OPTIONS[ltype]:
            raise _unsupported(contract, where, f"logicalTypeOptions.{opt} for {ltype}")
        if "minLength" in options:
            n = int(options["minLength"])
            checks.append(_mk(lambda s, n=n: s.str.len() >= n, f"shorter than {n}", reasons))
        if "maxLength" in options:
            n = int(options["maxLength"])
            checks.append(_mk(lambda s, n=n: s.str.len() <= n, f"longer than {n}", reasons))
        if "pattern" in options:
            rx = re.compile(options["pattern"])
            checks.append(
                _mk(
                    lambda s, rx=rx: s.str.fullmatch(rx).fillna(False).astype(bool),
                    f"does not match {rx.pattern!r}",
                    reasons,
                )
            )
        bounds = {
            "minimum": (np.greater_equal, ">="),
            "maximum": (np.less_equal, "<="),
            "exclusiveMinimum": (np.greater, ">"),
            "exclusiveMaximum": (np.less, "<"),
        }
        for opt, (op, sym) in bounds.items():
            if opt in options:
                lim = float(options[opt])
                checks.append(_mk(_bound(op, lim), f"not {sym} {lim:g}", reasons))
        if prop.get("enum"):
            valid = [str(e["value"]) for e in prop["enum"]]
            checks.append(_mk(lambda s, v=valid: s.isin(v), f"not one of {valid}", reasons))
        qchecks, q_not_null, q_unique = _quality_checks(
            contract, where, prop.get("quality") or [], reasons
        )
        checks.extend(qchecks)
        for j, rel in enumerate(prop.get("relationships") or []):
            target = rel.get("to")
            if rel.get("type", "foreignKey") != "foreignKey" or not isinstance(target, str):
                raise _unsupported(contract, f"{where}.relationships[{j}]", "this relationship")
            if references is None or target not in references:
                raise ValueError(
                    f"contract {contract.label}: {where} references {target}; "
                    "pass its values in `references`"
                )
            allowed = references[target]
            checks.append(
                _mk(lambda s, a=allowed: s.isin(a), f"unknown {target.split('.')[-1]}", reasons)
            )
        required = bool(prop.get("required")) or bool(prop.get("primaryKey")) or q_not_null
        unique = bool(prop.get("unique")) or bool(prop.get("primaryKey")) or q_unique
        if not required:
            optional.append(name)
        columns[name] = pa.Column(
            None,
            nullable=not required,
            unique=unique,
            report_duplicates="exclude_first",
            checks=checks,
            required=True,
        )

    row_rules: list[tuple[str, Any]] = []
    for i, rule in enumerate(spec.get("quality") or []):
        rwhere = f"schema[{tname}].quality[{i}]"
        if rule.get("type") == "text":
            continue
        if (rule.get("metric") or rule.get("rule")) != "rowCount":
            raise _unsupported(contract, rwhere, f"table-level metric {rule.get('metric')!r}")
        ops = [k for k in rule if k in _OPERATORS]
        extra = set(rule) - _QUALITY_DOC_KEYS - {"type", "metric", "rule", *ops}
        if len(ops) != 1 or extra:
            raise _unsupported(contract, rwhere, "rowCount needs exactly one operator")
        arg = rule[ops[0]]
        if isinstance(arg, float) and math.isnan(arg):
            raise _unsupported(contract, rwhere, "NaN operand")
        row_rules.append((ops[0], arg))

    multiline = False
    for i, prop in enumerate(spec.get("customProperties") or []):
        name, value = prop.get("property"), prop.get("value")
        if name not in _TABLE_CUSTOM or not isinstance(value, bool):
            raise _unsupported(
                contract,
                f"schema[{tname}].customProperties[{i}]",
                f"custom property {name!r} = {value!r} (fedchem reads: multilineRecords: bool)",
            )
        multiline = value
    schema = pa.DataFrameSchema(
        columns, strict=False, coerce=False, name=f"{contract.model.id}.{tname}"
    )
    return CompiledTable(
        contract=contract,
        table=tname,
        columns=tuple(columns),
        schema=schema,
        numeric_columns=tuple(numeric),
        row_count_rules=tuple(row_rules),
        reasons=reasons,
        optional_columns=tuple(optional),
        multiline_records=multiline,
    )
