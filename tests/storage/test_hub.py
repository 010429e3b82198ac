"""The hub over a local directory and over the real S3 protocol (moto's server on loopback)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedchem.storage.hub import HubLayout, HubStore, IntegrityError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("moto server did not start")
        yield url
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def _roundtrip(hub: HubStore) -> None:
    layout = HubLayout("run-1")
    hub.put_bytes(layout.global_model(0), b"weights")
    hub.put_json(layout.round_manifest(0), {"round": 0})
    assert hub.get_bytes(layout.global_model(0)) == b"weights"
    assert hub.get_json(layout.round_manifest(0)) == {"round": 0}
    assert hub.exists(layout.round_manifest(0)) and not hub.exists(layout.round_manifest(1))
    assert hub.list_files("runs") == [layout.global_model(0), layout.round_manifest(0)]
    hub.put_bytes("runs-elsewhere/x", b"x")  # shares the prefix "runs" but not "runs/"
    assert hub.list_files("runs") == [layout.global_model(0), layout.round_manifest(0)]
    assert hub.list_files(layout.round_dir(1)) == []  # nothing there yet: polled like this
    assert len(hub.list_files()) == 3
    # an object read as a verified temporary file, in chunks (several here), hash checked
    big = os.urandom(3 * 2**20 + 17)
    hub.put_bytes(layout.site_update(1, "a"), big)
    digest = hashlib.sha256(big).hexdigest()
    with hub.get_verified_file(layout.site_update(1, "a"), digest, "update of a") as fh:
        assert fh.read() == big
    with pytest.raises(IntegrityError, match=r"update of a .* does not match its manifest"):
        hub.get_verified_file(
            layout.site_update(1, "a"), hashlib.sha256(b"x").hexdigest(), "update of a"
        )
    with pytest.raises(FileNotFoundError):
        hub.get_verified_file(layout.site_update(1, "b"), digest, "update of b")


def test_local_hub_roundtrip_leaves_no_temporary_files(tmp_path: Path):
    hub = HubStore(str(tmp_path / "hub"))
    _roundtrip(hub)
    assert not [p for p in (tmp_path / "hub").rglob("*") if ".tmp-" in p.name]


def test_s3_hub_roundtrip_through_s3fs(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="fedchem-hub")
    hub = HubStore("s3://fedchem-hub/consortium", client_kwargs={"endpoint_url": s3_endpoint})
    _roundtrip(hub)


_MOTO_WITH_BUCKET = (
    "import sys\n"
    "from moto.core import DEFAULT_ACCOUNT_ID\n"
    "from moto.s3.models import s3_backends\n"
    "from moto.server import main\n"
    "s3_backends[DEFAULT_ACCOUNT_ID]['global'].create_bucket(sys.argv[1], 'us-east-1')\n"
    "main(['-H', '127.0.0.1', '-p', sys.argv[2]])\n"
)


def _start_moto(port: int, bucket: str) -> subprocess.Popen[bytes]:
    """moto's S3 server on ``port``, ``bucket`` created before it listens."""
    cmd = [sys.executable, "-c", _MOTO_WITH_BUCKET, bucket, str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def test_an_s3_outage_is_retried_with_backoff(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """The S3 server goes away (connections refused) and comes back 3 s later."""
    from fedchem.storage.hub import RetryPolicy

    for k, v in (
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(k, v)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    servers = [_start_moto(port, bucket="fedchem-flaky")]
    try:
        hub = HubStore(
            "s3://fedchem-flaky/hub",
            retry=RetryPolicy(attempts=20, max_s=2.0),
            client_kwargs={"endpoint_url": url},
        )
        hub.put_bytes("a.bin", b"before")
        servers[0].kill()
        servers[0].wait()

        def come_back() -> None:
            # the restarted server is empty: its bucket must exist before the first retry lands
            servers.append(_start_moto(port, bucket="fedchem-flaky"))

        threading.Timer(3.0, come_back).start()
        caplog.set_level("WARNING", logger="fedchem.hub")
        start = time.time()
        hub.put_bytes("b.bin", b"during the outage")  # refused, retried, then written
        assert time.time() - start >= 3.0 and hub.get_bytes("b.bin") == b"during the outage"
        retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
        assert retries and "EndpointConnectionError" in retries[0]
        # not transient: a missing object is raised at once, never retried
        caplog.clear()
        with pytest.raises(FileNotFoundError):
            hub.get_bytes("missing.bin")
        assert not caplog.records
    finally:
        time.sleep(0.1)
        for proc in servers:
            proc.kill()
            proc.wait(timeout=10)


def test_transient_errors_are_told_from_permanent_ones():
    import errno

    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    from fedchem.storage.hub import is_transient

    def client_error(status: int) -> ClientError:
        body = {"Error": {"Code": str(status)}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(body, "GetObject")  # type: ignore[arg-type]

    assert is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(ReadTimeoutError(endpoint_url="http://x"))
    assert is_transient(client_error(503)) and is_transient(client_error(500))
    assert is_transient(OSError(errno.ECONNRESET, "reset")) and is_transient(TimeoutError())
    wrapped = OSError("s3fs said so")
    wrapped.__cause__ = client_error(502)
    assert is_transient(wrapped)
    assert not is_transient(client_error(403)) and not is_transient(client_error(404))
    assert not is_transient(FileNotFoundError("gone")) and not is_transient(PermissionError())
    assert not is_transient(ValueError("update does not match its manifest"))
