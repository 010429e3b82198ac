"""The local stack's Prefect server: ``prefect server start``, SQLite writes begun IMMEDIATE.

Prefect's SQLite configuration begins write transactions DEFERRED: a transaction reads first
and takes the write lock only at its first write. In WAL mode, when another connection has
committed in between, that upgrade fails at once with ``SQLITE_BUSY_SNAPSHOT`` — SQLite's busy
timeout does not apply to it — and the server answers 503. Prefect's client then backs off
2 s, 4 s, 8 s … before retrying. With a few workers polling every second and site flows
reporting states, this happened on most round trips of a deployed round: creating a site's
flow run took 2–9 s instead of 0.2 s (measured; ``benchmarks/bench_deployed_round.py``).

Begun IMMEDIATE, a write transaction takes the lock up front and waits for it inside SQLite
(the busy timeout, milliseconds here), so it never has to be retried. Reads outside explicit
transactions are unaffected. Everything else is ``prefect server start`` unchanged, run in this
process (one uvicorn worker) so the change applies. Postgres (``--database-url``) is untouched.

    python -m deployments.prefect_server --host 127.0.0.1 --port 4200
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any


def begin_write_transactions_immediate() -> None:
    """Make every explicit SQLite transaction of this process's Prefect server IMMEDIATE."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    deferred = AioSqliteConfiguration.begin_transaction
    if getattr(deferred, "fedchem_immediate", False):
        return

    @asynccontextmanager
    async def begin_transaction(
        self: AioSqliteConfiguration, session: Any, with_for_update: bool = False
    ) -> AsyncGenerator[Any, None]:
        async with deferred(self, session, with_for_update=True) as transaction:
            yield transaction

    begin_transaction.fedchem_immediate = True  # type: ignore[attr-defined]
    AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    from prefect.cli import app

    begin_write_transactions_immediate()
    sys.argv = ["prefect", "server", "start", *(sys.argv[1:] if argv is None else argv)]
    sys.exit(app())  # type: ignore[func-returns-value]  # as the `prefect` script does


if __name__ == "__main__":
    main()
