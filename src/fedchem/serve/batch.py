"""Scoring a file: every line of an input CSV to one row of the output CSV, chunk by chunk.

The one implementation behind ``fedchem predict`` and the ``batch-predict`` flow: the input is
read line by line (a line that is not a record becomes a row with its error, never dropped),
predicted in chunks of ``chunk_rows`` (featurized over Dask processes when ``n_workers > 1``)
and appended to the output, so memory stays flat whatever the file's size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedchem.contracts.validate import MALFORMED, RAW_LINE, Source, read_table
from fedchem.serve.predictor import Predictor

__all__ = ["ScoredFile", "mark_unread", "predict_file", "read_input"]


@dataclass(frozen=True)
class ScoredFile:
    rows: int
    errors: int
    output: Path


def _column(columns: list[str], wanted: str, where: object) -> str:
    """``wanted``, or its one case-insensitive match (MOSES writes ``SMILES``)."""
    if wanted in columns:
        return wanted
    matches = [c for c in columns if c.lower() == wanted.lower()]
    if len(matches) == 1:
        return matches[0]
    shown = [c for c in columns if c not in ("source_row", MALFORMED, RAW_LINE)]
    raise ValueError(f"{where}: no column {wanted!r} (columns: {shown})")


def read_input(
    source: Source, smiles_col: str, id_col: str | None, name: str | None = None
) -> tuple[list[str], list[str], list[str]]:
    """(ids, SMILES, read errors) of every line of an input CSV, in order: the one reader of
    ``fedchem predict``, the batch flow and the service's CSV upload. Column names match
    without regard to case; without an id column a row's id is its 1-based line number after
    the header; a line that is not one record is a row with its error. ``name``: what errors
    call the source (default: the source itself)."""
    table = read_table(source)
    where = name or source
    columns = [str(c) for c in table.columns]
    smiles_col = _column(columns, smiles_col, where)
    if id_col is not None:
        id_col = _column(columns, id_col, where)
    smiles = ["" if v is None else str(v) for v in table[smiles_col]]
    if id_col is not None:
        ids = ["" if v is None else str(v) for v in table[id_col]]
    else:
        ids = [str(i + 1) for i in range(len(table))]
    errors = ["" if f is None else str(f) for f in table[MALFORMED]]
    return ids, smiles, errors


def mark_unread(table: pd.DataFrame, errors: list[str]) -> None:
    """A line that could not be read keeps its row: its error, no prediction from it."""
    for i, why in enumerate(errors):
        if why:
            table.loc[i, ["status", "error"]] = ["error", why]
            table.loc[i, table.columns[5:]] = None


def predict_file(
    predictor: Predictor,
    input_path: Path,
    output: Path,
    smiles_col: str = "smiles",
    id_col: str | None = None,
    alpha: float | None = None,
    chunk_rows: int = 20_000,
    n_workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> ScoredFile:
    """Predict every line of ``input_path`` into ``output`` (see the module docstring)."""
    ids, smiles, errors = read_input(input_path, smiles_col, id_col)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial")
    n_err = 0
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        for start in range(0, max(len(smiles), 1), chunk_rows):
            end = min(start + chunk_rows, len(smiles))
            table = predictor.predict(smiles[start:end], ids[start:end], alpha, n_workers)
            mark_unread(table, errors[start:end])
            n_err += int((table["status"] != "ok").sum())
            table.to_csv(fh, index=False, header=start == 0)
            if progress is not None:
                progress(end, len(smiles))
    tmp.replace(output)
    return ScoredFile(rows=len(smiles), errors=n_err, output=output)
