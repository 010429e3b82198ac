"""The HTTP service as a client sees it: a real ``fedchem serve`` process on loopback, a real
HTTP client; results equal to the in-process predictor's, scoped tokens, refusals with their
status codes, the Open Inference Protocol v2, and an audit log without a single SMILES."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from fedchem.serve.app import hash_token
from fedchem.serve.predictor import Predictor
from tests.serve.conftest import Published

NAME = "tox21-2000"
TOKENS = {
    "alice": {"models": [NAME], "sites": ["site-a"]},
    "bob": {"models": ["another-model"]},
    "admin": {"models": ["*"], "sites": ["site-a", "site-b"]},
}


@dataclass
class Service:
    url: str
    audit: Path
    log: Path
    tokens: dict[str, str]
    pid: int = 0

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(
    published: Published,
    base: Path,
    max_batch: int = 50,
    key_file: Path | None = None,
    wait_for: str = "/v2/health/ready",
) -> tuple[Service, subprocess.Popen[bytes]]:
    tokens = {who: f"token-of-{who}-{os.urandom(8).hex()}" for who in TOKENS}
    entries = [
        {"name": who, "token_sha256": hash_token(tokens[who]), **grant}
        for who, grant in TOKENS.items()
    ]
    (base / "tokens.yaml").write_text(yaml.safe_dump({"tokens": entries}))
    port = _free_port()
    cmd = [
        str(Path(sys.executable).with_name("fedchem")),
        "serve",
        "--registry",
        str(published.out / "registry"),
        "--key-file",
        str(key_file or published.key_file),
        "--tokens",
        str(base / "tokens.yaml"),
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--audit-log",
        str(base / "audit.jsonl"),
    ]
    for site, reg in published.site_registries.items():
        cmd += ["--site-registry", f"{site}={reg.url}"]
    log = base / "service.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            if httpx.get(f"{url}{wait_for}", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"the service did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    return Service(url, base / "audit.jsonl", log, tokens, proc.pid), proc


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def service(published: Published, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc, proc = start_service(published, tmp_path_factory.mktemp("service"))
    try:
        yield svc
    finally:
        stop_service(proc)
        assert proc.poll() is not None


def _rss_bytes(pid: int) -> int:
    """The resident memory of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _slow_machine() -> float:
    """Headroom for a shared, loaded machine: a bound on time scales with the load average
    per core (at least 1)."""
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def _frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def test_predictions_over_http_equal_the_in_process_predictor(
    service: Service, published: Published
):
    smiles = published.test_smiles
    ids = [f"m{i}" for i in range(len(smiles))]
    res = httpx.post(
        f"{service.url}/models/{NAME}/predict",
        json={"smiles": smiles, "ids": ids},
        headers=service.headers("alice"),
        timeout=60,
    )
    assert res.status_code == 200, res.text
    body = res.json()
    assert (body["model"], body["version"], body["site"]) == (NAME, 1, None)
    got = _frame(body["rows"])
    want = Predictor.load(published.registry, NAME, published.key).predict(smiles, ids)
    assert list(got.columns) == list(want.columns) and len(got) == len(smiles)
    assert got["id"].tolist() == ids and got["status"].tolist() == want["status"].tolist()
    numeric = [c for c in want.columns if pd.api.types.is_numeric_dtype(want[c])]
    np.testing.assert_allclose(got[numeric].astype(float), want[numeric], rtol=1e-6)
    text = [c for c in want.columns if c not in numeric]
    assert got[text].fillna("").astype(str).equals(want[text].fillna("").astype(str))
    bad = got[got["status"] == "error"]
    assert "unparsable SMILES" in bad["error"].tolist()  # a bad SMILES is a row, not a 4xx


def test_tokens_are_scoped_to_models_and_sites(service: Service):
    url = f"{service.url}/models/{NAME}/predict"
    body = {"smiles": ["CCO"]}
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.post(url, json=body, headers=service.headers("bob")).status_code == 403
    assert httpx.get(f"{service.url}/models", headers=service.headers("bob")).json() == []
    # alice may use site-a's private heads and calibration, not site-b's
    mine = httpx.post(f"{url}?site=site-a", json=body, headers=service.headers("alice"), timeout=60)
    assert mine.status_code == 200 and mine.json()["site"] == "site-a"
    other = httpx.post(f"{url}?site=site-b", json=body, headers=service.headers("alice"))
    assert other.status_code == 403 and "site-b" in other.json()["detail"]
    assert httpx.get(f"{service.url}/v2/health/live").status_code == 200  # health: no token


