"""Who may read and write what on an S3 hub, enforced by a real S3 server (moto on loopback,
IAM authorization on): each party through its own credentials."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from fedchem.deployments.s3hub import provision_hub
from fedchem.storage.hub import HubStore

BUCKET = "fedchem-trust"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def hubs() -> Iterator[dict[str, HubStore]]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("moto server did not start")
        creds = provision_hub(url, ["site-a", "site-b"], bucket=BUCKET)

        def hub(access: str, secret: str) -> HubStore:
            return HubStore(
                f"s3://{BUCKET}/hub", key=access, secret=secret, client_kwargs={"endpoint_url": url}
            )

        out = {p: hub(c.access_key, c.secret_key) for p, c in creds.items()}
        out["stranger"] = hub("AKIAIOSFODNN7EXAMPLE", "not-a-secret")
        out["forged"] = hub(creds["site-a"].access_key, "a guessed secret")
        yield out
    finally:
        proc.terminate()
        proc.wait(timeout=20)


UPDATE_A = "runs/r/rounds/0001/sites/site-a/update.npz"
REPLY_A = "runs/r/rounds/0001/sites/site-a/update.json"
GLOBAL = "runs/r/rounds/0001/global.npz"
COMMIT = "runs/r/rounds/0001/manifest.json"
ROSTER = "runs/r/rounds/0001/secagg/roster.json"
SHARES_A = "runs/r/rounds/0001/sites/site-a/secagg-shares.json"


def _denied(fn: Callable[[], object]) -> bool:
    try:
        fn()
    except PermissionError:
        return True
    return False


def test_each_party_reaches_only_what_its_role_needs(hubs: dict[str, HubStore]) -> None:
    a, b, co, op = hubs["site-a"], hubs["site-b"], hubs["coordinator"], hubs["operator"]
    # what the protocol needs goes through
    a.put_bytes(UPDATE_A, b"weights of a")
    a.put_bytes(REPLY_A, b"{}")
    a.put_bytes("ledger/r/site-a/00000000.json", b"{}")
    a.put_bytes("private/site-a/head.npz", b"a's own")
    co.put_bytes(GLOBAL, b"global")
    co.put_bytes(COMMIT, b"{}")
    co.put_bytes("runs/r/rounds/0002/open.json", b"{}")
    co.put_bytes(ROSTER, b"{}")  # secure aggregation: the coordinator's lists
    a.put_bytes(SHARES_A, b"{}")  # and a site's sealed shares, in its own area
    assert b.get_bytes(ROSTER) == b"{}" and co.get_bytes(SHARES_A) == b"{}"
    assert co.get_bytes(UPDATE_A) == b"weights of a" and co.get_bytes(REPLY_A) == b"{}"
    assert b.get_bytes(GLOBAL) == b"global" and b.get_bytes(COMMIT) == b"{}"
    assert a.get_bytes("private/site-a/head.npz") == b"a's own"
    assert not b.exists("runs/r/rounds/0003/open.json")  # polling a name not written yet
    # and nothing else does
    tried = {
        "site-b reads site-a's update": lambda: b.get_bytes(UPDATE_A),
        "site-b reads site-a's reply": lambda: b.get_bytes(REPLY_A),
        "site-b overwrites site-a's update": lambda: b.put_bytes(UPDATE_A, b"poison"),
        "site-b writes the global model": lambda: b.put_bytes(GLOBAL, b"evil"),
        "site-b commits a round": lambda: b.put_bytes(COMMIT, b"{}"),
        "site-b opens a round": lambda: b.put_bytes("runs/r/rounds/0003/open.json", b"{}"),
        "site-b writes site-a's ledger": lambda: b.put_bytes("ledger/r/site-a/00000001.json", b""),
        "site-b writes the coordinator's ledger": lambda: b.put_bytes(
            "ledger/r/coordinator/00000000.json", b""
        ),
        "site-b reads site-a's private area": lambda: b.get_bytes("private/site-a/head.npz"),
        "site-b reads site-a's sealed shares": lambda: b.get_bytes(SHARES_A),
        "site-b writes the roster": lambda: b.put_bytes(ROSTER, b"{}"),
        "the coordinator writes a site's shares": lambda: co.put_bytes(SHARES_A, b"{}"),
        "the coordinator reads a site's private area": lambda: co.get_bytes(
            "private/site-a/head.npz"
        ),
        "the coordinator writes a site's update": lambda: co.put_bytes(UPDATE_A, b"z"),
        "the coordinator writes a site's ledger": lambda: co.put_bytes(
            "ledger/r/site-a/00000009.json", b""
        ),
        "an unknown key reads the global": lambda: hubs["stranger"].get_bytes(GLOBAL),
        "site-a's key with a wrong secret": lambda: hubs["forged"].get_bytes(GLOBAL),
    }
    allowed = [what for what, fn in tried.items() if not _denied(fn)]
    assert allowed == []
    assert co.get_bytes(UPDATE_A) == b"weights of a"  # untouched by every refused write
    assert op.get_bytes("private/site-a/head.npz") == b"a's own"  # the operator: everything


def test_the_shipped_example_policies_are_what_the_code_provisions() -> None:
    import json
    from importlib import resources

    from fedchem.trust.hub_access import example_policies

    shipped = resources.files("fedchem.deployments").joinpath("hub-iam-policies.json")
    # after a change: .venv/bin/python -m fedchem.trust.hub_access rewrites it
    assert json.loads(shipped.read_text()) == example_policies()
