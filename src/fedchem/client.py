"""A Python client of the prediction service, for notebooks and pipeline tools::

    from fedchem.client import Client

    service = Client("http://127.0.0.1:8000", token="...")
    table = service.predict("tox21", ["CCO", "c1ccccc1O"])  # a pandas DataFrame

Batches larger than the service takes are sent in parts and put back together in order; a
refusal is a :class:`ServiceError` with the service's status code and reason. The service
speaks the Open Inference Protocol v2 too (``/v2``), for clients that already do.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

__all__ = ["Client", "ServiceError"]


class ServiceError(RuntimeError):
    """The service refused a request: its HTTP status and its reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status, self.reason = status, reason


class Client:
    """The service at ``url`` with bearer ``token`` (see the module docstring)."""

    def __init__(
        self, url: str, token: str, timeout: float = 120.0, batch_size: int = 1000
    ) -> None:
        self.batch_size = batch_size
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        res = self._http.request(method, path, **kwargs)
        if res.status_code >= 400:
            try:
                body = res.json()
                reason = body.get("detail", body.get("error", res.text))
            except ValueError:
                reason = res.text
            raise ServiceError(res.status_code, str(reason))
        return res

    def models(self) -> list[dict[str, Any]]:
        """The models this token may use: name, versions, aliases."""
        return list(self._call("GET", "/models").json())

    def describe(self, model: str, ref: str | None = None) -> dict[str, Any]:
        """A model version's tasks (with what they measure) and outputs."""
        params = {"ref": ref} if ref else {}
        return dict(self._call("GET", f"/models/{model}", params=params).json())

    def card(self, model: str, ref: str | None = None) -> str:
        """The model card (markdown)."""
        params = {"ref": ref} if ref else {}
        return self._call("GET", f"/models/{model}/card", params=params).text

    def predict(
        self,
        model: str,
        smiles: Sequence[str],
        ids: Sequence[str] | None = None,
        alpha: float | None = None,
        ref: str | None = None,
        site: str | None = None,
    ) -> pd.DataFrame:
        """One row per SMILES, in order (ids: yours, or each SMILES' 1-based position)."""
        ids = [str(i) for i in ids] if ids is not None else [str(i + 1) for i in range(len(smiles))]
        if len(ids) != len(smiles):
            raise ValueError(f"{len(ids)} ids for {len(smiles)} SMILES")
        params = {k: v for k, v in {"ref": ref, "site": site}.items() if v is not None}
        parts = []
        for at in range(0, len(smiles), self.batch_size):
            body: dict[str, Any] = {
                "smiles": list(smiles[at : at + self.batch_size]),
                "ids": ids[at : at + self.batch_size],
            }
            if alpha is not None:
                body["alpha"] = alpha
            res = self._call("POST", f"/models/{model}/predict", json=body, params=params)
            parts.append(pd.DataFrame(res.json()["rows"]))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def predict_file(
        self,
        model: str,
        path: Path | str,
        smiles_col: str = "smiles",
        id_col: str | None = None,
        alpha: float | None = None,
        ref: str | None = None,
    ) -> pd.DataFrame:
        """A CSV (any common delimiter) or SD file, predicted as ``fedchem predict`` would:
        its own columns kept beside the predictions."""
        params: dict[str, Any] = {"smiles_col": smiles_col}
        params.update(
            {k: v for k, v in {"id_col": id_col, "alpha": alpha, "ref": ref}.items() if v}
        )
        with open(path, "rb") as fh:
            res = self._call(
                "POST",
                f"/models/{model}/predict.csv",
                params=params,
                files={"file": (Path(path).name, fh)},
            )
        return pd.read_csv(io.StringIO(res.text), dtype={"id": str}, keep_default_na=False)
