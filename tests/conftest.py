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

import pytest  # noqa: E402

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
