"""Hub storage over fsspec, and the one place that knows the hub's layout.

Layout (all under the hub URL)::

    runs/<run_id>/rounds/<NNNN>/global.npz              global model after round NNNN (0 = init)
    runs/<run_id>/rounds/<NNNN>/server_state.npz        strategy state (e.g. server momentum)
    runs/<run_id>/rounds/<NNNN>/manifest.json           round manifest; written last = committed
    runs/<run_id>/rounds/<NNNN>/sites/<site>/update.npz one site's update for round NNNN
    runs/<run_id>/rounds/<NNNN>/sites/<site>/update.json   its manifest (the reply)
    runs/<run_id>/rounds/<NNNN>/sites/<site>/refusal.json  the site's policy said no (clause)
    runs/<run_id>/baselines/<site>/model.npz            a site's local-only model, opt-in, for
    runs/<run_id>/baselines/<site>/manifest.json        the cross-site evaluation (shared heads)
    runs/<run_id>/best.json                             the best round by the sites' validation
    runs/<run_id>/domain/support.json                   the sites' supported feature columns
    runs/<run_id>/calibration/<site>.json               a site's calibration, binned counts
    sites/<site>/prepared.json                          the site's preparation report (counts)
    ledger/<run_id or _site>/<actor>/<seq>.json         each party's signed audit chain
    private/<site>/...                                  a site's own area (e.g. its registry
                                                        part); no one else reads it

Objects are written whole: on a local directory through a temporary name and a rename, on S3
by a single PUT. Nothing but models and manifests ever lands here.

Transient storage errors (connection refused or reset, timeouts, HTTP 5xx) are retried with
exponential backoff by one layer, tenacity's (:class:`RetryPolicy`; botocore and s3fs do not
retry on their own); a missing object, a denied request or a hash mismatch is not transient
and is raised at once.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import fsspec
import tenacity
from fsspec.implementations.local import LocalFileSystem

__all__ = [
    "HubLayout",
    "HubStore",
    "IntegrityError",
    "RetryPolicy",
    "is_transient",
    "json_bytes",
]

_log = logging.getLogger("fedchem.hub")
_T = TypeVar("_T")
#: bytes read at a time by :meth:`HubStore.get_verified_file`
_CHUNK = 1 << 20

#: errors of the S3 stack (botocore, aiohttp) that mean "try again", by class name
_TRANSIENT_NAMES = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ServerDisconnectedError",
        "ClientConnectorError",
        "ClientOSError",
        "ClientPayloadError",
        "ResponseStreamingError",
        "IncompleteReadError",
    }
)
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.EAGAIN,
        errno.EBUSY,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    }
)
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class IntegrityError(ValueError):
    """Bytes on the hub that do not hash to what their manifest says (altered or truncated)."""


def _check_digest(digest: str, sha256: str, what: str, rel: str) -> None:
    if digest != sha256:
        raise IntegrityError(
            f"{what} at {rel} does not match its manifest "
            f"(sha256 {digest[:12]} != {sha256[:12]}): refusing it"
        )


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is worth retrying."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, _PERMANENT):
            return False
        if isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in _TRANSIENT_NAMES:
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        status = _http_status(e)
        if status is not None:
            return status >= 500 or status == 429
        e = e.__cause__ or e.__context__
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """How the hub retries a transient error: tenacity's exponential backoff with jitter,
    ``initial_s`` doubling up to ``max_s``, ``attempts`` in all. The only retry layer: s3fs and
    botocore are told not to retry on their own, so one failure is one logged retry here."""

    attempts: int = 6
    initial_s: float = 0.5
    max_s: float = 8.0

    def call(self, fn: Callable[[], _T], what: str) -> _T:
        def log(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            pause = state.next_action.sleep if state.next_action is not None else 0.0
            _log.warning(
                "hub: %s failed (%s), retry %d/%d in %.1fs",
                what,
                type(exc).__name__,
                state.attempt_number,
                self.attempts - 1,
                pause,
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential_jitter(multiplier=self.initial_s, max=self.max_s),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=log,
            reraise=True,
        )
        return retrying(fn)


def json_bytes(obj: Any) -> bytes:
    """The hub's JSON encoding of ``obj``: sorted keys, indented, UTF-8."""
    return json.dumps(obj, indent=2, sort_keys=True).encode("utf-8")


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

    def round_open(self, rnd: int) -> str:
        """The coordinator's go for round ``rnd`` (fedchem.federation.rounds)."""
        return f"{self.round_dir(rnd)}/open.json"

    def site_update(self, rnd: int, site: str) -> str:
        return f"{self.round_dir(rnd)}/sites/{site}/update.npz"

    def site_manifest(self, rnd: int, site: str) -> str:
        """A site's reply: its update's manifest (not ``manifest.json``: that name is the
        coordinator's commit, which hub permissions let every site read)."""
        return f"{self.round_dir(rnd)}/sites/{site}/update.json"

    def site_refusal(self, rnd: int, site: str) -> str:
        """A site's refusal of round ``rnd``: the clause of its policy (SiteRefusal)."""
        return f"{self.round_dir(rnd)}/sites/{site}/refusal.json"

    def secagg(self, rnd: int, name: str) -> str:
        """The coordinator's secure-aggregation objects of round ``rnd`` (roster, cohort,
        survivors, consistent)."""
        return f"{self.round_dir(rnd)}/secagg/{name}.json"

    def site_secagg(self, rnd: int, site: str, step: str) -> str:
        """A site's secure-aggregation message of round ``rnd`` (keys, shares, check,
        reveal): in the site's own area, like its update."""
        return f"{self.round_dir(rnd)}/sites/{site}/secagg-{step}.json"

    def best(self) -> str:
        return f"runs/{self.run_id}/best.json"

    def domain_support(self) -> str:
        """The union of the sites' supported feature columns (the applicability domain)."""
        return f"runs/{self.run_id}/domain/support.json"

    def site_calibration(self, site: str) -> str:
        """A site's calibration of the run's published model, as counts (SiteCalibration)."""
        return f"runs/{self.run_id}/calibration/{site}.json"

    def baseline_model(self, site: str) -> str:
        return f"runs/{self.run_id}/baselines/{site}/model.npz"

    def baseline_manifest(self, site: str) -> str:
        return f"runs/{self.run_id}/baselines/{site}/manifest.json"

    @staticmethod
    def site_prepared(site: str) -> str:
        return f"sites/{site}/prepared.json"


