"""Publishing a federation's round as a registered model: weights, spec, calibration, card.

Everything here is built from what the coordinator holds: the committed round (weights and
manifest), the sites' preparation reports (counts, consistency hashes, supported columns), the
sites' calibrations (binned counts) and, where the caller has them, the sites' evaluation
reports (aggregate metrics). No row of any site is read, and none could be.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from fedchem.config import ChemConfig, ModelConfig, TaskSpec
from fedchem.federation.commits import read_round
from fedchem.messages import EvalReport, PrepareReport, RoundManifest, SiteCalibration
from fedchem.model.domain import domain_thresholds
from fedchem.registry.model import Lineage, ModelSpec, TaskEntry, dumps, save_weights
from fedchem.registry.store import Registry
from fedchem.storage.hub import HubLayout, HubStore, json_bytes

if TYPE_CHECKING:
    from fedchem.trust.coordinator import CoordinatorTrust

__all__ = [
    "hosted_calibration",
    "hosted_domain",
    "model_card",
    "publish_round",
    "union_support",
    "write_domain_support",
]


def union_support(reports: Sequence[PrepareReport]) -> list[int]:
    """The columns some site supports (each site lists only columns with enough molecules)."""
    return sorted({c for r in reports for c in r.supported_columns})


def write_domain_support(
    hub: HubStore,
    run_id: str,
    reports: Sequence[PrepareReport],
    trust: CoordinatorTrust | None = None,
) -> None:
    """Publish the union of the sites' supported columns for the run (sites score against it);
    in the coordinator's ledger with ``trust``."""
    path = HubLayout(run_id).domain_support()
    doc = {"supported_columns": union_support(reports), "sites": [r.site for r in reports]}
    written = json_bytes(doc)
    if trust is not None:
        trust.ledger(hub, run_id).append("domain-support", path=path, data=written)
    hub.put_bytes(path, written)


def hosted_calibration(
    calibrations: Sequence[SiteCalibration], default_alpha: float = 0.1
) -> dict[str, Any]:
    """The sites' binned conformal scores added up per task (class by class): the hosted
    model's calibration. A regression task's scale must agree across sites (it is the model's
    own); tasks no site calibrated are left out."""
    tasks: dict[str, dict[str, Any]] = {}
    for cal in calibrations:
        for task, c in cal.tasks.items():
            kind = str(c["kind"])
            acc = tasks.setdefault(task, {"kind": kind, "n": 0, "sites": []})
            acc["n"] += int(c["n"])  # type: ignore[call-overload]
            acc["sites"].append(cal.site)
            if kind == "classification":
                hist = c["hist"]
                assert isinstance(hist, dict)
                prev = acc.setdefault("hist", {k: [0] * len(v) for k, v in hist.items()})
                for k, counts in hist.items():
                    prev[k] = [a + b for a, b in zip(prev[k], counts, strict=True)]
            else:
                counts = c["hist"]
                assert isinstance(counts, list)
                acc["scale"] = float(c["scale"])  # type: ignore[arg-type]
                prev_counts = acc.setdefault("hist", [0] * len(counts))
                acc["hist"] = [a + b for a, b in zip(prev_counts, counts, strict=True)]
    return {
        "tasks": tasks,
        "default_alpha": default_alpha,
        "source": f"binned validation scores of {len(calibrations)} site(s), added up",
    }


def hosted_domain(
    reports: Sequence[PrepareReport], calibrations: Sequence[SiteCalibration]
) -> dict[str, Any] | None:
    """The supported columns and the in/edge thresholds from the sites' domain histograms."""
    hists = [np.asarray(c.domain_hist) for c in calibrations if c.domain_hist is not None]
    if not hists:
        return None
    return {
        "supported_columns": union_support(reports),
        "thresholds": domain_thresholds(list(np.sum(hists, axis=0))),
        "rule": "in: a molecule's share of supported columns at least the validation molecules' "
        "5th percentile; edge: at least their 1st; out: below",
    }


def _task_table(
    tasks: Sequence[TaskSpec], private: set[str], reports: Sequence[PrepareReport]
) -> list[TaskEntry]:
    out = []
    for t in tasks:
        thresholds = {r.auto_thresholds[t.name] for r in reports if t.name in r.auto_thresholds}
        out.append(
            TaskEntry(
                name=t.name,
                kind=t.kind,
                unit=t.unit,
                description=t.description,
                private=t.name in private,
                threshold=thresholds.pop() if len(thresholds) == 1 else None,
            )
        )
    return out


