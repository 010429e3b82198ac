"""Signed messages: what a site or the coordinator publishes, signed over a canonical encoding.

A message is signed over ``fedchem/signed/v1 NUL <kind> NUL <canonical JSON>``: the kind
(``site-update``, ``round-open``, ``round-commit``, …) separates the domains, so a signature
made for one kind of message never verifies as another; the canonical JSON is the message's
fields (all but ``signature``) with sorted keys and no whitespace. Every field is covered:
run id, round, site, the hashes of the base model and the update, shapes, counts, the policy's
hash, the DP parameters. A signature names its key by id; the verifier looks the id up in its
allowlist (:class:`KeyRing`) and checks that the key is the expected owner's.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel

from fedchem.messages import Signature
from fedchem.trust.keys import key_id, load_private_key, parse_public_key

__all__ = [
    "COORDINATOR",
    "KeyRing",
    "SignatureRejected",
    "Signer",
    "canonical_json",
    "signed_bytes",
]

DOMAIN = b"fedchem/signed/v1"
#: the owner name of the coordinator's key in a :class:`KeyRing`
COORDINATOR = "coordinator"

M = TypeVar("M", bound=BaseModel)


class SignatureRejected(ValueError):
    """A message whose signature does not prove it came from whom it should have."""


def canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True
    ).encode()


def signed_bytes(kind: str, doc: Mapping[str, Any]) -> bytes:
    """The exact bytes a signature of ``kind`` covers: every field but ``signature``."""
    if not kind or "\x00" in kind:
        raise ValueError(f"bad signature kind {kind!r}")
    body = {k: v for k, v in doc.items() if k != "signature"}
    return DOMAIN + b"\x00" + kind.encode() + b"\x00" + canonical_json(body)


def _doc(message: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(message, BaseModel):
        return message.model_dump(mode="json")
    return dict(message)


class Signer:
    """One party's private key and name; signs messages for it."""

    def __init__(self, owner: str, key: Ed25519PrivateKey) -> None:
        self.owner, self.key = owner, key
        self.key_id = key_id(key.public_key())

    @classmethod
    def from_file(cls, owner: str, path: Path) -> Signer:
        return cls(owner, load_private_key(path))

    def signature(self, kind: str, doc: Mapping[str, Any]) -> Signature:
        value = self.key.sign(signed_bytes(kind, doc))
        return Signature(key_id=self.key_id, value=base64.b64encode(value).decode())

    def sign(self, kind: str, message: M) -> M:
        """``message`` with its ``signature`` field set (any earlier one is replaced)."""
        doc = message.model_dump(mode="json")
        return message.model_copy(update={"signature": self.signature(kind, doc)})


class KeyRing:
    """The allowlist: owner → pinned public key (sites by name, and the coordinator)."""

    def __init__(self, keys: Mapping[str, str | Ed25519PublicKey]) -> None:
        self.keys = {
            owner: parse_public_key(k) if isinstance(k, str) else k for owner, k in keys.items()
        }
        self.by_id = {key_id(k): owner for owner, k in self.keys.items()}
        if len(self.by_id) != len(self.keys):
            raise ValueError("two owners share one public key: every party needs its own")

    def verify(self, kind: str, message: BaseModel | Mapping[str, Any], owner: str) -> None:
        """Raise :class:`SignatureRejected`, with the reason, unless ``message`` carries a valid
        ``kind`` signature by ``owner``'s pinned key."""
        doc = _doc(message)
        raw = doc.get("signature")
        if not raw:
            raise SignatureRejected(f"unsigned {kind} (expected {owner}'s signature)")
        sig = raw if isinstance(raw, Signature) else Signature.model_validate(raw)
        signer = self.by_id.get(sig.key_id)
        if signer is None:
            raise SignatureRejected(f"{kind} signed with an unknown key {sig.key_id}")
        if signer != owner:
            raise SignatureRejected(
                f"{kind} signed with {signer}'s key {sig.key_id}, not {owner}'s"
            )
        try:
            value = base64.b64decode(sig.value, validate=True)
            self.keys[owner].verify(value, signed_bytes(kind, doc))
        except (InvalidSignature, ValueError) as exc:
            raise SignatureRejected(
                f"bad signature on {kind} from {owner}: the message was altered or not "
                "signed by that key"
            ) from exc