def test_a_batch_too_large_or_a_malformed_request_is_refused(service: Service):
    url, alice = f"{service.url}/models/{NAME}/predict", service.headers("alice")
    too_many = httpx.post(url, json={"smiles": ["CCO"] * 51}, headers=alice)
    assert too_many.status_code == 413 and "at most 50" in too_many.json()["detail"]
    assert httpx.post(url, json={"smile": ["CCO"]}, headers=alice).status_code == 422
    assert httpx.post(url, json={"smiles": []}, headers=alice).status_code == 422
    assert (
        httpx.post(url, json={"smiles": ["CCO"], "ids": ["a", "b"]}, headers=alice).status_code
        == 422
    )
    assert httpx.post(url, json={"smiles": ["CCO"], "alpha": 1.5}, headers=alice).status_code == 422
    assert httpx.post(url, content=b"{not json", headers=alice).status_code == 422
    missing = httpx.post(
        f"{service.url}/models/{NAME}/predict?ref=:9", json={"smiles": ["CCO"]}, headers=alice
    )
    assert missing.status_code == 404 and "no such version" in missing.json()["detail"]


def test_an_uploaded_csv_comes_back_as_the_cli_writes_it(
    service: Service, published: Published, tmp_path: Path
):
    csv = "compound,smiles\nc1,CCO\nc2,xyz\nc3,c1ccccc1O\n"
    url = f"{service.url}/models/{NAME}/predict.csv?id_col=compound"
    alice = service.headers("alice")
    multipart = httpx.post(
        url, files={"file": ("in.csv", csv.encode(), "text/csv")}, headers=alice, timeout=60
    )
    raw = httpx.post(
        url, content=csv.encode(), headers={**alice, "Content-Type": "text/csv"}, timeout=60
    )
    assert multipart.status_code == raw.status_code == 200
    assert multipart.text == raw.text
    table = pd.read_csv(io.StringIO(raw.text), keep_default_na=False)
    assert table["id"].tolist() == ["c1", "c2", "c3"] and table["status"].tolist() == [
        "ok",
        "error",
        "ok",
    ]
    from fedchem.cli import main

    (tmp_path / "in.csv").write_text(csv)
    args = [
        "predict",
        "--registry",
        str(published.out / "registry"),
        "--model",
        NAME,
        "--in",
        str(tmp_path / "in.csv"),
        "--out",
        str(tmp_path / "out.csv"),
        "--id-col",
        "compound",
        "--key-file",
        str(published.key_file),
    ]
    assert main(args) == 0
    assert (tmp_path / "out.csv").read_text() == raw.text
    no_col = httpx.post(
        f"{service.url}/models/{NAME}/predict.csv",
        content=b"a,b\n1,2\n",
        headers={**alice, "Content-Type": "text/csv"},
    )
    assert no_col.status_code == 422 and "no column 'smiles'" in no_col.json()["detail"]


def test_the_open_inference_protocol_v2(service: Service):
    alice = service.headers("alice")
    assert httpx.get(f"{service.url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{service.url}/v2/models/{NAME}", headers=alice).json()
    assert meta["inputs"] == [{"name": "smiles", "datatype": "BYTES", "shape": [-1]}]
    kinds = {o["name"]: o["datatype"] for o in meta["outputs"]}
    assert meta["versions"] == ["1"] and kinds["status"] == "BYTES"
    assert sum(kinds.get(t) == "FP64" for t in ("NR-AR", "SR-MMP", "SR-p53")) == 3
    assert httpx.get(f"{service.url}/v2/models/{NAME}/ready", headers=alice).json()["ready"]
    request = {
        "id": "r1",
        "inputs": [
            {"name": "smiles", "datatype": "BYTES", "shape": [2], "data": ["CCO", "c1ccccc1O"]}
        ],
    }
    res = httpx.post(
        f"{service.url}/v2/models/{NAME}/infer", json=request, headers=alice, timeout=60
    )
    assert res.status_code == 200, res.text
    out = {o["name"]: o for o in res.json()["outputs"]}
    assert res.json()["id"] == "r1" and out["status"]["data"] == ["ok", "ok"]
    rest = httpx.post(
        f"{service.url}/models/{NAME}/predict",
        json={"smiles": ["CCO", "c1ccccc1O"]},
        headers=alice,
        timeout=60,
    ).json()["rows"]
    task = "NR-AR"
    assert out[task]["datatype"] == "FP64"
    np.testing.assert_allclose(out[task]["data"], [r[task] for r in rest])
    # the metadata lists exactly what infer returns, datatypes included
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
        (o["name"], o["datatype"]) for o in res.json()["outputs"]
    ]
    wrong = {"inputs": [{"name": "smi", "datatype": "BYTES", "shape": [1], "data": ["CCO"]}]}
    bad = httpx.post(f"{service.url}/v2/models/{NAME}/infer", json=wrong, headers=alice)
    assert bad.status_code == 400 and "'smiles'" in bad.json()["error"]  # the protocol's body


