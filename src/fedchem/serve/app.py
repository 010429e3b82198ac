"""The prediction service: FastAPI over a registry, Open Inference Protocol v2, a page.

Routes (OpenAPI docs at ``/docs``):

- ``GET /models``, ``GET /models/{name}``: models, versions, aliases; ``GET /models/{name}/card``
  (markdown, ``?format=html`` rendered, ``?format=json``);
- ``POST /models/{name}/predict``: ``{"smiles": [...], "ids": [...], "alpha": 0.1}`` → rows;
  ``POST /models/{name}/predict.csv``: an upload (multipart field ``file``, or the body), a CSV
  with any common delimiter or an SD file → the same CSV as ``fedchem predict``, the input's
  own columns kept (``X-Fedchem-Duplicate-Ids``: how many ids more than one row carries);
  ``?ref=`` picks a version (``production`` by default, ``@candidate``, ``:3``), ``?site=`` a
  site's private heads; ``POST /depict``: SVG drawings of SMILES;
- Open Inference Protocol v2: ``GET /v2/health/live``, ``/v2/health/ready``,
  ``/v2/models/{name}``, ``/v2/models/{name}/ready``, ``POST /v2/models/{name}/infer`` (a
  ``BYTES`` input tensor ``smiles``; one output tensor per column);
- ``GET /``: the page for chemists.

Every route but health needs a bearer token (401 without a valid one); a token names the
models it may use and the sites whose private heads it may ask for (403 otherwise, checked
before anything is loaded). Limits, each a 4xx with its reason: more molecules than
``max_batch`` (413), a body over ``max_body_bytes`` (413, as it streams in), a SMILES over
``max_smiles_length`` characters or ``max_heavy_atoms`` heavy atoms (422, never echoed), a
request still predicting after ``max_seconds`` (413); a malformed request is 422 (400 under
``/v2``); a SMILES that cannot be predicted is a row with its error. Ids are the caller's, or
each row's 1-based position. The audit log records who asked what of which
version by the keyed hash of each SMILES (HMAC with the service's audit key), never the SMILES.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedchem.federation.consistency import ConsistencyError
from fedchem.registry.store import ModelRef, Registry, RegistryError
from fedchem.serve.batch import mark_unread, read_input, with_inputs
from fedchem.serve.depict import depict_svg
from fedchem.serve.markdown import markdown_html
from fedchem.serve.predictor import Predictor

__all__ = ["AuditLog", "ServiceConfig", "TokenGrant", "create_app", "hash_token"]

_log = logging.getLogger("fedchem.serve")


def hash_token(token: str) -> str:
    """How a token is stored: its sha256, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenGrant(BaseModel):
    """What one bearer token may do: its holder's name, its models, its sites' private heads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    models: list[str] = Field(description="model names, or ['*'] for every model")
    sites: list[str] = Field(default_factory=list, description="sites whose private heads")
    expires: datetime | None = Field(None, description="refused after this time (401)")

    def expired(self, now: datetime | None = None) -> bool:
        """Past its ``expires`` (a time without a zone is UTC)."""
        if self.expires is None:
            return False
        at = self.expires if self.expires.tzinfo else self.expires.replace(tzinfo=UTC)
        return at <= (now or datetime.now(UTC))


@dataclass
class ServiceConfig:
    """How the service runs: where the models are, who may ask, how much at once."""

    registry: Registry
    key: bytes
    tokens: Mapping[str, TokenGrant]
    """sha256 of a token -> what it grants"""
    site_registries: Mapping[str, Registry] = field(default_factory=dict)
    max_batch: int = 1000
    max_smiles_length: int = 1000
    """characters in one SMILES at most (a longer one is refused, 422, and never echoed)"""
    max_body_bytes: int = 8 * 1024 * 1024
    """bytes in one request body at most (413); read as it arrives, never buffered past it"""
    max_heavy_atoms: int = 500
    """heavy atoms in one input SMILES at most, salts included (422), counted before any
    chemistry runs; the model's own rule on the parent (``chem.standardize``) still applies"""
    max_seconds: float = 120.0
    """a request's predictions stop once they pass this (413: send fewer molecules)"""
    chunk: int = 250
    """molecules predicted at a time (the time limit is checked between chunks)"""
    audit_path: Path | None = None
    audit_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))