def _metrics(valid: dict[str, dict[str, float]], evals: Sequence[EvalReport]) -> dict[str, Any]:
    return {
        "valid": valid,
        "test": {e.site: e.summary for e in evals},
        "conformal": {e.site: e.conformal for e in evals if e.conformal},
    }


#: what the privacy audit measured (benchmarks/bench_privacy_audit.py, benchmarks/README.md)
AUDIT = (
    "Audit: benchmarks/bench_privacy_audit.py attacks the released model (membership "
    "inference by loss threshold and by shadow model, true-positive rate at 1 % false-positive "
    "rate) and a site's update (the column attack); its figures are in benchmarks/README.md."
)


def _dp_of(manifest: RoundManifest) -> dict[str, Any]:
    """The guarantee the round's manifest carries: record level (each site's epsilon, as its
    own accountant reports it), site level (the coordinator's noise), or none."""
    if manifest.site_epsilon:
        return {"level": "record", "unit": "one compound", "epsilon": manifest.site_epsilon}
    if manifest.dp:
        return {"level": "site", "unit": "a whole site", **manifest.dp}
    return {"level": "none"}


def _dp_line(dp: dict[str, Any]) -> str:
    if dp["level"] == "record":
        eps = ", ".join(f"{s} {e:.2f}" for s, e in sorted(dp["epsilon"].items()))
        head = f"Differential privacy, record level (one compound): epsilon {eps}."
    elif dp["level"] == "site":
        head = f"Differential privacy, site level: epsilon {dp.get('epsilon', '?')}."
    else:
        head = "No differential privacy: the weights may reveal what they were trained on."
    return f"{head} {AUDIT}"


