"""One small federation, published, shared by the serving tests: the real demo command on a
slice of Tox21 (2 sites, 3 rounds), its registry and the sites' own registries."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from fedchem.demo.sites import bundled_dataset
from fedchem.registry.store import Registry


@dataclass(frozen=True)
class Published:
    out: Path
    registry: Registry
    key: bytes
    key_file: Path
    site_registries: dict[str, Registry]
    test_smiles: list[str]


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory) -> Published:
    base = tmp_path_factory.mktemp("published")
    data = base / "tox21-2000.csv"
    frame = pd.read_csv(bundled_dataset()).head(2000)
    frame.to_csv(data, index=False)
    out = base / "demo"
    env = {**os.environ, "PREFECT_HOME": str(base / ".prefect")}
    env.pop("PREFECT_API_URL", None)
    fedchem = str(Path(sys.executable).with_name("fedchem"))
    cmd = [
        fedchem,
        "demo",
        "--dataset",
        str(data),
        "--sites",
        "2",
        "--rounds",
        "3",
        "--fp-size",
        "1024",
        "--model.hidden",
        "128",
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    key_file = out / "sites" / "site-a" / "consortium.key"
    return Published(
        out=out,
        registry=Registry(str(out / "registry")),
        key=key_file.read_bytes().strip(),
        key_file=key_file,
        site_registries={
            s: Registry(str(out / "sites" / s / "registry")) for s in ("site-a", "site-b")
        },
        test_smiles=[*frame["smiles"].iloc[::97].tolist(), "not a smiles", "", "[Na+].[Cl-]"],
    )
