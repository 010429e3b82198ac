"""Cross-site consistency, the site's side: the pipeline run on one shipped reference set.

The report has one hash per component (the key is only fingerprinted, never sent), so a
disagreement names what differs: the key, the pipeline config, the library versions, or the
output itself (same config and versions, different result: a platform difference). The
coordinator compares the sites' reports (:mod:`fedchem.federation.consistency`).
"""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np

from fedchem.chem.featurize import featurize_partition, pipeline_fingerprint
from fedchem.config import ChemConfig

__all__ = ["consistency_report", "reference_smiles"]


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
    return {
        "key": fp["key"],
        "config": fp["config"],
        "versions": fp["versions"],
        "output": h.hexdigest(),
    }
