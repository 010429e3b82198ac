"""Prediction throughput: fedchem's Predictor against a plain RDKit + torch loop, same model.

    .venv/bin/python benchmarks/bench_predict.py [--registry DIR --model NAME --key-file K]

Without a registry it first publishes a small Tox21 federation (``fedchem demo``, 2 sites) into
a temporary directory. Both sides predict the same molecules (the bundled ChEMBL set's SMILES,
23,871) with the same weights in this process, one core:

- baseline: for each SMILES, RDKit parse, the same standardizer, Morgan bits, the keyed column
  permutation; then the network forward in batches of 1,024 (no conformal sets, no domain, no
  table: the least any prediction must do);
- fedchem: ``Predictor.predict`` (the training pipeline's featurizer, conformal sets or
  intervals, the domain score, the output table).

It prints molecules per second for both and their ratio (target >= 0.9).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedchem.chem.fingerprints import column_permutation, morgan_bits
from fedchem.chem.standardize import standardizer_for
from fedchem.demo.sites import bundled_dataset
from fedchem.registry.store import Registry
from fedchem.serve.predictor import Predictor


def publish_small(base: Path) -> tuple[Path, str, Path]:
    """A 2-site Tox21 federation published into ``base``: (registry, model, key file)."""
    out = base / "demo"
    env = {**os.environ, "PREFECT_HOME": str(base / ".prefect")}
    env.pop("PREFECT_API_URL", None)
    cmd = [
        str(Path(sys.executable).with_name("fedchem")),
        "demo",
        "--sites",
        "2",
        "--rounds",
        "3",
        "--out",
        str(out),
    ]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=1800)
    return out / "registry", "tox21", out / "sites" / "site-a" / "consortium.key"


def baseline(p: Predictor, smiles: list[str], batch: int = 1024) -> np.ndarray:
    """The plain loop (see the module docstring): features, then the forward pass."""
    chem = p.spec.chem
    std = standardizer_for(chem.standardize)
    perm = column_permutation(p.key, chem.fp_size)
    rows: list[np.ndarray] = []
    for s in smiles:
        _, mol = std.smiles(s)
        if mol is not None:
            rows.append(np.sort(perm[morgan_bits(mol, chem.fp_radius, chem.fp_size)]))
    out = []
    model = p.model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            part = rows[i : i + batch]
            offsets = torch.tensor(np.cumsum([0] + [len(r) for r in part[:-1]]), dtype=torch.int64)
            idx = torch.from_numpy(np.concatenate(part).astype(np.int64))
            out.append(torch.sigmoid(model(idx, offsets)).numpy())
    return np.concatenate(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry")
    ap.add_argument("--model", default="tox21")
    ap.add_argument("--key-file")
    ap.add_argument("--molecules", type=int, default=23_871)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="fedchem-bench-predict-") as tmp:
        if args.registry:
            registry, name, key_file = Path(args.registry), args.model, Path(args.key_file)
        else:
            registry, name, key_file = publish_small(Path(tmp))
        p = Predictor.load(Registry(str(registry)), name, key_file.read_bytes().strip())
        smiles = pd.read_csv(bundled_dataset("chembl"))["smiles"].head(args.molecules).tolist()
        p.predict(smiles[:200])  # warm both paths (lazy imports, caches)
        baseline(p, smiles[:200])
        timings: dict[str, list[float]] = {"plain RDKit + torch loop": [], "fedchem Predictor": []}
        for _ in range(2):  # interleaved, so that drift on a shared machine hits both alike
            t = time.perf_counter()
            plain = baseline(p, smiles)
            timings["plain RDKit + torch loop"].append(time.perf_counter() - t)
            t = time.perf_counter()
            table = p.predict(smiles)
            timings["fedchem Predictor"].append(time.perf_counter() - t)
        ok = table["status"] == "ok"
        tasks = [t.name for t in p.spec.tasks]
        # same model, same features: the same probabilities
        np.testing.assert_allclose(table.loc[ok, tasks].to_numpy(), plain, rtol=1e-5, atol=1e-6)
    rates = {k: len(smiles) / min(v) for k, v in timings.items()}
    for k, r in rates.items():
        print(f"{k:28s} {r:8.0f} molecules/s  (best of {len(timings[k])}: {min(timings[k]):.1f} s)")
    ratio = rates["fedchem Predictor"] / rates["plain RDKit + torch loop"]
    print(
        f"ratio fedchem / plain: {ratio:.3f} (target >= 0.9); {int(ok.sum())} of {len(smiles)} "
        "molecules predicted, the rest rows with their error"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
