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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fedchem.config import LabelConfig, TaskSpec
from fedchem.data.dataset import CENSOR_CODES
from fedchem.data.units import range_columns
from fedchem.messages import RowAccount

__all__ = ["TaskTable", "build_tasks", "catalogue_from_assays"]


@dataclass(frozen=True)
class TaskTable:
    """Labels of ``n_molecules x T`` catalogue tasks plus the rows that could not be used."""

    y: np.ndarray
    censor: np.ndarray
    quarantine: pd.DataFrame
    account: RowAccount
    auto_thresholds: dict[str, float] = field(default_factory=dict)
    """thresholds chosen by the automatic rule, per assay (aggregate metadata)"""
    below_quorum: dict[str, str] = field(default_factory=dict)
    """tasks whose labels were dropped at this site, with why"""


def _drop_incredible(df: pd.DataFrame, drop: Callable[[pd.Series, str | pd.Series], None]) -> None:
    """Quarantine values of continuous assays outside their credible range (the assay's own
    ``min_value``/``max_value``, else the unit's; ``fedchem.data.units``)."""
    cont = df["assay_type"].eq("continuous")
    if not cont.any():
        return
    unit = pd.Series("", index=df.index, dtype=object)
    if "assay_unit" in df:
        unit = df["assay_unit"].fillna("").astype(str).str.strip()
    if "unit" in df:
        own = df["unit"].fillna("").astype(str).str.strip()
        unit = own.where(own != "", unit)
    nan = pd.Series(np.nan, index=df.index)
    lo, hi = range_columns(unit, df.get("min_value", nan), df.get("max_value", nan))
    v = df["value"].to_numpy(dtype=np.float64)
    bad = cont.to_numpy() & ((v < lo) | (v > hi))
    if not bad.any():
        return
    why = pd.Series(pd.NA, index=df.index, dtype="object")
    why[bad] = [
        f"value {x:g} is outside the credible range [{a:g}, {b:g}] for unit '{u}' "
        "(an assay's own range: min_value/max_value in the assay table)"
        for x, a, b, u in zip(v[bad], lo[bad], hi[bad], unit[bad], strict=True)
    ]
    drop(pd.Series(bad, index=df.index), why)


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


def _auto_threshold(values: pd.Series, rules: LabelConfig) -> float | None:
    """The first candidate giving enough actives (as a fraction) and enough of each class."""
    v = values.to_numpy(dtype=float)
    for t in rules.auto_thresholds:
        active = int((v >= t).sum())
        inactive = len(v) - active
        if (
            len(v)
            and active / len(v) >= rules.auto_min_active_fraction
            and min(active, inactive) >= rules.auto_min_per_class
        ):
            return float(t)
    return None


