"""What differential privacy costs the federated model: Tox21, 4 sites, the demo's defaults.

    .venv/bin/python benchmarks/bench_privacy.py [--rounds 10] [--epsilons 1 3 8] [--head N]

The same prepared sites and the same budget (rounds, local epochs, model) for every setting:
no DP (the baseline), record-level DP (DP-SGD at every site, calibrated by each site to the
target epsilon over the run for its own data size; the unit protected is one compound) and
site-level DP (every site's delta clipped, Gaussian noise on the sum at the coordinator,
calibrated to the same epsilon over the run; the unit is a whole site), delta 1e-5. Prints
the mean test ROC-AUC over the sites for each and its ratio to the baseline, and the epsilon
each site reports having spent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from libloop import config_for, federate, prepare_sites

from fedchem.policy import PrivacyConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    ap.add_argument("--head", type=int, default=None, help="only the first N molecules")
    ap.add_argument("--site-clip", type=float, default=0.5, help="site level: delta norm")
    ap.add_argument(
        "--record-batch-size",
        type=int,
        default=None,
        help="record level: DP-SGD's expected batch (default: the demo's 64; larger batches "
        "put less noise on each averaged gradient for the same epsilon)",
    )
    ap.add_argument("--only", choices=["none", "record", "site"], nargs="+", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        sites = prepare_sites(out, head=args.head)
        print(f"prepared {len(sites.split.sites)} sites in {time.perf_counter() - t0:.0f}s")
        settings: list[tuple[str, PrivacyConfig]] = [("none", PrivacyConfig())]
        for eps in args.epsilons:
            settings.append(
                (f"record eps={eps:g}", PrivacyConfig(level="record", target_epsilon=eps))
            )
        for eps in args.epsilons:
            settings.append(
                (
                    f"site eps={eps:g}",
                    PrivacyConfig(level="site", clip=args.site_clip, target_epsilon=eps),
                )
            )
        if args.only:
            settings = [x for x in settings if x[1].level in args.only]
        rows = []
        for i, (name, privacy) in enumerate(settings):
            t0 = time.perf_counter()
            batch = args.record_batch_size if privacy.level == "record" else None
            if batch is not None:
                name += f", batch {batch}"
            cfg = config_for(
                sites, str(out / "hub"), f"p{i}", args.rounds, privacy, batch_size=batch
            )
            res = federate(sites, cfg)
            last = res.committed[-1]
            spent = (
                max(last.site_epsilon.values())
                if last.site_epsilon
                else last.dp.get("epsilon_run", float("nan"))
            )
            rows.append((name, res.mean_roc_auc, spent, time.perf_counter() - t0))
            print(
                f"  {name}: ROC-AUC {res.mean_roc_auc:.3f}, eps spent {spent:.2f}, "
                f"{rows[-1][3]:.0f}s",
                flush=True,
            )
        base = rows[0][1] if rows[0][0] == "none" else float("nan")
        print(f"\nTox21, 4 sites, {args.rounds} rounds, delta 1e-5; mean test ROC-AUC over sites")
        print("| privacy | ROC-AUC | ratio to no DP | epsilon spent (max over sites) | wall |")
        print("|---|---|---|---|---|")
        for name, auc, eps, wall in rows:
            e = "-" if name == "none" else f"{eps:.2f}"
            print(f"| {name} | {auc:.3f} | {auc / base:.3f} | {e} | {wall:.0f} s |")


if __name__ == "__main__":
    main()