def model_card(
    name: str,
    version: int,
    spec: ModelSpec,
    reports: Sequence[PrepareReport],
    metrics: dict[str, Any],
    calibration: dict[str, Any],
    domain: dict[str, Any] | None,
    dp: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The model card (markdown, JSON): what the model is, on what, how good, for what use."""
    lin = spec.lineage
    card: dict[str, Any] = {
        "name": name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "summary": f"Federated multitask model of {len(spec.tasks)} task(s), trained across "
        f"{lin.n_sites} sites whose data never left them (run {lin.run_id}, round {lin.round}, "
        f"strategy {lin.strategy}).",
        "intended_use": "Ranking and triage of molecules for the tasks listed, within the "
        "applicability domain ('in'); a prediction flagged 'edge' or 'out' concerns chemistry "
        "the training data hardly covered. Conformal sets and intervals hold their coverage "
        "on molecules like the sites' validation molecules. Not a substitute for measurement.",
        "data": {
            "sites": lin.n_sites,
            "molecules_per_site": {r.site: r.n_molecules for r in reports},
            "labels_per_task": {
                t.name: int(sum(r.labels_per_task.get(t.name, 0) for r in reports))
                for t in spec.tasks
            },
        },
        "tasks": [t.model_dump() for t in spec.tasks],
        "metrics": metrics,
        "uncertainty": {
            "method": "split conformal prediction per task (Mondrian by class for "
            "classification), calibrated on the sites' validation folds",
            "default_alpha": calibration.get("default_alpha"),
            "calibrated_tasks": {t: c["n"] for t, c in calibration.get("tasks", {}).items()},
        },
        "domain": None if domain is None else {"rule": domain["rule"], **domain["thresholds"]},
        "privacy": "Built from aggregates only: model weights, counts, metrics and histograms "
        "the sites sent. No SMILES, compound id, label or per-row value reached the coordinator "
        "or this registry. Feature columns are permuted by the consortium key, which the "
        "registry never holds; private task heads stay in the sites' own registries.",
        "differential_privacy": dp or {"level": "none"},
        "lineage": lin.model_dump(),
        "featurizer": {
            "name": spec.chem.featurizer,
            "fp_size": spec.chem.fp_size,
            "radius": spec.chem.fp_radius,
            "consistency": spec.consistency,
        },
    }
    lines = [
        f"# {name} v{version}",
        "",
        card["summary"],
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "## Data",
        "",
    ]
    lines += [f"- {s}: {n} molecules" for s, n in card["data"]["molecules_per_site"].items()]
    lines += [
        "",
        "## Tasks",
        "",
        "| task | what it measures | kind | unit | threshold | head |",
        "|---|---|---|---|---|---|",
    ]
    for t in spec.tasks:
        threshold = "" if t.threshold is None else t.threshold
        head = "private" if t.private else "shared"
        what = (t.description or "").replace("|", "/")
        lines.append(f"| {t.name} | {what} | {t.kind} | {t.unit or ''} | {threshold} | {head} |")
    keys = sorted({k for s in metrics["test"].values() for k in s if k.startswith("mean_")})
    if keys:
        lines += [
            "",
            "## Performance (each site's held-out test fold)",
            "",
            "| site | " + " | ".join(k.removeprefix("mean_") for k in keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        for site, s in metrics["test"].items():
            lines.append(
                f"| {site} | " + " | ".join(f"{s.get(k, float('nan')):.3f}" for k in keys) + " |"
            )
    if metrics["conformal"]:
        lines += [
            "",
            "## Conformal prediction (α = 0.1, each site's test fold)",
            "",
            "| site | coverage | efficiency | interval coverage | interval width |",
            "|---|---|---|---|---|",
        ]
        for site, c in metrics["conformal"].items():
            cells = [
                c.get(k) for k in ("coverage", "efficiency", "interval_coverage", "interval_width")
            ]
            lines.append(
                f"| {site} | " + " | ".join("" if v is None else f"{v:.3f}" for v in cells) + " |"
            )
    lines += ["", "## Uncertainty and domain", "", card["uncertainty"]["method"] + "."]
    if domain is not None:
        lines.append(f"Applicability domain: {domain['rule']}.")
    lines += ["", "## Privacy", "", card["privacy"], "", _dp_line(card["differential_privacy"])]
    lines += ["", "## Lineage", ""]
    lines += [f"- {k}: {v}" for k, v in card["lineage"].items()]
    return "\n".join(lines) + "\n", card


def publish_round(
    hub: HubStore,
    registry: Registry,
    name: str,
    run_id: str,
    rnd: int,
    *,
    chem: ChemConfig,
    model: ModelConfig,
    tasks: Sequence[TaskSpec],
    private_tasks: Sequence[str],
    strategy: str,
    reports: Sequence[PrepareReport],
    calibrations: Sequence[SiteCalibration] = (),
    evals: Sequence[EvalReport] = (),
    alias: str | None = "production",
    parent: str | None = None,
) -> int:
    """Register round ``rnd`` of run ``run_id`` as the next version of ``name``."""
    manifest, arrays, _ = read_round(hub, run_id, rnd)
    stale = [c.site for c in calibrations if c.global_sha256 != manifest.global_sha256]
    if stale:
        raise ValueError(f"calibrations of {stale} are of another model than round {rnd}'s")
    consistency = {k: v for k, v in reports[0].consistency.items()} if reports else {}
    spec = ModelSpec(
        chem=chem,
        consistency=consistency,
        model=model.model_dump(mode="json"),
        tasks=_task_table(tasks, set(private_tasks), reports),
        heads="private" if private_tasks else "shared",
        lineage=Lineage(
            run_id=run_id,
            round=rnd,
            strategy=strategy,
            n_sites=len(reports),
            global_sha256=manifest.global_sha256,
            parent=parent,
        ),
    )
    calibration = hosted_calibration(calibrations)
    domain = hosted_domain(reports, calibrations)
    metrics = _metrics(manifest.valid_summary, evals)
    version = registry.next_version(name)
    card_md, card_json = model_card(
        name, version, spec, reports, metrics, calibration, domain, dp=_dp_of(manifest)
    )
    files = {
        "model.safetensors": save_weights(arrays),
        "spec.json": dumps(spec.model_dump(mode="json")),
        "calibration.json": dumps(calibration),
        "metrics.json": dumps(metrics),
        "card.md": card_md.encode(),
        "card.json": dumps(card_json),
    }
    if domain is not None:
        files["domain.json"] = dumps(domain)
    return registry.publish(
        name, files, version=version, alias=alias, note=f"run {run_id} round {rnd}"
    )
