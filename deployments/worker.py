"""fedchem's worker type (``fedchem``): Prefect's worker API, flow runs forked warm.

A Prefect worker type of its own, built on the public worker interface (``BaseWorker``, a job
configuration and its variables) and registered the way Prefect's integrations register
theirs: the ``prefect.collections`` entry point of the installed package. So the usual
commands work with it:

    prefect work-pool create site-a --type fedchem
    prefect worker start --pool site-a --name worker-site-a

What differs from the ``process`` worker is how a run's process starts: instead of a fresh
``python -m prefect.engine <id>``, the worker asks its zygote (:mod:`fedchem.deployments.zygote`,
started with the worker and restarted if it dies), which imported Prefect, torch and the flows
once, to fork one. The child runs the engine's own main, so the run is what Prefect makes of
it: state proposals, logs, results, crash detection (a non-zero exit code is reported as
Crashed by the worker). Cancelling a run that has not started is Prefect's (the worker's
``kill_infrastructure`` ends the process); for a running run, the worker reads the run's
state every ``cancel_poll_s`` while it waits for the process, and stops it (SIGTERM, then
SIGKILL after a grace period) once the run is Cancelling, then marks it Cancelled.

The plain ``process`` worker runs the same deployments (``fedchem stack up --worker process``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import InfrastructureNotAvailable, InfrastructureNotFound
from prefect.states import Cancelled
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)
from pydantic import Field

__all__ = ["FedchemJobConfiguration", "FedchemVariables", "FedchemWorker", "Zygote"]

#: modules the zygote imports instead of its defaults (comma-separated), read at worker start
PRELOAD_ENV = "FEDCHEM_WORKER_PRELOAD"


class FedchemJobConfiguration(BaseJobConfiguration):
    """A run's job: its environment and labels (Prefect's), where it runs, how it is stopped."""

    working_dir: Path | None = Field(
        default=None, description="the run's working directory (default: a temporary one)"
    )
    cancel_poll_s: float = Field(
        default=2.0, gt=0, description="how often a running run's state is read for a cancel"
    )
    grace_s: float = Field(
        default=10.0, ge=0, description="SIGTERM to SIGKILL when a running run is cancelled"
    )


class FedchemVariables(BaseVariables):
    """What a work pool or deployment may set for fedchem's worker (the UI's form)."""

    working_dir: Path | None = Field(
        default=None,
        title="Working directory",
        description="Where flow runs start; a temporary directory when empty.",
    )
    cancel_poll_s: float = Field(
        default=2.0,
        gt=0,
        title="Cancel poll (s)",
        description="How often the worker reads a running run's state to notice a cancel.",
    )
    grace_s: float = Field(
        default=10.0,
        ge=0,
        title="Grace (s)",
        description="Time from SIGTERM to SIGKILL when a running run is cancelled.",
    )


class FedchemWorkerResult(BaseWorkerResult):
    """The outcome of one run: its process's identifier and exit code."""


