"""The coordinator's memory when it aggregates many sites: streaming vs every update held.

    .venv/bin/python benchmarks/bench_coordinator_memory.py --sites 4 16 64 100

N updates of the demo's model (4,096 x 512 input layer, 12 heads: 8.4 MB in fp32) on a local
hub with their manifests; then, in the same run, the peak memory (tracemalloc: numpy's arrays
included) of screening and aggregating them with FedAvg:

- today's path before this change (the baseline): every update read at once (concurrently)
  and kept, screened, then summed from the list;
- the streaming path (``screen_updates`` + the strategy, as ``aggregate_round`` calls them):
  norms in one pass keeping nothing, then each accepted update read again and added to the
  running sum, one at a time; each read goes through a verified temporary file (hashed as it
  is copied from the hub, then read an array at a time), so no whole copy of its bytes is
  held; the float64 running sum is added to a block at a time.

Both are measured beside the global model the round starts from, which the coordinator holds
in either case (and, for FedAvgM, its momentum: the server state).

Prints the peak in MB and in models (peak / one model's bytes) for both, and their ratio. The
result of both paths is checked to be the same model.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import tracemalloc

import numpy as np

from fedchem.federation.aggregate import aggregate_weighted
from fedchem.federation.strategies import FedAvg
from fedchem.federation.validation import screen_updates
from fedchem.messages import EvalReport, SiteUpdateManifest
from fedchem.model.compress import decode_update
from fedchem.model.state import dump_arrays
from fedchem.storage.hub import HubLayout, HubStore


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "input.weight": rng.normal(0, 0.02, (4096, 512)).astype(np.float32),
        "input_bias": np.zeros(512, dtype=np.float32),
        "head.weight": rng.normal(0, 0.02, (12, 512)).astype(np.float32),
        "head.bias": np.zeros(12, dtype=np.float32),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, nargs="+", default=[4, 16, 64, 100])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    ref = _model(rng)
    one = sum(a.nbytes for a in ref.values())
    with tempfile.TemporaryDirectory(prefix="fedchem-bench-coord-") as tmp:
        hub = HubStore(tmp)
        layout = HubLayout("mem")
        manifests = []
        for i in range(max(args.sites)):
            site = f"site-{i:03d}"
            update = {k: v + rng.normal(0, 1e-3, v.shape).astype(v.dtype) for k, v in ref.items()}
            data = dump_arrays(update)
            hub.put_bytes(layout.site_update(1, site), data)
            manifests.append(
                SiteUpdateManifest(
                    run_id="mem",
                    round=1,
                    site=site,
                    n_examples=100 + i,
                    n_labels=100,
                    update_path=layout.site_update(1, site),
                    update_sha256=hashlib.sha256(data).hexdigest(),
                    base_sha256="base",
                    train_loss=0.0,
                    train_seconds=0.0,
                    device="cpu",
                    valid=EvalReport(
                        site=site,
                        model="round-1",
                        fold="valid",
                        n_molecules=0,
                        per_task={},
                        summary={},
                    ),
                    shapes={k: list(v.shape) for k, v in update.items()},
                )
            )
        print(f"one model: {one / 1e6:.1f} MB")
        for n in args.sites:
            ms = manifests[:n]
            members = [m.site for m in ms]

            def fetch(m: SiteUpdateManifest) -> bytes:
                return hub.get_verified(m.update_path, m.update_sha256, m.site)

            tracemalloc.start()
            blobs = hub.map(lambda m: fetch(m), ms)  # the baseline: all read and kept
            held = [decode_update(b, ref) for b in blobs]
            baseline = aggregate_weighted(
                [(a, float(m.n_examples)) for a, m in zip(held, ms, strict=True)]
            )
            _, peak_all = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            del blobs, held
            tracemalloc.start()
            screened = screen_updates(
                ms,
                run_id="mem",
                rnd=1,
                base_sha256="base",
                reference=ref,
                members=members,
                fetch=lambda m: hub.get_verified_file(m.update_path, m.update_sha256, m.site),
                max_norm_ratio=10.0,
            )
            streamed = FedAvg().aggregate_fit(1, ref, {}, screened.accepted, []).arrays
            _, peak_stream = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert len(screened.accepted) == n
            for k in ref:
                np.testing.assert_allclose(streamed[k], baseline[k], rtol=1e-6, atol=1e-7)
            print(
                f"{n:4d} sites: every update held {peak_all / 1e6:8.1f} MB "
                f"({peak_all / one:5.1f} models); streaming {peak_stream / 1e6:6.1f} MB "
                f"({peak_stream / one:4.2f} models = 3 models {(peak_stream - 3 * one) / 1e6:+.2f} "
                f"MB); ratio {peak_stream / peak_all:.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
