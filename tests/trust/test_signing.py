"""Ed25519 identities and signed messages: every tampering is caught, with its reason."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchem.messages import FitInstructions, RoundOpen
from fedchem.trust.keys import key_id, load_private_key, new_key_pair, parse_public_key
from fedchem.trust.signing import COORDINATOR, KeyRing, SignatureRejected, Signer, signed_bytes


def _open(rnd: int = 3) -> RoundOpen:
    return RoundOpen(run_id="r1", round=rnd, ticket="t", fit=FitInstructions(), opened_at="now")


@pytest.fixture
def parties(tmp_path: Path) -> dict[str, Signer]:
    out = {}
    for name in ("site-a", "site-b", COORDINATOR):
        pair = new_key_pair(tmp_path / name, name)
        out[name] = Signer.from_file(name, pair.private_path)
    return out


def _ring(parties: dict[str, Signer]) -> KeyRing:
    return KeyRing({n: s.key.public_key() for n, s in parties.items()})


def test_a_key_pair_is_written_private_and_its_public_half_round_trips(tmp_path: Path):
    pair = new_key_pair(tmp_path, "site-a")
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    assert pair.public_path.read_text().strip() == pair.public
    key = load_private_key(pair.private_path)
    assert key_id(key.public_key()) == key_id(pair.public) == pair.key_id
    with pytest.raises(FileExistsError, match="rotate"):
        new_key_pair(tmp_path, "site-a")
    with pytest.raises(ValueError, match="ed25519"):
        parse_public_key("ssh-rsa AAAA")


def test_a_signed_message_verifies_and_every_alteration_is_named(parties: dict[str, Signer]):
    ring = _ring(parties)
    signed = parties[COORDINATOR].sign("round-open", _open())
    ring.verify("round-open", signed, COORDINATOR)

    with pytest.raises(SignatureRejected, match="unsigned"):
        ring.verify("round-open", _open(), COORDINATOR)
    altered = signed.model_copy(update={"round": 4})  # a replayed opening, renumbered
    with pytest.raises(SignatureRejected, match="bad signature"):
        ring.verify("round-open", altered, COORDINATOR)
    with pytest.raises(SignatureRejected, match="bad signature"):  # domain separation
        ring.verify("round-commit", signed, COORDINATOR)
    by_site = parties["site-a"].sign("round-open", _open())
    with pytest.raises(SignatureRejected, match="site-a's key"):
        ring.verify("round-open", by_site, COORDINATOR)
    outsider = Signer("site-x", Ed25519PrivateKey.generate())
    with pytest.raises(SignatureRejected, match="unknown key"):
        ring.verify("round-open", outsider.sign("round-open", _open()), COORDINATOR)


def test_the_signed_bytes_are_canonical_and_domain_separated():
    a = signed_bytes("site-update", {"b": 1, "a": [1, 2], "signature": {"x": 1}})
    b = signed_bytes("site-update", {"a": [1, 2], "b": 1})
    assert a == b == b'fedchem/signed/v1\x00site-update\x00{"a":[1,2],"b":1}'
    assert signed_bytes("round-open", {"a": 1}) != signed_bytes("round-commit", {"a": 1})


def test_two_owners_may_not_share_a_key(parties: dict[str, Signer]):
    pub = parties["site-a"].key.public_key()
    with pytest.raises(ValueError, match="share"):
        KeyRing({"site-a": pub, "site-b": pub})
