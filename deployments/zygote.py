"""A fork server for flow runs: import Prefect, torch and the flows once, fork each run from it.

A Prefect flow run's process (``python -m prefect.engine <id>``, which Prefect's workers
start) spends its first seconds importing Prefect, torch and the flow module before the site
does any work; three sites starting at once on two cores took 12.6 s there
(``benchmarks/README.md``). The *zygote* is a process that imports all of that once and then
waits. For each flow run, fedchem's worker (:mod:`fedchem.deployments.worker`) asks it to
``fork``; the child takes the run's environment and working directory, runs exactly
``python -m prefect.engine``'s main and exits as that command would. Every run still gets its
own process and pid, and nothing of one run lives on into the next: only the imports are
shared, copy-on-write.

    python -m fedchem.deployments.zygote [MODULE ...]     # started by the worker

Protocol, one JSON object per line: the worker writes ``{"env", "cwd", "flow_run_id"}``; the
zygote answers ``{"ready": pid}`` once, then ``{"pid": child}`` (or ``{"error": why}``) per
request, and ``{"exit": child, "code": n}`` when a child ends. At EOF it stops taking requests
and exits once its running children have ended. It refuses to fork while it has a thread
other than its main one (fork is only safe single-threaded): preloading stays import-only.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import sys
import threading
import warnings
from typing import IO, Any

__all__ = ["DEFAULT_PRELOAD", "main", "warm_up"]

#: what a zygote imports by default: every fedchem flow, what their runs import on first use
DEFAULT_PRELOAD = (
    "fedchem.flows.site_round",
    "fedchem.flows.site_prepare",
    "fedchem.flows.coordinator",
    "pyarrow.parquet",
    "s3fs",
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.deployments.steps",
)


def warm_up() -> None:
    """What runs import lazily on first use, imported here through public calls: torch's
    compiler stack (its optimizers import it on their first step; ~2.5 s per run, measured by
    listing ``sys.modules`` in a forked run) and anyio's asyncio backend. Nothing computes."""
    import anyio
    import torch

    torch.compiler.reset()
    anyio.run(anyio.sleep, 0)


def _send(out: IO[str], msg: dict[str, Any]) -> None:
    out.write(json.dumps(msg) + "\n")
    out.flush()


def _become_run(request: dict[str, Any]) -> int:
    """In the forked child: the flow run's engine, as ``python -m prefect.engine <id>``."""
    import runpy

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.environ.clear()
    os.environ.update(request["env"])
    if request.get("cwd"):
        os.chdir(request["cwd"])
    # the settings as this run's environment gives them, not as the zygote's was (what
    # Prefect's own run_flow_in_subprocess does in its child)
    from prefect.context import SettingsContext, get_settings_context
    from prefect.settings import Settings

    SettingsContext(profile=get_settings_context().profile, settings=Settings()).__enter__()
    # runpy notes that prefect.engine is already imported (preloaded): expected here
    warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
    sys.argv = ["prefect.engine", request["flow_run_id"]]
    try:
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def main(preload: list[str]) -> None:
    """Import ``preload``, then fork one engine process per request read from stdin."""
    for name in preload:
        importlib.import_module(name)
    warm_up()
    # the protocol keeps the original stdout; anything printed from here on goes to stderr
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
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
            threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
            if threads:
                _send(out, {"error": f"zygote has threads {threads}; not forking"})
                continue
            pid = os.fork()
            if pid == 0:
                out.close()
                # a normal interpreter exit (atexit: Prefect drains its log and event workers)
                sys.exit(_become_run(request))
            children.add(pid)
            _send(out, {"pid": pid})
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            if open_:
                try:
                    _send(out, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})
                except OSError:
                    open_ = False


if __name__ == "__main__":
    main(sys.argv[1:] or list(DEFAULT_PRELOAD))
