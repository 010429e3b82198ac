"""Secure aggregation, measured: what it costs, and what a curious coordinator still learns.

    .venv/bin/python benchmarks/bench_secagg.py [--sizes 4 16 64] [--neighbours 16]

1. **Bytes** a site uploads per round (its masked update and its secure-aggregation messages)
   as a ratio to the plain fp32 update, on the demo's model (ECFP 4,096 x 512 + 12 heads).
2. **CPU and wall time** of the protocol at 4, 16 and 64 simulated sites on the demo's model:
   each site's steps (keys, shares, masked input, check, reveal) and the coordinator's
   unmasking, with one site dropping after it shared (its pairwise masks rebuilt); complete
   graph, and SecAgg+ neighbourhoods (``--neighbours``) for the largest size.
3. **The leak, re-measured**: the sign test on one site's round-1 update (a fingerprint column
   no training molecule of the site has moves exactly against the sign of its weights, weight
   decay being the only force on it), on what the hub holds without and with secure
   aggregation, against the columns the site's training molecules really have.

The plain and secure rounds of part 3 are real signed federations of the demo's Tox21 split,
through the round driver with the sites in process.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from libloop import Sites, config_for, prepare_sites

from fedchem.federation.coordinator import start_run
from fedchem.federation.driver import CoordinatorSteps, InProcessSites, run_rounds
from fedchem.federation.site import load_site_dataset
from fedchem.model.state import dump_arrays, load_arrays
from fedchem.policy import SecAggPlan
from fedchem.secagg.crypto import decode_sum
from fedchem.secagg.protocol import (
    Cohort,
    Roster,
    SiteSecrets,
    Survivors,
    make_shares,
    masked_input,
    neighbours,
    reveal,
    unmask,
)
from fedchem.secagg.rounds import threshold_for
from fedchem.storage.hub import HubLayout, HubStore


def _cpu() -> float:
    return time.process_time()


def protocol_cost(n: int, size: int, plan: SecAggPlan) -> dict[str, float]:
    """Every site's steps and the coordinator's unmasking on ``size`` coordinates, one site
    dropping after it shared. Returns CPU seconds per site (mean) and for the coordinator,
    and the round's wall time were the sites to run in parallel (slowest site + coordinator)."""
    rng = np.random.default_rng(0)
    names = [f"site-{i:03d}" for i in range(n)]
    secrets_ = {s: SiteSecrets.fresh() for s in names}
    site_cpu = dict.fromkeys(names, 0.0)

    def timed(site: str, fn, *args):  # type: ignore[no-untyped-def]
        t0 = _cpu()
        out = fn(*args)
        site_cpu[site] += _cpu() - t0
        return out

    adverts = [timed(s, secrets_[s].advert, "bench", 1, s, 100) for s in names]
    k = len(neighbours(names, names[0], plan))
    roster = Roster(
        run_id="bench", round=1, adverts=adverts, threshold=threshold_for(k, plan), plan=plan
    )
    bundles = [timed(s, make_shares, secrets_[s], roster, s) for s in names]
    cohort = Cohort(run_id="bench", round=1, bundles=bundles)
    delta = rng.normal(0, 0.01, size)
    dropped = names[-1]
    masked = {
        s: timed(s, masked_input, secrets_[s], roster, cohort, s, delta / n, 1.0 / n)
        for s in names
        if s != dropped
    }
    survivors = Survivors(run_id="bench", round=1, sites=sorted(masked))
    reveals = [timed(s, reveal, secrets_[s], roster, cohort, survivors, s) for s in survivors.sites]
    t0 = _cpu()
    total, weight = unmask(roster, cohort, survivors, masked, reveals)
    coordinator = _cpu() - t0
    error = float(np.max(np.abs(total - delta * (n - 1) / n)))
    shares_bytes = np.mean([len(b.model_dump_json()) for b in bundles])
    reveal_bytes = np.mean([len(r.model_dump_json()) for r in reveals])
    return {
        "site_cpu": float(np.mean(list(site_cpu.values()))),
        "site_cpu_max": max(site_cpu.values()),
        "coordinator_cpu": coordinator,
        "wall": max(site_cpu.values()) + coordinator,
        "error": error,
        "weight": weight,
        "k": k,
        "t": roster.threshold,
        "message_bytes": float(
            len(adverts[0].model_dump_json()) + shares_bytes + reveal_bytes + 200
        ),
    }


def _federate(sites: Sites, root: Path, run_id: str, secure: bool) -> tuple[HubStore, float]:
    config = config_for(sites, str(root / "hub"), run_id, rounds=1)
    if secure:
        config = config.model_copy(update={"secure_aggregation": SecAggPlan()})
        config = type(config).model_validate(config.model_dump())  # validated again
    hub = HubStore(config.hub_url)
    steps = CoordinatorSteps(config, hub)
    first = start_run(hub, config, sites.label_stats, trust=steps.trust)
    t0 = time.perf_counter()
    run_rounds(config, steps, InProcessSites(config, hub), [first])
    return hub, time.perf_counter() - t0


