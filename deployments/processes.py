"""The stack's processes: each started in a session of its own and recorded by pid, so that
``stack down`` (and a test) stops it and all it started; and a PostgreSQL server of the
stack's own (Debian's ``postgresql`` programs)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

__all__ = [
    "alive",
    "free_port",
    "postgres_available",
    "spawn",
    "start_postgres",
    "stop_process_group",
    "wait_http",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f}s")


def spawn(args: list[str], env: dict[str, str], log: Path) -> int:
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            args,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            start_new_session=True,
        )
    return proc.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_process_group(pid: int, timeout: float) -> None:
    """Stop ``pid``'s process group: TERM (twice: an idle Prefect worker ignores the first),
    then KILL, waiting up to ``timeout`` in all."""
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + (timeout if sig == signal.SIGKILL else timeout / 2)
        while time.time() < deadline and alive(pid):
            time.sleep(0.1)
            _reap(pid)
        if not alive(pid):
            return


def _postgres_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, or in Debian's ``/usr/lib/postgresql/<v>/bin``."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name)
    for bindir in reversed(versions):
        if (bindir / name).exists():
            return str(bindir / name)
    raise RuntimeError(
        f"PostgreSQL's {name} was not found: install Debian's postgresql package, or run the "
        "stack on SQLite (the default)"
    )


def postgres_available() -> bool:
    """Whether PostgreSQL's server programs are installed (for a stack of its own)."""
    try:
        _postgres_bin("postgres")
        _postgres_bin("initdb")
    except RuntimeError:
        return False
    return True


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: run it as the ``postgres`` account then."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


def start_postgres(directory: Path) -> tuple[int, str, Path]:
    """A PostgreSQL server of the stack's own, on loopback; its log in ``directory``.

    Its data lives in ``directory/postgres``, or, run by root, in a directory of the
    ``postgres`` account's own under the system's temporary directory (the server refuses to
    run as root, and ``directory`` need not be reachable by another account). Returns its
    pid, the SQLAlchemy URL of its ``prefect`` database and the data directory.
    """
    user = _as_postgres_user()
    if user:
        data_dir = Path(tempfile.mkdtemp(prefix="fedchem-postgres-"))
        shutil.chown(data_dir, "postgres")
    else:
        data_dir = directory / "postgres"
        data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            *user,
            _postgres_bin("initdb"),
            "-D",
            str(data_dir),
            "-U",
            "prefect",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    pid = spawn(
        [
            *user,
            _postgres_bin("postgres"),
            "-D",
            str(data_dir),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(data_dir),
            "-c",
            "max_connections=200",
            "-c",
            "fsync=off",
        ],
        dict(os.environ),
        directory / "postgres.log",
    )
    deadline = time.time() + 60
    while True:
        ready = subprocess.run(
            [_postgres_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
        )
        if ready.returncode == 0:
            break
        if time.time() > deadline:
            raise RuntimeError(f"PostgreSQL did not start; see {directory / 'postgres.log'}")
        time.sleep(0.3)
    subprocess.run(
        [_postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return pid, f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect", data_dir
