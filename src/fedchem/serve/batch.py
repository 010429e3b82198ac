"""Scoring a file: every record of an input to one row of the output CSV, chunk by chunk.

The one implementation behind ``fedchem predict`` and the ``batch-predict`` flow: the input (a
CSV with any common delimiter, or an SD file) is read record by record (one that cannot be
read becomes a row with its error, never dropped), predicted in chunks of ``chunk_rows``
(featurized over Dask processes when ``n_workers > 1``) and appended to the output beside the
input's own columns.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedchem.contracts.validate import MALFORMED, RAW_LINE, Source, read_table, read_text
from fedchem.serve.predictor import Predictor

__all__ = [
    "InputRows",
    "ScoredFile",
    "is_sdf",
    "mark_unread",
    "predict_file",
    "read_input",
    "sniff_delimiter",
    "with_inputs",
]


@dataclass(frozen=True)
class ScoredFile:
    rows: int
    errors: int
    output: Path
    duplicate_ids: int = 0


@dataclass(frozen=True)
class InputRows:
    """Every record of an input, in order: ids, SMILES, a read error per record (``""``: none)
    and the input's other columns (kept, to go back out beside the predictions)."""

    ids: list[str]
    smiles: list[str]
    errors: list[str]
    extra: pd.DataFrame

    def duplicate_ids(self) -> list[str]:
        """Ids that more than one record carries (each once, in first-seen order)."""
        seen: set[str] = set()
        twice: dict[str, None] = {}
        for i in self.ids:
            if i in seen:
                twice[i] = None
            seen.add(i)
        return list(twice)

    def __len__(self) -> int:
        return len(self.ids)


#: what may separate fields; the header line decides (the most frequent one in it)
DELIMITERS = (",", ";", "\t", "|")
#: the SDF title line, kept as this column (ids follow the same rule as CSV: a named column)
SDF_TITLE = "title"
_FIELD = re.compile(r"^>.*<([^>]+)>")


def _column(columns: list[str], wanted: str, where: object) -> str:
    """``wanted``, or its one case-insensitive match (MOSES writes ``SMILES``)."""
    if wanted in columns:
        return wanted
    matches = [c for c in columns if c.lower() == wanted.lower()]
    if len(matches) == 1:
        return matches[0]
    shown = [c for c in columns if c not in ("source_row", MALFORMED, RAW_LINE)]
    raise ValueError(f"{where}: no column {wanted!r} (columns: {shown})")


def sniff_delimiter(header: str) -> str:
    """The field separator of a table whose first line is ``header``: the candidate it holds
    most often; ``,`` when it holds none (a one-column file)."""
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def is_sdf(text: str) -> bool:
    """An SD file: records end with a ``$$$$`` line (a CSV of SMILES never holds one)."""
    return any(line.rstrip("\r") == "$$$$" for line in text.split("\n"))


def _sdf_fields(text: str) -> dict[str, str]:
    """The data fields after a record's molecule block: ``> <name>`` then value lines up to a
    blank line."""
    out: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        found = _FIELD.match(lines[i])
        i += 1
        if found is None:
            continue
        value = []
        while i < len(lines) and lines[i].strip():
            value.append(lines[i])
            i += 1
        out[found.group(1)] = "\n".join(value)
    return out


def _read_sdf(text: str) -> pd.DataFrame:
    """An SD file as a table: one row per record, ``smiles`` (RDKit's, unsanitized: the
    featurizer's checks then judge it as they judge a CSV's), the title as ``title``, every
    data field as a column (one named like ours as ``sdf_<name>``); a record RDKit cannot
    read is a row with its error."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]
    records = re.split(r"^\$\$\$\$[ \t]*$\n?", text.replace("\r\n", "\n"), flags=re.M)
    if records and not records[-1].strip():
        records.pop()
    rows: list[dict[str, object]] = []
    for n, record in enumerate(records, start=1):
        block, end, rest = record.partition("M  END")
        row: dict[str, object] = {MALFORMED: None, SDF_TITLE: block.split("\n", 1)[0].strip()}
        mol = Chem.MolFromMolBlock(block + end, sanitize=False, removeHs=False) if end else None
        row["smiles"] = None
        if mol is None:
            row[MALFORMED] = f"SDF record {n}: RDKit cannot read its molecule block"
        else:
            try:
                row["smiles"] = Chem.MolToSmiles(mol)
            except (RuntimeError, ValueError) as exc:
                row[MALFORMED] = f"SDF record {n}: no SMILES for it ({exc})"
        for name, value in _sdf_fields(rest).items():
            taken = name in ("smiles", SDF_TITLE, MALFORMED)
            row[f"sdf_{name}" if taken else name] = value
        rows.append(row)
    fields = sorted({k for r in rows for k in r} - {"smiles", SDF_TITLE, MALFORMED})
    return pd.DataFrame(rows, dtype=object).reindex(
        columns=["smiles", SDF_TITLE, *fields, MALFORMED]
    )


def read_input(
    source: Source, smiles_col: str, id_col: str | None, name: str | None = None
) -> InputRows:
    """Every record of an input, in order: the one reader of ``fedchem predict``, the batch
    flow, the service's uploads and the page. A CSV (any of :data:`DELIMITERS`, read off the
    header) or an SD file (its SMILES as ``smiles``, its title as ``title``, its data fields
    as columns). Column names match without regard to case; without an id column a record's
    id is its 1-based position; a line or record that cannot be read is a row with its error.
    ``name``: what errors call the source (default: the source itself)."""
    text = read_text(source)
    where = name or source
    if is_sdf(text):
        table = _read_sdf(text)
    else:
        header = text.split("\n", 1)[0]
        table = read_table(io.StringIO(text), delimiter=sniff_delimiter(header))
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
    dropped = {smiles_col, id_col, "source_row", MALFORMED, RAW_LINE}
    extra = table[[c for c in columns if c not in dropped]].reset_index(drop=True)
    return InputRows(ids, smiles, errors, extra)


def mark_unread(table: pd.DataFrame, errors: list[str]) -> None:
    """A line that could not be read keeps its row: its error, no prediction from it."""
    predicted = table.columns[list(table.columns).index("error") + 1 :]
    for i, why in enumerate(errors):
        if why:
            table.loc[i, ["status", "error"]] = ["error", why]
            table.loc[i, predicted] = None


def with_inputs(table: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """The prediction table with the input's other columns after ``id``, in their order; one
    whose name the table already uses is called ``input_<name>``."""
    if not len(extra.columns):
        return table
    renamed = extra.rename(columns=lambda c: f"input_{c}" if c in table.columns else c)
    renamed.index = table.index
    return pd.concat([table[["id"]], renamed, table.drop(columns=["id"])], axis=1)


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
    rows = read_input(input_path, smiles_col, id_col)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial")
    n_err = 0
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        for start in range(0, max(len(rows), 1), chunk_rows):
            end = min(start + chunk_rows, len(rows))
            table = predictor.predict(rows.smiles[start:end], rows.ids[start:end], alpha, n_workers)
            mark_unread(table, rows.errors[start:end])
            table = with_inputs(table, rows.extra.iloc[start:end])
            n_err += int((table["status"] != "ok").sum())
            table.to_csv(fh, index=False, header=start == 0)
            if progress is not None:
                progress(end, len(rows))
    tmp.replace(output)
    return ScoredFile(
        rows=len(rows), errors=n_err, output=output, duplicate_ids=len(rows.duplicate_ids())
    )
