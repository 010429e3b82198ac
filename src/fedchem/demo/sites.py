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
from typing import Literal

import numpy as np
import pandas as pd
import yaml
from rdkit import Chem

from fedchem.chem.folds import scaffold_of
from fedchem.config import SiteConfig, TaskSpec
from fedchem.policy import TrustConfig
from fedchem.strategy_config import STRATEGY_NAMES
from fedchem.trust.keys import ensure_key_pair

__all__ = [
    "BUNDLED",
    "DemoSplit",
    "assay_id_for",
    "bundled_dataset",
    "demo_policy",
    "model_name",
    "release_held_back",
    "resolve_dataset",
    "site_names",
    "split_into_sites",
    "write_trust",
]


#: bundled public sets (``SOURCES.md`` beside them): name → (file, SMILES column)
BUNDLED: dict[str, tuple[str, str]] = {
    "tox21": ("tox21.csv.gz", "smiles"),
    "lipophilicity": ("lipophilicity.csv.gz", "smiles"),
    "biogen": ("biogen_adme.csv.gz", "SMILES"),
    "chembl": ("chembl_5thresh.csv.gz", "smiles"),
}


def bundled_dataset(name: str = "tox21") -> Path:
    """A bundled set by name; the default is Tox21 (7,831 molecules, 12 binary assays)."""
    return Path(str(resources.files("fedchem.demo").joinpath(BUNDLED[name][0])))


def resolve_dataset(dataset: str, smiles_col: str | None) -> tuple[Path, str]:
    """A bundled name or a path → (file, SMILES column); a missing file is a clear error."""
    if dataset in BUNDLED:
        return bundled_dataset(dataset), smiles_col or BUNDLED[dataset][1]
    path = Path(dataset)
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {dataset!r}: no such file and not a bundled name ({', '.join(BUNDLED)})"
        )
    return path, smiles_col or "smiles"


HELD_BACK = "held_back.csv"


def release_held_back(site: SiteConfig, cycle: int, shuffled: bool = False) -> int:
    """Append the rows held back for ``cycle`` to the site's export; returns how many.

    ``shuffled``: a drill for the promotion gate; the rows arrive with their values (and
    qualifiers) permuted within each assay, seeded by the site and cycle, so that they carry
    no signal (what a broken upstream pipeline or a swapped plate map delivers)."""
    held = site.measurements.parent / HELD_BACK
    if not held.exists():
        return 0
    rows = pd.read_csv(held, dtype=str, keep_default_na=False)
    due = rows[rows["cycle"].astype(int) == cycle].drop(columns="cycle")
    if shuffled and len(due):
        seed = int.from_bytes(hashlib.sha256(f"{site.name}:{cycle}".encode()).digest()[:8], "big")
        rng = np.random.default_rng(seed)
        due = due.copy()
        for _, idx in due.groupby("assay_id").groups.items():
            perm = rng.permutation(len(idx))
            for col in ("value", "qualifier"):
                due.loc[idx, col] = due.loc[idx, col].to_numpy()[perm]
    if len(due):
        due.to_csv(site.measurements, mode="a", header=False, index=False)
    return len(due)


def model_name(dataset: Path) -> str:
    """The registry name of a demo's model: the bundled set's name, else the file's stem."""
    for name, (file, _) in BUNDLED.items():
        if dataset.name == file:
            return name
    stem = dataset.name.split(".")[0].lower()
    return re.sub(r"[^a-z0-9_.-]+", "-", stem).strip("-_.")[:64] or "model"


#: above this many sites (the letters) a demo's sites are numbered, dealt 4 : 1 in size, and a
#: round commits with 90 % of them
MANY_SITES = 26


def site_names(n: int) -> list[str]:
    """``site-a`` ... ``site-z`` up to 26 sites; above, ``site-001`` ... (zero-padded: the
    names sort as the sites are numbered)."""
    if n <= MANY_SITES:
        return [f"site-{chr(ord('a') + i)}" for i in range(n)]
    width = len(str(n))
    return [f"site-{i + 1:0{width}d}" for i in range(n)]


@dataclass(frozen=True)
class DemoSplit:
    sites: list[SiteConfig]
    tasks: list[TaskSpec]
    molecules_per_site: dict[str, int]
    tasks_per_site: dict[str, int]
    trust: TrustConfig