def _running(pid: int) -> bool:
    """Whether ``pid`` runs: it exists and is not a zombie."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Zygote:
    """The worker's handle on its zygote: fork a run, wait for its exit code."""

    def __init__(self, preload: list[str] | None = None) -> None:
        self.preload = preload
        self.proc: subprocess.Popen[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[asyncio.Future[int]] = []
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        self._ready: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()
        self._orphans: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        cmd = [sys.executable, "-m", "fedchem.deployments.zygote", *(self.preload or [])]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        await self._ready

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None and self._loop is not None
        for line in proc.stdout:
            self._loop.call_soon_threadsafe(self._dispatch, json.loads(line))
        self._loop.call_soon_threadsafe(self._gone, proc)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if "ready" in msg and self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        elif "pid" in msg:
            self._exits[msg["pid"]] = asyncio.get_running_loop().create_future()
            self._pending.pop(0).set_result(msg["pid"])
        elif "error" in msg:
            self._pending.pop(0).set_exception(RuntimeError(msg["error"]))
        elif "exit" in msg:  # kept until waited for: a fast child may exit before the wait
            fut = self._exits.get(msg["exit"])
            if fut is not None and not fut.done():
                fut.set_result(msg["code"])

    def _gone(self, proc: subprocess.Popen[str]) -> None:
        """The zygote exited: fail what waits on it; running children are polled instead."""
        if proc is not self.proc:
            return
        self.proc = None
        err = RuntimeError(f"the worker's zygote exited ({proc.wait()})")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(err)
        for pending in self._pending:
            pending.set_exception(err)
        self._pending.clear()
        for pid, fut in self._exits.items():  # still running: watched until they end
            if not fut.done():
                self._orphans.add(asyncio.ensure_future(self._poll_orphan(pid, fut)))

    @staticmethod
    async def _poll_orphan(pid: int, fut: asyncio.Future[int | None]) -> None:
        while _running(pid):
            await asyncio.sleep(0.5)
        if not fut.done():
            fut.set_result(None)

    async def fork(self, env: dict[str, str], cwd: str | None, flow_run_id: str) -> int:
        async with self._lock:
            if self.proc is None or self.proc.poll() is not None:
                await self.start()  # started again after a crash
            assert self.proc is not None and self.proc.stdin is not None and self._loop
            fut: asyncio.Future[int] = self._loop.create_future()
            self._pending.append(fut)
            msg = {"env": env, "cwd": cwd, "flow_run_id": flow_run_id}
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            return await fut

    async def wait(self, pid: int) -> int | None:
        """The exit code of ``pid`` (None: unknown, its zygote died before it ended)."""
        fut = self._exits.get(pid)
        if fut is None:
            return None
        try:
            return await fut
        finally:
            self._exits.pop(pid, None)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()  # EOF: it lets running children finish, then exits
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _identifier(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}"


def _pid_of(identifier: str) -> int:
    """The pid of an infrastructure pid as Prefect recorded it (``pid`` or ``host:pid``)."""
    host, _, pid = identifier.rpartition(":")
    if host and host != socket.gethostname():
        raise InfrastructureNotAvailable(
            f"run {identifier!r} was started on host {host!r}, not this worker's"
        )
    return int(pid)


async def _stop_process(pid: int, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if ``pid`` still runs after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _running(pid) and time.monotonic() < deadline:
        await anyio.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


class FedchemWorker(BaseWorker[FedchemJobConfiguration, FedchemVariables, FedchemWorkerResult]):
    """Runs each flow run as a fork of a process that already imported what runs need."""

    type = "fedchem"
    job_configuration = FedchemJobConfiguration
    job_configuration_variables = FedchemVariables
    _description = (
        "Runs flow runs in processes forked from one that imported Prefect, torch and the "
        "fedchem flows once, so a run starts in a fraction of a second."
    )
    _display_name = "fedchem (warm start)"
    _documentation_url = "https://github.com/fedchem/fedchem/blob/main/deployments/README.md"

    async def setup(self) -> None:
        await super().setup()
        preload = [m for m in os.environ.get(PRELOAD_ENV, "").split(",") if m.strip()]
        self.zygote = Zygote(preload or None)
        await self.zygote.start()

    async def teardown(self, *exc_info: Any) -> None:
        try:
            await super().teardown(*exc_info)
        finally:
            self.zygote.stop()

    async def run(
        self,
        flow_run: FlowRun,
        configuration: FedchemJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> FedchemWorkerResult:
        env = {**os.environ, **{k: v for k, v in configuration.env.items() if v is not None}}
        workdir = (
            contextlib.nullcontext(str(configuration.working_dir))
            if configuration.working_dir
            else _temporary_dir()
        )
        with workdir as cwd:
            pid = await self.zygote.fork(env, cwd, str(flow_run.id))
            identifier = _identifier(pid)
            if task_status is not None:
                task_status.started(pid)  # Prefect records it as the run's infrastructure pid
            code = await self._wait(flow_run, configuration, pid)
        return FedchemWorkerResult(identifier=identifier, status_code=code)

    async def _wait(
        self, flow_run: FlowRun, configuration: FedchemJobConfiguration, pid: int
    ) -> int:
        """The run's exit code; a run set Cancelling meanwhile is stopped and marked Cancelled."""
        exit_code = asyncio.ensure_future(self.zygote.wait(pid))
        while True:
            done, _ = await asyncio.wait({exit_code}, timeout=configuration.cancel_poll_s)
            if done:
                code = exit_code.result()
                # its zygote died before it (the worker's process tree was killed): the exit
                # code is lost; report a failure, which Prefect records as Crashed unless the
                # run already ended
                return 1 if code is None else code
            current = await self.client.read_flow_run(flow_run.id)
            if current.state is not None and current.state.is_cancelling():
                await _stop_process(pid, configuration.grace_s)
                await exit_code
                await self.client.set_flow_run_state(
                    flow_run.id,
                    Cancelled(message="cancelled: the worker stopped its process"),
                    force=True,
                )
                return 0

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: FedchemJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        pid = _pid_of(infrastructure_pid)
        if not _running(pid):
            raise InfrastructureNotFound(f"no process {pid} for run {infrastructure_pid!r}")
        await _stop_process(pid, min(float(grace_seconds), configuration.grace_s))


@contextlib.contextmanager
def _temporary_dir() -> Any:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fedchem-run-") as d:
        yield d
