"""The warm-start site worker's zygote: forks engine processes, reports their exit codes.

The whole worker (Prefect server, work pools, flow runs forked from the zygote) runs in
``tests/test_stack.py`` and the fault suite (``tests/test_faults.py``); here the zygote alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from deployments.warm_worker import Zygote

REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    # a closed port: the engine in the child fails to reach the API and exits 1
    return {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api", **extra}


def test_zygote_forks_one_process_per_run_and_reports_its_exit_code(tmp_path: Path) -> None:
    async def scenario() -> None:
        z = Zygote([], cwd=REPO)
        await z.start()
        assert z.proc is not None
        zygote_pid = z.proc.pid
        try:
            # an id that is not a UUID: prefect.engine's own main exits 1 before any API call
            a = await z.fork(_env(), str(tmp_path), "not-a-flow-run-id")
            b = await z.fork(_env(), str(tmp_path), "not-a-flow-run-id")
            assert len({a, b, zygote_pid, os.getpid()}) == 4
            assert await asyncio.wait_for(z.wait(a), 60) == 1
            while Path(f"/proc/{b}").exists():  # b ends (and is reaped) before anyone waits
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            assert await asyncio.wait_for(z.wait(b), 60) == 1
            assert z.proc is not None and z.proc.poll() is None  # the zygote lives on
        finally:
            z.stop()
        assert z.proc is None

    asyncio.run(scenario())


def test_zygote_is_started_again_after_it_dies(tmp_path: Path) -> None:
    async def scenario() -> None:
        z = Zygote([], cwd=REPO)
        await z.start()
        assert z.proc is not None
        first = z.proc.pid
        os.kill(first, signal.SIGKILL)
        z.proc.wait()
        await asyncio.sleep(0.2)  # its reader thread sees EOF
        try:
            pid = await z.fork(_env(), str(tmp_path), "not-a-flow-run-id")
            assert z.proc is not None and z.proc.pid != first
            assert await asyncio.wait_for(z.wait(pid), 60) == 1
        finally:
            z.stop()

    asyncio.run(scenario())


def test_zygote_refuses_to_fork_once_it_has_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fork is only safe single-threaded: a preloaded module that starts a thread stops forks
    (tmp_path / "starts_a_thread.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(tmp_path)]))

    async def scenario() -> None:
        z = Zygote(["starts_a_thread"], cwd=REPO)
        await z.start()
        try:
            with pytest.raises(RuntimeError, match="zygote has threads"):
                await z.fork(_env(), str(tmp_path), "not-a-flow-run-id")
        finally:
            z.stop()

    asyncio.run(scenario())


def test_worker_is_a_process_worker_with_the_same_pool_type() -> None:
    from deployments.warm_worker import _build_worker_class

    cls = _build_worker_class()
    from prefect.workers.process import ProcessWorker

    assert issubclass(cls, ProcessWorker) and cls.type == "process"
    assert cls.get_default_base_job_template() == ProcessWorker.get_default_base_job_template()
    preload = sys.modules["deployments.warm_worker"].DEFAULT_PRELOAD
    assert {"flows.site_round", "flows.site_prepare", "torch._dynamo"} <= set(preload)
