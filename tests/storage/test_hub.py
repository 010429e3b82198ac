"""The hub over a local directory and over the real S3 protocol (moto's server on loopback)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedchem.storage.hub import HubLayout, HubStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
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
