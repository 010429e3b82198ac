"""The primitives of secure aggregation, all from ``cryptography``: key agreement (X25519),
key derivation (HKDF-SHA256), authenticated encryption (ChaCha20-Poly1305) and the mask
generator (AES-256 in counter mode: a keystream read as 32-bit words), and the fixed-point
encoding of a model update into the ring of integers modulo 2^32.

Every derived key is bound to its purpose, the run, the round and the two parties (the HKDF
``info``), so a key is never used for two things. Seeds are 256 bits.
"""

from __future__ import annotations

import base64
import os

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "RING_BITS",
    "agree",
    "decode_sum",
    "decrypt",
    "derive",
    "encode",
    "encrypt",
    "mask",
    "new_private_key",
    "private_from_int",
    "private_to_int",
    "public_b64",
    "public_from_b64",
]

#: the ring: integers modulo 2^32 (a masked coordinate is as large as an fp32 one)
RING_BITS = 32
SEED_BYTES = 32


def new_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def private_to_int(key: X25519PrivateKey) -> int:
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return int.from_bytes(raw, "big")


def private_from_int(value: int) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(value.to_bytes(32, "big"))


def public_b64(key: X25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def public_from_b64(text: str) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))


def derive(secret: bytes, purpose: str) -> bytes:
    """A 256-bit key for ``purpose`` (run, round, parties included) from ``secret``."""
    return HKDF(
        algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=purpose.encode()
    ).derive(secret)


def agree(mine: X25519PrivateKey, theirs: X25519PublicKey, purpose: str) -> bytes:
    """The key two parties share for ``purpose``: X25519, then HKDF."""
    return derive(mine.exchange(theirs), purpose)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> str:
    """ChaCha20-Poly1305 with a random nonce: ``base64(nonce || ciphertext)``."""
    nonce = os.urandom(12)
    return base64.b64encode(
        nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)
    ).decode()


def decrypt(key: bytes, box: str, associated: bytes) -> bytes:
    """The plaintext of :func:`encrypt`'s box (``cryptography.exceptions.InvalidTag`` when it
    was not sealed with this key and these associated data)."""
    raw = base64.b64decode(box, validate=True)
    return ChaCha20Poly1305(key).decrypt(raw[:12], raw[12:], associated)


def mask(seed: bytes, size: int) -> np.ndarray:
    """``size`` pseudo-random 32-bit words from a 256-bit ``seed`` (AES-256-CTR keystream)."""
    if len(seed) != SEED_BYTES:
        raise ValueError("a mask seed is 32 bytes")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    stream = encryptor.update(b"\0" * (4 * size)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32)


def encode(values: np.ndarray, clip: float, fraction_bits: int) -> np.ndarray:
    """Fixed point in the ring: each value clipped to ``[-clip, clip]``, scaled by
    ``2^fraction_bits``, rounded, taken modulo 2^32 (two's complement)."""
    scaled = np.rint(np.clip(values.astype(np.float64), -clip, clip) * (1 << fraction_bits))
    return scaled.astype(np.int64).astype(np.uint32)


def decode_sum(ring: np.ndarray, fraction_bits: int) -> np.ndarray:
    """The real-valued sum behind a ring element (as a signed 32-bit integer, then scaled)."""
    return ring.astype(np.uint32).view(np.int32).astype(np.float64) / (1 << fraction_bits)
