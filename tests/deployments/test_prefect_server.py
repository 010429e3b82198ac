"""The local stack's Prefect server begins SQLite write transactions IMMEDIATE.

With Prefect's DEFERRED transactions, a transaction that read before another connection
committed cannot then write: SQLite fails it at once with SQLITE_BUSY_SNAPSHOT (the server
answers 503 and Prefect's client backs off 2 s, 4 s, ...). Begun IMMEDIATE, the second writer
waits for the lock inside SQLite instead, and both commit.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from prefect.server.database.configurations import AioSqliteConfiguration

from deployments import prefect_server

REPO = Path(__file__).resolve().parents[2]


async def _read_then_write_while_another_commits(db: Path) -> list[int]:
    cfg = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{db}", timeout=10)
    engine = await cfg.engine()
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    first, second = await cfg.session(engine), await cfg.session(engine)

    async def other_writer() -> None:
        async with cfg.begin_transaction(second):
            await second.execute(sa.text("INSERT INTO t VALUES (1)"))

    try:
        async with cfg.begin_transaction(first):
            await first.execute(sa.text("SELECT count(*) FROM t"))  # reads first ...
            writer = asyncio.create_task(other_writer())
            await asyncio.sleep(0.5)  # ... another connection commits (or waits) meanwhile ...
            await first.execute(sa.text("INSERT INTO t VALUES (2)"))  # ... then writes
        await writer
        async with engine.connect() as conn:
            return [r[0] for r in (await conn.exec_driver_sql("SELECT x FROM t ORDER BY x"))]
    finally:
        await first.close()
        await second.close()
        await engine.dispose()


def test_deferred_transactions_fail_and_immediate_ones_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prefect as shipped: the first transaction's write fails (the server's 503)
    with pytest.raises(sa.exc.OperationalError, match="locked"):
        asyncio.run(_read_then_write_while_another_commits(tmp_path / "deferred.db"))

    monkeypatch.setattr(
        AioSqliteConfiguration, "begin_transaction", AioSqliteConfiguration.begin_transaction
    )  # restored after the test
    prefect_server.begin_write_transactions_immediate()
    prefect_server.begin_write_transactions_immediate()  # idempotent
    assert AioSqliteConfiguration.begin_transaction.fedchem_immediate  # type: ignore[attr-defined]
    assert asyncio.run(_read_then_write_while_another_commits(tmp_path / "immediate.db")) == [1, 2]


def test_server_launcher_is_prefect_server_start() -> None:
    out = subprocess.run([sys.executable, "-m", "deployments.prefect_server", "--help"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--port" in out.stdout and "Start a Prefect server" in out.stdout