def _infer(service: Service, body: dict, path: str = f"/v2/models/{NAME}") -> httpx.Response:
    return httpx.post(
        f"{service.url}{path}/infer", json=body, headers=service.headers("alice"), timeout=60
    )


def test_open_inference_protocol_checks_what_a_client_sends(service: Service):
    smiles = {"name": "smiles", "datatype": "BYTES", "shape": [2], "data": ["CCO", "c1ccccc1"]}
    # requested outputs only, in the order asked; an unknown one is refused
    meta = httpx.get(f"{service.url}/v2/models/{NAME}", headers=service.headers("alice")).json()
    task = next(o["name"] for o in meta["outputs"] if o["datatype"] == "FP64")
    res = _infer(service, {"inputs": [smiles], "outputs": [{"name": "status"}, {"name": task}]})
    assert [o["name"] for o in res.json()["outputs"]] == ["status", task]
    unknown = _infer(service, {"inputs": [smiles], "outputs": [{"name": "nope"}]})
    assert unknown.status_code == 400 and "unknown outputs ['nope']" in unknown.json()["error"]
    # a shape that does not hold its data, an alpha out of range: 400 with the reason
    ragged = _infer(service, {"inputs": [{**smiles, "shape": [3]}]})
    assert ragged.status_code == 400 and "shape [3] but 2 elements" in ragged.json()["error"]
    for alpha in (5, "0.1", True):
        res = _infer(service, {"inputs": [smiles], "parameters": {"alpha": alpha}})
        assert res.status_code == 400 and "alpha" in res.json()["error"], alpha
    # versioned paths: the version the metadata lists, and a clear 404 for one it does not
    ok = _infer(service, {"inputs": [smiles]}, f"/v2/models/{NAME}/versions/1")
    assert ok.status_code == 200 and ok.json()["model_version"] == "1"
    versioned = httpx.get(
        f"{service.url}/v2/models/{NAME}/versions/1/ready", headers=service.headers("alice")
    )
    assert versioned.json() == {"name": NAME, "ready": True}
    gone = _infer(service, {"inputs": [smiles]}, f"/v2/models/{NAME}/versions/9")
    assert gone.status_code == 404 and "error" in gone.json()
    # a malformed body is the protocol's 400 with an error, not FastAPI's 422 detail
    malformed = _infer(service, {"inputs": "CCO"})
    assert malformed.status_code == 400 and malformed.json()["error"].startswith("inputs")


def test_a_huge_smiles_or_body_is_refused_before_it_costs_anything(service: Service):
    alice = service.headers("alice")
    url = f"{service.url}/models/{NAME}/predict"
    huge = "C" * 5000
    res = httpx.post(url, json={"smiles": ["CCO", huge]}, headers=alice)
    assert res.status_code == 422 and "positions [2] (1-based)" in res.json()["detail"]
    assert huge not in res.text  # never echoed
    # a 5 MB SMILES (under the body limit): refused at once, and the memory comes back
    five = "C" * (5 * 1024 * 1024)
    start = time.perf_counter()
    res = httpx.post(url, json={"smiles": [five]}, headers=alice, timeout=60)
    took = time.perf_counter() - start
    assert res.status_code == 422 and len(res.content) < 1000
    assert took < 1.0 * _slow_machine(), f"{took:.2f} s"
    assert _rss_bytes(service.pid) < 1024**3
    # a SMILES of more heavy atoms than the service takes (500), before any chemistry runs
    many = "C" * 600
    res = httpx.post(url, json={"smiles": ["CCO", many]}, headers=alice)
    assert res.status_code == 422 and "over 500 heavy atoms" in res.json()["detail"]
    body = b'{"smiles": ["' + b"C" * (9 * 1024 * 1024) + b'"]}'
    too_big = httpx.post(url, content=body, headers={**alice, "content-type": "application/json"})
    assert too_big.status_code == 413 and "over 8388608 bytes" in too_big.json()["detail"]

    # streamed without a length: counted as it arrives
    def chunks() -> Iterator[bytes]:
        yield b'{"smiles": ["'
        for _ in range(10):
            yield b"C" * (1024 * 1024)
        yield b'"]}'

    streamed = httpx.post(
        url, content=chunks(), headers={**alice, "content-type": "application/json"}
    )
    assert streamed.status_code == 413
    # and the service still answers
    assert httpx.post(url, json={"smiles": ["CCO"]}, headers=alice, timeout=60).status_code == 200


