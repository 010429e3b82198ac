"""From measurements to task labels: catalogue mapping, thresholds, replicate aggregation.

Rules (MELLODDY-like): binary assays need 0/1 values with ``=``; a continuous assay with a
threshold becomes a classification task (``direction`` says which side is active, default
``higher_is_active``), a censored value that straddles the threshold is ambiguous and dropped;
a continuous assay without threshold is a regression task that keeps its qualifier.
Replicates (same standardized molecule, same task) are merged: majority for labels (a tie is
dropped), median of exact values for regression, else the tightest bound when every bound
points the same way, else dropped as conflicting. Every dropped row gets its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedchem.config import TaskSpec
from fedchem.contracts.validate import RowAccount
from fedchem.data.dataset import CENSOR_CODES

__all__ = ["TaskTable", "build_tasks", "catalogue_from_assays"]


@dataclass(frozen=True)
class TaskTable:
    """Labels of ``n_molecules x T`` catalogue tasks plus the rows that could not be used."""

    y: np.ndarray
    censor: np.ndarray
    quarantine: pd.DataFrame
    account: RowAccount


def _task_kind(assay_type: pd.Series, threshold: pd.Series) -> pd.Series:
    kind = np.where((assay_type == "binary") | threshold.notna(), "classification", "regression")
    return pd.Series(kind, index=assay_type.index)


def _threshold_labels(rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Label and an 'ambiguous' flag for continuous values with a threshold."""
    v, t, c = rows["value"], rows["threshold"], rows["censor"]
    lower_active = rows["direction"].eq("lower_is_active")
    # orient so that "active" always means "high": flip sign for lower_is_active assays
    s = np.where(lower_active, -1.0, 1.0)
    ov, ot, oc = v * s, t * s, c * s
    active = ov >= ot
    ambiguous = ((oc > 0) & ~active) | ((oc < 0) & active & (ov != ot))
    return active.astype("float32"), pd.Series(ambiguous, index=rows.index)


def catalogue_from_assays(assays: pd.DataFrame) -> list[TaskSpec]:
    """A site's own task catalogue from its accepted assay table (one task per assay)."""
    kinds = _task_kind(assays["assay_type"], assays["threshold"])
    return [
        TaskSpec(name=str(a), kind=str(k)) for a, k in zip(assays["assay_id"], kinds, strict=True)
    ]


def build_tasks(
    rows: pd.DataFrame, assays: pd.DataFrame, catalogue: Sequence[TaskSpec], n_molecules: int
) -> TaskTable:
    """``rows``: source_row, mol, assay_id, value, qualifier (validated, standardized).

    ``assays``: the accepted assay table. ``mol`` indexes the site's unique molecules.
    """
    task_index = {t.name: i for i, t in enumerate(catalogue)}
    kinds = {t.name: t.kind for t in catalogue}
    info = assays.set_index("assay_id")[["assay_type", "threshold", "direction"]]
    df = rows.join(info, on="assay_id")
    df["censor"] = df["qualifier"].map(CENSOR_CODES).astype("int8")
    df["kind"] = _task_kind(df["assay_type"], df["threshold"])
    reason = pd.Series(pd.NA, index=df.index, dtype="object")

    def drop(mask: pd.Series, text: str | pd.Series) -> None:
        new = mask & reason.isna()
        reason.loc[new] = text if isinstance(text, str) else text[new]

    drop(~df["assay_id"].isin(task_index), "assay is not in the federation's task catalogue")
    expected = df["assay_id"].map(kinds)
    drop(
        expected.notna() & (expected != df["kind"]),
        "assay makes a " + df["kind"] + " task but the catalogue says " + expected.fillna(""),
    )
    binary = df["assay_type"].eq("binary")
    drop(binary & ~df["value"].isin([0.0, 1.0]), "binary assay value is not 0 or 1")
    drop(binary & df["censor"].ne(0), "censored value in a binary assay")

    df["label"] = df["value"].astype("float32")
    thr = df["assay_type"].eq("continuous") & df["threshold"].notna()
    if thr.any():
        lab, amb = _threshold_labels(df[thr])
        df.loc[thr, "label"] = lab
        df.loc[thr, "censor"] = 0
        drop(
            thr & amb.reindex(df.index, fill_value=False),
            "censored value is ambiguous at the threshold",
        )

    ok = df[reason.isna()].copy()
    ok["task"] = ok["assay_id"].map(task_index).astype("int64")
    y = np.full((n_molecules, len(catalogue)), np.nan, dtype=np.float32)
    censor = np.zeros((n_molecules, len(catalogue)), dtype=np.int8)

    cls = ok[ok["kind"] == "classification"]
    if len(cls):
        mean = cls.groupby(["mol", "task"])["label"].transform("mean")
        tie = mean == 0.5
        drop(tie.reindex(df.index, fill_value=False), "replicate labels tie")
        g = cls[~tie].groupby(["mol", "task"])["label"].mean()
        mol, task = (g.index.get_level_values(i).to_numpy() for i in (0, 1))
        y[mol, task] = (g.to_numpy() > 0.5).astype(np.float32)

    reg = ok[ok["kind"] == "regression"]
    if len(reg):
        keys = ["mol", "task"]
        has_exact = reg.groupby(keys)["censor"].transform(lambda c: (c == 0).any())
        exact = reg[has_exact & reg["censor"].eq(0)].groupby(keys)["value"].median()
        bounds = reg[~has_exact]
        signs = bounds.groupby(keys)["censor"].transform("nunique")
        drop(
            (signs > 1).reindex(df.index, fill_value=False),
            "conflicting censored replicates ('<' and '>')",
        )
        same = bounds[signs == 1]
        upper = same[same["censor"] < 0].groupby(keys)["value"].min()
        lower = same[same["censor"] > 0].groupby(keys)["value"].max()
        for series, code in ((exact, 0), (upper, -1), (lower, 1)):
            if len(series):
                mol, task = (series.index.get_level_values(i).to_numpy() for i in (0, 1))
                y[mol, task] = series.to_numpy(dtype=np.float32)
                censor[mol, task] = code

    bad = reason.notna()
    quarantine = pd.DataFrame(
        {"source_row": df.loc[bad, "source_row"].to_numpy(), "step": "tasks",
         "reason": reason[bad].to_numpy()}
    )  # fmt: skip
    account = RowAccount(
        step="tasks", rows_in=len(df), accepted=int((~bad).sum()), quarantined=int(bad.sum())
    )
    return TaskTable(y=y, censor=censor, quarantine=quarantine, account=account)
