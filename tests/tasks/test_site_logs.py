"""What a site's flow run logs reaches the orchestrator's database; the site's filter keeps
its SMILES and compound ids out of it, in messages and in tracebacks alike."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prefect import flow, get_run_logger

from fedchem.config import SiteConfig
from fedchem.tasks.site import guard_site_logs


def _site(tmp_path: Path) -> SiteConfig:
    table = tmp_path / "measurements.csv"
    table.write_text(
        "compound_id,smiles,assay_id,value,qualifier,unit\n"
        "SECRET-CPD-77,CC(=O)Oc1ccccc1C(=O)O,tox1,1,=,\n"
        "SECRET-CPD-78,Cn1cnc2c1c(=O)n(C)c(=O)n2C,tox1,0,=,\n"
    )
    return SiteConfig(
        name="site-a",
        measurements=table,
        assays=tmp_path / "assays.csv",
        workdir=tmp_path / "work",
        key_file=tmp_path / "consortium.key",
    )


async def _logs() -> str:
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()
    async with get_client() as client:
        return "\n".join(log.message for log in await client.read_logs(limit=200))


def test_a_sites_strings_never_reach_the_orchestrators_logs(
    prefect_api: None, tmp_path: Path
) -> None:
    site = _site(tmp_path)

    @flow(name="leaky-site-step")
    def leaky() -> None:
        guard_site_logs(site)
        get_run_logger().info("scoring SECRET-CPD-77 (CC(=O)Oc1ccccc1C(=O)O): 2 rows")
        raise ValueError("could not parse 'Cn1cnc2c1c(=O)n(C)c(=O)n2C' in row SECRET-CPD-78")

    with pytest.raises(ValueError):
        leaky()
    logs = asyncio.run(_logs())
    assert "scoring [site data] ([site data]): 2 rows" in logs
    assert "ValueError" in logs  # the failure is told, its site data is not
    for secret in ("SECRET-CPD-77", "SECRET-CPD-78", "CC(=O)Oc1ccccc1C(=O)O", "Cn1cnc2c1c"):
        assert secret not in logs, secret
