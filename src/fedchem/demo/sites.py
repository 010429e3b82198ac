"""Turn a public wide table (SMILES + task columns) into N sites' contract-conformant files.

Molecules are grouped by Murcko scaffold and whole scaffold groups are dealt to sites of
unequal target sizes (weights N, N-1, ..., 1), so sites differ in size and chemistry as real
partners do. Every site gets its measurement file (long format), its assay table and the
consortium key file. Rows that RDKit cannot parse are written too: the sites quarantine them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from rdkit import Chem

from fedchem.chem.folds import scaffold_of
from fedchem.config import SiteConfig, TaskSpec

__all__ = ["DemoSplit", "assay_id_for", "bundled_dataset", "site_names", "split_into_sites"]


def bundled_dataset() -> Path:
    """Tox21 (7,831 molecules, 12 binary assays), shipped inside the package."""
    return Path(str(resources.files("fedchem.demo").joinpath("tox21.csv.gz")))


def site_names(n: int) -> list[str]:
    return [f"site-{chr(ord('a') + i)}" if i < 26 else f"site-{i}" for i in range(n)]


@dataclass(frozen=True)
class DemoSplit:
    sites: list[SiteConfig]
    tasks: list[TaskSpec]
    molecules_per_site: dict[str, int]


_ID_NAME = re.compile(r"(^|[\s_-])(id|ids|index|idx|number|no)$", re.IGNORECASE)


def _looks_like_identifier(col: str, values: pd.Series) -> bool:
    """An id column: named like one, or distinct integers on every row."""
    if _ID_NAME.search(col.strip()):
        return True
    v = values.dropna()
    return (
        len(v) > 20 and bool((v == np.round(v)).all()) and v.is_unique and not v.isin([0, 1]).all()
    )


def assay_id_for(column: str) -> str:
    """A column name as a contract-valid assay id (letters, digits and ``_.:+-``)."""
    slug = re.sub(r"[^A-Za-z0-9_.:+-]+", "_", column.strip()).strip("_.:+-")
    return slug[:128] or "task"


def _task_columns(df: pd.DataFrame, smiles_col: str) -> dict[str, str]:
    """Numeric columns other than SMILES and identifiers → 'binary' or 'continuous'."""
    out: dict[str, str] = {}
    for col in df.columns:
        if col == smiles_col:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        present = df[col].notna() & (df[col].astype(str).str.strip() != "")
        if present.sum() == 0 or values[present].isna().mean() > 0.05:
            continue  # a text column, not a task
        if _looks_like_identifier(str(col), values):
            continue
        out[col] = "binary" if values.dropna().isin([0, 1]).all() else "continuous"
    return out


def _scaffold_key(smiles: str) -> str:
    mol = Chem.MolFromSmiles(smiles)
    return scaffold_of(mol) if mol is not None else f"unparsable:{smiles}"


def split_into_sites(
    dataset: Path, smiles_col: str, n_sites: int, out_dir: Path, seed: int
) -> DemoSplit:
    """Write ``out_dir/<site>/{measurements,assays}.csv`` and the key; return site configs."""
    if n_sites < 1:
        raise ValueError("n_sites must be at least 1")
    df = pd.read_csv(dataset)
    if smiles_col not in df.columns:
        raise ValueError(
            f"{dataset}: no column {smiles_col!r} (columns: {', '.join(map(str, df.columns))}); "
            "name the SMILES column with --smiles-col"
        )
    tasks = _task_columns(df, smiles_col)
    if not tasks:
        raise ValueError(f"{dataset}: no numeric task columns besides {smiles_col!r}")
    slugs = {c: assay_id_for(str(c)) for c in tasks}
    if len(set(slugs.values())) != len(slugs):
        raise ValueError(f"{dataset}: task columns collide once made assay ids: {slugs}")
    df = df.rename(columns=slugs)
    tasks = {slugs[c]: k for c, k in tasks.items()}
    df = df[df[smiles_col].notna()].reset_index(drop=True)
    smiles = df[smiles_col].astype(str)

    groups = pd.Series(range(len(df))).groupby(smiles.map(_scaffold_key).to_numpy()).apply(list)
    rng = np.random.default_rng(seed)
    sizes = groups.map(len).to_numpy()
    # largest groups first (random among equals), each to the site furthest below its target
    order = np.lexsort((rng.random(len(groups)), -sizes))
    weights = np.arange(n_sites, 0, -1, dtype=float)
    target = weights / weights.sum() * len(df)
    filled = np.zeros(n_sites)
    owner = np.empty(len(df), dtype=np.int64)
    for gi in order:
        members = groups.iloc[gi]
        s = int(np.argmax((target - filled) / target))
        owner[members] = s
        filled[s] += len(members)

    key = hashlib.sha256(f"fedchem-demo-consortium-key:{seed}".encode()).hexdigest().encode()
    names = site_names(n_sites)
    sites, counts = [], {}
    assays = pd.DataFrame(
        {"assay_id": list(tasks), "assay_type": list(tasks.values()),
         "threshold": "", "direction": "", "unit": ""}
    )  # fmt: skip
    for s, name in enumerate(names):
        d = out_dir / name
        d.mkdir(parents=True, exist_ok=True)
        part = df[owner == s]
        ids = [hashlib.sha256(f"{seed}:{name}:{i}".encode()).hexdigest()[:12] for i in part.index]
        long = part.assign(compound_id=[f"{name[-1].upper()}{x}" for x in ids]).melt(
            id_vars=["compound_id", smiles_col], value_vars=list(tasks),
            var_name="assay_id", value_name="value",
        )  # fmt: skip
        long = long[long["value"].notna()].rename(columns={smiles_col: "smiles"})
        long = long.assign(qualifier="=", unit="")[
            ["compound_id", "smiles", "assay_id", "value", "qualifier", "unit"]
        ]
        long.to_csv(d / "measurements.csv", index=False)
        assays.to_csv(d / "assays.csv", index=False)
        (d / "consortium.key").write_bytes(key)
        sites.append(
            SiteConfig(
                name=name,
                measurements=d / "measurements.csv",
                assays=d / "assays.csv",
                workdir=d / "work",
                key_file=d / "consortium.key",
            )
        )
        counts[name] = len(part)
    specs = [
        TaskSpec(name=t, kind="classification" if k == "binary" else "regression")
        for t, k in tasks.items()
    ]
    return DemoSplit(sites=sites, tasks=specs, molecules_per_site=counts)
