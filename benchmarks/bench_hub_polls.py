"""What one poll of the hub costs on S3: fedchem's one-request checks vs s3fs's, same run.

A booked site run polls ``open.json`` (absent until its round opens) and the coordinator
lists a round's ``sites/`` prefix (empty until the first reply lands). Both are polled several
times a second while a round trains, on the same cores. This starts moto's S3 server on
loopback and times each check, counting CPU in the client (this process) and in the server
(the moto process), per call:

- absent key: ``HubStore.exists`` (one HEAD) vs s3fs ``info`` (HEAD, then a listing);
- empty prefix: ``HubStore.list_files`` (one LIST) vs s3fs ``find`` (LIST, HEAD, LIST).

    .venv/bin/python benchmarks/bench_hub_polls.py [--calls 300]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

import psutil

from fedchem.storage.hub import HubStore


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cost(fn: Callable[[], object], server: psutil.Process, n: int) -> tuple[float, float]:
    """(client CPU, server CPU) per call, in ms."""
    fn()
    c0, s0 = time.process_time(), sum(server.cpu_times()[:2])
    for _ in range(n):
        fn()
    return ((time.process_time() - c0) / n * 1e3, (sum(server.cpu_times()[:2]) - s0) / n * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    port = _port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(150):
            try:
                urllib.request.urlopen(f"{endpoint}/", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.setdefault(key, "bench")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        hub = HubStore("s3://bench-hub/hub", client_kwargs={"endpoint_url": endpoint})
        hub.fs.mkdir("bench-hub")
        hub.put_json("runs/r/rounds/0001/open.json", {"round": 1})
        absent, empty = "runs/r/rounds/0002/open.json", "runs/r/rounds/0002/sites"
        server = psutil.Process(proc.pid)

        def s3fs_info() -> bool:
            hub.fs.invalidate_cache()
            try:
                hub.fs.info(f"bench-hub/hub/{absent}")
            except FileNotFoundError:
                return False
            return True

        def s3fs_find() -> list[str]:
            hub.fs.invalidate_cache()
            return list(hub.fs.find(f"bench-hub/hub/{empty}"))

        cases = [
            ("absent key", lambda: hub.exists(absent), s3fs_info),
            ("empty prefix", lambda: hub.list_files(empty), s3fs_find),
        ]
        print(f"{args.calls} calls each, CPU per call (client + moto server):")
        for name, ours, theirs in cases:
            assert not ours() and not theirs()  # both see nothing there
            base = sum(_cost(theirs, server, args.calls))
            mine = sum(_cost(ours, server, args.calls))
            print(f"  {name}: s3fs {base:.1f} ms, fedchem {mine:.1f} ms, ratio {base / mine:.1f}x")
    finally:
        proc.kill()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
