"""Bring your own model: an outside model, checked, then registered like a federated one.

An operator uploads weights only (safetensors: a pickle or a torch ``.pt`` file can run code
when loaded, and is refused), names an architecture (one of fedchem's, or an installed
``package.module:Class``) and a featurizer spec. Before anything is written the upload is
validated: the architecture builds with the given parameters, every weight exists with the
shape the architecture expects (nothing missing, nothing left over), and a smoke prediction
on the shipped reference set, featurized with the spec and the caller's key, gives finite
outputs of one column per task. The version then holds the same files as a federated one
(no calibration or domain until sites calibrate it) and is listed, predicted and served alike.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from safetensors import SafetensorError

from fedchem.chem.consistency import consistency_report, reference_smiles
from fedchem.chem.featurize import featurize_partition
from fedchem.config import ChemConfig
from fedchem.data.dataset import SiteDataset
from fedchem.model.architectures import build_architecture
from fedchem.model.train import predict
from fedchem.registry.model import Lineage, ModelSpec, TaskEntry, dumps, load_weights
from fedchem.registry.store import Registry
from fedchem.strict import StrictModel

__all__ = ["UploadRefused", "UploadSpec", "register_outside_model"]


class UploadRefused(ValueError):
    """An outside model that would not predict what it claims: the reason says why."""


class UploadSpec(StrictModel):
    """What an operator says of the model they upload (``fedchem registry upload --spec``)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    architecture: str = Field(description="fedchem.multitask, or an installed package.module:Class")
    model: dict[str, object] = Field(default_factory=dict, description="its parameters")
    chem: ChemConfig = Field(description="the featurizer the weights were trained on")
    tasks: list[TaskEntry] = Field(min_length=1)
    description: str = ""
    intended_use: str = "Stated by the uploader; not trained or evaluated by this federation."


def _weights(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    if path.suffix.lower() in {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}:
        raise UploadRefused(
            f"{path.name}: a {path.suffix} file may be a pickle, which can run code when "
            "loaded; upload the weights as safetensors (safetensors.torch.save_file)"
        )
    try:
        return load_weights(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise UploadRefused(
            f"{path.name}: not a safetensors file ({exc}); pickles are refused"
        ) from exc


def _check_state(module: torch.nn.Module, weights: dict[str, np.ndarray]) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    wrong = sorted(
        f"{k}: {tuple(weights[k].shape)}, expected {expected[k]}"
        for k in set(expected) & set(weights)
        if tuple(weights[k].shape) != expected[k]
    )
    problems = [
        *([f"missing weights {missing}"] if missing else []),
        *([f"weights the architecture does not have {extra}"] if extra else []),
        *([f"wrong shapes: {'; '.join(wrong)}"] if wrong else []),
    ]
    if problems:
        raise UploadRefused("the weights do not fit the architecture: " + "; ".join(problems))


def _smoke(module: torch.nn.Module, spec: UploadSpec, key: bytes) -> None:
    feats = featurize_partition(reference_smiles(), spec.chem, key, with_folds=False)
    rows = np.flatnonzero([r is None for r in feats.reason])
    tasks = [(x.name, x.kind) for x in spec.tasks]
    ds = SiteDataset.unlabelled(
        feats.indptr, feats.indices, feats.values, rows, tasks, spec.chem.fp_size
    )
    try:
        out = predict(module, ds)
    except Exception as exc:  # an outside forward may fail in any way: that is the finding
        raise UploadRefused(f"the smoke prediction on the reference set failed: {exc}") from exc
    n, t = len(ds), ds.n_tasks
    if out.shape != (n, t):
        raise UploadRefused(
            f"the smoke prediction gave shape {out.shape} for {n} molecules and {t} tasks"
        )
    if not np.isfinite(out).all():
        raise UploadRefused("the smoke prediction on the reference set is not finite everywhere")


def register_outside_model(
    registry: Registry,
    spec: UploadSpec,
    weights_path: Path,
    key: bytes,
    alias: str | None = None,
) -> int:
    """Validate an outside model and register it as the next version of ``spec.name``."""
    weights = _weights(weights_path)
    try:
        module = build_architecture(
            spec.architecture, spec.chem.fp_size, len(spec.tasks), dict(spec.model)
        )
    except ValueError as exc:
        raise UploadRefused(str(exc)) from exc
    _check_state(module, weights)
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    _smoke(module, spec, key)
    data = weights_path.read_bytes()
    model_spec = ModelSpec(
        architecture=spec.architecture,
        chem=spec.chem,
        consistency=consistency_report(spec.chem, key),
        model=dict(spec.model),
        tasks=spec.tasks,
        lineage=Lineage(
            run_id="upload",
            round=0,
            strategy="outside",
            n_sites=0,
            global_sha256=hashlib.sha256(data).hexdigest(),
        ),
    )
    version = registry.next_version(spec.name)
    card = {
        "name": spec.name,
        "version": version,
        "summary": spec.description
        or f"An outside model ({spec.architecture}) uploaded to the registry.",
        "intended_use": spec.intended_use,
        "tasks": [t.model_dump() for t in spec.tasks],
        "uncertainty": "not calibrated: no conformal sets or intervals until sites calibrate it",
        "privacy": "Uploaded weights; no site's data was used to build this version.",
        "lineage": model_spec.lineage.model_dump(),
    }
    md = (
        f"# {spec.name} v{version}\n\n{card['summary']}\n\n## Intended use\n\n"
        f"{spec.intended_use}\n\n## Tasks\n\n"
        + "\n".join(f"- {t.name} ({t.kind})" for t in spec.tasks)
        + f"\n\n## Uncertainty\n\n{card['uncertainty']}.\n"
    )
    files = {
        "model.safetensors": data,
        "spec.json": dumps(model_spec.model_dump(mode="json")),
        "card.md": md.encode(),
        "card.json": dumps(card),
    }
    return registry.publish(
        spec.name, files, version=version, alias=alias, note=f"outside model {spec.architecture}"
    )
