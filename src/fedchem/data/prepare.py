"""The site preparation pipeline: contract → standardize + featurize + fold → tasks → dataset.

Each arrow is one step function here: :func:`validate_inputs`, :func:`standardize_rows`,
:func:`label_molecules`, :func:`assemble_dataset`, then :func:`write_quarantine` and the
report; :func:`prepare_site` runs them in order.

Runs once per data version: the output directory is named by a hash of everything that
determines it (input bytes, contracts, chemistry config, task catalogue, key fingerprint,
library versions), so an unchanged input is a cache hit and nothing is recomputed.
Everything written here stays at the site; the returned ``PrepareReport`` holds counts only.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedchem.chem.batch import featurize_many
from fedchem.chem.consistency import consistency_report
from fedchem.chem.csr import csr_take
from fedchem.chem.featurize import FeaturizedBatch, pipeline_fingerprint
from fedchem.chem.parallel import Progress
from fedchem.config import ChemConfig, SiteConfig, TaskSpec
from fedchem.contracts import (
    ContractViolation,
    ValidationResult,
    compile_table,
    default_contracts_dir,
    load_contract,
    read_table,
    validate_frame,
)
from fedchem.data.dataset import SiteDataset, current_dataset_path, supported_columns
from fedchem.data.tasks import TaskTable, build_tasks, catalogue_from_assays
from fedchem.messages import PrepareReport, RowAccount

__all__ = [
    "Inputs",
    "Molecules",
    "assemble_dataset",
    "current_dataset_path",
    "fold_shares",
    "fold_warnings",
    "label_molecules",
    "prepare_site",
    "read_key",
    "standardize_rows",
    "validate_inputs",
    "write_quarantine",
]

MEASUREMENTS_CONTRACT = "measurements.odcs.yaml"
ASSAYS_CONTRACT = "assays.odcs.yaml"


def read_key(site: SiteConfig) -> bytes:
    key = site.key_file.read_bytes().strip()
    if not key:
        raise ValueError(f"site {site.name}: consortium key file {site.key_file} is empty")
    return key


def _contracts(site: SiteConfig) -> tuple[Path, Path]:
    d = site.contracts_dir or default_contracts_dir()
    return d / MEASUREMENTS_CONTRACT, d / ASSAYS_CONTRACT


#: bumped when what a prepared site holds or reports changes (2: classification label stats)
PREPARED_FORMAT = 2


def _cache_key(
    site: SiteConfig, chem: ChemConfig, catalogue: Sequence[TaskSpec] | None, key: bytes
) -> str:
    h = hashlib.sha256(f"prepared/{PREPARED_FORMAT}".encode())
    for path in (site.measurements, site.assays, *_contracts(site)):
        h.update(hashlib.sha256(Path(path).read_bytes()).digest())
    h.update(chem.model_dump_json().encode())
    tasks = None if catalogue is None else [t.model_dump() for t in catalogue]
    h.update(json.dumps(tasks).encode())
    h.update(json.dumps(pipeline_fingerprint(chem, key), sort_keys=True).encode())
    return h.hexdigest()[:24]


@dataclass(frozen=True)
class Inputs:
    """Step 1, the contracts: a site's two tables checked row by row."""

    raw: pd.DataFrame
    """every measurement row as read (text), with ``source_row``"""
    assays: ValidationResult
    measurements: ValidationResult
    catalogue: list[TaskSpec]


@dataclass(frozen=True)
class Molecules:
    """Step 2, standardization: accepted rows mapped to unique standardized parent molecules.

    ``features`` holds one row per distinct input SMILES; ``row_parent[i]`` is the parent
    molecule of accepted row ``i`` (-1: quarantined at this step); ``parent_features[m]`` the
    row of ``features`` that stands for parent ``m``.
    """

    features: FeaturizedBatch
    row_parent: np.ndarray
    parent_features: np.ndarray
    quarantine: pd.DataFrame
    account: RowAccount


def validate_inputs(site: SiteConfig, catalogue: Sequence[TaskSpec] | None) -> Inputs:
    """The assay table, then the measurements (whose assay ids must be accepted assays)."""
    m_path, a_path = _contracts(site)
    a_table = compile_table(load_contract(a_path))
    assays = validate_frame(
        read_table(site.assays, a_table.multiline_records), a_table, source=str(site.assays)
    )
    tasks = list(catalogue) if catalogue is not None else catalogue_from_assays(assays.accepted)
    m_table = compile_table(
        load_contract(m_path), references={"assays.assay_id": set(assays.accepted["assay_id"])}
    )
    raw = read_table(site.measurements, m_table.multiline_records)
    checked = validate_frame(raw, m_table, source=str(site.measurements))
    return Inputs(raw=raw, assays=assays, measurements=checked, catalogue=tasks)


