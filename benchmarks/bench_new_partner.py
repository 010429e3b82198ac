"""A new partner on day one: fine-tuning the published model against training alone.

    .venv/bin/python benchmarks/bench_new_partner.py [--dataset biogen] [--write-readme]

1. A slice of the dataset, whole Murcko-scaffold groups (about 15 % of its molecules), is set
   aside: the partner's chemistry, which the federation never sees.
2. The rest is a 4-site federation (``fedchem demo``, its defaults), published to a registry.
3. The partner joins with the consortium's key: its slice is prepared with the model's
   featurizer; 30 % of it is a fixed test set, and from the rest it has n = 100, 200, 300, 500
   molecules (three draws each). For every n it fine-tunes the published model on its own
   tasks (``fedchem.federation.finetune``: heads, early stopping on its validation fold) and,
   with the same architecture and budget, trains a local-only model from scratch; both are
   scored on the fixed test set.

It prints the mean RMSE (regression) or ROC-AUC (classification) per n for both, the gain of
fine-tuning, and with ``--write-readme`` puts the table and an SVG plot into
``benchmarks/README.md`` (target: ROC-AUC +0.05, or RMSE 10 % lower, at 300 molecules).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from fedchem.chem.folds import scaffold_of
from fedchem.config import SiteConfig
from fedchem.data.dataset import SiteDataset
from fedchem.data.prepare import prepare_site
from fedchem.demo.sites import BUNDLED, assay_id_for, bundled_dataset
from fedchem.federation.finetune import FinetuneConfig, finetune
from fedchem.registry.model import ModelSpec, load_weights
from fedchem.registry.store import Registry

SIZES = (100, 200, 300, 500)
DRAWS = 3
HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- new-partner:begin -->", "<!-- new-partner:end -->"


def _scaffold_slice(frame: pd.DataFrame, smiles_col: str, share: float, seed: int) -> np.ndarray:
    """Rows of whole scaffold groups, about ``share`` of the molecules, drawn at random."""
    from rdkit import Chem

    keys = frame[smiles_col].map(
        lambda s: scaffold_of(m) if (m := Chem.MolFromSmiles(str(s))) is not None else s
    )
    groups = keys.groupby(keys).groups
    rng = np.random.default_rng(seed)
    order = rng.permutation(sorted(groups, key=str))
    chosen, total = [], 0
    for g in order:
        if keys.eq(g).sum() > 0.02 * len(frame):  # no giant group: the slice is varied chemistry
            continue
        chosen += list(groups[g])
        total += len(groups[g])
        if total >= share * len(frame):
            break
    return np.array(sorted(chosen))


def _partner_files(
    frame: pd.DataFrame, smiles_col: str, tasks: list[str], d: Path, key: bytes
) -> SiteConfig:
    d.mkdir(parents=True, exist_ok=True)
    long = frame[[smiles_col, *tasks]].reset_index(drop=True)
    long["compound_id"] = [f"P{i}" for i in range(len(long))]
    long = long.melt(
        id_vars=["compound_id", smiles_col],
        value_vars=tasks,
        var_name="assay_id",
        value_name="value",
    ).dropna(subset=["value"])
    long = long.rename(columns={smiles_col: "smiles"}).assign(qualifier="=", unit="")
    long[["compound_id", "smiles", "assay_id", "value", "qualifier", "unit"]].to_csv(
        d / "measurements.csv", index=False
    )
    kinds = {t: "binary" if frame[t].dropna().isin([0, 1]).all() else "continuous" for t in tasks}
    pd.DataFrame(
        {
            "assay_id": tasks,
            "assay_type": [kinds[t] for t in tasks],
            "threshold": "",
            "direction": "",
            "unit": "",
        }
    ).to_csv(d / "assays.csv", index=False)
    (d / "consortium.key").write_bytes(key)
    return SiteConfig(
        name="site-new",
        measurements=d / "measurements.csv",
        assays=d / "assays.csv",
        workdir=d / "work",
        key_file=d / "consortium.key",
        dask_workers=2,
    )


def _draw(ds: SiteDataset, test: np.ndarray, pool: np.ndarray, n: int, seed: int) -> SiteDataset:
    """``n`` training molecules of ``pool`` (folds 1-4, fold 1 validates) and the fixed test
    set (fold 0)."""
    rng = np.random.default_rng(seed)
    train = rng.choice(pool, size=min(n, len(pool)), replace=False)
    rows = np.concatenate([test, train])
    sub = ds.subset(rows)
    fold = np.concatenate(
        [np.zeros(len(test), np.int8), (1 + np.arange(len(train)) % 4).astype(np.int8)]
    )
    return dataclasses.replace(sub, fold=fold)


def _score(summary: dict[str, float]) -> tuple[str, float]:
    if "mean_roc_auc" in summary:
        return "roc_auc", summary["mean_roc_auc"]
    return "rmse", summary["mean_rmse"]


def svg_plot(rows: list[dict[str, float]], metric: str) -> str:
    """A small line plot: fine-tuned and local-only against n (no plotting library needed)."""
    w, h, pad = 480, 300, 50
    xs = [r["n"] for r in rows]
    ys = [v for r in rows for v in (r["finetuned"], r["local"])]
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or 1.0

    def px(x: float) -> float:
        return pad + (x - min(xs)) / ((max(xs) - min(xs)) or 1) * (w - 2 * pad)

    def py(y: float) -> float:
        return h - pad - (y - lo) / span * (h - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
        f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">molecules at the new partner</text>',
        f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" '
        f'text-anchor="middle">test {metric}</text>',
    ]
    for x in xs:
        parts.append(f'<text x="{px(x)}" y="{h - pad + 16}" text-anchor="middle">{int(x)}</text>')
    for y in (lo, (lo + hi) / 2, hi):
        parts.append(f'<text x="{pad - 6}" y="{py(y) + 4}" text-anchor="end">{y:.3f}</text>')
    for key, colour in (("finetuned", "#1f77b4"), ("local", "#d62728")):
        pts = " ".join(f"{px(r['n']):.1f},{py(r[key]):.1f}" for r in rows)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for r in rows:
            parts.append(
                f'<circle cx="{px(r["n"]):.1f}" cy="{py(r[key]):.1f}" r="3" fill="{colour}"/>'
            )
    parts += [
        f'<text x="{w - pad}" y="{pad - 20}" text-anchor="end" fill="#1f77b4">'
        "fine-tuned from the federation</text>",
        f'<text x="{w - pad}" y="{pad - 6}" text-anchor="end" fill="#d62728">'
        "local-only, same budget</text>",
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="biogen", choices=["biogen", "tox21"])
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    smiles_col = BUNDLED[args.dataset][1]
    frame = (
        pd.read_csv(bundled_dataset(args.dataset))
        .dropna(subset=[smiles_col])
        .reset_index(drop=True)
    )
    tasks = [
        c for c in frame.columns if c != smiles_col and pd.api.types.is_numeric_dtype(frame[c])
    ]
    tasks = [t for t in tasks if not re.search(r"(^|[\s_-])(id|index)$", t, re.I)]
    slugs = {t: assay_id_for(t) for t in tasks}  # as the demo names them: contract-valid ids
    frame = frame.rename(columns=slugs)
    tasks = list(slugs.values())
    with tempfile.TemporaryDirectory(prefix="fedchem-new-partner-") as tmp:
        base = Path(tmp)
        held = _scaffold_slice(frame, smiles_col, 0.15, args.seed)
        rest = frame.drop(index=held)
        rest.to_csv(base / "federation.csv", index=False)
        env = {**os.environ, "PREFECT_HOME": str(base / ".prefect")}
        env.pop("PREFECT_API_URL", None)
        out = base / "demo"
        cmd = [
            str(Path(sys.executable).with_name("fedchem")),
            "demo",
            "--dataset",
            str(base / "federation.csv"),
            "--smiles-col",
            smiles_col,
            "--out",
            str(out),
        ]
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=3600)
        reg = Registry(str(out / "registry"))
        (name,) = reg.models()
        _, version = reg.resolve(f"{name}@production")
        spec = ModelSpec.model_validate(reg.read_json(name, version, "spec.json"))
        arrays = load_weights(reg.read(name, version, "model.safetensors"))
        key = (out / "sites" / "site-a" / "consortium.key").read_bytes().strip()
        site = _partner_files(frame.loc[held], smiles_col, tasks, base / "site-new", key)
        rep = prepare_site(site, spec.chem, None)
        ds = SiteDataset.load(site.workdir / "prepared" / rep.cache_key / "dataset.npz")
        rng = np.random.default_rng(args.seed)
        order = rng.permutation(len(ds))
        n_test = int(0.3 * len(ds))
        test, pool = order[:n_test], order[n_test:]
        rows = []
        for n in SIZES:
            fine_s, local_s = [], []
            for draw in range(DRAWS):
                part = _draw(ds, test, pool, n, 1000 * n + draw)
                result = finetune(
                    arrays, spec, part, "site-new", FinetuneConfig(seed=draw), rep.label_stats
                )
                metric, f = _score(result.finetuned.summary)
                _, loc = _score(result.local.summary)
                fine_s.append(f)
                local_s.append(loc)
            rows.append(
                {
                    "n": n,
                    "finetuned": float(np.mean(fine_s)),
                    "local": float(np.mean(local_s)),
                    "finetuned_sd": float(np.std(fine_s)),
                    "local_sd": float(np.std(local_s)),
                }
            )
            print(json.dumps(rows[-1]))
    better = "higher" if metric == "roc_auc" else "lower"
    lines = [
        f"Dataset `{args.dataset}`: the partner's slice {len(held)} molecules (whole scaffold "
        f"groups the federation never saw), fixed test set {n_test} of them; federation: "
        f"`fedchem demo` on the other {len(rest)} ({name}:{version}). Mean over {DRAWS} "
        f"draws, test {metric} ({better} is better):",
        "",
        "| n at the partner | fine-tuned | local-only | gain |",
        "|---|---|---|---|",
    ]
    for r in rows:
        gain = (
            (r["finetuned"] - r["local"])
            if metric == "roc_auc"
            else (r["local"] - r["finetuned"]) / r["local"]
        )
        text = f"{gain:+.3f}" if metric == "roc_auc" else f"{100 * gain:+.1f} % lower RMSE"
        lines.append(
            f"| {r['n']} | {r['finetuned']:.3f} ± {r['finetuned_sd']:.3f} | "
            f"{r['local']:.3f} ± {r['local_sd']:.3f} | {text} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write_readme:
        (HERE / "new_partner.svg").write_text(svg_plot(rows, metric))
        readme = HERE / "README.md"
        text = readme.read_text()
        block = f"{MARK_BEGIN}\n{table}\n![the new partner's curve](new_partner.svg)\n{MARK_END}"
        if MARK_BEGIN in text:
            text = re.sub(
                re.escape(MARK_BEGIN) + ".*?" + re.escape(MARK_END), block, text, flags=re.S
            )
        else:
            cmd = ".venv/bin/python benchmarks/bench_new_partner.py --write-readme"
            text += f"\n## A new partner on day one (issue 20)\n\n`{cmd}`\n\n{block}\n"
        readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
