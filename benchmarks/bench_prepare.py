"""Site preparation at scale: fedchem's sharded Dask featurization vs a plain RDKit loop.

Runs, in one process run:
1. the baseline: a plain single-process RDKit loop doing the same per-molecule work
   (parse, metal disconnector, normalizer, reionizer, charge parent, isotopes, canonical
   round trip, ECFP6 bits, Murcko scaffold, keyed fold) over a sample, and, for context,
   parse + fingerprint only;
2. fedchem: ``featurize_to_shards`` over every unique SMILES with N worker processes into a
   fresh cache directory (peak memory of the whole process tree sampled every 0.2 s);
3. the same call again on unchanged input (cache hit), and after changing 0.1 % of the input;
4. the full standardization with the tautomer step on a sample: plain loop vs fedchem, and
   what the cache saves on a second run.

Prints rates and ratios. ``--limit`` runs on the first N SMILES (quick check).

    .venv/bin/python benchmarks/bench_prepare.py                       # 1.58M MOSES SMILES
    .venv/bin/python benchmarks/bench_prepare.py --limit 100000
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import shutil
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from libmem import PeakRSS
from rdkit import Chem, RDLogger
from rdkit.Chem import rdFingerprintGenerator
from rdkit.Chem.MolStandardize import rdMolStandardize
from rdkit.Chem.Scaffolds import MurckoScaffold

from fedchem.chem.cache import featurize_to_shards
from fedchem.config import ChemConfig, StandardizeConfig

RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "moses_train_smiles.csv.gz"
KEY = b"benchmark-consortium-key"


def plain_loop(smiles: list[str], tautomer: bool = False) -> float:
    """Molecules per second of the same work written as a plain RDKit loop (no fedchem).

    Mirrors fedchem's per-molecule steps, including its pre-checks that skip a step which
    would change nothing, so the ratio measures the batch layer (processes, shards, cache).
    """
    md, no = rdMolStandardize.MetalDisconnector(), rdMolStandardize.Normalizer()
    re_, un = rdMolStandardize.Reionizer(), rdMolStandardize.Uncharger(canonicalOrder=True)
    lf = rdMolStandardize.LargestFragmentChooser(preferOrganic=True)
    te = rdMolStandardize.TautomerEnumerator()
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=3, fpSize=4096)
    # the same no-op pre-checks fedchem uses, so both sides do identical per-molecule work
    metal = Chem.MolFromSmarts("[!#1;!#5;!#6;!#7;!#8;!#9;!#14;!#15;!#16;!#17;!#34;!#35;!#53]")
    charged = Chem.MolFromSmarts("[!+0]")
    perm = np.random.default_rng(0).permutation(4096)
    start = time.perf_counter()
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            continue
        if mol.HasSubstructMatch(metal):
            mol = md.Disconnect(mol)
        mol = no.normalize(mol)
        if mol.HasSubstructMatch(charged):
            mol = re_.reionize(mol)
        if len(Chem.GetMolFrags(mol)) > 1:
            mol = lf.choose(mol)
        if mol.HasSubstructMatch(charged):
            mol = un.uncharge(mol)
        mol = rdMolStandardize.IsotopeParent(mol, skipStandardize=True)
        if tautomer:
            mol = te.Canonicalize(mol)
        mol = Chem.MolFromSmiles(Chem.MolToSmiles(mol))
        if mol is None:
            continue
        bits = np.flatnonzero(gen.GetFingerprintAsNumPy(mol))
        np.sort(perm[bits])  # the keyed column permutation, as fedchem applies it
        scaffold = MurckoScaffold.MurckoScaffoldSmiles(mol=mol)
        hmac.new(KEY, scaffold.encode(), hashlib.sha256).digest()
    return len(smiles) / (time.perf_counter() - start)


def _plain_in_process(smiles: list[str]) -> float:
    return plain_loop(smiles)


def hardware_ceiling(smiles: list[str], workers: int) -> float:
    """Aggregate mol/s of ``workers`` plain loops running at once in separate processes.

    On shared or hyper-threaded cores this is below ``workers x`` the single-process rate:
    the most any parallel implementation could reach on this machine.
    """
    ctx = get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.map(_plain_in_process, [smiles[:20]] * workers)  # warm up: imports
        start = time.perf_counter()
        pool.map(_plain_in_process, [smiles] * workers)
        return workers * len(smiles) / (time.perf_counter() - start)


def parse_fp_loop(smiles: list[str]) -> float:
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=3, fpSize=4096)
    start = time.perf_counter()
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        if mol is not None:
            gen.GetFingerprint(mol)
    return len(smiles) / (time.perf_counter() - start)


def run_fedchem(
    smiles: np.ndarray, chem: ChemConfig, cache: Path, workers: int, label: str
) -> tuple[float, int, float]:
    """(seconds, molecules computed, peak RSS GB) for unique + cached featurization."""
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 10 or done == total:
            print(f"  [{label}] {done}/{total} partitions", flush=True)
            last[0] = now

    with PeakRSS() as mem:
        start = time.perf_counter()
        uniq = np.unique(smiles)
        index = featurize_to_shards(
            uniq, chem, KEY, cache, partition_rows=5000, n_workers=workers, progress=progress
        )
        seconds = time.perf_counter() - start
    return seconds, index.computed_molecules, mem.peak / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--sample", type=int, default=20000, help="molecules for the plain loops")
    ap.add_argument("--tautomer-sample", type=int, default=20000)
    args = ap.parse_args()

    t0 = time.perf_counter()
    smiles = pd.read_csv(args.data, nrows=args.limit).iloc[:, 0].astype(str).to_numpy(object)
    print(
        f"read {len(smiles):,} SMILES in {time.perf_counter() - t0:.1f}s; "
        f"{args.workers} worker processes"
    )
    rng = np.random.default_rng(0)
    sample = [str(s) for s in rng.choice(smiles, size=min(args.sample, len(smiles)), replace=False)]

    base = plain_loop(sample)
    fp_only = parse_fp_loop(sample)
    ceiling = hardware_ceiling(sample, args.workers)
    scaling = ceiling / (args.workers * base)
    print(
        f"plain RDKit loop, same work: {base:,.0f} mol/s; parse+fingerprint only: "
        f"{fp_only:,.0f} mol/s; {args.workers} plain loops in parallel processes: "
        f"{ceiling:,.0f} mol/s (hardware scaling {scaling:.2f})"
    )

    chem = ChemConfig()
    cache = Path(tempfile.mkdtemp(prefix="fedchem-bench-shards-"))
    try:
        first, n_first, peak = run_fedchem(smiles, chem, cache, args.workers, "first run")
        rate = len(smiles) / first
        print(
            f"fedchem, first run: {first:.1f}s = {rate:,.0f} mol/s, {n_first:,} computed, "
            f"peak RSS (all processes) {peak:.2f} GB"
        )
        print(
            f"  ratio to workers x plain loop: {rate / (args.workers * base):.3f} "
            f"(target >= 0.9); to {args.workers} parallel plain loops: "
            f"{rate / ceiling:.3f}"
        )
        second, n_second, _ = run_fedchem(smiles, chem, cache, args.workers, "unchanged")
        print(
            f"fedchem, unchanged input: {second:.1f}s ({second / first:.1%} of the first run; "
            f"target <= 5%), {n_second} molecules recomputed"
        )
        changed = smiles.copy()
        idx = rng.choice(len(changed), size=max(1, len(changed) // 1000), replace=False)
        changed[idx] = [f"{s}C" if not str(s).endswith(")") else f"C{s}" for s in changed[idx]]
        third, n_third, _ = run_fedchem(changed, chem, cache, args.workers, "0.1% changed")
        print(
            f"fedchem, 0.1% of rows changed: {third:.1f}s ({third / first:.1%} of the first "
            f"run), {n_third:,} molecules computed of {n_first:,}"
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    taut = [str(s) for s in sample[: args.tautomer_sample]]
    base_t = plain_loop(taut, tautomer=True)
    chem_t = ChemConfig(standardize=StandardizeConfig(tautomer=True))
    cache_t = Path(tempfile.mkdtemp(prefix="fedchem-bench-taut-"))
    try:
        arr = np.array(taut, dtype=object)
        t1, _, _ = run_fedchem(arr, chem_t, cache_t, args.workers, "tautomer")
        t2, _, _ = run_fedchem(arr, chem_t, cache_t, args.workers, "tautomer again")
    finally:
        shutil.rmtree(cache_t, ignore_errors=True)
    rate_t = len(taut) / t1
    print(
        f"tautomer step, plain loop: {base_t:,.0f} mol/s; fedchem: {rate_t:,.0f} mol/s "
        f"(ratio to workers x plain {rate_t / (args.workers * base_t):.3f}); "
        f"cached re-run {t2:.2f}s vs {t1:.1f}s (saves {1 - t2 / t1:.1%})"
    )


if __name__ == "__main__":
    main()
