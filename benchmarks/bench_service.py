"""The prediction service under load: HTTP overhead, then 1 and 8 concurrent clients.

    .venv/bin/python benchmarks/bench_service.py [--registry DIR --model NAME --key-file K]

Without a registry it publishes a small Tox21 federation first (as ``bench_predict.py`` does).
It starts a real ``fedchem serve`` process on loopback and, in the same run:

1. times a 1,000-molecule request over HTTP against ``Predictor.predict`` of the same
   molecules in this process (median of 5 each; target: HTTP at most 20 % slower);
2. runs 1, then 8 client threads for 60 s each, each sending 25-molecule requests back to
   back, and prints throughput, p50/p99 latency, the number of errors (target: none) and the
   server's resident memory (now and its peak).

Every process it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import yaml
from bench_predict import publish_small  # benchmarks/, next to this file

from fedchem.demo.sites import bundled_dataset
from fedchem.registry.store import Registry
from fedchem.serve.app import hash_token
from fedchem.serve.predictor import Predictor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss(pid: int) -> str:
    """A process's resident memory now and its peak (Linux /proc)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return f"{fields['VmRSS'].strip()} (peak {fields['VmHWM'].strip()})"


def load(
    url: str, headers: dict[str, str], smiles: list[str], clients: int, seconds: float
) -> list[str]:
    """``clients`` threads sending 25-molecule requests back to back for ``seconds``."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.time() + seconds

    def client_loop(i: int) -> None:
        with httpx.Client(timeout=60) as c:
            k = i * 25
            while time.time() < stop:
                part = smiles[k % len(smiles) : k % len(smiles) + 25]
                k += 25 * clients
                t = time.perf_counter()
                try:
                    res = c.post(url, json={"smiles": part}, headers=headers)
                    ok = res.status_code == 200 and len(res.json()["rows"]) == len(part)
                    why = None if ok else f"HTTP {res.status_code}"
                except httpx.HTTPError as exc:
                    why = type(exc).__name__
                with lock:
                    latencies.append(time.perf_counter() - t)
                    if why:
                        errors.append(why)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    lat = sorted(latencies)
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    print(
        f"{clients} client(s) x {seconds:.0f} s, 25 molecules a request: "
        f"{len(lat)} requests, {len(lat) / took:.1f} req/s = {25 * len(lat) / took:.0f} "
        f"molecules/s; latency p50 {1000 * p50:.0f} ms, p99 {1000 * p99:.0f} ms; "
        f"{len(errors)} errors"
    )
    return errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry")
    ap.add_argument("--model", default="tox21")
    ap.add_argument("--key-file")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    smiles = pd.read_csv(bundled_dataset("chembl"))["smiles"].tolist()
    with tempfile.TemporaryDirectory(prefix="fedchem-bench-service-") as tmp:
        base = Path(tmp)
        if args.registry:
            registry, name, key_file = Path(args.registry), args.model, Path(args.key_file)
        else:
            registry, name, key_file = publish_small(base)
        token = "bench-" + os.urandom(8).hex()
        entry = {"name": "bench", "token_sha256": hash_token(token), "models": ["*"]}
        (base / "tokens.yaml").write_text(yaml.safe_dump({"tokens": [entry]}))
        port = _free_port()
        cmd = [
            str(Path(sys.executable).with_name("fedchem")),
            "serve",
            "--registry",
            str(registry),
            "--key-file",
            str(key_file),
            "--tokens",
            str(base / "tokens.yaml"),
            "--port",
            str(port),
            "--max-batch",
            "1000",
        ]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}/models/{name}/predict"
        headers = {"Authorization": f"Bearer {token}"}
        try:
            deadline = time.time() + 120
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)
                    break
                except httpx.HTTPError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.3)
            p = Predictor.load(Registry(str(registry)), name, key_file.read_bytes().strip())
            batch = smiles[:1000]
            with httpx.Client(timeout=300) as client:
                client.post(url, json={"smiles": batch}, headers=headers).raise_for_status()
                p.predict(batch)  # both warm
                local, remote = [], []
                for _ in range(5):  # interleaved
                    t = time.perf_counter()
                    p.predict(batch)
                    local.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    r = client.post(url, json={"smiles": batch}, headers=headers)
                    remote.append(time.perf_counter() - t)
                    r.raise_for_status()
            lo, re_ = statistics.median(local), statistics.median(remote)
            print(
                f"1,000 molecules: in-process {lo:.3f} s, HTTP {re_:.3f} s; overhead "
                f"{100 * (re_ - lo) / lo:+.1f} % (target <= 20 %)"
            )

            errors: list[str] = []
            for n_clients in args.clients:
                errors += load(url, headers, smiles, n_clients, args.seconds)
                print(f"   server RSS {_rss(proc.pid)}")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