def demo_policy(
    site: str, coordinator_key: str, n_sites: int, members: dict[str, str] | None = None
) -> dict[str, object]:
    """The policy a demo site's admin would write: signatures required, every strategy, at
    least two sites per round, the local-only model may leave (the cross-site matrix), no DP
    required; the consortium's members and their keys (secure aggregation trusts those)."""
    return {
        "site": site,
        "require_signatures": True,
        "coordinator_key": coordinator_key,
        "allowed_strategies": list(STRATEGY_NAMES),
        "min_sites_per_round": min(2, n_sites),
        "max_rounds": 1000,
        "share_local_models": True,
        "share_heads": True,
        "dp": {"required": False, "delta": 1e-5},
        "members": {s: k for s, k in (members or {}).items() if s != site},
    }


def write_trust(out_dir: Path, names: list[str]) -> TrustConfig:
    """Key pairs for the coordinator (``out_dir/coordinator``) and every site, and each site's
    policy (``out_dir/<site>/policy.yaml``); keys already there are kept."""
    coordinator = ensure_key_pair(out_dir / "coordinator", "coordinator")
    sites = {name: ensure_key_pair(out_dir / name, "site").public for name in names}
    for name in names:
        policy = demo_policy(name, coordinator.public, len(names), sites)
        (out_dir / name / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    return TrustConfig(
        coordinator=coordinator.public,
        sites=sites,
        coordinator_key_file=coordinator.private_path,
    )


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


def _deal_by_scaffold(smiles: pd.Series, n_sites: int, seed: int) -> np.ndarray:
    """Site index per row: whole scaffold groups, to sites of target sizes N, N-1, ..., 1
    (above 26 sites, sizes from 4 to 1 in N even steps: N : 1 would leave the smallest of a
    hundred sites a molecule or two, too few for its folds)."""
    groups = pd.Series(range(len(smiles))).groupby(smiles.map(_scaffold_key).to_numpy()).apply(list)
    rng = np.random.default_rng(seed)
    sizes = groups.map(len).to_numpy()
    # largest groups first (random among equals), each to the site furthest below its target
    order = np.lexsort((rng.random(len(groups)), -sizes))
    weights = (
        np.arange(n_sites, 0, -1, dtype=float)
        if n_sites <= MANY_SITES
        else np.linspace(4, 1, n_sites)
    )
    target = weights / weights.sum() * len(smiles)
    filled = np.zeros(n_sites)
    owner = np.empty(len(smiles), dtype=np.int64)
    for gi in order:
        members = groups.iloc[gi]
        s = int(np.argmax((target - filled) / target))
        owner[members] = s
        filled[s] += len(members)
    return owner


#: what the bundled datasets' tasks measure (Tox21: the NCATS Tox21 Data Challenge assays;
#: Biogen ADME: Fang et al. 2023; Lipophilicity: AstraZeneca's ChEMBL deposition)
TASK_DESCRIPTIONS = {
    "NR-AR": "androgen receptor agonism (full-length receptor, MDA cell line)",
    "NR-AR-LBD": "androgen receptor agonism (ligand-binding domain)",
    "NR-AhR": "aryl hydrocarbon receptor activation",
    "NR-Aromatase": "aromatase (CYP19) inhibition",
    "NR-ER": "estrogen receptor alpha agonism (full-length receptor, BG1 cell line)",
    "NR-ER-LBD": "estrogen receptor alpha agonism (ligand-binding domain)",
    "NR-PPAR-gamma": "peroxisome proliferator-activated receptor gamma agonism",
    "SR-ARE": "antioxidant response element activation (oxidative stress)",
    "SR-ATAD5": "ATAD5 induction (genotoxicity, DNA damage)",
    "SR-HSE": "heat shock factor response element activation (heat shock stress)",
    "SR-MMP": "mitochondrial membrane potential disruption",
    "SR-p53": "p53 pathway activation (DNA damage response)",
    "lipo": "octanol/water distribution coefficient at pH 7.4 (logD)",
    "LOG HLM_CLint (mL/min/kg)": "intrinsic clearance in human liver microsomes (log10)",
    "LOG MDR1-MDCK ER (B-A/A-B)": "MDR1-MDCK efflux ratio, P-glycoprotein efflux (log10)",
    "LOG SOLUBILITY PH 6.8 (ug/mL)": "aqueous solubility at pH 6.8 (log10 ug/mL)",
    "LOG PLASMA PROTEIN BINDING (HUMAN) (% unbound)": "human plasma protein binding (log10 %"
    " unbound)",
    "LOG PLASMA PROTEIN BINDING (RAT) (% unbound)": "rat plasma protein binding (log10 % unbound)",
    "LOG RLM_CLint (mL/min/kg)": "intrinsic clearance in rat liver microsomes (log10)",
}


def _deal_tasks(tasks: list[str], n_sites: int, seed: int) -> list[list[str]]:
    """Each task to one site (shuffled, dealt in turn): sites own different targets."""
    order = np.random.default_rng(seed).permutation(len(tasks))
    return [[tasks[i] for i in order[s::n_sites]] for s in range(n_sites)]


def split_into_sites(
    dataset: Path,
    smiles_col: str,
    n_sites: int,
    out_dir: Path,
    seed: int,
    task_split: Literal["shared", "disjoint"] = "shared",
    continuous_as: Literal["regression", "classification"] = "regression",
    cycles: int = 1,
    hold_back: float = 0.0,
) -> DemoSplit:
    """Write ``out_dir/<site>/{measurements,assays}.csv`` and the key; return site configs.

    ``task_split: shared`` deals molecules (whole scaffold groups) to sites that all measure
    every task; ``disjoint`` deals the *tasks*: each site owns its own targets and holds every
    molecule measured on them, so chemistry overlaps across sites while tasks do not (as in
    MELLODDY; folds follow the keyed scaffold hash, so a molecule is in the same fold at every
    site). ``continuous_as: classification`` makes continuous columns classification tasks,
    thresholded at each site by the automatic rule.

    ``cycles > 1``: a share ``hold_back`` of each site's molecules is not in its export yet;
    each waits in ``held_back.csv`` for a later cycle (2 to ``cycles``, at random), when
    :func:`release_held_back` appends it: the data a federation that keeps learning gets.
    """
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

    if task_split == "shared":
        owner = _deal_by_scaffold(smiles, n_sites, seed)
        site_rows = [owner == s for s in range(n_sites)]
        site_tasks = [list(tasks)] * n_sites
    else:
        site_tasks = _deal_tasks(list(tasks), n_sites, seed)
        site_rows = [df[own].notna().any(axis=1).to_numpy() for own in site_tasks]

    key = hashlib.sha256(f"fedchem-demo-consortium-key:{seed}".encode()).hexdigest().encode()
    names = site_names(n_sites)
    sites, counts = [], {}
    assays = pd.DataFrame(
        {
            "assay_id": list(tasks),
            "assay_type": list(tasks.values()),
            "threshold": "",
            "direction": "",
            "unit": "",
        }
    )
    for s, name in enumerate(names):
        d = out_dir / name
        d.mkdir(parents=True, exist_ok=True)
        part = df.loc[site_rows[s], [smiles_col, *site_tasks[s]]]  # its own columns only
        ids = [hashlib.sha256(f"{seed}:{name}:{i}".encode()).hexdigest()[:12] for i in part.index]
        long = part.assign(compound_id=[f"{name[-1].upper()}{x}" for x in ids]).melt(
            id_vars=["compound_id", smiles_col],
            value_vars=site_tasks[s],
            var_name="assay_id",
            value_name="value",
        )
        long = long[long["value"].notna()].rename(columns={smiles_col: "smiles"})
        long = long.assign(qualifier="=", unit="")[
            ["compound_id", "smiles", "assay_id", "value", "qualifier", "unit"]
        ]
        if cycles > 1:  # later cycles' molecules wait in held_back.csv, tagged by cycle
            rng = np.random.default_rng([seed, s])
            later = {
                c: int(rng.integers(2, cycles + 1))
                for c in long["compound_id"].unique()
                if rng.random() < hold_back
            }
            cycle = long["compound_id"].map(later).fillna(1).astype(int)
            long[cycle > 1].assign(cycle=cycle[cycle > 1]).to_csv(d / HELD_BACK, index=False)
            long = long[cycle == 1]
        long.to_csv(d / "measurements.csv", index=False)
        assays[assays["assay_id"].isin(site_tasks[s])].to_csv(d / "assays.csv", index=False)
        (d / "consortium.key").write_bytes(key)
        sites.append(
            SiteConfig(
                name=name,
                measurements=d / "measurements.csv",
                assays=d / "assays.csv",
                workdir=d / "work",
                key_file=d / "consortium.key",
                registry=str(d / "registry"),
                signing_key_file=d / "site.key",
                policy_file=d / "policy.yaml",
            )
        )
        counts[name] = int(part[site_tasks[s]].notna().any(axis=1).sum())  # measured ones
    described = {slugs[c]: TASK_DESCRIPTIONS.get(str(c)) for c in slugs}
    specs = [
        TaskSpec(
            name=t,
            description=described.get(t),
            kind="classification"
            if k == "binary" or continuous_as == "classification"
            else "regression",
        )
        for t, k in tasks.items()
    ]
    return DemoSplit(
        sites=sites,
        tasks=specs,
        molecules_per_site=counts,
        tasks_per_site={n: len(t) for n, t in zip(names, site_tasks, strict=True)},
        trust=write_trust(out_dir, names),
    )
