"""Local training throughput: fedchem's ``train_epochs`` vs a plain PyTorch loop, same run.

Same model (embedding-bag sparse input → trunk → heads), same data (CSR fingerprints, 12
tasks with missing labels), same batch size, optimizer and loss. fedchem trains with fused
Adam; the plain loop runs with PyTorch's default Adam and with its fused one, and fedchem's
overhead is taken against the fused one (the same optimizer). The plain loop is what one
would write by hand: shuffle, gather the batch's on-bits, forward, masked BCE, step. Prints
samples/s for both and fedchem's overhead. ``--device cuda`` runs it on a GPU (with
``--bf16`` for bf16 autocast in both loops) and reports peak GPU memory.

    .venv/bin/python benchmarks/bench_train.py                       # CPU, 4096 x 512
    .venv/bin/python benchmarks/bench_train.py --fp-size 32000 --hidden 2000 --device cuda --bf16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from fedchem.config import ModelConfig, TrainConfig
from fedchem.data.dataset import SiteDataset
from fedchem.model.network import build_model
from fedchem.model.train import train_epochs


def synthetic(n: int, fp_size: int, tasks: int, bits: int, seed: int = 0) -> SiteDataset:
    """Fingerprint-like CSR data: ``bits`` on-bits per molecule, 70 % of labels missing."""
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.integers(0, fp_size, size=(n, bits)), axis=1).astype(np.int32)
    y = (rng.random((n, tasks)) < 0.2).astype(np.float32)
    y[rng.random((n, tasks)) < 0.7] = np.nan
    return SiteDataset(
        indptr=np.arange(0, n * bits + 1, bits, dtype=np.int64),
        indices=indices.ravel(),
        fold=np.zeros(n, np.int8),
        y=y,
        censor=np.zeros_like(y, dtype=np.int8),
        task_names=tuple(f"t{i}" for i in range(tasks)),
        task_kinds=("classification",) * tasks,
        fp_size=fp_size,
    )


def plain_loop(
    ds: SiteDataset,
    cfg: ModelConfig,
    tc: TrainConfig,
    epochs: int,
    device: torch.device,
    bf16: bool,
    fused: bool = False,
) -> float:
    """Samples/s of a hand-written loop over the same model and data (PyTorch's default
    Adam, or its fused one)."""
    model = build_model(ds.fp_size, ds.n_tasks, cfg, seed=0).to(device).train()
    opt = torch.optim.Adam(
        model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=fused or None
    )
    rng = np.random.default_rng(0)
    starts = ds.indptr[:-1]
    bits = int(ds.indptr[1] - ds.indptr[0])
    idx_all = torch.from_numpy(ds.indices.astype(np.int64).reshape(-1, bits))
    y_all = torch.from_numpy(ds.y)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(starts)))
        for i in range(0, len(order), tc.batch_size):
            rows = order[i : i + tc.batch_size]
            x = idx_all[rows].reshape(-1).to(device)
            offsets = torch.arange(0, len(rows) * bits, bits, device=device)
            y = y_all[rows].to(device)
            mask = torch.isfinite(y)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x, offsets)
            loss = F.binary_cross_entropy_with_logits(
                out.float(), torch.nan_to_num(y), reduction="none"
            )
            loss = (loss * mask).sum() / mask.sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return epochs * len(ds) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--fp-size", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--tasks", type=int, default=12)
    ap.add_argument("--bits", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    ds = synthetic(args.n, args.fp_size, args.tasks, args.bits)
    cfg = ModelConfig(hidden=args.hidden, dropout=0.2)
    tc = TrainConfig(batch_size=args.batch_size, device=args.device, bf16=args.bf16)
    device = torch.device(args.device)
    plain, fused, ours = [], [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        plain.append(plain_loop(ds, cfg, tc, args.epochs, device, args.bf16))
        fused.append(plain_loop(ds, cfg, tc, args.epochs, device, args.bf16, fused=True))
        model = build_model(ds.fp_size, ds.n_tasks, cfg, seed=0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        stats, _ = train_epochs(model, ds, tc, args.epochs, seed=0)
        ours.append(args.epochs * len(ds) / stats.seconds)
    p, f, o = float(np.median(plain)), float(np.median(fused)), float(np.median(ours))
    print(
        f"{args.fp_size} x {args.hidden} trunk, {args.tasks} tasks, batch {args.batch_size}, "
        f"{args.device}{' bf16' if args.bf16 else ''}: plain loop {p:,.0f} samples/s, "
        f"plain loop with fused Adam {f:,.0f}, fedchem {o:,.0f} samples/s (fused Adam); "
        f"overhead against the fused plain loop {1 - o / f:+.1%} (target <= 5%), "
        f"fedchem / the default plain loop {o / p:.2f}"
    )
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
