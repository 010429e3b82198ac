"""Run a compiled contract over a table: accepted rows, quarantined rows with reasons, a count.

The account always balances: ``rows_in == accepted + quarantined``. Quarantined rows keep their
raw values and stay at the site; only the counts travel.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pandas as pd
import pandera.errors as pa_errors

from fedchem.contracts.compile import CompiledTable
from fedchem.contracts.errors import MissingColumnError
from fedchem.messages import RowAccount

__all__ = ["QUARANTINE_COLUMNS", "RowAccount", "ValidationResult", "read_table", "validate_frame"]

#: leading columns of every quarantine file; the row's raw columns follow
QUARANTINE_COLUMNS = ("source_row", "step", "reason")


@dataclass(frozen=True)
class ValidationResult:
    accepted: pd.DataFrame
    """rows that passed, contract columns typed, plus ``source_row``"""
    quarantine: pd.DataFrame
    """``source_row, step, reason`` then the row's raw columns"""
    account: RowAccount


def read_table(path: Path | str) -> pd.DataFrame:
    """Read a CSV (optionally compressed) as text, keeping every row and its 0-based position.

    Only empty cells are missing; ``NA`` or ``null`` stay strings for the contract to judge.
    Undecodable bytes are replaced (U+FFFD) so the row fails a check instead of the whole file.
    """
    try:
        df = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8",
            encoding_errors="replace",
        )
    except pd.errors.ParserError:
        df = _read_ragged(path)  # some line has the wrong number of fields: keep it, flagged
    df.insert(0, "source_row", range(len(df)))
    return df


#: column ``read_table`` adds when a line could not be split into the header's fields
MALFORMED = "_malformed_line"


def _read_ragged(path: Path | str) -> pd.DataFrame:
    """Slow path: every line kept; one with the wrong field count is flagged, not dropped."""
    with fsspec.open(
        str(path), "rt", compression="infer", encoding="utf-8", errors="replace", newline=""
    ) as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows: list[list[str | None]] = []
        flags: list[str | None] = []
        for rec in reader:
            if len(rec) == len(header):
                rows.append([v if v != "" else None for v in rec])
                flags.append(None)
            else:
                rows.append([None] * len(header))
                flags.append(f"malformed line: {len(rec)} fields, the header has {len(header)}")
    df = pd.DataFrame(rows, columns=header, dtype=object)
    df[MALFORMED] = flags
    return df


def validate_frame(
    df: pd.DataFrame, compiled: CompiledTable, *, step: str = "contract", source: str = "<frame>"
) -> ValidationResult:
    """Validate ``df`` (text columns, with ``source_row``) against ``compiled``."""
    for col in compiled.columns:
        if col not in df.columns:
            raise MissingColumnError(col, compiled.contract.label, source)
    data = df[["source_row", *compiled.columns]].reset_index(drop=True)
    body = data[list(compiled.columns)]
    reasons: dict[int, list[str]] = {}
    if MALFORMED in df.columns:
        for i, flag in enumerate(df[MALFORMED].to_numpy(dtype=object)):
            if isinstance(flag, str) and flag:
                reasons[i] = [flag]
    try:
        compiled.schema.validate(body, lazy=True)
    except pa_errors.SchemaErrors as err:
        fc = err.failure_cases
        bad = fc[fc["index"].notna()]
        if len(bad) != len(fc):  # a frame-level failure we did not anticipate: do not hide it
            raise
        for idx, column, check in zip(bad["index"], bad["column"], bad["check"], strict=True):
            if int(idx) in reasons and reasons[int(idx)][0].startswith("malformed line"):
                continue  # its empty fields fail checks too; the line itself is the reason
            reasons.setdefault(int(idx), []).append(compiled.reason_for(column, str(check)))
    bad_idx = sorted(reasons)
    quarantine = data.loc[bad_idx].copy()
    quarantine.insert(1, "step", step)
    quarantine.insert(2, "reason", ["; ".join(dict.fromkeys(reasons[i])) for i in bad_idx])
    accepted = compiled.typed(data.drop(index=bad_idx))
    account = RowAccount(
        step=step, rows_in=len(data), accepted=len(accepted), quarantined=len(quarantine)
    )
    compiled.check_table_rules(len(accepted))
    return ValidationResult(
        accepted.reset_index(drop=True), quarantine.reset_index(drop=True), account
    )
