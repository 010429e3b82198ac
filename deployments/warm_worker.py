"""fedchem's site worker: a Prefect process worker whose flow runs start warm.

A process worker starts every flow run as ``python -m prefect.engine``: a fresh interpreter
that imports Prefect, torch and the flow module before the site does any work. Measured in
``benchmarks/bench_deployed_round.py``, that start-up was most of a deployed round's overhead
(~8 s of ~19 s, three sites starting at once on two cores).

This worker pays the start-up once, ahead of time. Next to the worker runs a *zygote*: a
process that imports Prefect, the flow modules and their libraries and then waits. For each
flow run the worker asks it to ``fork``; the child takes the run's environment and working
directory, executes exactly ``python -m prefect.engine``'s main (``runpy``), and exits. Every
run still gets its own process, its own pid (recorded as the run's infrastructure pid, so
cancellation and the fault tooling work as with the process worker), and nothing from one run
lives on into the next; only the imports are shared, copy-on-write.

Everything else is Prefect's process worker: the same ``process`` work-pool type and job
template, the same executor (state proposals, crash detection from the exit code, graceful
cancellation through the runner's control channel). A deployment whose job variables set a
``command`` runs through the plain process path.

    python -m deployments.warm_worker --pool site-a --name worker-site-a

The zygote refuses to fork while it has threads other than its main thread (fork is only safe
single-threaded); preloading stays import-only. Pinned to Prefect 3.8 (``pyproject.toml``):
the executor and starter interfaces used here are Prefect's runner internals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import IO, Any

#: what the zygote imports once. Besides the flows: what a site round imports lazily on
#: first use, found by listing ``sys.modules`` in a forked run (900 modules, ~2.5 s):
#: torch's optimizers import ``torch._dynamo`` (and with it sympy) on their first step, the hub
#: imports s3fs, the site data pyarrow, the engine its runner, pull steps and task engine.
_ENGINE_PRELOAD = (
    "s3fs", "prefect.task_engine", "prefect.runner", "prefect.deployments.steps",
    "prefect.utilities.visualization", "anyio._backends._asyncio",
)  # fmt: skip
DEFAULT_PRELOAD = (
    "flows.site_round", "flows.site_prepare", "pyarrow.parquet", "torch._dynamo",
    *_ENGINE_PRELOAD,
)  # fmt: skip
#: the coordinator's worker (``--preset coordinator``): the coordinator flow and the same
#: engine modules; its runs trigger the sites with ``run_deployment``
COORDINATOR_PRELOAD = ("flows.coordinator", *_ENGINE_PRELOAD)
PRESETS = {"site": DEFAULT_PRELOAD, "coordinator": COORDINATOR_PRELOAD}


def share_client_tls_contexts() -> None:
    """Every Prefect API client reuses one TLS context per CA file instead of building its own.

    ``PrefectClient`` and ``SyncPrefectClient`` call ``ssl.create_default_context(cafile=...)``
    in their constructors, which parses certifi's CA bundle: about 40 ms of CPU each time
    (60+ ms with three runs starting on two cores), and a flow run's engine creates eight or so
    clients before its first task, the worker three more per run (found with py-spy on a
    deployed round). An ``SSLContext`` is meant to be shared between connections; the contexts
    are built with the same arguments every time, so one per distinct call is what was built
    anyway. Only Prefect's client module sees the memoized function; ``ssl`` itself is untouched.
    """
    import functools
    import ssl
    import types

    import prefect.client.orchestration as orchestration

    if getattr(orchestration.ssl, "_fedchem_shared", False):
        return

    @functools.lru_cache(maxsize=16)
    def create_default_context(
        purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH, *, cafile: str | None = None,
        capath: str | None = None, cadata: str | bytes | None = None,
    ) -> ssl.SSLContext:  # fmt: skip
        return ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)

    shim = types.ModuleType("ssl")
    shim.__dict__.update({k: v for k, v in vars(ssl).items() if not k.startswith("__")})
    shim.create_default_context = create_default_context  # type: ignore[attr-defined]
    shim._fedchem_shared = True  # type: ignore[attr-defined]
    orchestration.ssl = shim


# ---------------------------------------------------------------------------------------------
# the zygote (its own process: ``python -m deployments.warm_worker --zygote MODULE ...``)


def _send(out: IO[str], msg: dict[str, Any]) -> None:
    out.write(json.dumps(msg) + "\n")
    out.flush()


def _run_child(request: dict[str, Any], protocol_fd: int) -> None:
    """In the forked child: become the flow run's engine process; never returns."""
    code = 1
    try:
        os.close(protocol_fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(request["env"])
        if request.get("cwd"):
            os.chdir(request["cwd"])
        # settings as this run's environment gives them, not as the zygote's was
        from prefect.context import SettingsContext, get_settings_context
        from prefect.settings import Settings

        SettingsContext(profile=get_settings_context().profile, settings=Settings()).__enter__()
        import runpy

        # runpy notes that prefect.engine is already imported (preloaded): expected here
        warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
        sys.argv = ["prefect.engine", request["flow_run_id"]]
        try:
            runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        import atexit

        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()  # Prefect drains its log and event workers here
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def zygote_main(preload: list[str]) -> None:
    """Import ``preload``, then fork one engine process per request read from stdin."""
    import importlib

    sys.path.insert(0, os.getcwd())
    import prefect.engine
    import prefect.flow_engine  # noqa: F401

    for name in preload:
        importlib.import_module(name)
    share_client_tls_contexts()
    import certifi
    from prefect.client.orchestration import ssl as client_ssl

    client_ssl.create_default_context(cafile=certifi.where())  # built once, inherited by forks
    # the protocol keeps the original stdout; anything printed from here on goes to stderr
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    out = os.fdopen(protocol_fd, "w")
    children: set[int] = set()
    _send(out, {"ready": os.getpid(), "preloaded": preload})
    pending, open_ = b"", True
    while open_ or children:
        readable, _, _ = select.select([0] if open_ else [], [], [], 0.1)
        if readable:
            chunk = os.read(0, 1 << 16)  # unbuffered: select stays true to what is unread
            if not chunk:  # the worker is gone: no new runs; let the running ones finish
                open_ = False
            pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            main = threading.main_thread()
            threads = [t.name for t in threading.enumerate() if t is not main]
            if threads:
                _send(out, {"error": f"zygote has threads {threads}; not forking"})
                continue
            pid = os.fork()
            if pid == 0:
                _run_child(request, protocol_fd)
            children.add(pid)
            _send(out, {"pid": pid})
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            if open_:
                with contextlib.suppress(OSError):
                    _send(out, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


# ---------------------------------------------------------------------------------------------
# the worker side


class Zygote:
    """The worker's handle on its zygote: fork a run, wait for its exit code."""

    def __init__(self, preload: list[str], cwd: Path | None = None) -> None:
        self.preload, self.cwd = preload, cwd
        self.proc: subprocess.Popen[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[asyncio.Future[int]] = []
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        self._ready: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()
        self._orphans: set[asyncio.Future[None]] = set()  # runs whose zygote died, polled

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        cmd = [sys.executable, "-m", "deployments.warm_worker", "--zygote", *self.preload]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1, cwd=self.cwd)  # fmt: skip
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
        err = RuntimeError(f"the warm-start process exited ({proc.wait()})")
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
            fut.set_result(None)  # exit code unknown (the starter reports the run as failed)

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


_settings_env: tuple[Any, dict[str, str]] | None = None  # (settings object, its environment)


def settings_environment() -> dict[str, str]:
    """``get_current_settings().to_environment_variables(exclude_unset=True)``, computed once
    per settings object. It serializes every Prefect setting (30-50 ms of CPU), and the process
    worker did it twice for each run (the job's base environment, the engine's environment)
    although a worker's settings do not change while it runs."""
    from prefect.settings import get_current_settings

    global _settings_env
    settings = get_current_settings()
    if _settings_env is None or _settings_env[0] is not settings:
        _settings_env = (settings, settings.to_environment_variables(exclude_unset=True))
    return _settings_env[1]


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs: it exists and is not a zombie (an orphan's zombie lingers
    until whatever adopted it reaps it, which need not be soon)."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class _ForkedChild:
    """What Prefect's ``ProcessHandle`` needs of a process: a pid and, later, an exit code."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None


def _build_worker_class() -> Any:
    """The worker class (built lazily: importing this module for the zygote stays light)."""
    import anyio
    import anyio.abc
    from prefect.flows import load_flow_from_flow_run
    from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext
    from prefect.runner._process_manager import ProcessHandle
    from prefect.utilities.processutils import sanitize_subprocess_env
    from prefect.workers.process import (
        ProcessJobConfiguration,
        ProcessWorker,
        ProcessWorkerResult,
    )

    class WarmStarter:
        """Prefect's ``ProcessStarter`` contract, with the process forked by the zygote.

        The environment is assembled as ``EngineCommandStarter`` assembles it for
        ``python -m prefect.engine`` (os.environ, the job's env, the worker's settings, the
        flow run id, the control channel's port and token).
        """

        def __init__(self, zygote: Zygote, *, cwd: Path, env: dict[str, str | None],
                     control_channel: Any) -> None:  # fmt: skip
            self.zygote, self.cwd, self.env, self.channel = zygote, cwd, env, control_channel

        async def start(
            self, flow_run: Any, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            control: dict[str, str] = {}
            registered = False
            if self.channel is not None:
                with contextlib.suppress(RuntimeError):  # channel disabled: kill-only cancel
                    port, token = self.channel.register(flow_run.id)
                    control = {"PREFECT__CONTROL_PORT": str(port), "PREFECT__CONTROL_TOKEN": token}
                    registered = True
            env: dict[str, str | None] = {**os.environ, **self.env}
            env.update(settings_environment())
            env.update({
                "PREFECT__FLOW_RUN_ID": str(flow_run.id),
                "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false",
                **control,
                "PREFECT__DEPLOYMENT_NAME": self.env.get("PREFECT__DEPLOYMENT_NAME"),
            })  # fmt: skip
            try:
                pid = await self.zygote.fork(
                    sanitize_subprocess_env(env), str(self.cwd), str(flow_run.id)
                )
            except BaseException:
                if registered:
                    self.channel.unregister(flow_run.id)
                raise
            child = _ForkedChild(pid)
            task_status.started(ProcessHandle(child))  # type: ignore[arg-type]
            code = await self.zygote.wait(pid)
            if code is None:
                # its zygote died before it (e.g. the worker's process tree was killed), so the
                # exit code is lost: report a failure. Prefect then marks the run Crashed if it
                # had not ended; the server aborts Crashed for a run already in a terminal state
                # (HandleFlowTerminalStateTransitions), so a finished run keeps its state.
                print(f"flow run {flow_run.id}: exit code lost with the warm-start process; "
                      "reported as 1", file=sys.stderr)  # fmt: skip
                code = 1
            child.returncode = code

    class WarmJobConfiguration(ProcessJobConfiguration):
        """The process worker's job configuration (same fields, same template), with the
        settings part of every run's environment computed once (``settings_environment``)."""

        @classmethod
        def _base_environment(cls) -> dict[str, str]:
            return dict(settings_environment())

    # same dispatch key as ProcessWorker ("process", the pool type): Prefect warns and lets
    # this class answer for it in this process, which is the point
    warnings.filterwarnings("ignore", message=".*WarmProcessWorker.*has key 'process'")

    class WarmProcessWorker(ProcessWorker):
        """A ``process`` worker (same pool type, same job template) with warm flow runs."""

        _description = "Process worker whose flow runs are forked from a preloaded process."
        _display_name = "Process (warm start)"
        job_configuration = WarmJobConfiguration

        def __init__(self, *args: Any, preload: list[str] | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.zygote = Zygote(list(DEFAULT_PRELOAD if preload is None else preload))

        async def __aenter__(self) -> WarmProcessWorker:
            await super().__aenter__()
            await self.zygote.start()
            return self

        async def __aexit__(self, *exc_info: Any) -> None:
            try:
                await super().__aexit__(*exc_info)
            finally:
                self.zygote.stop()

        async def run(
            self, flow_run: Any, configuration: ProcessJobConfiguration,
            task_status: anyio.abc.TaskStatus[int] | None = None,
        ) -> ProcessWorkerResult:  # fmt: skip
            if configuration._command_configured:  # a custom command: the plain process path
                return await super().run(flow_run, configuration, task_status)
            if task_status is None:
                task_status = anyio.TASK_STATUS_IGNORED
            workdir = (
                contextlib.nullcontext(configuration.working_dir)
                if configuration.working_dir
                else tempfile.TemporaryDirectory(suffix="prefect")
            )
            execution: FlowRunExecutionResult | None = None
            with workdir as working_dir, warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                async with FlowRunExecutorContext() as ctx:
                    starter = WarmStarter(self.zygote, cwd=Path(working_dir).resolve(),
                                          env=configuration.env,
                                          control_channel=ctx.control_channel)  # fmt: skip
                    executor = ctx.create_executor(flow_run, starter,
                                                   resolve_flow=load_flow_from_flow_run,
                                                   propose_submitting=False)  # fmt: skip

                    async def execute(
                        *, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED
                    ) -> None:
                        nonlocal execution
                        execution = await executor.submit(task_status=task_status)

                    async with anyio.create_task_group() as tg:
                        handle = await tg.start(execute)
                        task_status.started(handle.pid)
            if execution is None:
                raise RuntimeError("Failed to start flow run process.")
            return ProcessWorkerResult(
                status_code=execution.status_code if execution.status_code is not None else 0,
                identifier=str(execution.handle.pid),
            )

    return WarmProcessWorker


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", help="the work pool (a site's own: site-<name>)")
    ap.add_argument("--name", help="the worker's name (default: Prefect's)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="site",
                    help="what the zygote imports: a site's or the coordinator's")  # fmt: skip
    ap.add_argument("--preload", nargs="*", default=None,
                    help="modules the zygote imports once, instead of the preset's")  # fmt: skip
    ap.add_argument("--limit", type=int, default=None, help="concurrent flow runs at most")
    ap.add_argument("--zygote", nargs="*", metavar="MODULE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.zygote is not None:
        zygote_main(args.zygote)
        return
    if not args.pool:
        ap.error("--pool is required")
    worker_cls = _build_worker_class()
    share_client_tls_contexts()

    preload = args.preload if args.preload is not None else list(PRESETS[args.preset])
    worker = worker_cls(work_pool_name=args.pool, name=args.name, limit=args.limit,
                        preload=preload)  # fmt: skip

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds the worker: its zygote is stopped too

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(worker.start(run_once=False, with_healthcheck=False, printer=print))


if __name__ == "__main__":
    main()
