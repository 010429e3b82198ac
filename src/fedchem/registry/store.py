"""A model registry on any fsspec URL: named models, immutable numbered versions, movable aliases.

Layout (under the registry URL)::

    models/<name>/versions/<NNNN>/<file>...        a version's files (weights, spec, card, ...)
    models/<name>/versions/<NNNN>/files.json       every file of the version with its sha256;
                                                   written last: the version exists once it does
    models/<name>/aliases.json                     alias -> version (``production``, ``candidate``)
    models/<name>/history.jsonl                    every alias move and publication, appended

A version is written once: publishing a number that exists is an error, and every file is checked
against ``files.json`` when it is read, so a tampered or truncated file refuses to load. Aliases
move (``production`` to a new version, or back: a rollback is an alias move), and every move is
recorded in the history with the version it replaced.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fedchem.storage.hub import HubStore, IntegrityError

__all__ = [
    "ModelRef",
    "Registry",
    "RegistryError",
    "VersionExists",
    "VersionFiles",
]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class RegistryError(LookupError):
    """A model, version or alias that is not there, or a reference that cannot be one."""


class VersionExists(RegistryError):
    """A version is immutable: it cannot be published twice."""


@dataclass(frozen=True)
class ModelRef:
    """``name``, ``name@alias`` or ``name:version`` (a bare name means ``@production``)."""

    name: str
    alias: str | None = None
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        name, alias, version = text, None, None
        if "@" in text:
            name, alias = text.split("@", 1)
        elif ":" in text:
            name, number = text.split(":", 1)
            if not number.isdigit():
                raise RegistryError(f"{text!r}: a version is a number (NAME:3)")
            version = int(number)
        if not _NAME.match(name):
            raise RegistryError(f"{text!r}: a model name is lowercase letters, digits, '_.-'")
        if alias is not None and not _ALIAS.match(alias):
            raise RegistryError(f"{text!r}: an alias is lowercase letters, digits, '_-'")
        if alias is None and version is None:
            alias = "production"
        return cls(name, alias, version)

    def __str__(self) -> str:
        return self.name + (f":{self.version}" if self.version is not None else f"@{self.alias}")


@dataclass(frozen=True)
class VersionFiles:
    """One version's files as listed in its ``files.json``: name -> sha256."""

    name: str
    version: int
    files: Mapping[str, str]
    created_at: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Registry:
    """The registry at ``url`` (a directory, ``s3://bucket/prefix``, any fsspec URL)."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = url
        self.store = HubStore(url, **storage_options)

    # -- layout -------------------------------------------------------------------------
    @staticmethod
    def _model(name: str) -> str:
        return f"models/{name}"

    def _version_dir(self, name: str, version: int) -> str:
        return f"{self._model(name)}/versions/{version:04d}"

    # -- reading ------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Every model with at least one version."""
        names = set()
        for path in self.store.list_files("models"):
            parts = path.split("/")
            if len(parts) >= 5 and parts[2] == "versions" and parts[4] == "files.json":
                names.add(parts[1])
        return sorted(names)

    def versions(self, name: str) -> list[int]:
        """The published versions of ``name``, oldest first."""
        found = []
        for path in self.store.list_files(f"{self._model(name)}/versions"):
            parts = path.split("/")
            if len(parts) == 5 and parts[4] == "files.json" and parts[3].isdigit():
                found.append(int(parts[3]))
        return sorted(found)

    def aliases(self, name: str) -> dict[str, int]:
        path = f"{self._model(name)}/aliases.json"
        if not self.store.exists(path):
            return {}
        return {k: int(v) for k, v in self.store.get_json(path).items()}

    def history(self, name: str) -> list[dict[str, Any]]:
        path = f"{self._model(name)}/history.jsonl"
        if not self.store.exists(path):
            return []
        return [json.loads(ln) for ln in self.store.get_bytes(path).decode().splitlines() if ln]

    def resolve(self, ref: ModelRef | str) -> tuple[str, int]:
        """(name, version) of a reference; an unknown model, alias or version is an error."""
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        versions = self.versions(ref.name)
        if not versions:
            known = ", ".join(self.models()) or "none"
            raise RegistryError(f"no model {ref.name!r} in {self.url} (models: {known})")
        if ref.version is not None:
            if ref.version not in versions:
                raise RegistryError(f"{ref}: no such version (versions: {versions})")
            return ref.name, ref.version
        aliases = self.aliases(ref.name)
        if ref.alias not in aliases:
            raise RegistryError(f"{ref}: no alias {ref.alias!r} (aliases: {aliases or 'none'})")
        return ref.name, aliases[str(ref.alias)]

    def files(self, name: str, version: int) -> VersionFiles:
        doc = self.store.get_json(f"{self._version_dir(name, version)}/files.json")
        return VersionFiles(name, version, dict(doc["files"]), str(doc["created_at"]))

    def read(self, name: str, version: int, file: str) -> bytes:
        """A version's file, refused unless it hashes to what ``files.json`` says."""
        listed = self.files(name, version).files
        if file not in listed:
            raise RegistryError(f"{name}:{version} has no file {file!r} (files: {sorted(listed)})")
        rel = f"{self._version_dir(name, version)}/{file}"
        try:
            return self.store.get_verified(rel, listed[file], f"{name}:{version} {file}")
        except IntegrityError as exc:
            raise IntegrityError(
                f"{exc} — the registry's copy was altered; not loading it"
            ) from exc

    def read_json(self, name: str, version: int, file: str) -> Any:
        return json.loads(self.read(name, version, file))

    # -- writing ------------------------------------------------------------------------
    def next_version(self, name: str) -> int:
        versions = self.versions(name)
        return versions[-1] + 1 if versions else 1

    def publish(
        self,
        name: str,
        files: Mapping[str, bytes],
        version: int | None = None,
        alias: str | None = None,
        note: str = "",
    ) -> int:
        """Write a new version of ``name`` with ``files`` (file name -> bytes); ``files.json``
        last. ``version`` defaults to the next number; an existing one is refused
        (:class:`VersionExists`). ``alias`` then points at it."""
        if not _NAME.match(name):
            raise RegistryError(f"{name!r}: a model name is lowercase letters, digits, '_.-'")
        version = self.next_version(name) if version is None else version
        base = self._version_dir(name, version)
        if self.store.exists(f"{base}/files.json"):
            raise VersionExists(f"{name}:{version} exists; a version is never written twice")
        bad = [f for f in files if not re.match(r"^[A-Za-z0-9_.-]+$", f) or f == "files.json"]
        if bad:
            raise RegistryError(f"file names {bad}: letters, digits and '_.-' only")
        for file, data in files.items():
            self.store.put_bytes(f"{base}/{file}", data)
        listing = {
            "name": name,
            "version": version,
            "created_at": _now(),
            "files": {f: hashlib.sha256(d).hexdigest() for f, d in sorted(files.items())},
        }
        self.store.put_json(f"{base}/files.json", listing)
        self._log(name, {"event": "published", "version": version, "note": note})
        if alias is not None:
            self.set_alias(name, alias, version, note=note)
        return version

    def set_alias(self, name: str, alias: str, version: int, note: str = "") -> int | None:
        """Point ``alias`` at ``version``; returns the version it pointed at before."""
        if not _ALIAS.match(alias):
            raise RegistryError(f"{alias!r}: an alias is lowercase letters, digits, '_-'")
        if version not in self.versions(name):
            raise RegistryError(f"{name}:{version}: no such version to point {alias!r} at")
        aliases = self.aliases(name)
        before = aliases.get(alias)
        aliases[alias] = version
        self.store.put_json(f"{self._model(name)}/aliases.json", aliases)
        event = {"event": "alias", "alias": alias, "version": version, "previous": before}
        self._log(name, {**event, "note": note})
        return before

    def record(self, name: str, event: dict[str, Any]) -> None:
        """Add an event (a promotion decision, say) to the model's history."""
        self._log(name, event)

    def _log(self, name: str, event: dict[str, Any]) -> None:
        path = f"{self._model(name)}/history.jsonl"
        old = self.store.get_bytes(path) if self.store.exists(path) else b""
        line = json.dumps({"at": _now(), **event}, sort_keys=True).encode() + b"\n"
        self.store.put_bytes(path, old + line)
