"""Cross-site consistency: every site runs the pipeline on one reference set and reports hashes.

The report has one hash per component (the key is only fingerprinted, never sent), so a
disagreement names what differs: the key, the pipeline config, the library versions, or the
output itself (same config and versions, different result: a platform difference).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from importlib import resources

import numpy as np

from fedchem.chem.batch import featurize_partition, pipeline_fingerprint
from fedchem.config import ChemConfig

__all__ = [
    "COMPONENTS",
    "ConsistencyError",
    "consistency_report",
    "describe_disagreements",
    "find_disagreements",
    "reference_smiles",
]

#: compared in this order; the first differing one is the most likely cause
COMPONENTS = ("key", "config", "versions", "output")


class ConsistencyError(RuntimeError):
    """Sites disagree on the pipeline: a federation round must not start."""


def reference_smiles() -> list[str]:
    text = resources.files("fedchem.chem").joinpath("data/reference_set.smi").read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def consistency_report(chem: ChemConfig, key: bytes) -> dict[str, str]:
    """Hashes of the reference set's output and of what determines it (never the key)."""
    out = featurize_partition(reference_smiles(), chem, key)
    h = hashlib.sha256()
    for canon, why in zip(out.canonical, out.reason, strict=True):
        h.update(f"{canon}|{why}\n".encode())
    for arr in (out.fold, out.indptr, out.indices, out.values):
        if arr is not None:
            h.update(np.ascontiguousarray(arr).tobytes())
    fp = pipeline_fingerprint(chem, key)
    return {"key": fp["key"], "config": fp["config"], "versions": fp["versions"],
            "output": h.hexdigest()}  # fmt: skip


def find_disagreements(reports: Mapping[str, Mapping[str, str]]) -> dict[str, list[str]]:
    """Site → components where it differs from the majority of sites (ties: the first site)."""
    out: dict[str, list[str]] = {}
    sites = list(reports)
    for comp in COMPONENTS:
        values = [reports[s].get(comp, "<missing>") for s in sites]
        counts = Counter(values)
        top = max(counts.values())
        reference = next(v for v in values if counts[v] == top)
        for site, value in zip(sites, values, strict=True):
            if value != reference:
                out.setdefault(site, []).append(comp)
    return out


def describe_disagreements(reports: Mapping[str, Mapping[str, str]]) -> str | None:
    """A readable account of who differs on what, or None when every site agrees."""
    diff = find_disagreements(reports)
    if not diff:
        return None
    lines = []
    for site, comps in diff.items():
        detail = ", ".join(f"{c} ({reports[site].get(c, '<missing>')[:16]})" for c in comps)
        lines.append(f"site {site} differs on {detail}")
    return "sites disagree on the reference set: " + "; ".join(lines)