class HubStore:
    """Bytes and JSON under a root URL. ``storage_options`` go to fsspec (e.g. an S3 endpoint)."""

    def __init__(self, url: str, retry: RetryPolicy | None = None, **storage_options: Any) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        if url.startswith("s3://") and "config_kwargs" not in storage_options:
            # bounded waits: a frozen endpoint must surface as an error our backoff retries,
            # not a 60 s read timeout repeated by botocore
            storage_options["config_kwargs"] = {
                "connect_timeout": 5,
                "read_timeout": 20,
                "retries": {"total_max_attempts": 1},
            }
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        self._local = isinstance(self.fs, LocalFileSystem)
        self._s3 = hasattr(self.fs, "call_s3") and hasattr(self.fs, "split_path")
        if hasattr(self.fs, "retries"):  # s3fs: one attempt per call; the retry loop is ours
            self.fs.retries = 1

    def _path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def put_bytes(self, rel: str, data: bytes) -> None:
        self.retry.call(lambda: self._put(rel, data), f"put {rel}")

    def _put(self, rel: str, data: bytes) -> None:
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
        return self.retry.call(lambda: bytes(self.fs.cat_file(self._path(rel))), f"get {rel}")

    def get_bytes_or_none(self, rel: str) -> bytes | None:
        """``rel``'s bytes, or None when there is no such object."""
        try:
            return self.get_bytes(rel)
        except FileNotFoundError:
            return None

    def map(self, fn: Callable[[str], _T], rels: Sequence[str]) -> list[_T]:
        """``fn`` over ``rels`` concurrently, results in order: an object store's round trips
        overlap instead of adding up (the first error is raised)."""
        if len(rels) < 2:
            return [fn(r) for r in rels]
        with ThreadPoolExecutor(max_workers=min(8, len(rels))) as pool:
            return list(pool.map(fn, rels))

    def get_verified(self, rel: str, sha256: str, what: str, data: bytes | None = None) -> bytes:
        """``rel``'s bytes (or ``data`` read from it before), refused unless they hash to
        ``sha256`` (the manifest's word)."""
        data = self.get_bytes(rel) if data is None else data
        _check_digest(hashlib.sha256(data).hexdigest(), sha256, what, rel)
        return data

    def get_verified_file(self, rel: str, sha256: str, what: str) -> IO[bytes]:
        """``rel``'s content as a temporary file on local disk (deleted when closed), read in
        chunks and refused unless it hashes to ``sha256``: what is checked is what is then
        read, and no copy of the whole object is held in memory."""

        def fetch() -> IO[bytes]:
            out = tempfile.TemporaryFile(prefix="fedchem-hub-")  # noqa: SIM115 (returned open)
            digest = hashlib.sha256()
            try:
                with self.fs.open(self._path(rel), "rb") as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                _check_digest(digest.hexdigest(), sha256, what, rel)
            except BaseException:
                out.close()
                raise
            out.seek(0)
            return out

        return self.retry.call(fetch, f"get {rel}")

    def put_json(self, rel: str, obj: Any) -> bytes:
        """Write ``obj`` as JSON; returns the bytes written (what a ledger entry hashes)."""
        data = json_bytes(obj)
        self.put_bytes(rel, data)
        return data

    def get_json(self, rel: str) -> Any:
        return json.loads(self.get_bytes(rel))

    def exists(self, rel: str) -> bool:
        # no listings cache: another process may have just committed what we look for
        self.fs.invalidate_cache()
        return self.retry.call(lambda: bool(self._exists(rel)), f"exists {rel}")

    def _exists(self, rel: str) -> bool:
        path = self._path(rel)
        if self._local:
            return os.path.exists(path)
        try:
            if self._s3:  # one HEAD: s3fs's info() adds a listing when the key is absent, and
                # polled files are absent until they are not (3.4x the CPU, measured on moto)
                bucket, key, _ = self.fs.split_path(path)
                self.fs.call_s3("head_object", Bucket=bucket, Key=key)
            else:
                self.fs.info(path)
        except FileNotFoundError:
            return False
        return True

    def _s3_find(self, base: str) -> list[str]:
        """Every key under ``base/``: one LIST request per 1,000 keys (s3fs's find() adds
        a HEAD and a second listing when the prefix is empty, which a polled prefix is)."""
        bucket, prefix, _ = self.fs.split_path(base)
        keys, token = [], None
        while True:
            page = self.fs.call_s3(
                "list_objects_v2",
                Bucket=bucket,
                Prefix=f"{prefix}/" if prefix else "",
                **({"ContinuationToken": token} if token else {}),
            )
            keys += [f"{bucket}/{o['Key']}" for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return keys

    def list_files(self, rel: str = "") -> list[str]:
        """Every file under ``rel``, as paths relative to the hub root."""
        base = self._path(rel).rstrip("/")
        self.fs.invalidate_cache()
        find = self._s3_find if self._s3 else self.fs.find
        found = self.retry.call(lambda: list(find(base)), f"list {rel}")
        root = self.root.rstrip("/") + "/"
        return sorted(p[len(root) :] if p.startswith(root) else p for p in found)