def _sign_test(update: np.ndarray, base: np.ndarray, present: np.ndarray) -> dict[str, float]:
    """Columns called present: their rows did not move exactly against their weights."""
    delta = update - base
    against = np.mean(np.sign(delta) == -np.sign(base), axis=1)
    called = against < 0.999
    hits = int(np.sum(called & present))
    return {
        "recall": hits / max(int(present.sum()), 1),
        "precision": hits / max(int(called.sum()), 1),
        "called": int(called.sum()),
        "present": int(present.sum()),
    }


def leak(sites: Sites, root: Path) -> None:
    site = sites.split.sites[0]
    ds = load_site_dataset(site)
    chem = sites.chem
    train = ds.without_folds([chem.test_fold, chem.valid_fold])
    present = np.zeros(ds.fp_size, dtype=bool)
    present[np.unique(train.indices)] = True
    rows = []
    for run_id, secure in (("leak-plain", False), ("leak-secure", True)):
        hub, seconds = _federate(sites, root, run_id, secure)
        layout = HubLayout(run_id)
        base = load_arrays(hub.get_bytes(layout.global_model(0)))["input.weight"].astype(np.float64)
        stored = load_arrays(hub.get_bytes(layout.site_update(1, site.name)))
        update_bytes = len(hub.get_bytes(layout.site_update(1, site.name)))
        if "masked" in stored:  # read as the attacker would: the masked words as a delta
            flat = decode_sum(stored["masked"], 20)
            n_in = base.size
            # the input layer comes first in sorted order? find it: arrays sorted by name
            names = sorted(load_arrays(hub.get_bytes(layout.global_model(0))))
            at = 0
            g0 = load_arrays(hub.get_bytes(layout.global_model(0)))
            for name in names:
                if name == "input.weight":
                    break
                at += g0[name].size
            update = base + flat[at : at + n_in].reshape(base.shape)
        else:
            update = stored["input.weight"].astype(np.float64)
        got = _sign_test(update, base, present)
        summed = None
        if secure:  # what the coordinator does learn: the round's aggregate
            g1 = load_arrays(hub.get_bytes(layout.global_model(1)))["input.weight"].astype(
                np.float64
            )
            summed = _sign_test(g1, base, present)
        rows.append((run_id, got, summed, update_bytes, seconds))
    print(
        f"\nthe sign test on {site.name}'s round-1 update ({int(present.sum())} columns present "
        f"in its {len(train)} training molecules, of {ds.fp_size}):"
    )
    print("| what the attacker reads | columns called present | recall | precision |", end="")
    print(" update bytes | round s |")
    print("|---|---|---|---|---|---|")
    for run_id, got, summed, size, seconds in rows:
        what = (
            "site-a's update on the hub (plain)"
            if run_id == "leak-plain"
            else "site-a's masked update on the hub"
        )
        cells = f"{got['called']} | {got['recall']:.3f} | {got['precision']:.3f}"
        print(f"| {what} | {cells} | {size:,} | {seconds:.1f} |")
        if summed is not None:
            cells = f"{summed['called']} | {summed['recall']:.3f} | {summed['precision']:.3f}"
            print(f"| the aggregate of 4 sites (the committed global model) | {cells} | | |")
    plain, secure = rows[0][3], rows[1][3]
    print(f"masked / plain update bytes: {secure / plain:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--neighbours", type=int, default=16)
    ap.add_argument("--skip-leak", action="store_true")
    args = ap.parse_args()
    size = 4096 * 512 + 512 + 12 * 512 + 12 + 24  # the demo's network, its arrays flattened
    plain_bytes = len(dump_arrays({"w": np.zeros(size, np.float32)}))
    print(f"the demo's model: {size:,} coordinates; a plain fp32 update {plain_bytes:,} bytes")
    print("\n| sites | graph (k, t) | site CPU s (mean / max) | coordinator CPU s |", end="")
    print(" round wall s | upload bytes / plain | max error |")
    print("|---|---|---|---|---|---|---|")
    configs = [(n, SecAggPlan()) for n in args.sizes]
    configs.append((max(args.sizes), SecAggPlan(neighbours=args.neighbours, graph_seed="bench")))
    for n, plan in configs:
        cost = protocol_cost(n, size, plan)
        masked_bytes = len(dump_arrays({"masked": np.zeros(size + 1, np.uint32)}))
        ratio = (masked_bytes + cost["message_bytes"]) / plain_bytes
        graph = "complete" if plan.neighbours is None else "SecAgg+"
        print(
            f"| {n} | {graph} ({cost['k']}, {cost['t']}) | {cost['site_cpu']:.2f} / "
            f"{cost['site_cpu_max']:.2f} | {cost['coordinator_cpu']:.2f} | {cost['wall']:.2f} | "
            f"{ratio:.4f} | {cost['error']:.1e} |"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    if not args.skip_leak:
        with tempfile.TemporaryDirectory() as tmp:
            leak(prepare_sites(Path(tmp)), Path(tmp))


if __name__ == "__main__":
    main()