class AuditLog:
    """Who asked what: one JSON line per request, SMILES only as keyed hashes."""

    def __init__(self, path: Path | None, key: bytes) -> None:
        self.path, self.key = path, key
        self._lock = threading.Lock()

    def smiles_hash(self, smiles: str) -> str:
        return hmac.new(self.key, smiles.encode(), hashlib.sha256).hexdigest()[:32]

    def record(
        self,
        who: str,
        model: str,
        version: int,
        smiles: list[str],
        n_errors: int,
        route: str,
        seconds: float,
    ) -> None:
        entry = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "who": who,
            "route": route,
            "model": f"{model}:{version}",
            "n": len(smiles),
            "errors": n_errors,
            "seconds": round(seconds, 4),
            "smiles_hmac": [self.smiles_hash(s) for s in smiles],
        }
        line = json.dumps(entry, sort_keys=True)
        _log.info("audit %s %s:%d n=%d", who, model, version, len(smiles))
        if self.path is not None:
            with self._lock, open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")


class PredictRequest(BaseModel):
    """A batch to predict: SMILES, optional ids (same length), optional conformal alpha."""

    model_config = ConfigDict(extra="forbid")

    smiles: list[str] = Field(min_length=1)
    ids: list[str] | None = None
    alpha: float | None = Field(None, gt=0, lt=1)


class DepictRequest(BaseModel):
    """Molecules to draw."""

    model_config = ConfigDict(extra="forbid")

    smiles: list[str] = Field(min_length=1)
    width: int = Field(220, ge=50, le=1000)
    height: int = Field(160, ge=50, le=1000)


class InferTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None
    """``binary_data_size``: the tensor's bytes follow the JSON (the binary extension)"""


class InferRequest(BaseModel):
    """Open Inference Protocol v2 request (the ``smiles`` input; ``ids`` optional)."""

    id: str | None = None
    inputs: list[InferTensor] = Field(min_length=1)
    outputs: list[dict[str, Any]] | None = None
    """the output tensors wanted, by name (all when absent)"""
    parameters: dict[str, Any] | None = None


def _error_key(path: str) -> str:
    """Open Inference Protocol v2 errors are ``{"error": ...}``; the rest FastAPI's
    ``{"detail": ...}``."""
    return "error" if path.startswith("/v2/") else "detail"


def _first_error(errors: Sequence[Any]) -> str:
    """A validation failure as one line: where, and what (the first of them)."""
    first = errors[0] if errors else {}
    where = ".".join(str(x) for x in first.get("loc", ())) or "body"
    return f"{where}: {first.get('msg', 'invalid')}"


class BodyLimit:
    """ASGI middleware: a request whose body passes ``limit`` bytes is answered 413 as soon as
    it does (by its ``Content-Length``, or while it streams in), before any handler reads it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(scope, send, self.limit)
            return
        seen = 0
        started = False

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge(self.limit)
            return message

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _BodyTooLarge:
            if not started:
                await _too_large(scope, send, self.limit)


class _BodyTooLarge(HTTPException):
    """Raised while the body streams in; an HTTPException so that FastAPI's body parsing
    passes it on (it answers 400 to any other error) and the handlers answer 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over {limit} bytes")