def test_readiness_tells_the_truth_about_a_wrong_key(published: Published, tmp_path: Path):
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    svc, proc = start_service(published, tmp_path, key_file=wrong, wait_for="/v2/health/live")
    try:
        ready = httpx.get(f"{svc.url}/v2/health/ready", timeout=60)
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert "reference-set hashes differ" in ready.json()["error"][NAME]
        res = httpx.post(
            f"{svc.url}/models/{NAME}/predict",
            json={"smiles": ["CCO"]},
            headers=svc.headers("alice"),
            timeout=60,
        )
        assert res.status_code == 503 and "cannot serve" in res.json()["detail"]
    finally:
        stop_service(proc)
    assert proc.poll() is not None


def test_the_model_card_and_the_openapi_docs(service: Service):
    alice = service.headers("alice")
    md = httpx.get(f"{service.url}/models/{NAME}/card", headers=alice)
    assert md.status_code == 200 and md.text.startswith(f"# {NAME} v1")
    card = httpx.get(f"{service.url}/models/{NAME}/card?format=json", headers=alice).json()
    assert card["name"] == NAME and "privacy" in card
    info = httpx.get(f"{service.url}/models/{NAME}", headers=alice).json()
    assert info["aliases"] == {"production": 1} and info["versions"] == [1]
    spec = httpx.get(f"{service.url}/openapi.json").json()
    assert "/models/{name}/predict" in spec["paths"] and "/v2/models/{name}/infer" in spec["paths"]


def test_the_audit_log_knows_who_asked_what_but_no_smiles(service: Service, published: Published):
    smiles = ["CC(C)Cc1ccc(cc1)C(C)C(=O)O", "CCOC(=O)c1ccccc1N"]
    res = httpx.post(
        f"{service.url}/models/{NAME}/predict",
        json={"smiles": smiles},
        headers=service.headers("admin"),
        timeout=60,
    )
    assert res.status_code == 200
    lines = [json.loads(ln) for ln in service.audit.read_text().splitlines()]
    mine = [e for e in lines if e["who"] == "admin" and e["n"] == 2]
    assert mine and mine[-1]["model"] == f"{NAME}:1" and len(mine[-1]["smiles_hmac"]) == 2
    assert len(set(mine[-1]["smiles_hmac"])) == 2  # one keyed hash per molecule
    logged = service.audit.read_text() + service.log.read_text()
    for s in [*smiles, *published.test_smiles]:
        if len(s) >= 6:
            assert s not in logged, "a SMILES reached a log"


