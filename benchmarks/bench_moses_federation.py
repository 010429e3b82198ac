"""A federation on 1.58 M molecules: MOSES over 10 sites, computed properties as tasks.

    .venv/bin/python benchmarks/bench_moses_federation.py --sites 10 --work /tmp/fedchem-moses

1. **Tasks.** MOSES has no measurements: every molecule gets six binary properties *computed*
   with RDKit (logP > 3, TPSA > 75, MW > 350, H-bond donors >= 2, rotatable bonds > 5,
   aromatic rings >= 3), named ``computed_*`` so that nobody mistakes them for assays. Cached
   under ``--work`` (a rerun skips this step and the next two when their files are there).
2. **Sites.** The table is dealt into ``--sites`` sites by scaffold group (``split_into_sites``,
   sizes N, N-1, ..., 1 as in the demo), and every site prepared by the library's pipeline
   (contract, standardization, ECFP on Dask, folds) and its counts published, signed.
3. **The federation.** The Prefect coordinator flow runs one round of one local epoch at every
   site, its sites' steps in a local Dask cluster of one worker process per core
   (``simulation.engine: dask``), signed, through the hub. Throughput = the training examples
   of every site / the round's wall time (the coordinator's ``round_seconds``: opening,
   loading the sites' data, training, the validation scores, signing, uploading, screening and
   aggregating all count against it).
4. **The baseline**, in the same run: a plain single-process PyTorch loop (hand-written:
   shuffle, gather the batch's on-bits, forward, masked BCE, Adam step) over the same model and
   the sites' pooled training rows (``--baseline-rows`` of them, drawn at random), torch's
   default threads; PyTorch's default Adam (the baseline), and its fused Adam (what fedchem's
   training uses) for comparison.

Prints molecules/s of both and their ratio (target >= 0.8), the wall time of each step and the
peak resident memory of this process and all its children (the Dask workers), sampled every
0.5 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from libmem import PeakRSS

from fedchem.config import (
    ChemConfig,
    DeploymentConfig,
    FederationConfig,
    ModelConfig,
    SimulationConfig,
    SiteConfig,
    TaskSpec,
    TrainConfig,
)
from fedchem.data.dataset import SiteDataset, current_dataset_path
from fedchem.data.prepare import prepare_site
from fedchem.demo.sites import DemoSplit, split_into_sites
from fedchem.federation.commits import committed_rounds
from fedchem.model.network import build_model
from fedchem.policy import TrustConfig

MOSES = Path(__file__).resolve().parents[2] / "shared" / "data" / "moses_train_smiles.csv.gz"

#: computed property -> (RDKit function name, threshold, ">" or ">=")
PROPERTIES = {
    "computed_logp_gt_3": ("MolLogP", 3.0, ">"),
    "computed_tpsa_gt_75": ("CalcTPSA", 75.0, ">"),
    "computed_mw_gt_350": ("CalcExactMolWt", 350.0, ">"),
    "computed_hbd_ge_2": ("CalcNumHBD", 2.0, ">="),
    "computed_rotb_gt_5": ("CalcNumRotatableBonds", 5.0, ">"),
    "computed_arom_rings_ge_3": ("CalcNumAromaticRings", 3.0, ">="),
}


def _properties(smiles: list[str]) -> np.ndarray:
    from rdkit import Chem, RDLogger
    from rdkit.Chem import Crippen, rdMolDescriptors

    RDLogger.DisableLog("rdApp.*")
    fns = {
        name: getattr(Crippen, fn, None) or getattr(rdMolDescriptors, fn)
        for name, (fn, _, _) in PROPERTIES.items()
    }
    out = np.full((len(smiles), len(PROPERTIES)), np.nan, dtype=np.float32)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            continue  # written as it is: the site quarantines it
        for j, (name, (_, threshold, op)) in enumerate(PROPERTIES.items()):
            v = float(fns[name](mol))
            out[i, j] = float(v > threshold if op == ">" else v >= threshold)
    return out


def computed_table(work: Path, limit: int | None) -> Path:
    path = work / ("moses_computed.csv" if limit is None else f"moses_computed_{limit}.csv")
    if path.exists():
        return path
    df = pd.read_csv(MOSES, nrows=limit)
    smiles = df["SMILES"].astype(str).tolist()
    chunks = [smiles[i : i + 20_000] for i in range(0, len(smiles), 20_000)]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        values = np.concatenate(list(pool.map(_properties, chunks)))
    out = pd.DataFrame(values, columns=list(PROPERTIES))
    out.insert(0, "smiles", smiles)
    tmp = path.with_suffix(".part")
    out.to_csv(tmp, index=False)
    tmp.rename(path)
    return path


def dealt(table: Path, n_sites: int, out: Path) -> DemoSplit:
    """The table dealt into sites (once: a rerun reads the split back from ``out``)."""
    saved = out / "split.json"
    if saved.exists():
        doc = json.loads(saved.read_text())
        return DemoSplit(
            sites=[SiteConfig.model_validate(s) for s in doc["sites"]],
            tasks=[TaskSpec.model_validate(t) for t in doc["tasks"]],
            molecules_per_site=doc["molecules_per_site"],
            tasks_per_site=doc["tasks_per_site"],
            trust=TrustConfig.model_validate(doc["trust"]),
        )
    split = split_into_sites(table, "smiles", n_sites, out, seed=0)
    doc = {
        "sites": [s.model_dump(mode="json") for s in split.sites],
        "tasks": [t.model_dump(mode="json") for t in split.tasks],
        "molecules_per_site": split.molecules_per_site,
        "tasks_per_site": split.tasks_per_site,
        "trust": split.trust.model_dump(mode="json"),
    }
    saved.write_text(json.dumps(doc))
    return split


def plain_loop(
    ds: SiteDataset, model_cfg: ModelConfig, tc: TrainConfig, fused: bool = False
) -> float:
    """Molecules/s of one epoch of a hand-written loop over CSR fingerprints (PyTorch's
    default Adam, or its fused one)."""
    model = build_model(ds.fp_size, ds.n_tasks, model_cfg, seed=0).train()
    opt = torch.optim.Adam(
        model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=fused or None
    )
    indptr = ds.indptr
    indices = torch.from_numpy(ds.indices.astype(np.int64))
    y_all = torch.from_numpy(ds.y)
    order = np.random.default_rng(0).permutation(len(ds))
    start = time.perf_counter()
    for i in range(0, len(order), tc.batch_size):
        rows = order[i : i + tc.batch_size]
        lo, lens = indptr[rows], indptr[rows + 1] - indptr[rows]
        offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
        at = np.repeat(lo - offsets, lens) + np.arange(int(lens.sum()))
        out = model(indices[torch.from_numpy(at)], torch.from_numpy(offsets))
        y = y_all[torch.from_numpy(rows)]
        mask = torch.isfinite(y)
        loss = F.binary_cross_entropy_with_logits(out, torch.nan_to_num(y), reduction="none")
        loss = (loss * mask).sum() / mask.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return len(ds) / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fedchem-moses"))
    ap.add_argument("--limit", type=int, default=None, help="first N molecules only (a trial)")
    ap.add_argument("--baseline-rows", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from fedchem.flows.coordinator import coordinator
    from fedchem.tasks.site import publish_prepare_report

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    chem = ChemConfig()  # the demo's: ECFP 4,096 bits, scaffold-skeleton folds
    model_cfg = ModelConfig()  # the demo's: hidden 512
    train = TrainConfig(batch_size=args.batch_size, device="cpu")
    with PeakRSS(every=0.5) as rss:
        t0 = time.perf_counter()
        table = computed_table(work, args.limit)
        n_rows = sum(1 for _ in table.open()) - 1
        print(f"computed properties of {n_rows:,} molecules: {time.perf_counter() - t0:.0f} s")

        t0 = time.perf_counter()
        split = dealt(table, args.sites, work / f"sites-{args.sites}-{n_rows}")
        t_split = time.perf_counter() - t0
        hub_url = str(work / f"hub-{args.sites}-{n_rows}")
        t0 = time.perf_counter()
        reports = []
        for site in split.sites:  # the library's pipeline, as site_prepare runs it
            report = prepare_site(site, chem, split.tasks)
            publish_prepare_report.fn(hub_url, report, site)
            reports.append(report)
        t_prep = time.perf_counter() - t0
        accepted = sum(r.rows_accepted for r in reports)
        print(
            f"{args.sites} sites dealt in {t_split:.0f} s, prepared in {t_prep:.0f} s "
            f"({sum(r.n_molecules for r in reports):,} molecules, {accepted:,} rows accepted, "
            f"{sum(r.rows_quarantined for r in reports):,} quarantined)"
        )
        prep_peak = rss.peak

        run_id = f"moses-{int(time.time())}"
        config = FederationConfig(
            run_id=run_id,
            hub_url=hub_url,
            sites=split.sites,
            tasks=split.tasks,
            rounds=1,
            chem=chem,
            model=model_cfg,
            train=train,
            trust=split.trust,
            simulation=SimulationConfig(engine="dask", workers=args.workers),
            deployment=DeploymentConfig(min_sites=math.ceil(0.9 * args.sites)),
        )
        rss.peak = 0
        t0 = time.perf_counter()
        coordinator(config)
        t_fed = time.perf_counter() - t0
        fed_peak = rss.peak
        from fedchem.storage.hub import HubStore

        (manifest,) = committed_rounds(HubStore(hub_url), run_id)[1:]
        assert manifest.round_seconds is not None
        examples = sum(manifest.n_examples.values())
        fed_rate = examples / manifest.round_seconds
        print(
            f"federation: 1 round of 1 epoch at {len(manifest.sites)} sites, {examples:,} "
            f"training molecules in {manifest.round_seconds:.0f} s = {fed_rate:,.0f} mol/s "
            f"(the flow {t_fed:.0f} s; peak RSS, all processes, {fed_peak / 2**30:.2f} GiB)"
        )

        pooled = SiteDataset.concat(
            [
                SiteDataset.load(current_dataset_path(s)).without_folds(
                    [chem.test_fold, chem.valid_fold]
                )
                for s in split.sites
            ]
        )
        rows = np.sort(
            np.random.default_rng(0).choice(
                len(pooled), min(args.baseline_rows, len(pooled)), replace=False
            )
        )
        sample = pooled.subset(rows)
        del pooled
        rss.peak = 0
        base_rate = plain_loop(sample, model_cfg, train)
        fused_rate = plain_loop(sample, model_cfg, train, fused=True)
        print(
            f"plain single-process loop ({torch.get_num_threads()} threads), {len(sample):,} of "
            f"the pooled training molecules: {base_rate:,.0f} mol/s; with fused Adam "
            f"{fused_rate:,.0f} mol/s (peak RSS {rss.peak / 2**30:.2f} GiB)"
        )
    print(
        f"federation / plain loop: {fed_rate / base_rate:.3f} (target >= 0.8); / the plain loop "
        f"with fused Adam: {fed_rate / fused_rate:.3f}; peak RSS while preparing "
        f"{prep_peak / 2**30:.2f} GiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