async def _too_large(scope: Any, send: Any, limit: int) -> None:
    detail = f"the request body is over {limit} bytes"
    body = json.dumps({_error_key(str(scope.get("path", ""))): detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _version() -> str:
    from importlib.metadata import version

    return version("fedchem")


def _bytes_elements(blob: bytes, name: str) -> list[str]:
    out, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise HTTPException(400, f"input {name!r}: a truncated BYTES element")
        n = int.from_bytes(blob[at : at + 4], "little")
        if at + 4 + n > len(blob):
            raise HTTPException(400, f"input {name!r}: a truncated BYTES element")
        try:
            out.append(blob[at + 4 : at + 4 + n].decode())
        except UnicodeDecodeError as exc:
            raise HTTPException(400, f"input {name!r}: an element is not UTF-8") from exc
        at += 4 + n
    return out


def _infer_request(raw: bytes, headers: Mapping[str, str]) -> InferRequest:
    """An OIP v2 inference request from its body: JSON, or a JSON header and binary tensors."""
    size = headers.get("inference-header-content-length")
    if size is not None and (not size.isdigit() or int(size) > len(raw)):
        raise HTTPException(400, f"Inference-Header-Content-Length {size!r} does not fit the body")
    head, rest = (raw[: int(size)], raw[int(size) :]) if size else (raw, b"")
    try:
        body = InferRequest.model_validate_json(head)
    except ValidationError as exc:
        raise HTTPException(400, _first_error(exc.errors())) from exc
    inputs = []
    for t in body.inputs:
        binary = (t.parameters or {}).get("binary_data_size")
        if binary is None:
            inputs.append(t)
            continue
        if t.datatype != "BYTES":
            raise HTTPException(400, f"input {t.name!r}: binary data is read for BYTES only")
        if not isinstance(binary, int) or binary < 0 or binary > len(rest):
            raise HTTPException(400, f"input {t.name!r}: binary_data_size {binary!r} too large")
        inputs.append(t.model_copy(update={"data": _bytes_elements(rest[:binary], t.name)}))
        rest = rest[binary:]
    return body.model_copy(update={"inputs": inputs})


_bearer = HTTPBearer(auto_error=False)


def _grant(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> TokenGrant:
    """The grant of the request's bearer token (401 without a known one)."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(401, "a bearer token is needed", {"WWW-Authenticate": "Bearer"})
    found = request.app.state.config.tokens.get(hash_token(creds.credentials))
    if found is None:
        raise HTTPException(401, "unknown token", {"WWW-Authenticate": "Bearer"})
    if found.expired():
        raise HTTPException(401, "this token has expired", {"WWW-Authenticate": "Bearer"})
    return found


Grant = Annotated[TokenGrant, Depends(_grant)]


def _some(positions: list[int]) -> str:
    return f"{positions[:10]}{' ...' if len(positions) > 10 else ''}"


def _heavy_atoms(smiles: str) -> int:
    """Heavy atoms of a SMILES as written (unsanitized: cheap, before any chemistry); 0 when
    it does not parse (the predictor then says why)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]
    mol = Chem.MolFromSmiles(smiles, sanitize=False) if smiles else None
    return 0 if mol is None else int(mol.GetNumHeavyAtoms())


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-able dicts: NaN as null."""
    return json.loads(df.to_json(orient="records"))


class _Models:
    """Loaded predictors by (name, version, site), loaded once and kept."""

    def __init__(self, cfg: ServiceConfig) -> None:
        self.cfg = cfg
        self._cache: dict[tuple[str, int, str | None], Predictor] = {}
        self._lock = threading.Lock()

    def get(self, ref: ModelRef, site: str | None) -> Predictor:
        name, version = self.cfg.registry.resolve(ref)
        key = (name, version, site)
        with self._lock:
            if key not in self._cache:
                site_reg = None
                if site is not None:
                    if site not in self.cfg.site_registries:
                        raise RegistryError(f"this service holds no registry of site {site!r}")
                    site_reg = self.cfg.site_registries[site]
                self._cache[key] = Predictor.load(
                    self.cfg.registry, f"{name}:{version}", self.cfg.key, site_reg
                )
            return self._cache[key]

    def problems(self) -> dict[str, str] | None:
        """Why a served model cannot be served (empty: all can); None: none to serve. Models
        already loaded are not loaded again."""
        served = [
            n for n in self.cfg.registry.models() if "production" in self.cfg.registry.aliases(n)
        ]
        if not served:
            return None
        out = {}
        for name in served:
            try:
                self.get(ModelRef.parse(f"{name}@production"), None)
            except (RegistryError, ConsistencyError, OSError, ValueError) as exc:
                out[name] = str(exc)
        return out


def create_app(cfg: ServiceConfig) -> FastAPI:
    """The service over ``cfg`` (see the module docstring)."""
    app = FastAPI(
        title="fedchem prediction service",
        description="Federated models of molecular properties: predictions with conformal "
        "sets or intervals and an applicability-domain flag. Open Inference Protocol v2 "
        "under /v2.",
        version="1",
    )
    app.state.config = cfg
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {_error_key(request.url.path): exc.detail}, exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.url.path.startswith("/v2/"):
            return JSONResponse({"error": _first_error(exc.errors())}, 400)
        return JSONResponse({"detail": jsonable_encoder(exc.errors())}, 422)

    models = _Models(cfg)
    audit = AuditLog(cfg.audit_path, cfg.audit_key)

    def allowed(g: TokenGrant, name: str, site: str | None = None) -> None:
        if "*" not in g.models and name not in g.models:
            raise HTTPException(403, f"token {g.name!r} may not use model {name!r}")
        if site is not None and site not in g.sites:
            raise HTTPException(403, f"token {g.name!r} may not use site {site!r}'s private heads")

    def predictor(name: str, ref: str | None, site: str | None) -> Predictor:
        try:
            return models.get(ModelRef.parse(f"{name}{ref or '@production'}"), site)
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from exc
        except ConsistencyError as exc:  # the service's set-up, not the caller: say so
            raise HTTPException(503, f"this service cannot serve {name}: {exc}") from exc

    def check_molecules(smiles: list[str]) -> None:
        """The limits on what one request may ask (413, 422), before any chemistry runs: a
        SMILES too long is never parsed, and only one at least ``max_heavy_atoms`` characters
        long can hold more heavy atoms than that (each takes a character at least)."""
        if len(smiles) > cfg.max_batch:
            raise HTTPException(413, f"{len(smiles)} molecules; at most {cfg.max_batch} a request")
        long = [i + 1 for i, s in enumerate(smiles) if len(s) > cfg.max_smiles_length]
        if long:
            raise HTTPException(
                422,
                f"SMILES at positions {_some(long)} (1-based) are over "
                f"{cfg.max_smiles_length} characters",
            )
        heavy = [
            i + 1
            for i, s in enumerate(smiles)
            if len(s) > cfg.max_heavy_atoms and _heavy_atoms(s) > cfg.max_heavy_atoms
        ]
        if heavy:
            raise HTTPException(
                422,
                f"SMILES at positions {_some(heavy)} (1-based) have over "
                f"{cfg.max_heavy_atoms} heavy atoms",
            )

    def run(
        p: Predictor,
        who: str,
        smiles: list[str],
        ids: list[str] | None,
        alpha: float | None,
        route: str,
    ) -> pd.DataFrame:
        check_molecules(smiles)
        if ids is not None and len(ids) != len(smiles):
            raise HTTPException(422, f"{len(ids)} ids for {len(smiles)} SMILES")
        ids = ids if ids is not None else [str(i + 1) for i in range(len(smiles))]
        start = time.perf_counter()
        parts = []
        for at in range(0, max(len(smiles), 1), cfg.chunk):
            if at and time.perf_counter() - start > cfg.max_seconds:
                raise HTTPException(
                    413,
                    f"over {cfg.max_seconds:g} s after {at} of {len(smiles)} molecules; "
                    "send fewer molecules a request",
                )
            parts.append(p.predict(smiles[at : at + cfg.chunk], ids[at : at + cfg.chunk], alpha))
        table = pd.concat(parts, ignore_index=True)
        n_err = int((table["status"] != "ok").sum())
        audit.record(who, p.name, p.version, smiles, n_err, route, time.perf_counter() - start)
        return table

    @app.get("/v2/health/live", tags=["health"])
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"], response_model=None)
    def ready() -> dict[str, Any] | JSONResponse:
        """Ready only when every served model (each with a ``production`` alias) loads and
        featurizes its reference set with this service's key as training did; 503 with the
        reasons otherwise (a wrong key, a broken registry)."""
        problems = models.problems()
        if problems is None:
            return JSONResponse({"ready": False, "error": "no model to serve"}, status_code=503)
        if problems:
            return JSONResponse({"ready": False, "error": problems}, status_code=503)
        return {"ready": True}

    @app.get("/models", tags=["registry"])
    def list_models(g: Grant) -> list[dict[str, Any]]:
        out = []
        for name in cfg.registry.models():
            if "*" in g.models or name in g.models:
                out.append(
                    {
                        "name": name,
                        "versions": cfg.registry.versions(name),
                        "aliases": cfg.registry.aliases(name),
                    }
                )
        return out

    @app.get("/models/{name}", tags=["registry"])
    def show_model(name: str, g: Grant, ref: str | None = None) -> dict[str, Any]:
        allowed(g, name)
        p = predictor(name, ref, None)
        return {
            **p.describe(),
            "versions": cfg.registry.versions(name),
            "aliases": cfg.registry.aliases(name),
        }

    @app.get("/models/{name}/card", tags=["registry"], response_model=None)
    def card(name: str, g: Grant, ref: str | None = None, format: str = "md") -> Response:
        allowed(g, name)
        try:
            n, v = cfg.registry.resolve(ModelRef.parse(f"{name}{ref or '@production'}"))
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from exc
        if format == "json":
            return JSONResponse(cfg.registry.read_json(n, v, "card.json"))
        text = cfg.registry.read(n, v, "card.md").decode()
        if format == "html":
            return HTMLResponse(markdown_html(text))
        return PlainTextResponse(text, media_type="text/markdown")

    @app.post("/models/{name}/predict", tags=["predict"])
    def predict_json(
        name: str,
        body: PredictRequest,
        g: Grant,
        ref: str | None = None,
        site: str | None = None,
    ) -> dict[str, Any]:
        allowed(g, name, site)
        p = predictor(name, ref, site)
        table = run(p, g.name, body.smiles, body.ids, body.alpha, "predict")
        return {"model": p.name, "version": p.version, "site": p.site, "rows": _records(table)}

    @app.post("/models/{name}/predict.csv", tags=["predict"], response_class=PlainTextResponse)
    async def predict_csv(
        name: str,
        request: Request,
        g: Grant,
        ref: str | None = None,
        site: str | None = None,
        smiles_col: str = "smiles",
        id_col: str | None = None,
        alpha: Annotated[float | None, Query(gt=0, lt=1)] = None,
        file: Annotated[UploadFile | None, File()] = None,
    ) -> PlainTextResponse:
        allowed(g, name, site)
        raw = await file.read() if file is not None else await request.body()
        try:  # the CLI's reader: one set of rules
            rows = read_input(io.BytesIO(raw), smiles_col, id_col, "the upload")
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPException(422, str(exc)) from exc
        p = await run_in_threadpool(predictor, name, ref, site)
        table = await run_in_threadpool(run, p, g.name, rows.smiles, rows.ids, alpha, "predict.csv")
        mark_unread(table, rows.errors)
        table = with_inputs(table, rows.extra)
        twice = rows.duplicate_ids()
        headers = {"X-Fedchem-Rows": str(len(table))}
        if twice:
            headers["X-Fedchem-Duplicate-Ids"] = str(len(twice))
        return PlainTextResponse(table.to_csv(index=False), media_type="text/csv", headers=headers)

    @app.post("/depict", tags=["predict"])
    def depict(body: DepictRequest, g: Grant) -> dict[str, list[str | None]]:
        """SVG drawings (RDKit's) of SMILES, for a page or a report: one per input, ``null``
        for one RDKit cannot read. Any valid token; the limits of a prediction request."""
        check_molecules(body.smiles)
        return {"svg": [depict_svg(s, body.width, body.height) for s in body.smiles]}

    columns_of: dict[tuple[str, int, str | None], list[dict[str, Any]]] = {}

    def output_columns(p: Predictor) -> list[dict[str, Any]]:
        """Every output tensor ``infer`` returns, with its datatype: read off a prediction of
        methane (the table's columns do not depend on the molecules)."""
        key = (p.name, p.version, p.site)
        if key not in columns_of:
            table = p.predict(["C"], None, None)
            columns_of[key] = [
                {
                    "name": col,
                    "datatype": "FP64" if pd.api.types.is_numeric_dtype(table[col]) else "BYTES",
                    "shape": [-1],
                }
                for col in table.columns
            ]
        return columns_of[key]

    def oip_ref(version: str | None) -> str | None:
        if version is None:
            return None
        if not version.isdigit():
            raise HTTPException(400, f"version {version!r}: a version is a number")
        return f":{version}"

    @app.get("/v2/models/{name}", tags=["open inference protocol v2"])
    @app.get("/v2/models/{name}/versions/{version}", tags=["open inference protocol v2"])
    def oip_metadata(name: str, g: Grant, version: str | None = None) -> dict[str, Any]:
        allowed(g, name)
        p = predictor(name, oip_ref(version), None)
        return {
            "name": name,
            "versions": [str(v) for v in cfg.registry.versions(name)],
            "platform": "fedchem",
            "inputs": [{"name": "smiles", "datatype": "BYTES", "shape": [-1]}],
            "outputs": output_columns(p),
        }

    @app.get("/v2/models/{name}/ready", tags=["open inference protocol v2"])
    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["open inference protocol v2"])
    def oip_ready(name: str, g: Grant, version: str | None = None) -> dict[str, Any]:
        allowed(g, name)
        predictor(name, oip_ref(version), None)
        return {"name": name, "ready": True}

    @app.get("/v2", tags=["open inference protocol v2"])
    def oip_server() -> dict[str, Any]:
        return {"name": "fedchem", "version": _version(), "extensions": ["binary_tensor_data"]}

    @app.post("/v2/models/{name}/infer", tags=["open inference protocol v2"])
    @app.post("/v2/models/{name}/versions/{version}/infer", tags=["open inference protocol v2"])
    async def oip_infer(
        name: str, request: Request, g: Grant, version: str | None = None
    ) -> dict[str, Any]:
        """JSON (whatever the Content-Type says: stock clients send none) or the binary tensor
        extension (``Inference-Header-Content-Length``: BYTES elements as 4-byte little-endian
        lengths and bytes after the JSON header); answered in JSON."""
        allowed(g, name)
        body = _infer_request(await request.body(), request.headers)
        return await run_in_threadpool(infer_sync, name, body, g, version)

    def infer_sync(
        name: str, body: InferRequest, g: Grant, version: str | None = None
    ) -> dict[str, Any]:
        by_name = {t.name: t for t in body.inputs}
        if "smiles" not in by_name or by_name["smiles"].datatype != "BYTES":
            raise HTTPException(400, "an input tensor named 'smiles' of datatype BYTES is needed")
        for t in body.inputs:
            if t.data is None:
                raise HTTPException(400, f"input {t.name!r} has no data")
            if int(np.prod(t.shape)) != len(t.data):
                raise HTTPException(
                    400, f"input {t.name!r}: shape {t.shape} but {len(t.data)} elements"
                )
        smiles = [str(s) for s in by_name["smiles"].data or []]
        ids = [str(i) for i in by_name["ids"].data or []] if "ids" in by_name else None
        params = body.parameters or {}
        alpha = params.get("alpha")
        if alpha is not None and (
            isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1
        ):
            raise HTTPException(400, f"parameters.alpha {alpha!r}: a number between 0 and 1")
        site = params.get("site")
        if site is not None:
            allowed(g, name, site)
        ref = oip_ref(version) or params.get("ref")
        p = predictor(name, ref, site)
        known = [c["name"] for c in output_columns(p)]
        wanted = [o.get("name") for o in body.outputs] if body.outputs else known
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise HTTPException(400, f"unknown outputs {unknown}; this model has {known}")
        table = run(p, g.name, smiles, ids, alpha, "v2/infer")
        outputs = []
        for col in wanted:
            values = table[col]
            numeric = pd.api.types.is_numeric_dtype(values)
            data = [None if (numeric and not np.isfinite(v)) else v for v in values.tolist()]
            outputs.append(
                {
                    "name": col,
                    "datatype": "FP64" if numeric else "BYTES",
                    "shape": [len(table)],
                    "data": data,
                }
            )
        return {
            "model_name": name,
            "model_version": str(p.version),
            "id": body.id,
            "outputs": outputs,
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files("fedchem.serve").joinpath("page.html").read_text())

    return app