def test_a_stock_triton_client_runs_a_prediction(service: Service):
    """NVIDIA's ``tritonclient.http`` as a lab tool would use it, untouched: no Content-Type,
    binary tensors by default, errors decoded from the protocol's ``{"error": ...}``."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=service.url.removeprefix("http://"))
    auth = service.headers("alice")
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "fedchem"
    meta = client.get_model_metadata(NAME, headers=auth)
    assert [i["name"] for i in meta["inputs"]] == ["smiles"]
    smiles = np.array([b"CCO", b"c1ccccc1O", b"not a smiles"], dtype=np.object_)
    rest = httpx.post(
        f"{service.url}/models/{NAME}/predict",
        json={"smiles": [s.decode() for s in smiles]},
        headers=auth,
        timeout=60,
    ).json()["rows"]
    for binary in (True, False):
        tensor = triton.InferInput("smiles", [3], "BYTES")
        tensor.set_data_from_numpy(smiles, binary_data=binary)
        wanted = [triton.InferRequestedOutput(n, binary_data=False) for n in ("NR-AR", "status")]
        result = client.infer(NAME, [tensor], outputs=wanted, headers=dict(auth))  # it adds to it
        got = result.as_numpy("NR-AR")
        np.testing.assert_allclose(got[:2], [r["NR-AR"] for r in rest[:2]])
        assert np.isnan(got[2])  # the row that could not be predicted
        assert [s.decode() if isinstance(s, bytes) else s for s in result.as_numpy("status")] == [
            r["status"] for r in rest
        ]
    with pytest.raises(InferenceServerException, match="unknown outputs"):
        client.infer(
            NAME, [tensor], outputs=[triton.InferRequestedOutput("nope")], headers=dict(auth)
        )
    with pytest.raises(InferenceServerException, match="may not use model"):
        client.get_model_metadata(NAME, headers=service.headers("bob"))


def test_tokens_are_appended_revoked_and_expire_without_a_restart(
    published: Published, tmp_path: Path, capsys
):
    from fedchem.cli import main as cli_main
    from fedchem.cli.serve import read_tokens

    # `fedchem token new >> tokens.yaml` twice: both users keep access
    tokens_file = tmp_path / "appended.yaml"
    secrets_of = {}
    for who in ("carol", "dave"):
        assert cli_main(["token", "new", "--name", who, "--models", NAME]) == 0
        out, err = capsys.readouterr()
        secrets_of[who] = err.rsplit(": ", 1)[1].strip()
        with open(tokens_file, "a") as fh:
            fh.write(out)
    assert sorted(g.name for g in read_tokens(tokens_file).values()) == ["carol", "dave"]
    # the old format appended twice: an error, not the last section silently winning
    twice = tmp_path / "twice.yaml"
    one = yaml.safe_dump({"tokens": [{"name": "x", "token": "a", "models": ["*"]}]})
    twice.write_text(one + one.replace("a\n", "b\n").replace("x", "y"))
    with pytest.raises(ValueError, match="2 'tokens:' sections"):
        read_tokens(twice)
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump([{"name": "x", "token": "a", "models": ["*"]}] * 2))
    with pytest.raises(ValueError, match="repeats the token of 'x'"):
        read_tokens(same)

    svc, proc = start_service(published, tmp_path)
    try:
        listing = f"{svc.url}/models"
        assert httpx.get(listing, headers=svc.headers("alice")).status_code == 200
        doc = yaml.safe_load((tmp_path / "tokens.yaml").read_text())
        kept = [e for e in doc["tokens"] if e["name"] != "alice"]  # alice revoked
        kept.append({"name": "erin", "token": "erin-secret", "models": ["*"]})  # erin added
        kept.append(
            {
                "name": "old",
                "token": "old-secret",
                "models": ["*"],
                "expires": "2020-01-01T00:00:00Z",
            }
        )
        (tmp_path / "tokens.yaml").write_text(yaml.safe_dump(kept))
        time.sleep(0.05)  # a new modification time
        gone = httpx.get(listing, headers=svc.headers("alice"))
        assert gone.status_code == 401 and gone.json()["detail"] == "unknown token"
        erin = httpx.get(listing, headers={"Authorization": "Bearer erin-secret"})
        assert erin.status_code == 200
        old = httpx.get(listing, headers={"Authorization": "Bearer old-secret"})
        assert old.status_code == 401 and "expired" in old.json()["detail"]
        # a broken edit keeps the last valid grants instead of locking everyone out
        (tmp_path / "tokens.yaml").write_text("tokens: [unclosed\n")
        still = httpx.get(listing, headers={"Authorization": "Bearer erin-secret"})
        assert still.status_code == 200
    finally:
        stop_service(proc)
    assert proc.poll() is not None


def test_a_token_learns_nothing_about_sites_it_may_not_use(service: Service):
    """Held or not, a site outside the token's grant is the same 403, on every route."""
    smiles = {"name": "smiles", "datatype": "BYTES", "shape": [1], "data": ["CCO"]}
    answers = []
    for site in ("site-b", "no-such-site"):  # the service holds site-b's registry
        oip = _infer(service, {"inputs": [smiles], "parameters": {"site": site}})
        rest = httpx.post(
            f"{service.url}/models/{NAME}/predict?site={site}",
            json={"smiles": ["CCO"]},
            headers=service.headers("alice"),
        )
        answers.append((oip.status_code, oip.json()["error"].replace(site, "S")))
        answers.append((rest.status_code, rest.json()["detail"].replace(site, "S")))
    assert answers[:2] == answers[2:] and {a[0] for a in answers} == {403}