def standardize_rows(
    rows: pd.DataFrame,
    chem: ChemConfig,
    key: bytes,
    site: SiteConfig,
    progress: Progress | None = None,
) -> Molecules:
    """Featurize every distinct SMILES once (through the site's feature cache) and map rows to
    standardized parents: several raw SMILES (salts, charged forms) may share one parent."""
    unique_smiles, inverse = np.unique(rows["smiles"].to_numpy(dtype=str), return_inverse=True)
    feats = featurize_many(
        list(unique_smiles),
        chem,
        key,
        partition_rows=site.partition_rows,
        n_workers=site.dask_workers,
        dask_address=site.dask_address,
        cache_dir=site.workdir / "features",
        progress=progress,
    )
    canon = pd.Series(feats.canonical, dtype="object")
    ok_raw = canon.notna().to_numpy()
    parents, first_raw = np.unique(canon[ok_raw].to_numpy(dtype=str), return_index=True)
    parent_of_raw = np.full(len(unique_smiles), -1, dtype=np.int64)
    parent_of_raw[ok_raw] = np.searchsorted(parents, canon[ok_raw].to_numpy(dtype=str))
    row_parent = parent_of_raw[inverse]
    reasons = np.array(feats.reason, dtype=object)[inverse]
    bad = row_parent < 0
    quarantine = pd.DataFrame(
        {
            "source_row": rows.loc[bad, "source_row"].to_numpy(),
            "step": "standardize",
            "reason": ["smiles: " + str(r) for r in reasons[bad]],
        }
    )
    account = RowAccount(
        step="standardize",
        rows_in=len(rows),
        accepted=int((~bad).sum()),
        quarantined=int(bad.sum()),
    )
    return Molecules(
        features=feats,
        row_parent=row_parent,
        parent_features=np.flatnonzero(ok_raw)[first_raw],
        quarantine=quarantine,
        account=account,
    )


def label_molecules(
    rows: pd.DataFrame, mols: Molecules, inputs: Inputs, chem: ChemConfig
) -> TaskTable:
    """Step 3: the rows that standardized, as labels of the catalogue's tasks per parent."""
    ok = mols.row_parent >= 0
    labelled = rows.loc[
        ok, ["source_row", "compound_id", "assay_id", "value", "qualifier", "unit"]
    ].copy()
    labelled["mol"] = mols.row_parent[ok]
    return build_tasks(
        labelled,
        inputs.assays.accepted,
        inputs.catalogue,
        n_molecules=len(mols.parent_features),
        rules=chem.labels,
    )


def assemble_dataset(
    mols: Molecules, tasks: TaskTable, catalogue: Sequence[TaskSpec], chem: ChemConfig
) -> SiteDataset:
    """Step 4: the training-ready dataset, the molecules with at least one label."""
    has_label = np.isfinite(tasks.y).any(axis=1)
    keep = mols.parent_features[has_label]
    feats = mols.features
    indptr, take = csr_take(feats.indptr, keep)
    return SiteDataset(
        indptr=indptr,
        indices=feats.indices[take],
        values=feats.values[take] if feats.values is not None else None,
        task_weights=np.array([t.weight for t in catalogue], dtype=np.float32),
        fold=feats.fold[keep],
        y=tasks.y[has_label],
        censor=tasks.censor[has_label],
        task_names=tuple(t.name for t in catalogue),
        task_kinds=tuple(t.kind for t in catalogue),
        fp_size=chem.fp_size,
    )


def write_quarantine(out: Path, inputs: Inputs, mols: Molecules, tasks: TaskTable) -> pd.DataFrame:
    """Every quarantined row of every step with its reason and raw values (they stay here)."""
    quarantine = pd.concat(
        [
            inputs.measurements.quarantine[["source_row", "step", "reason"]],
            mols.quarantine,
            tasks.quarantine,
        ],
        ignore_index=True,
    )
    quarantine = quarantine.merge(inputs.raw, on="source_row", how="left").sort_values("source_row")
    quarantine.to_csv(out / "quarantine_measurements.csv", index=False)
    inputs.assays.quarantine.to_csv(out / "quarantine_assays.csv", index=False)
    return quarantine


