"""The prediction service: FastAPI over a registry, Open Inference Protocol v2, a page.

Routes (OpenAPI docs at ``/docs``):

- ``GET /models``, ``GET /models/{name}``: models, versions, aliases; ``GET /models/{name}/card``
  (markdown, or JSON with ``?format=json``);
- ``POST /models/{name}/predict``: ``{"smiles": [...], "ids": [...], "alpha": 0.1}`` → rows;
  ``POST /models/{name}/predict.csv``: a CSV upload (multipart field ``file``, or the body as
  ``text/csv``) → the same CSV as ``fedchem predict``; ``?ref=`` picks a version
  (``production`` by default, ``@candidate``, ``:3``), ``?site=`` a site's private heads;
- Open Inference Protocol v2: ``GET /v2/health/live``, ``/v2/health/ready``,
  ``/v2/models/{name}``, ``/v2/models/{name}/ready``, ``POST /v2/models/{name}/infer`` (a
  ``BYTES`` input tensor ``smiles``; one output tensor per column);
- ``GET /``: the page for chemists.

Every route but health needs a bearer token (401 without a valid one); a token names the
models it may use and the sites whose private heads it may ask for (403 otherwise). A request
with more molecules than ``max_batch`` is refused (413), a malformed one is 422, a SMILES that
cannot be predicted is a row with its error. The audit log records who asked what of which
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from fedchem.registry.store import ModelRef, Registry, RegistryError
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


@dataclass
class ServiceConfig:
    """How the service runs: where the models are, who may ask, how much at once."""

    registry: Registry
    key: bytes
    tokens: Mapping[str, TokenGrant]
    """sha256 of a token -> what it grants"""
    site_registries: Mapping[str, Registry] = field(default_factory=dict)
    max_batch: int = 1000
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


class InferTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


class InferRequest(BaseModel):
    """Open Inference Protocol v2 request (the ``smiles`` input; ``ids`` optional)."""

    id: str | None = None
    inputs: list[InferTensor] = Field(min_length=1)
    parameters: dict[str, Any] | None = None


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
    return found


Grant = Annotated[TokenGrant, Depends(_grant)]


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

    def run(
        p: Predictor,
        who: str,
        smiles: list[str],
        ids: list[str] | None,
        alpha: float | None,
        route: str,
    ) -> pd.DataFrame:
        if len(smiles) > cfg.max_batch:
            raise HTTPException(413, f"{len(smiles)} molecules; at most {cfg.max_batch} a request")
        if ids is not None and len(ids) != len(smiles):
            raise HTTPException(422, f"{len(ids)} ids for {len(smiles)} SMILES")
        start = time.perf_counter()
        table = p.predict(smiles, ids, alpha)
        n_err = int((table["status"] != "ok").sum())
        audit.record(who, p.name, p.version, smiles, n_err, route, time.perf_counter() - start)
        return table

    @app.get("/v2/health/live", tags=["health"])
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"])
    def ready() -> dict[str, bool]:
        return {"ready": bool(cfg.registry.models())}

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
        return PlainTextResponse(
            cfg.registry.read(n, v, "card.md").decode(), media_type="text/markdown"
        )

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
        try:
            frame = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise HTTPException(422, f"not a CSV: {exc}") from exc
        if smiles_col not in frame.columns:
            raise HTTPException(422, f"no column {smiles_col!r} (columns: {list(frame.columns)})")
        ids = frame[id_col].tolist() if id_col and id_col in frame.columns else None
        p = predictor(name, ref, site)
        table = run(p, g.name, frame[smiles_col].tolist(), ids, alpha, "predict.csv")
        return PlainTextResponse(table.to_csv(index=False), media_type="text/csv")

    @app.get("/v2/models/{name}", tags=["open inference protocol v2"])
    def oip_metadata(name: str, g: Grant) -> dict[str, Any]:
        allowed(g, name)
        p = predictor(name, None, None)
        outputs = []
        for t in p.spec.tasks:
            if t.name in p.tasks:
                outputs.append({"name": t.name, "datatype": "FP64", "shape": [-1]})
        return {
            "name": name,
            "versions": [str(v) for v in cfg.registry.versions(name)],
            "platform": "fedchem",
            "inputs": [{"name": "smiles", "datatype": "BYTES", "shape": [-1]}],
            "outputs": outputs,
        }

    @app.get("/v2/models/{name}/ready", tags=["open inference protocol v2"])
    def oip_ready(name: str, g: Grant) -> dict[str, Any]:
        allowed(g, name)
        predictor(name, None, None)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer", tags=["open inference protocol v2"])
    def oip_infer(name: str, body: InferRequest, g: Grant) -> dict[str, Any]:
        allowed(g, name)
        by_name = {t.name: t for t in body.inputs}
        if "smiles" not in by_name or by_name["smiles"].datatype != "BYTES":
            raise HTTPException(422, "an input tensor named 'smiles' of datatype BYTES is needed")
        smiles = [str(s) for s in by_name["smiles"].data]
        ids = [str(i) for i in by_name["ids"].data] if "ids" in by_name else None
        params = body.parameters or {}
        p = predictor(name, params.get("ref"), params.get("site"))
        if params.get("site") is not None:
            allowed(g, name, params["site"])
        table = run(p, g.name, smiles, ids, params.get("alpha"), "v2/infer")
        outputs = []
        for col in table.columns:
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