def test_an_upload_reads_as_the_cli_reads(service: Service):
    """One reader: a MOSES-style ``SMILES`` header, ids by line number (1-based) without an id
    column, a ragged line kept as a row with its error, a missing id column named."""
    url = f"{service.url}/models/{NAME}/predict.csv"
    headers = {**service.headers("alice"), "Content-Type": "text/csv"}
    res = httpx.post(
        url,
        content=b"SMILES,SPLIT\nCCO,train\nc1ccccc1O,test,extra\nCCN,test\n",
        headers=headers,
        timeout=60,
    )
    assert res.status_code == 200, res.text
    table = pd.read_csv(io.StringIO(res.text), keep_default_na=False)
    assert table["id"].astype(str).tolist() == ["1", "2", "3"]
    assert table["status"].tolist() == ["ok", "error", "ok"]
    assert "fields" in table["error"][1]
    no_id = httpx.post(f"{url}?id_col=compound", content=b"smiles\nCCO\n", headers=headers)
    assert no_id.status_code == 422 and "no column 'compound'" in no_id.json()["detail"]
    assert "upload.csv" not in no_id.text


def test_an_sd_file_or_a_semicolon_table_comes_back_with_its_own_columns(service: Service):
    from tests.serve.test_batch import SDF

    url = f"{service.url}/models/{NAME}/predict.csv"
    alice = service.headers("alice")
    sdf = httpx.post(url, files={"file": ("in.sdf", SDF.encode())}, headers=alice, timeout=60)
    assert sdf.status_code == 200, sdf.text
    table = pd.read_csv(io.StringIO(sdf.text), keep_default_na=False, dtype=str)
    assert table.columns[:5].tolist() == ["id", "title", "potency", "sdf_smiles", "smiles"]
    assert table["title"].tolist() == ["aspirin", "phenol", "broken"]
    assert table["status"].tolist() == ["error", "ok", "error"]
    assert table["error"][0] == "empty SMILES" and table["error"][2].startswith("SDF record 3")
    assert table["standardized_smiles"][1] == "Oc1ccccc1"
    body = b"Compound;SMILES;batch\nc1;CCO;b7\nc2;CCN;b8\nc1;CCC;b9\n"
    semi = httpx.post(
        f"{url}?id_col=compound",
        content=body,
        headers={**alice, "Content-Type": "text/csv"},
        timeout=60,
    )
    assert semi.status_code == 200 and semi.headers["X-Fedchem-Duplicate-Ids"] == "1"
    table = pd.read_csv(io.StringIO(semi.text), keep_default_na=False, dtype=str)
    assert table[["id", "batch"]].values.tolist() == [["c1", "b7"], ["c2", "b8"], ["c1", "b9"]]
    assert (table["status"] == "ok").all()


def test_a_request_that_runs_too_long_is_stopped_with_its_reason(published: Published):
    """The time limit, in process (a real app on the published registry): checked between
    chunks of molecules, a 413 that says how far it got."""
    from fastapi.testclient import TestClient

    from fedchem.serve.app import ServiceConfig, TokenGrant, create_app

    grant = TokenGrant(name="t", models=["*"])
    quick = ServiceConfig(
        registry=published.registry, key=published.key, tokens={hash_token("t"): grant}
    )
    slow = ServiceConfig(**{**quick.__dict__, "max_seconds": 1e-9, "chunk": 1})
    body = {"smiles": ["CCO", "CCN", "CCC"]}
    auth = {"Authorization": "Bearer t"}
    with TestClient(create_app(quick)) as client:
        assert client.post(f"/models/{NAME}/predict", json=body, headers=auth).status_code == 200
    with TestClient(create_app(slow)) as client:
        res = client.post(f"/models/{NAME}/predict", json=body, headers=auth)
    assert res.status_code == 413
    assert res.json()["detail"].startswith("over 1e-09 s after 1 of 3 molecules")


