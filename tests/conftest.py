"""Shared fixtures. Prefect gets its own home and no analytics or heartbeat in tests."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="fedchem-prefect-home-")
os.environ["PREFECT_HOME"] = _HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)

from dataclasses import dataclass  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import pytest  # noqa: E402

from fedchem.config import ChemConfig, FederationConfig, ModelConfig, TrainConfig  # noqa: E402
from fedchem.demo.sites import DemoSplit  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable

    from fedchem.federation.driver import RunOutcome, SiteLauncher
    from fedchem.storage.hub import HubStore

REPO = Path(__file__).resolve().parents[1]
CONTRACTS = REPO / "data_contracts"

MEASUREMENT_HEADER = "compound_id,smiles,assay_id,value,qualifier,unit\n"
ASSAYS_CSV = (
    "assay_id,assay_type,threshold,direction,unit\n"
    "tox1,binary,,,\n"
    "pot1,continuous,6,higher_is_active,log\n"
    "sol1,continuous,,,log\n"
)


@pytest.fixture
def assays_file(tmp_path: Path) -> Path:
    p = tmp_path / "assays.csv"
    p.write_text(ASSAYS_CSV)
    return p


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    """An ephemeral Prefect API for one test module; no flow heartbeat thread (about 1 s
    per flow run otherwise)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@dataclass(frozen=True)
class PreparedSites:
    """Bundled Tox21's first rows dealt into sites by the demo's split and prepared once for
    the session (RDKit, folds, features): federations of any setting run on it."""

    root: Path
    split: DemoSplit
    chem: ChemConfig
    label_stats: list[dict[str, dict[str, float]]]

    def config(self, run_id: str, **over: Any) -> FederationConfig:
        settings: dict[str, Any] = {
            "run_id": run_id,
            "hub_url": str(self.root / "hub"),
            "sites": self.split.sites,
            "tasks": self.split.tasks,
            "chem": self.chem,
            "model": ModelConfig(hidden=256),
            "train": TrainConfig(batch_size=64),
            "trust": self.split.trust,
            **over,
        }
        return FederationConfig(**settings)

    def federate(
        self,
        config: FederationConfig,
        launcher: Callable[[FederationConfig, HubStore], SiteLauncher] | None = None,
    ) -> tuple[RunOutcome, HubStore]:
        """Round 0 on ``config``'s hub, then every round through the round driver with
        ``launcher(config, hub)`` (default: the sites in this process, one after another)."""
        from fedchem.federation.coordinator import start_run
        from fedchem.federation.driver import CoordinatorSteps, InProcessSites, run_rounds
        from fedchem.storage.hub import HubStore

        hub = HubStore(config.hub_url)
        steps = CoordinatorSteps(config, hub)
        first = start_run(hub, config, self.label_stats, trust=steps.trust)
        sites = launcher(config, hub) if launcher is not None else InProcessSites(config, hub)
        return run_rounds(config, steps, sites, [first]), hub

    def audit_problems(self, hub: HubStore, run_id: str) -> list[str]:
        """What the audit finds wrong with a run (every party's chain and signatures)."""
        from fedchem.trust.ledger import verify_run
        from fedchem.trust.signing import COORDINATOR, KeyRing

        trust = self.split.trust
        keys = KeyRing({COORDINATOR: trust.coordinator, **trust.sites})
        return list(verify_run(hub, run_id, keys).problems)


@pytest.fixture(scope="session")
def tox21_sites(tmp_path_factory: pytest.TempPathFactory) -> PreparedSites:
    """4,000 molecules of Tox21 over 4 sites, 2,048-bit fingerprints: big enough that a
    federation measurably beats each site alone, small enough to train in seconds."""
    import pandas as pd

    from fedchem.data.prepare import prepare_site
    from fedchem.demo.sites import bundled_dataset, split_into_sites

    root = tmp_path_factory.mktemp("tox21-sites")
    data = root / "tox21-4000.csv"
    pd.read_csv(bundled_dataset()).head(4000).to_csv(data, index=False)
    split = split_into_sites(data, "smiles", 4, root / "sites", seed=0)
    chem = ChemConfig(fp_size=2048)
    reports = [prepare_site(s, chem, split.tasks) for s in split.sites]
    return PreparedSites(root, split, chem, [r.label_stats for r in reports])