def prepare_site(
    site: SiteConfig,
    chem: ChemConfig,
    catalogue: Sequence[TaskSpec] | None = None,
    progress: Progress | None = None,
) -> PrepareReport:
    """Validate, standardize, featurize and label one site's data; cached by content.

    Two caches: the whole run (same inputs, config, key and versions → the previous report)
    and the feature cache under ``workdir/features`` (a changed input computes only the
    molecules it adds). ``progress(done, total)`` is called as partitions finish.
    ``catalogue`` is the federation's task list; ``None`` derives one from the assay table.
    """
    start = time.perf_counter()
    key = read_key(site)
    cache_key = _cache_key(site, chem, catalogue, key)
    out = site.workdir / "prepared" / cache_key
    report_path = out / "report.json"
    if report_path.exists():
        report = PrepareReport.model_validate_json(report_path.read_text())
        _point_to(site, cache_key)
        return report.model_copy(update={"cache_hit": True, "seconds": time.perf_counter() - start})

    inputs = validate_inputs(site, catalogue)
    rows = inputs.measurements.accepted
    mols = standardize_rows(rows, chem, key, site, progress)
    tasks = label_molecules(rows, mols, inputs, chem)
    dataset = assemble_dataset(mols, tasks, inputs.catalogue, chem)

    out.mkdir(parents=True, exist_ok=True)
    sha = dataset.save(out / "dataset.npz")
    rows_q = len(write_quarantine(out, inputs, mols, tasks))
    raw = inputs.raw
    total = RowAccount(
        step="total", rows_in=len(raw), accepted=tasks.account.accepted, quarantined=rows_q
    )
    shares = fold_shares(dataset.fold, chem.n_folds)
    report = PrepareReport(
        site=site.name,
        cache_key=cache_key,
        cache_hit=False,
        accounts=[
            inputs.assays.account.model_copy(update={"step": "contract:assays"}),
            inputs.measurements.account.model_copy(update={"step": "contract:measurements"}),
            mols.account,
            tasks.account,
            total,
        ],
        rows_in=len(raw),
        rows_accepted=tasks.account.accepted,
        rows_quarantined=rows_q,
        n_molecules=len(dataset),
        n_labels=dataset.n_labels(),
        labels_per_task={
            t: int(np.isfinite(dataset.y[:, i]).sum()) for i, t in enumerate(dataset.task_names)
        },
        label_stats=regression_label_stats(dataset, chem),
        dataset_sha256=sha,
        consistency=consistency_report(chem, key),
        auto_thresholds=tasks.auto_thresholds,
        tasks_below_quorum=tasks.below_quorum,
        fold_shares={str(f): v for f, v in shares.items()},
        supported_columns=supported_columns(
            dataset.without_folds([chem.test_fold, chem.valid_fold])
        ),
        warnings=fold_warnings(shares, len(dataset), chem),
        seconds=time.perf_counter() - start,
    )
    if len(raw) and rows_q / len(raw) > site.max_quarantine_fraction:
        raise ContractViolation(
            f"site {site.name}: {rows_q} of {len(raw)} measurement rows quarantined "
            f"({rows_q / len(raw):.1%}), above max_quarantine_fraction="
            f"{site.max_quarantine_fraction} in the site config; "
            f"see {out}/quarantine_measurements.csv"
        )
    report_path.write_text(report.model_dump_json(indent=2))
    _point_to(site, cache_key)
    return report


def fold_shares(fold: np.ndarray, n_folds: int) -> dict[int, float]:
    """The share of molecules in each fold (every fold listed, empty ones at 0)."""
    counts = np.bincount(fold.astype(np.int64), minlength=n_folds)[:n_folds]
    total = max(int(counts.sum()), 1)
    return {f: round(float(c) / total, 4) for f, c in enumerate(counts)}


def fold_warnings(shares: dict[int, float], n_molecules: int, chem: ChemConfig) -> list[str]:
    """A warning per fold above ``chem.folds.max_fold_share`` of the site's molecules."""
    limit = chem.folds.max_fold_share
    return [
        f"fold {f}{' (test)' if f == chem.test_fold else ''} holds {share:.0%} of the site's "
        f"{n_molecules} molecules, more than {limit:.0%}: its scores would measure that "
        f"fold's chemistry (folds: {chem.folds.method})"
        for f, share in shares.items()
        if share > limit
    ]


#: a task's statistics are published only over at least this many values (no tiny aggregates)
MIN_STATS_COUNT = 10


def regression_label_stats(ds: SiteDataset, chem: ChemConfig) -> dict[str, dict[str, float]]:
    """Count, sum and sum of squares of exact training-fold labels per task.

    Aggregates for the federation's round-0 model: a regression task's target scaling, a
    classification task's head bias at the pooled prior (the sum is the count of actives).
    Tasks with fewer than ``MIN_STATS_COUNT`` values are left out so that no small group of
    values can be recovered.
    """
    train = ds.without_folds([chem.test_fold, chem.valid_fold])
    out: dict[str, dict[str, float]] = {}
    for j, name in enumerate(ds.task_names):
        v = train.y[np.isfinite(train.y[:, j]) & (train.censor[:, j] == 0), j].astype(np.float64)
        if len(v) >= MIN_STATS_COUNT:
            out[name] = {"n": float(len(v)), "sum": float(v.sum()), "sumsq": float((v**2).sum())}
    return out


def _point_to(site: SiteConfig, cache_key: str) -> None:
    pointer = site.workdir / "prepared" / "current.json"
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cache_key": cache_key}))
    tmp.replace(pointer)
