"""Ed25519 identities: a site's or the coordinator's key pair, and public keys as text.

A private key is a PEM file (PKCS#8) readable by its owner only; it never leaves its owner's
disk. A public key travels as one line of text, ``ed25519:<base64 of the 32 raw bytes>``, in
the federation config (the coordinator's allowlist) and in each site's policy (the pinned
coordinator key). A key's id is the first 16 hex digits of the SHA-256 of its raw bytes.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "KeyPair",
    "ensure_key_pair",
    "key_id",
    "load_private_key",
    "new_key_pair",
    "parse_public_key",
    "public_key_text",
]

PREFIX = "ed25519:"


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """``ed25519:<base64>`` → the key; a clear error for anything else."""
    text = text.strip()
    if not text.startswith(PREFIX):
        raise ValueError(f"not an Ed25519 public key (expected '{PREFIX}<base64>'): {text[:40]!r}")
    try:
        raw = base64.b64decode(text[len(PREFIX) :], validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ValueError(f"not an Ed25519 public key: {exc}") from exc


def key_id(key: Ed25519PublicKey | str) -> str:
    """16 hex digits naming a public key (what a signature says it was made with)."""
    pub = parse_public_key(key) if isinstance(key, str) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class KeyPair:
    """Where a new key pair was written, and its public half as text."""

    private_path: Path
    public_path: Path
    public: str

    @property
    def key_id(self) -> str:
        return key_id(self.public)


def new_key_pair(directory: Path, name: str, overwrite: bool = False) -> KeyPair:
    """Create ``<name>.key`` (PEM, mode 0600) and ``<name>.pub`` (one line) in ``directory``.

    An existing key is never replaced unless ``overwrite``: rotating a key is a decision (the
    federation config and the sites' policies pin the public half), not a side effect.
    """
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    if private_path.exists() and not overwrite:
        raise FileExistsError(f"{private_path} exists; rotate with overwrite (see the README)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = private_path.with_suffix(".key.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    tmp.replace(private_path)
    public = public_key_text(key.public_key())
    public_path.write_text(public + "\n")
    return KeyPair(private_path, public_path, public)


def ensure_key_pair(directory: Path, name: str) -> KeyPair:
    """The key pair ``<name>.key``/``.pub`` in ``directory``: the one there, else a new one."""
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    if private_path.exists():
        public = public_key_text(load_private_key(private_path).public_key())
        if not public_path.exists() or public_path.read_text().strip() != public:
            public_path.write_text(public + "\n")
        return KeyPair(private_path, public_path, public)
    return new_key_pair(directory, name)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A private key file written by :func:`new_key_pair` (or any PKCS#8 PEM Ed25519 key)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"signing key {path} not found (create one: fedchem keys new)"
        ) from None
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key
