"""Predictions that match training: a registered model, one call from a SMILES to a table.

:meth:`Predictor.load` reads a version from a registry (every file checked against its hash),
recomputes the consortium's reference-set hashes with the caller's key and the model's
chemistry config and refuses on any difference (another key, config, library version or
platform would featurize differently than training did), and, given a site's registry, adds
the site's private heads and its own calibration. :meth:`Predictor.predict` then runs the same
standardization, featurizer and keyed column permutation as training did and returns one row
per input row, in input order: the id (by default the row's 1-based position), the input and
standardized SMILES, a status and an error for a row that cannot be predicted (never
dropped); per task the prediction in original units (classification: the model's score), for
classification the calibrated probability of activity (Venn-ABERS on the conformal
calibration counts) and the conformal set, for regression the conformal interval; and the
molecule's applicability domain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedchem.chem.batch import featurize_many
from fedchem.chem.consistency import consistency_report
from fedchem.chem.featurize import FeaturizedBatch, featurize_partition
from fedchem.data.dataset import SiteDataset
from fedchem.federation.consistency import COMPONENTS, ConsistencyError
from fedchem.model import conformal
from fedchem.model.architectures import build_architecture
from fedchem.model.domain import domain_flags, domain_scores
from fedchem.model.state import arrays_to_model
from fedchem.model.train import predict as model_predict
from fedchem.registry.model import ModelSpec, find_site_part, load_weights
from fedchem.registry.store import ModelRef, Registry, RegistryError

__all__ = ["DEFAULT_ALPHA", "Predictor"]

#: the conformal error rate when the caller names none: 90 % sets and intervals
DEFAULT_ALPHA = 0.1

_WHAT_DIFFERS = {
    "key": "the key is not the consortium key the model was trained with",
    "config": "the chemistry config differs from the model's",
    "versions": "the library versions differ from training's (fedchem, RDKit, numpy)",
    "output": "the same config and versions featurize the reference set differently here",
}


def check_consistency(spec: ModelSpec, key: bytes) -> None:
    """Refuse to predict unless this machine, with ``key``, featurizes like training did."""
    mine = consistency_report(spec.chem, key)
    differ = [c for c in COMPONENTS if mine.get(c) != spec.consistency.get(c)]
    if differ:
        detail = "; ".join(_WHAT_DIFFERS[c] for c in differ)
        raise ConsistencyError(
            f"the reference-set hashes differ from the model's on {', '.join(differ)}: {detail}. "
            "Predictions would not match training; not predicting"
        )


@dataclass
class _Calibration:
    """One task's conformal calibration: binned (hosted) or exact (a site's own) scores."""

    kind: str
    source: str
    hist: Any = None
    scores: Any = None
    scale: float = 1.0
    _venn_abers: tuple[np.ndarray, np.ndarray] | None = None

    def thresholds(self, alpha: float) -> dict[str, float]:
        if self.kind == "classification":
            return {c: self._one(c, alpha, 1.0) for c in ("0", "1")}
        return {"q": self._one(None, alpha, conformal.REGRESSION_RANGE)}

    def probability(self, p: np.ndarray) -> np.ndarray:
        """The calibrated probability of class 1 (Venn-ABERS on this calibration's counts)."""
        if self._venn_abers is None:
            hist = self.hist
            if self.scores is not None:  # a site's own exact scores, binned like the hosted:
                s0, s1 = np.asarray(self.scores["0"]), np.asarray(self.scores["1"])
                y = np.r_[np.zeros(len(s0), bool), np.ones(len(s1), bool)]
                hist = conformal.class_histograms(y, np.r_[s0, 1.0 - s1])  # (scores: p, 1 - p)
            self._venn_abers = conformal.venn_abers_table(hist["0"], hist["1"])
        return conformal.venn_abers(p, self._venn_abers)[:, 0]

    def _one(self, cls: str | None, alpha: float, upper: float) -> float:
        if self.scores is not None:
            data = self.scores[cls] if cls is not None else self.scores
            return conformal.threshold_from_scores(np.asarray(data), alpha)
        counts = self.hist[cls] if cls is not None else self.hist
        return conformal.threshold_from_histogram(list(counts), alpha, upper)


def _calibrations(doc: dict[str, Any], source: str) -> dict[str, _Calibration]:
    out = {}
    for task, c in doc.get("tasks", {}).items():
        out[task] = _Calibration(
            kind=c["kind"],
            source=source,
            hist=c.get("hist"),
            scores=c.get("scores"),
            scale=float(c.get("scale", 1.0)),
        )
    return out


class Predictor:
    """A loaded model version, ready to predict (see the module docstring)."""

    def __init__(
        self,
        name: str,
        version: int,
        spec: ModelSpec,
        model: torch.nn.Module,
        key: bytes,
        calibration: dict[str, _Calibration],
        domain: dict[str, Any] | None,
        tasks: list[str],
        site: str | None = None,
    ) -> None:
        self.name, self.version, self.spec, self.model, self.key = name, version, spec, model, key
        self.calibration, self.site, self.tasks = calibration, site, tasks
        self.supported: np.ndarray | None = None
        self.domain_thresholds: dict[str, float] | None = None
        if domain is not None:
            mask = np.zeros(spec.chem.fp_size, dtype=bool)
            mask[np.asarray(domain["supported_columns"], dtype=np.int64)] = True
            self.supported, self.domain_thresholds = mask, dict(domain["thresholds"])
        model.eval()

    @classmethod
    def load(
        cls,
        registry: Registry,
        ref: ModelRef | str,
        key: bytes,
        site_registry: Registry | None = None,
    ) -> Predictor:
        """Version ``ref`` of ``registry``, checked; a site's part from ``site_registry``."""
        name, version = registry.resolve(ref)
        spec = ModelSpec.model_validate(registry.read_json(name, version, "spec.json"))
        check_consistency(spec, key)
        model = build_architecture(
            spec.architecture, spec.chem.fp_size, len(spec.tasks), spec.model
        )
        arrays_to_model(model, load_weights(registry.read(name, version, "model.safetensors")))
        listed = registry.files(name, version).files
        calibration = (
            _calibrations(registry.read_json(name, version, "calibration.json"), "federation")
            if "calibration.json" in listed
            else {}
        )
        domain = (
            registry.read_json(name, version, "domain.json") if "domain.json" in listed else None
        )
        tasks = [t.name for t in spec.tasks if not t.private]
        site = None
        if site_registry is not None:
            part_version, part = find_site_part(site_registry, name, spec.lineage.global_sha256)
            heads = load_weights(site_registry.read(name, part_version, "heads.safetensors"))
            rows = torch.from_numpy(heads["rows"].astype(np.int64))
            head = model.get_submodule("head")  # private heads: the federation's own network
            if not isinstance(head, torch.nn.Linear):
                raise RegistryError(f"{name}:{version} has no linear head for a site's part")
            with torch.no_grad():
                head.weight[rows] = torch.from_numpy(heads["weight"])
                head.bias[rows] = torch.from_numpy(heads["bias"])
            own = site_registry.read_json(name, part_version, "calibration.json")
            calibration = {**calibration, **_calibrations(own, f"site {part.site}")}
            tasks = [t.name for t in spec.tasks if not t.private or t.name in part.private_tasks]
            site = part.site
        return cls(name, version, spec, model, key, calibration, domain, tasks, site)

    # -- predicting -----------------------------------------------------------------------
    def featurize(self, smiles: Sequence[str | None], n_workers: int = 1) -> FeaturizedBatch:
        """The model's input for ``smiles``, in order, exactly as training featurized."""
        if n_workers > 1 and len(smiles) > 2000:
            return featurize_many(
                list(smiles), self.spec.chem, self.key, n_workers=n_workers, with_folds=False
            )
        return featurize_partition(list(smiles), self.spec.chem, self.key, with_folds=False)

    def predict(
        self,
        smiles: Sequence[str | None],
        ids: Sequence[str] | None = None,
        alpha: float | None = None,
        n_workers: int = 1,
    ) -> pd.DataFrame:
        """One row per input row, in input order (see the module docstring)."""
        alpha = DEFAULT_ALPHA if alpha is None else alpha
        if not 0 < alpha < 1:
            raise ValueError(f"alpha {alpha}: a conformal error rate is in (0, 1)")
        if ids is not None and len(ids) != len(smiles):
            raise ValueError(f"{len(ids)} ids for {len(smiles)} SMILES")
        feats = self.featurize(smiles, n_workers)
        ok = np.array([r is None for r in feats.reason], dtype=bool)
        out = pd.DataFrame(
            {
                "id": list(ids) if ids is not None else [str(i + 1) for i in range(len(smiles))],
                "smiles": ["" if s is None else str(s) for s in smiles],
                "standardized_smiles": [c or "" for c in feats.canonical],
                "status": np.where(ok, "ok", "error"),
                "error": [r or "" for r in feats.reason],
            }
        )
        pred = np.full((len(smiles), len(self.spec.tasks)), np.nan, dtype=np.float64)
        if ok.any():
            pred[ok] = self._forward(feats, np.flatnonzero(ok))
        index = {t.name: j for j, t in enumerate(self.spec.tasks)}
        columns: dict[str, Any] = {}
        for task in self.spec.tasks:
            if task.name not in self.tasks:
                continue
            p = pred[:, index[task.name]]
            columns[task.name] = p
            cal = self.calibration.get(task.name)
            th = cal.thresholds(alpha) if cal is not None else None
            if task.kind == "classification":
                columns[f"{task.name}_probability"] = (
                    np.round(cal.probability(p), 4) if cal is not None else np.full(len(p), np.nan)
                )
                columns[f"{task.name}_set"] = _sets(p, th, ok)
            else:
                half = th["q"] * cal.scale if th is not None and cal is not None else math.nan
                columns[f"{task.name}_lower"] = np.where(ok, p - half, np.nan)
                columns[f"{task.name}_upper"] = np.where(ok, p + half, np.nan)
        out = pd.concat([out, pd.DataFrame(columns)], axis=1)
        if self.supported is not None and self.domain_thresholds is not None:
            scores = domain_scores(feats.indptr, feats.indices, self.supported)
            flags = domain_flags(scores, self.domain_thresholds)
            out["domain"] = [f if k else "" for f, k in zip(flags, ok, strict=True)]
            out["domain_score"] = np.where(ok, np.round(scores, 4), np.nan)
        return out

    def _forward(self, feats: FeaturizedBatch, rows: np.ndarray) -> np.ndarray:
        tasks = [(x.name, x.kind) for x in self.spec.tasks]
        ds = SiteDataset.unlabelled(
            feats.indptr, feats.indices, feats.values, rows, tasks, self.spec.chem.fp_size
        )
        return model_predict(self.model, ds).astype(np.float64)

    def describe(self) -> dict[str, Any]:
        """What a client needs to know: the version, its tasks and their outputs."""
        return {
            "name": self.name,
            "version": self.version,
            "site": self.site,
            "tasks": [t.model_dump() for t in self.spec.tasks if t.name in self.tasks],
            "calibrated": sorted(self.calibration),
            "domain": self.supported is not None,
            "global_sha256": self.spec.lineage.global_sha256,
        }


def _sets(p: np.ndarray, th: dict[str, float] | None, ok: np.ndarray) -> list[str]:
    """The conformal sets as text: ``"1"``, ``"0"``, ``"0|1"`` (uncertain) or ``""`` (empty);
    empty too where there is no calibration or no prediction."""
    if th is None:
        return [""] * len(p)
    sets = conformal.prediction_sets(np.nan_to_num(p), th["0"], th["1"])
    return [
        "|".join(c for c, inside in zip(("0", "1"), row, strict=True) if inside) if k else ""
        for row, k in zip(sets, ok, strict=True)
    ]
