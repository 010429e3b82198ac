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


def test_a_run_killed_with_its_zygote_is_not_waited_for_forever(tmp_path: Path) -> None:
    import socket

    silent = socket.socket()  # an API that accepts and never answers: the engine waits
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    api = f"http://127.0.0.1:{silent.getsockname()[1]}/api"

    async def scenario() -> None:
        z = Zygote([], cwd=REPO)
        await z.start()
        assert z.proc is not None
        try:
            run_id = "00000000-0000-4000-8000-000000000000"
            pid = await z.fork(_env(PREFECT_API_URL=api), str(tmp_path), run_id)
            await asyncio.sleep(1.0)
            for p in (z.proc.pid, pid):  # the whole tree at once, as a kill -9 of a group
                os.kill(p, signal.SIGKILL)
            # the child's exit code went with its parent; the wait ends all the same
            assert await asyncio.wait_for(z.wait(pid), 30) is None
        finally:
            z.stop()

    try:
        asyncio.run(scenario())
    finally:
        silent.close()


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


def test_prefect_clients_share_one_verified_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    import prefect.client.orchestration as orchestration
    from prefect.client.orchestration import PrefectClient, SyncPrefectClient

    from deployments.warm_worker import share_client_tls_contexts

    def tls(client: PrefectClient | SyncPrefectClient) -> ssl.SSLContext:
        return client._client._transport._pool._ssl_context  # type: ignore[union-attr]

    api = "http://127.0.0.1:9/api"
    assert tls(PrefectClient(api)) is not tls(PrefectClient(api))  # Prefect's own behaviour
    monkeypatch.setattr(orchestration, "ssl", orchestration.ssl)  # restored after the test
    share_client_tls_contexts()
    share_client_tls_contexts()  # a second call changes nothing
    contexts = {id(tls(PrefectClient(api))), id(tls(PrefectClient(api))),
                id(tls(SyncPrefectClient(api)))}  # fmt: skip
    assert len(contexts) == 1
    shared = tls(PrefectClient(api))
    assert shared.verify_mode == ssl.CERT_REQUIRED and shared.check_hostname
    # only Prefect's client module sees the shared contexts; ssl itself is as it was
    assert ssl.create_default_context() is not ssl.create_default_context()


def test_the_settings_environment_is_prefects_computed_once() -> None:
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from deployments.warm_worker import _build_worker_class, settings_environment

    env = settings_environment()
    assert env == get_current_settings().to_environment_variables(exclude_unset=True)
    assert settings_environment() is env  # the same settings: not serialized again
    job = _build_worker_class().job_configuration
    assert job._base_environment() == env
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        other = settings_environment()  # other settings: computed for them
        assert other["PREFECT_API_URL"] == "http://127.0.0.1:9/api" and other is not env
