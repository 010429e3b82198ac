"""The site preparation pipeline: contract → standardize + featurize + fold → tasks → dataset.

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
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from fedchem.chem.batch import Progress, featurize_many, pipeline_fingerprint
from fedchem.chem.consistency import consistency_report
from fedchem.config import ChemConfig, SiteConfig, TaskSpec
from fedchem.contracts import (
    ContractViolation,
    RowAccount,
    compile_table,
    default_contracts_dir,
    load_contract,
    read_table,
    validate_frame,
)
from fedchem.data.csr import csr_take
from fedchem.data.dataset import SiteDataset, current_dataset_path
from fedchem.data.tasks import build_tasks, catalogue_from_assays

__all__ = ["PrepareReport", "current_dataset_path", "prepare_site", "read_key"]

MEASUREMENTS_CONTRACT = "measurements.odcs.yaml"
ASSAYS_CONTRACT = "assays.odcs.yaml"


class PrepareReport(BaseModel):
    """What a site may tell the federation about its preparation: counts, never rows."""

    model_config = ConfigDict(extra="forbid")

    site: str
    cache_key: str
    cache_hit: bool
    accounts: list[RowAccount]
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    n_molecules: int
    n_labels: int
    labels_per_task: dict[str, int]
    label_stats: dict[str, dict[str, float]]
    dataset_sha256: str
    auto_thresholds: dict[str, float] = Field(default_factory=dict)
    tasks_below_quorum: dict[str, str] = Field(default_factory=dict)
    consistency: dict[str, str] = Field(
        default_factory=dict,
        description="hashes of the reference set's output, config, versions, key fingerprint",
    )
    seconds: float


def read_key(site: SiteConfig) -> bytes:
    key = site.key_file.read_bytes().strip()
    if not key:
        raise ValueError(f"site {site.name}: consortium key file {site.key_file} is empty")
    return key


def _contracts(site: SiteConfig) -> tuple[Path, Path]:
    d = site.contracts_dir or default_contracts_dir()
    return d / MEASUREMENTS_CONTRACT, d / ASSAYS_CONTRACT


def _cache_key(
    site: SiteConfig, chem: ChemConfig, catalogue: Sequence[TaskSpec] | None, key: bytes
) -> str:
    h = hashlib.sha256()
    for path in (site.measurements, site.assays, *_contracts(site)):
        h.update(hashlib.sha256(Path(path).read_bytes()).digest())
    h.update(chem.model_dump_json().encode())
    tasks = None if catalogue is None else [t.model_dump() for t in catalogue]
    h.update(json.dumps(tasks).encode())
    h.update(json.dumps(pipeline_fingerprint(chem, key), sort_keys=True).encode())
    return h.hexdigest()[:24]


def prepare_site(
    site: SiteConfig, chem: ChemConfig, catalogue: Sequence[TaskSpec] | None = None,
    progress: Progress | None = None,
) -> PrepareReport:  # fmt: skip
    """Validate, standardize, featurize and label one site's data; cached by content.

    Two caches: the whole run (same inputs, config, key and versions → the previous report)
    and the featurization shards under ``workdir/features`` (a changed input recomputes only
    the partitions it touches). ``progress(done, total)`` is called as partitions finish.
    ``catalogue`` is the federation's task list; ``None`` derives one from the assay table.
    """
    start = time.perf_counter()
    key = read_key(site)
    cache_key = _cache_key(site, chem, catalogue, key)
    out = site.workdir / "prepared" / cache_key
    report_path = out / "report.json"
    if report_path.exists():
        report = PrepareReport.model_validate_json(report_path.read_text())
        report = report.model_copy(
            update={"cache_hit": True, "seconds": time.perf_counter() - start}
        )
        _point_to(site, cache_key)
        return report

    m_path, a_path = _contracts(site)
    a_table = compile_table(load_contract(a_path))
    assays = validate_frame(read_table(site.assays), a_table, source=str(site.assays))
    if catalogue is None:
        catalogue = catalogue_from_assays(assays.accepted)
    m_table = compile_table(
        load_contract(m_path), references={"assays.assay_id": set(assays.accepted["assay_id"])}
    )
    raw = read_table(site.measurements)
    checked = validate_frame(raw, m_table, source=str(site.measurements))

    rows = checked.accepted
    unique_smiles, inverse = np.unique(rows["smiles"].to_numpy(dtype=str), return_inverse=True)
    feats = featurize_many(
        list(unique_smiles), chem, key,
        partition_rows=site.partition_rows, n_workers=site.dask_workers,
        dask_address=site.dask_address, cache_dir=site.workdir / "features", progress=progress,
    )  # fmt: skip
    # molecules = unique standardized parents; several raw SMILES may share one parent
    canon = pd.Series(feats.canonical, dtype="object")
    ok_raw = canon.notna().to_numpy()
    parents, first_raw = np.unique(canon[ok_raw].to_numpy(dtype=str), return_index=True)
    raw_ids = np.flatnonzero(ok_raw)[first_raw]
    parent_of_raw = np.full(len(unique_smiles), -1, dtype=np.int64)
    parent_of_raw[ok_raw] = np.searchsorted(parents, canon[ok_raw].to_numpy(dtype=str))
    row_parent = parent_of_raw[inverse]
    reasons = np.array(feats.reason, dtype=object)[inverse]
    std_bad = row_parent < 0
    std_quarantine = pd.DataFrame(
        {"source_row": rows.loc[std_bad, "source_row"].to_numpy(), "step": "standardize",
         "reason": ["smiles: " + str(r) for r in reasons[std_bad]]}
    )  # fmt: skip
    std_account = RowAccount(
        step="standardize", rows_in=len(rows), accepted=int((~std_bad).sum()),
        quarantined=int(std_bad.sum()),
    )  # fmt: skip

    labelled = rows.loc[
        ~std_bad, ["source_row", "compound_id", "assay_id", "value", "qualifier", "unit"]
    ].copy()
    labelled["mol"] = row_parent[~std_bad]
    tasks = build_tasks(
        labelled, assays.accepted, catalogue, n_molecules=len(parents), rules=chem.labels
    )

    # keep only molecules with at least one label
    has_label = np.isfinite(tasks.y).any(axis=1)
    keep = raw_ids[has_label]
    indptr, take = csr_take(feats.indptr, keep)
    dataset = SiteDataset(
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

    out.mkdir(parents=True, exist_ok=True)
    sha = dataset.save(out / "dataset.npz")
    quarantine = pd.concat([checked.quarantine[["source_row", "step", "reason"]],
                            std_quarantine, tasks.quarantine], ignore_index=True)  # fmt: skip
    quarantine = quarantine.merge(raw, on="source_row", how="left").sort_values("source_row")
    quarantine.to_csv(out / "quarantine_measurements.csv", index=False)
    assays.quarantine.to_csv(out / "quarantine_assays.csv", index=False)

    rows_q = len(quarantine)
    total = RowAccount(step="total", rows_in=len(raw), accepted=tasks.account.accepted,
                       quarantined=rows_q)  # fmt: skip
    report = PrepareReport(
        site=site.name,
        cache_key=cache_key,
        cache_hit=False,
        accounts=[
            assays.account.model_copy(update={"step": "contract:assays"}),
            checked.account.model_copy(update={"step": "contract:measurements"}),
            std_account,
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


#: a task's statistics are published only over at least this many values (no tiny aggregates)
MIN_STATS_COUNT = 10


def regression_label_stats(ds: SiteDataset, chem: ChemConfig) -> dict[str, dict[str, float]]:
    """Count, sum and sum of squares of exact training-fold labels per regression task.

    Aggregates for the federation's target scaling; tasks with fewer than ``MIN_STATS_COUNT``
    values are left out so that no small group of values can be recovered.
    """
    train = ds.without_folds([chem.test_fold, chem.valid_fold])
    out: dict[str, dict[str, float]] = {}
    for j, (name, kind) in enumerate(zip(ds.task_names, ds.task_kinds, strict=True)):
        if kind != "regression":
            continue
        v = train.y[np.isfinite(train.y[:, j]) & (train.censor[:, j] == 0), j].astype(np.float64)
        if len(v) >= MIN_STATS_COUNT:
            out[name] = {"n": float(len(v)), "sum": float(v.sum()), "sumsq": float((v**2).sum())}
    return out


def _point_to(site: SiteConfig, cache_key: str) -> None:
    pointer = site.workdir / "prepared" / "current.json"
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cache_key": cache_key}))
    tmp.replace(pointer)
