"""Run a compiled contract over a table: accepted rows, quarantined rows with reasons, a count.

The account always balances: ``rows_in == accepted + quarantined``. Quarantined rows keep their
raw values and stay at the site; only the counts travel.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import fsspec
import numpy as np
import pandas as pd
import pandera.errors as pa_errors

from fedchem.contracts.compile import CompiledTable
from fedchem.contracts.errors import MissingColumnError
from fedchem.messages import RowAccount

__all__ = [
    "QUARANTINE_COLUMNS",
    "RowAccount",
    "ValidationResult",
    "read_table",
    "read_text",
    "validate_frame",
]

#: leading columns of every quarantine file; the row's raw columns follow
QUARANTINE_COLUMNS = ("source_row", "step", "reason")


@dataclass(frozen=True)
class ValidationResult:
    accepted: pd.DataFrame
    """rows that passed, contract columns typed, plus ``source_row``"""
    quarantine: pd.DataFrame
    """``source_row, step, reason`` then the row's raw columns"""
    account: RowAccount


#: columns ``read_table`` adds: why a line could not be read as a record, and the line itself
MALFORMED, RAW_LINE = "_malformed_line", "_raw_line"
#: control characters no value may hold (C0 and DEL); a line break cannot be in a value at all
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


Source = Path | str | IO[str] | IO[bytes]


def read_text(source: Source) -> str:
    """A path (any fsspec URL, compression by extension) or an open file, as text: UTF-8 with
    undecodable bytes replaced (U+FFFD), so that a bad byte fails its row's checks instead of
    the whole file."""
    if hasattr(source, "read"):
        data = source.read()
    else:
        with fsspec.open(str(source), "rb", compression="infer") as fh:
            data = fh.read()
    return data if isinstance(data, str) else data.decode("utf-8", errors="replace")


def _lines(source: Source) -> list[str]:
    """The physical lines (``\n``-separated; a ``\r`` before it dropped)."""
    text = read_text(source)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _split(line: str, delimiter: str = ",") -> list[str]:
    """One physical line as CSV fields; a quote left open at the end of the line is an error
    (``csv.Error``), never the start of a value that takes in the lines after it."""
    if '"' not in line:
        return line.split(delimiter)
    return next(csv.reader([line], strict=True, delimiter=delimiter))


def read_table(path: Source, multiline_records: bool = False, delimiter: str = ",") -> pd.DataFrame:
    """Read a CSV (optionally compressed) as text: one row per physical line after the header,
    with its 0-based position as ``source_row``, so rows in = the file's lines.

    A line that cannot be read as one record (an unterminated quote, the wrong number of
    fields, an empty line) is kept as a row whose fields are empty, with the reason in
    ``_malformed_line`` and the line itself in ``_raw_line``. Only empty cells are missing;
    ``NA`` or ``null`` stay strings for the contract to judge. With ``multiline_records``
    (a contract that allows line breaks inside quoted values) a record may span lines.
    ``delimiter``: what separates fields (contracts: ``,``).
    """
    if multiline_records:
        return _read_records(path)
    lines = _lines(path)
    if not lines:
        raise ValueError(f"{path}: empty file, no header line")
    header = _split(lines[0], delimiter)
    commas = len(header) - 1
    if all('"' not in ln and ln.count(delimiter) == commas and ln.strip() for ln in lines[1:]):
        # every line one plain record (no quotes, the header's field count): pandas' reader
        # gives the same rows, four times faster
        df = pd.read_csv(
            io.StringIO("\n".join(lines)),
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            quoting=csv.QUOTE_NONE,
            sep=delimiter,
        ).astype(object)
        df = df.where(df.notna(), None)
        df[MALFORMED] = pd.Series([None] * len(df), dtype=object)
        df[RAW_LINE] = pd.Series([None] * len(df), dtype=object)
        df.insert(0, "source_row", range(len(df)))
        return df
    rows: list[list[str | None]] = []
    flags: list[str | None] = []
    raw: list[str | None] = []
    blank = [None] * len(header)
    for line in lines[1:]:
        why = None
        try:
            fields = _split(line, delimiter) if line.strip() else None
        except csv.Error:
            why = "malformed line: unterminated quote (a value cannot span lines here)"
        else:
            if fields is None:
                why = "malformed line: empty"
            elif len(fields) != len(header):
                why = f"malformed line: {len(fields)} fields, the header has {len(header)}"
        if why is None and fields is not None:
            rows.append([v if v != "" else None for v in fields])
        else:
            rows.append(list(blank))
        flags.append(why)
        raw.append(line if why is not None else None)
    df = pd.DataFrame(rows, columns=header, dtype=object)
    df[MALFORMED] = pd.Series(flags, dtype=object)
    df[RAW_LINE] = pd.Series(raw, dtype=object)
    df.insert(0, "source_row", range(len(df)))
    return df


def _read_records(path: Source) -> pd.DataFrame:
    """Records that may span lines (quoted line breaks); a ragged record is kept, flagged."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    header = next(reader)
    rows: list[list[str | None]] = []
    flags: list[str | None] = []
    for rec in reader:
        if len(rec) == len(header):
            rows.append([v if v != "" else None for v in rec])
            flags.append(None)
        else:
            rows.append([None] * len(header))
            flags.append(f"malformed record: {len(rec)} fields, the header has {len(header)}")
    df = pd.DataFrame(rows, columns=header, dtype=object)
    df[MALFORMED] = pd.Series(flags, dtype=object)
    df.insert(0, "source_row", range(len(df)))
    return df


def _control_characters(body: pd.DataFrame) -> dict[int, list[str]]:
    """Row -> reasons, for values holding a control character (a NUL in a SMILES, say): such a
    value is never passed on, changed or not."""
    out: dict[int, list[str]] = {}
    for col in body.columns:
        values = body[col]
        hit = values.notna() & values.astype(str).str.contains(_CONTROL, regex=True)
        for i in np.flatnonzero(hit.to_numpy()):
            text = str(values.iloc[i])
            pos = _CONTROL.search(text)
            assert pos is not None
            code = f"U+{ord(pos.group()):04X}"
            out.setdefault(int(i), []).append(
                f"{col}: control character {code} at position {pos.start() + 1}"
            )
    return out


def validate_frame(
    df: pd.DataFrame, compiled: CompiledTable, *, step: str = "contract", source: str = "<frame>"
) -> ValidationResult:
    """Validate ``df`` (text columns, with ``source_row``) against ``compiled``."""
    for col in compiled.columns:
        if col not in df.columns and col not in compiled.optional_columns:
            raise MissingColumnError(col, compiled.contract.label, source)
    df = df.assign(**{c: None for c in compiled.optional_columns if c not in df.columns})
    data = df[["source_row", *compiled.columns]].reset_index(drop=True)
    body = data[list(compiled.columns)]
    reasons: dict[int, list[str]] = {}
    if MALFORMED in df.columns:
        for i, flag in enumerate(df[MALFORMED].to_numpy(dtype=object)):
            if isinstance(flag, str) and flag:
                reasons[i] = [flag]
    for i, why in _control_characters(body).items():
        reasons.setdefault(i, []).extend(why)
    try:
        compiled.schema.validate(body, lazy=True)
    except pa_errors.SchemaErrors as err:
        fc = err.failure_cases
        bad = fc[fc["index"].notna()]
        if len(bad) != len(fc):  # a frame-level failure we did not anticipate: do not hide it
            raise
        for idx, column, check in zip(bad["index"], bad["column"], bad["check"], strict=True):
            if int(idx) in reasons and reasons[int(idx)][0].startswith("malformed"):
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
