"""Hub storage over fsspec, and the one place that knows the hub's layout.

Layout (all under the hub URL)::

    runs/<run_id>/rounds/<NNNN>/global.npz              global model after round NNNN (0 = init)
    runs/<run_id>/rounds/<NNNN>/server_state.npz        strategy state (e.g. server momentum)
    runs/<run_id>/rounds/<NNNN>/manifest.json           round manifest; written last = committed
    runs/<run_id>/rounds/<NNNN>/sites/<site>/update.npz one site's update for round NNNN
    runs/<run_id>/rounds/<NNNN>/sites/<site>/manifest.json
    runs/<run_id>/baselines/<site>/model.npz            a site's local-only model, opt-in, for
    runs/<run_id>/baselines/<site>/manifest.json        the cross-site evaluation (shared heads)
    runs/<run_id>/best.json                             the best round by the sites' validation
    sites/<site>/prepared.json                          the site's preparation report (counts)

Objects are written whole: on a local directory through a temporary name and a rename, on S3
by a single PUT. Nothing but models and manifests ever lands here.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["HubLayout", "HubStore"]


@dataclass(frozen=True)
class HubLayout:
    run_id: str

    def round_dir(self, rnd: int) -> str:
        return f"runs/{self.run_id}/rounds/{rnd:04d}"

    def global_model(self, rnd: int) -> str:
        return f"{self.round_dir(rnd)}/global.npz"

    def server_state(self, rnd: int) -> str:
        return f"{self.round_dir(rnd)}/server_state.npz"

    def round_manifest(self, rnd: int) -> str:
        return f"{self.round_dir(rnd)}/manifest.json"

    def site_update(self, rnd: int, site: str) -> str:
        return f"{self.round_dir(rnd)}/sites/{site}/update.npz"

    def site_manifest(self, rnd: int, site: str) -> str:
        return f"{self.round_dir(rnd)}/sites/{site}/manifest.json"

    def baseline_model(self, site: str) -> str:
        return f"runs/{self.run_id}/baselines/{site}/model.npz"

    def baseline_manifest(self, site: str) -> str:
        return f"runs/{self.run_id}/baselines/{site}/manifest.json"

    @staticmethod
    def site_prepared(site: str) -> str:
        return f"sites/{site}/prepared.json"


class HubStore:
    """Bytes and JSON under a root URL. ``storage_options`` go to fsspec (e.g. an S3 endpoint)."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        self._local = isinstance(self.fs, LocalFileSystem)

    def _path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def put_bytes(self, rel: str, data: bytes) -> None:
        path = self._path(rel)
        if self._local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def get_bytes(self, rel: str) -> bytes:
        return bytes(self.fs.cat_file(self._path(rel)))

    def get_verified(self, rel: str, sha256: str, what: str) -> bytes:
        """``rel``'s bytes, refused unless they hash to ``sha256`` (the manifest's word)."""
        data = self.get_bytes(rel)
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise ValueError(
                f"{what} at {rel} does not match its manifest "
                f"(sha256 {digest[:12]} != {sha256[:12]}): refusing it"
            )
        return data

    def put_json(self, rel: str, obj: Any) -> None:
        self.put_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8"))

    def get_json(self, rel: str) -> Any:
        return json.loads(self.get_bytes(rel))

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self._path(rel)))

    def list_files(self, rel: str = "") -> list[str]:
        """Every file under ``rel``, as paths relative to the hub root."""
        base = self._path(rel).rstrip("/")
        if not self.fs.exists(base):
            return []
        root = self.root.rstrip("/") + "/"
        return sorted(p[len(root) :] if p.startswith(root) else p for p in self.fs.find(base))