def build_tasks(
    rows: pd.DataFrame,
    assays: pd.DataFrame,
    catalogue: Sequence[TaskSpec],
    n_molecules: int,
    rules: LabelConfig | None = None,
) -> TaskTable:
    """``rows``: source_row, mol, assay_id, value, qualifier, optionally compound_id and unit.

    ``assays``: the accepted assay table. ``mol`` indexes the site's unique molecules.
    """
    rules = rules or LabelConfig()
    task_index = {t.name: i for i, t in enumerate(catalogue)}
    kinds = {t.name: t.kind for t in catalogue}
    cols = ["assay_type", "threshold", "direction"] + [
        c for c in ("unit", "min_value", "max_value") if c in assays
    ]
    info = assays.set_index("assay_id")[cols].rename(columns={"unit": "assay_unit"})
    df = rows.join(info, on="assay_id")
    df["censor"] = df["qualifier"].map(CENSOR_CODES).astype("int8")
    df["kind"] = _task_kind(df["assay_type"], df["threshold"])
    reason = pd.Series(pd.NA, index=df.index, dtype="object")

    def drop(mask: pd.Series, text: str | pd.Series) -> None:
        new = mask & reason.isna()
        reason.loc[new] = text if isinstance(text, str) else text[new]

    drop(~df["assay_id"].isin(task_index), "assay is not in the federation's task catalogue")
    if "unit" in df and "assay_unit" in df:
        mu = df["unit"].fillna("").astype(str).str.strip()
        au = df["assay_unit"].fillna("").astype(str).str.strip()
        drop(
            (mu != "") & (au != "") & (mu != au),
            "unit '" + mu + "' does not match the assay's unit '" + au + "'",
        )
    _drop_incredible(df, drop)
    if "compound_id" in df:
        key = ["compound_id", "assay_id", "value", "qualifier"] + (["unit"] if "unit" in df else [])
        live = df[reason.isna()]
        dup = live.duplicated(subset=key, keep="first").reindex(df.index, fill_value=False)
        drop(dup, "duplicate of an earlier row (same compound, assay, value and qualifier)")
    expected = df["assay_id"].map(kinds)
    # a continuous assay without threshold that the catalogue wants as classification gets an
    # automatic threshold (MELLODDY's rule) from this site's exact values
    auto = (
        df["assay_type"].eq("continuous") & df["threshold"].isna() & expected.eq("classification")
    )
    df.loc[auto, "kind"] = "classification"
    drop(
        expected.notna() & (expected != df["kind"]),
        "assay makes a " + df["kind"] + " task but the catalogue says " + expected.fillna(""),
    )
    binary = df["assay_type"].eq("binary")
    drop(binary & ~df["value"].isin([0.0, 1.0]), "binary assay value is not 0 or 1")
    drop(binary & df["censor"].ne(0), "censored value in a binary assay")

    auto_thresholds: dict[str, float] = {}
    for assay in df.loc[auto & reason.isna(), "assay_id"].unique():
        mine = auto & reason.isna() & df["assay_id"].eq(assay)
        sign = np.where(df.loc[mine, "direction"].eq("lower_is_active"), -1.0, 1.0)
        exact = (df.loc[mine, "value"] * sign)[df.loc[mine, "censor"].eq(0)]
        t = _auto_threshold(exact, rules)
        if t is None:
            drop(
                mine,
                f"no automatic threshold in {list(rules.auto_thresholds)} gives "
                f">= {rules.auto_min_active_fraction:.0%} actives and "
                f">= {rules.auto_min_per_class} per class",
            )
            continue
        auto_thresholds[str(assay)] = t
        df.loc[mine, "threshold"] = t * sign  # back in the assay's own orientation

    # only values still in play are cast: a quarantined one may be beyond float32 (it is
    # outside every credible range then), and a cast never overflows
    df["label"] = df["value"].where(reason.isna()).astype("float32")
    thr = df["assay_type"].eq("continuous") & df["threshold"].notna() & reason.isna()
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

    below = _quorum(y, censor, catalogue, rules)
    for name, why in below.items():
        j = task_index[name]
        y[:, j] = np.nan
        censor[:, j] = 0
        drop(df["assay_id"].eq(name), f"task below quorum at this site: {why}")

    bad = reason.notna()
    quarantine = pd.DataFrame(
        {
            "source_row": df.loc[bad, "source_row"].to_numpy(),
            "step": "tasks",
            "reason": reason[bad].to_numpy(),
        }
    )
    account = RowAccount(
        step="tasks", rows_in=len(df), accepted=int((~bad).sum()), quarantined=int(bad.sum())
    )
    return TaskTable(
        y=y,
        censor=censor,
        quarantine=quarantine,
        account=account,
        auto_thresholds=auto_thresholds,
        below_quorum=below,
    )


def _quorum(
    y: np.ndarray, censor: np.ndarray, catalogue: Sequence[TaskSpec], rules: LabelConfig
) -> dict[str, str]:
    """Tasks that miss the quorum, with the counts that miss it (aggregates only)."""
    out: dict[str, str] = {}
    for j, task in enumerate(catalogue):
        col = y[:, j]
        seen = np.isfinite(col)
        if not seen.any():
            continue
        if task.kind == "classification":
            act, inact = int((col[seen] == 1).sum()), int((col[seen] == 0).sum())
            if act < rules.min_actives or inact < rules.min_inactives:
                out[task.name] = (
                    f"{act} actives / {inact} inactives, needs "
                    f"{rules.min_actives} / {rules.min_inactives}"
                )
        else:
            n, exact = int(seen.sum()), int((seen & (censor[:, j] == 0)).sum())
            if n < rules.min_regression_points or exact < rules.min_uncensored:
                need = f"{rules.min_regression_points} ({rules.min_uncensored})"
                out[task.name] = f"{n} values ({exact} uncensored), needs {need}"
    return out