def test_drawings_and_the_rendered_card(service: Service):
    alice = service.headers("alice")
    res = httpx.post(
        f"{service.url}/depict",
        json={"smiles": ["c1ccccc1O", "not-a-smiles", "C[C@H](N)C(=O)O |$;<script>;;;;$|"]},
        headers=alice,
        timeout=60,
    )
    assert res.status_code == 200
    svg = res.json()["svg"]
    assert svg[0].lstrip().startswith("<?xml") and "<svg" in svg[0] and svg[1] is None
    # CXSMILES extensions (where atom labels live) are not read: the molecule is drawn, and
    # nothing of the text after it
    assert svg[2] is not None and "script" not in svg[2]
    assert httpx.post(f"{service.url}/depict", json={"smiles": ["C"]}).status_code == 401
    # the limits of a prediction request hold for drawings too
    huge = httpx.post(f"{service.url}/depict", json={"smiles": ["C" * 5000]}, headers=alice)
    assert huge.status_code == 422 and "over 1000 characters" in huge.json()["detail"]
    many = httpx.post(f"{service.url}/depict", json={"smiles": ["C" * 600]}, headers=alice)
    assert many.status_code == 422 and "over 500 heavy atoms" in many.json()["detail"]
    card = httpx.get(f"{service.url}/models/{NAME}/card?format=html", headers=alice)
    assert card.status_code == 200 and card.text.startswith(f"<h1>{NAME} v1</h1>")
    assert "<th>what it measures</th>" in card.text
    assert "<td>NR-AR</td><td>androgen receptor agonism" in card.text


def test_a_python_client_in_three_lines(service: Service, published: Published, tmp_path: Path):
    from fedchem.client import Client, ServiceError

    client = Client(service.url, service.tokens["alice"], batch_size=2)
    table = client.predict(NAME, ["CCO", "not-a-smiles", "c1ccccc1O"])
    # sent in two parts, back in order, ids by 1-based position: as the service answers
    direct = Predictor.load(published.registry, NAME, published.key).predict(
        ["CCO", "not-a-smiles", "c1ccccc1O"]
    )
    assert table["id"].tolist() == ["1", "2", "3"] == direct["id"].tolist()
    assert table["status"].tolist() == ["ok", "error", "ok"]
    task = next(c for c in direct.columns if c.endswith("_probability"))
    np.testing.assert_allclose(table[task].astype(float), direct[task], equal_nan=True)
    assert [m["name"] for m in client.models()] == [NAME]
    assert client.card(NAME).startswith(f"# {NAME} v1")
    src = tmp_path / "in.tsv"
    src.write_text("name\tsmiles\tnote\nm1\tCCO\tfirst\n")
    uploaded = client.predict_file(NAME, src, id_col="name")
    assert uploaded[["id", "note", "status"]].values.tolist() == [["m1", "first", "ok"]]
    with pytest.raises(ServiceError, match="may not use model") as refused:
        Client(service.url, service.tokens["bob"]).predict(NAME, ["CCO"])
    assert refused.value.status == 403
    client.close()


def test_tokens_are_added_listed_and_revoked_from_the_command_line(tmp_path: Path, capsys):
    from fedchem.cli import main as cli_main
    from fedchem.cli.serve import read_tokens

    file = tmp_path / "tokens.yaml"
    for who in ("carol", "dave", "carol"):
        assert cli_main(["token", "new", "--file", str(file), "--name", who, "--models", NAME]) == 0
        assert "appended to" in capsys.readouterr().err
    assert sorted(g.name for g in read_tokens(file).values()) == ["carol", "carol", "dave"]
    assert cli_main(["token", "list", "--file", str(file)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [ln.split("\t")[0] for ln in listed] == ["carol", "dave", "carol"]
    assert all("token-of" not in ln and "valid" in ln for ln in listed)
    assert cli_main(["token", "revoke", "--file", str(file), "--name", "carol"]) == 0
    assert [g.name for g in read_tokens(file).values()] == ["dave"]
    assert cli_main(["token", "revoke", "--file", str(file), "--name", "nobody"]) == 2
    assert "holds no token of 'nobody'" in capsys.readouterr().err
    # a file in the old 'tokens:' form is not appended to (the entry would be lost)
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"tokens": [{"name": "x", "token": "a", "models": ["*"]}]}))
    assert cli_main(["token", "new", "--file", str(old), "--name", "y", "--models", "*"]) == 2
    assert "cannot be appended" in capsys.readouterr().err
    assert len(read_tokens(old)) == 1
