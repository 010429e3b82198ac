"""Bring your own model: checked on upload, then listed and predicted like a federated one;
refused, with the reason, when it would not predict what it claims."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from fedchem.cli import main
from fedchem.config import ChemConfig, ModelConfig
from fedchem.model.network import build_model
from fedchem.registry.model import TaskEntry
from fedchem.registry.store import Registry
from fedchem.registry.upload import UploadRefused, UploadSpec, register_outside_model
from fedchem.serve.predictor import Predictor

KEY = b"uploader-consortium-key"
CHEM = ChemConfig(fp_size=256)
TASKS = [TaskEntry(name="herg", kind="classification"), TaskEntry(name="logd", kind="regression")]


def _spec(architecture: str, model: dict[str, object] | None = None) -> UploadSpec:
    return UploadSpec(
        name="outside", architecture=architecture, model=model or {}, chem=CHEM, tasks=TASKS
    )


def _save(module: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


def test_an_outside_model_is_validated_registered_and_predicted(tmp_path: Path):
    from tests.registry.outside_models import TinyLinear

    reg = Registry(str(tmp_path / "registry"))
    net = TinyLinear(256, 2, scale=0.5)
    spec = _spec("tests.registry.outside_models:TinyLinear", {"scale": 0.5})
    version = register_outside_model(
        reg, spec, _save(net, tmp_path / "w.safetensors"), KEY, alias="production"
    )
    assert version == 1 and reg.models() == ["outside"]
    p = Predictor.load(reg, "outside", KEY)
    out = p.predict(["CCO", "nope", "c1ccccc1O"])
    assert out["status"].tolist() == ["ok", "error", "ok"]
    assert 0 < out.loc[0, "herg"] < 1 and np.isfinite(out.loc[0, "logd"])
    assert out.loc[0, "herg_set"] == ""  # not calibrated: no set until sites calibrate it
    # the federation's own architecture, uploaded from outside, works the same way
    own = build_model(256, 2, ModelConfig(hidden=16))
    spec2 = _spec("fedchem.multitask", ModelConfig(hidden=16).model_dump())
    assert register_outside_model(reg, spec2, _save(own, tmp_path / "own.safetensors"), KEY) == 2


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong shapes", r"wrong shapes: bag.weight: \(128, 2\), expected \(256, 2\)"),
        ("missing class", r"cannot be imported.*has no attribute 'Missing'"),
        ("unknown name", r"unknown architecture 'resnet'"),
        ("pickle", r"\.pt file may be a pickle"),
        ("pickle renamed", r"not a safetensors file"),
        ("missing weights", r"missing weights \['bag.weight'\]"),
        ("not finite", r"not finite everywhere"),
        ("bad parameters", r"does not take these parameters"),
    ],
)
def test_an_outside_model_that_would_not_predict_is_refused_with_its_reason(
    tmp_path: Path, case: str, reason: str
):
    from tests.registry.outside_models import TinyLinear

    reg = Registry(str(tmp_path / "registry"))
    arch, params = "tests.registry.outside_models:TinyLinear", {}
    weights = _save(TinyLinear(256, 2), tmp_path / "w.safetensors")
    if case == "wrong shapes":
        weights = _save(TinyLinear(128, 2), tmp_path / "small.safetensors")
    elif case == "missing class":
        arch = "tests.registry.outside_models:Missing"
    elif case == "unknown name":
        arch = "resnet"
    elif case == "pickle":
        weights = tmp_path / "w.pt"
        torch.save(TinyLinear(256, 2).state_dict(), weights)
    elif case == "pickle renamed":
        weights = tmp_path / "sneaky.safetensors"
        torch.save(TinyLinear(256, 2).state_dict(), weights)
    elif case == "missing weights":
        save_file({"other": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    elif case == "not finite":
        arch = "tests.registry.outside_models:Broken"
        from tests.registry.outside_models import Broken

        weights = _save(Broken(256, 2), tmp_path / "broken.safetensors")
    elif case == "bad parameters":
        params = {"depth": 3}
    with pytest.raises(UploadRefused, match=reason):
        register_outside_model(reg, _spec(arch, params), weights, KEY)
    assert reg.models() == []  # nothing was written


def test_fedchem_registry_upload(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from tests.registry.outside_models import TinyLinear

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(_spec("tests.registry.outside_models:TinyLinear").model_dump(mode="json"))
    )
    (tmp_path / "key").write_bytes(KEY)
    weights = _save(TinyLinear(256, 2), tmp_path / "w.safetensors")
    reg = str(tmp_path / "registry")
    args = [
        "registry",
        "upload",
        "--registry",
        reg,
        "--spec",
        str(spec),
        "--weights",
        str(weights),
        "--key-file",
        str(tmp_path / "key"),
        "--set-alias",
        "candidate",
    ]
    assert main(args) == 0 and "registered outside:1 (candidate)" in capsys.readouterr().out
    torch.save({"x": torch.zeros(1)}, tmp_path / "evil.pkl")
    bad = [*args[:7], str(tmp_path / "evil.pkl"), *args[8:]]
    assert main(bad) == 2 and "refused" in capsys.readouterr().err
