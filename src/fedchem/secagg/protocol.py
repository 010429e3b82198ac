"""Secure aggregation (Bonawitz et al., CCS 2017; SecAgg+, Bell et al., CCS 2020): the
coordinator learns the sum of the sites' updates and nothing else.

One round, every message signed by its sender's Ed25519 identity and bound to the run and the
round (a message of another round or run is refused):

1. **keys**: each site advertises two fresh X25519 public keys (one to encrypt shares to it,
   one for its pairwise masks) and its example count (public: the FedAvg weight). The
   coordinator signs the *roster*: the advertisements it took, as the sites signed them, with
   every site's index, neighbours and the threshold ``t``.
2. **shares**: each site draws a self-mask seed ``b`` and splits it and its mask key, ``t`` out
   of its neighbours (Shamir, :mod:`fedchem.secagg.shamir`); each share is encrypted to its
   neighbour (X25519 + HKDF + ChaCha20-Poly1305). The coordinator relays the sealed bundles
   (the *cohort*): it cannot open them.
3. **masked input**: each site encodes its weighted update in fixed point in the ring
   Z/2^32 and adds its self mask and, with each neighbour in the cohort, a pairwise mask
   (AES-256-CTR from their X25519 secret) with opposite signs at the two ends. The coordinator
   lists who uploaded (the *survivors*).
4. **consistency**: each survivor signs the survivors list it was shown; the coordinator
   relays the signatures. A site reveals nothing until ``t`` survivors signed the same list:
   a coordinator that shows different lists to different sites (to get both a site's self
   mask and its mask key) is caught here.
5. **unmasking**: each survivor reveals, for each neighbour, the share of its self-mask seed
   if that neighbour survived, or the share of its mask key if it dropped after sharing,
   never both. The coordinator rebuilds the secrets it needs from ``t`` shares each, removes
   the masks and has the sum.

What the coordinator learns is the sum of the survivors' weighted updates and of their
weights. A site reveals nothing for a cohort below its policy's minimum (a cohort of one
would be that site's own update). The fixed-point step is ``2^-fraction_bits`` per
coordinate and site; a coordinate beyond ``clip`` is clipped (both said in the plan).

This module is pure: the messages, what a site computes at each step and the coordinator's
unmasking. :mod:`fedchem.secagg.rounds` runs them over the hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from fedchem.messages import Signature
from fedchem.policy import SecAggPlan
from fedchem.secagg import shamir
from fedchem.secagg.crypto import (
    agree,
    decode_sum,
    decrypt,
    derive,
    encode,
    encrypt,
    mask,
    new_private_key,
    private_from_int,
    private_to_int,
    public_b64,
    public_from_b64,
)
from fedchem.strict import StrictModel
from fedchem.types import StateArrays

__all__ = [
    "Advert",
    "Check",
    "Cohort",
    "Consistent",
    "Reveal",
    "Roster",
    "SecAggError",
    "SharesBundle",
    "SiteSecrets",
    "Survivors",
    "flatten",
    "make_shares",
    "masked_input",
    "neighbours",
    "open_shares",
    "reveal",
    "unflatten",
    "unmask",
]


class SecAggError(ValueError):
    """A step that cannot go on: too few parties, a message not its sender's, a secret that
    cannot be rebuilt. The round fails with this reason; nothing is revealed."""


# ----------------------------------------------------------------------------- messages


class Advert(StrictModel):
    """A site's fresh public keys for one round (signed by its identity key)."""

    run_id: str
    round: int
    site: str
    share_key: str = Field(description="X25519 public key: shares are encrypted to it")
    mask_key: str = Field(description="X25519 public key: pairwise mask seeds are agreed on it")
    n_examples: int = Field(gt=0, description="the site's FedAvg weight (public)")
    signature: Signature | None = None


class Roster(StrictModel):
    """The coordinator's signed list of the round's participants (U1), in index order."""

    run_id: str
    round: int
    adverts: list[Advert]
    threshold: int = Field(ge=1)
    plan: SecAggPlan
    signature: Signature | None = None

    @property
    def names(self) -> list[str]:
        return [a.site for a in self.adverts]

    def index(self, site: str) -> int:
        """The site's Shamir point (1-based)."""
        return self.names.index(site) + 1

    def advert(self, site: str) -> Advert:
        return self.adverts[self.names.index(site)]

    @property
    def total_weight(self) -> int:
        return sum(a.n_examples for a in self.adverts)


class SharesBundle(StrictModel):
    """A site's sealed shares, one box per neighbour (only the neighbour can open its box)."""

    run_id: str
    round: int
    site: str
    roster_sha256: str = Field(description="the roster the shares were made for")
    boxes: dict[str, str]
    signature: Signature | None = None


class Cohort(StrictModel):
    """The coordinator's relay of the share bundles it received (U2), as their sites signed."""

    run_id: str
    round: int
    bundles: list[SharesBundle]
    signature: Signature | None = None

    @property
    def names(self) -> list[str]:
        return [b.site for b in self.bundles]


class Survivors(StrictModel):
    """The sites whose masked inputs the coordinator took (U3)."""

    run_id: str
    round: int
    sites: list[str]
    signature: Signature | None = None

    def digest(self) -> str:
        doc = {"run_id": self.run_id, "round": self.round, "sites": sorted(self.sites)}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


class Check(StrictModel):
    """A survivor's signed word on the survivors list it was shown."""

    run_id: str
    round: int
    site: str
    survivors_sha256: str
    signature: Signature | None = None


class Consistent(StrictModel):
    """The coordinator's relay of the survivors' checks."""

    run_id: str
    round: int
    checks: list[Check]
    signature: Signature | None = None


class Reveal(StrictModel):
    """A survivor's shares for the unmasking: per neighbour, of its self-mask seed (it
    survived) or of its mask key (it dropped after sharing), as hex; never both."""

    run_id: str
    round: int
    site: str
    survivors_sha256: str
    self_seeds: dict[str, str] = Field(default_factory=dict)
    mask_keys: dict[str, str] = Field(default_factory=dict)
    signature: Signature | None = None


# ----------------------------------------------------------------------------- the graph


def neighbours(roster_names: Sequence[str], site: str, plan: SecAggPlan) -> list[str]:
    """The sites ``site`` masks with and shares to (itself excluded). Every other site
    (complete graph, Bonawitz), or with ``plan.neighbours = k`` the ``k`` nearest on a ring
    of the sites ordered by a hash of the round's public seed (SecAgg+'s Harary graph)."""
    others = [s for s in roster_names if s != site]
    k = plan.neighbours
    if k is None or k >= len(others):
        return sorted(others)
    ring = sorted(
        roster_names, key=lambda s: hashlib.sha256(f"{plan.graph_seed}|{s}".encode()).digest()
    )
    i, n = ring.index(site), len(ring)
    near = {ring[(i + d) % n] for d in range(1, k // 2 + 1)}
    near |= {ring[(i - d) % n] for d in range(1, k - k // 2 + 1)}
    return sorted(near - {site})


# ----------------------------------------------------------------------------- the site


@dataclass(frozen=True)
class SiteSecrets:
    """What a site draws for one round and never lets leave it (kept on its own disk)."""

    share_key: int  # X25519 private key, as an integer
    mask_key: int  # X25519 private key, as an integer
    self_seed: bytes  # 32 bytes

    @classmethod
    def fresh(cls) -> SiteSecrets:
        return cls(
            private_to_int(new_private_key()),
            private_to_int(new_private_key()),
            secrets.token_bytes(32),
        )

    def advert(self, run_id: str, rnd: int, site: str, n_examples: int) -> Advert:
        return Advert(
            run_id=run_id,
            round=rnd,
            site=site,
            share_key=public_b64(private_from_int(self.share_key)),
            mask_key=public_b64(private_from_int(self.mask_key)),
            n_examples=n_examples,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "share_key": hex(self.share_key),
                "mask_key": hex(self.mask_key),
                "self_seed": self.self_seed.hex(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> SiteSecrets:
        d = json.loads(text)
        return cls(int(d["share_key"], 16), int(d["mask_key"], 16), bytes.fromhex(d["self_seed"]))


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _share_key(mine: int, theirs: str, run_id: str, rnd: int, a: str, b: str) -> bytes:
    lo, hi = _pair(a, b)
    return agree(
        private_from_int(mine),
        public_from_b64(theirs),
        f"fedchem/secagg/shares|{run_id}|{rnd}|{lo}|{hi}",
    )


def _pair_seed(mine: int, theirs: str, run_id: str, rnd: int, a: str, b: str) -> bytes:
    lo, hi = _pair(a, b)
    return agree(
        private_from_int(mine),
        public_from_b64(theirs),
        f"fedchem/secagg/pair-mask|{run_id}|{rnd}|{lo}|{hi}",
    )


def _self_mask(seed: bytes, run_id: str, rnd: int, site: str, size: int) -> np.ndarray:
    return mask(derive(seed, f"fedchem/secagg/self-mask|{run_id}|{rnd}|{site}"), size)


def roster_sha256(roster: Roster) -> str:
    return hashlib.sha256(roster.model_dump_json().encode()).hexdigest()


def make_shares(secrets_: SiteSecrets, roster: Roster, site: str) -> SharesBundle:
    """The site's shares of its self-mask seed and mask key, sealed to each neighbour."""
    peers = neighbours(roster.names, site, roster.plan)
    t = roster.threshold
    points = {p: roster.index(p) for p in peers}
    n = max(points.values())
    seed_shares = shamir.split(int.from_bytes(secrets_.self_seed, "big"), n, t)
    key_shares = shamir.split(secrets_.mask_key, n, t)
    boxes = {}
    for peer, x in points.items():
        key = _share_key(
            secrets_.share_key,
            roster.advert(peer).share_key,
            roster.run_id,
            roster.round,
            site,
            peer,
        )
        plaintext = json.dumps({"x": x, "seed": hex(seed_shares[x]), "key": hex(key_shares[x])})
        associated = f"{roster.run_id}|{roster.round}|{site}->{peer}".encode()
        boxes[peer] = encrypt(key, plaintext.encode(), associated)
    return SharesBundle(
        run_id=roster.run_id,
        round=roster.round,
        site=site,
        roster_sha256=roster_sha256(roster),
        boxes=boxes,
    )


def open_shares(
    secrets_: SiteSecrets, roster: Roster, cohort: Cohort, site: str
) -> dict[str, tuple[int, int, int]]:
    """The shares the cohort's sites sealed to ``site``: sender -> (x, seed share, key
    share). A box that does not open (not sealed to this site's key, altered) is an error."""
    out = {}
    for bundle in cohort.bundles:
        if site not in bundle.boxes:
            continue
        key = _share_key(
            secrets_.share_key,
            roster.advert(bundle.site).share_key,
            roster.run_id,
            roster.round,
            site,
            bundle.site,
        )
        associated = f"{roster.run_id}|{roster.round}|{bundle.site}->{site}".encode()
        try:
            doc = json.loads(decrypt(key, bundle.boxes[site], associated))
        except Exception as exc:  # InvalidTag, bad JSON: not a share sealed to this site
            raise SecAggError(f"the share from {bundle.site} does not open") from exc
        if int(doc["x"]) != roster.index(site):
            raise SecAggError(f"the share from {bundle.site} is for another point")
        out[bundle.site] = (int(doc["x"]), int(doc["seed"], 16), int(doc["key"], 16))
    return out


def flatten(delta: StateArrays, names: Sequence[str]) -> np.ndarray:
    return np.concatenate([delta[n].astype(np.float64).ravel() for n in names])


def unflatten(vector: np.ndarray, like: StateArrays, names: Sequence[str]) -> StateArrays:
    out: StateArrays = {}
    at = 0
    for n in names:
        size = like[n].size
        out[n] = vector[at : at + size].reshape(like[n].shape).astype(like[n].dtype)
        at += size
    return out


def masked_input(
    secrets_: SiteSecrets,
    roster: Roster,
    cohort: Cohort,
    site: str,
    weighted_delta: np.ndarray,
    weight: float,
) -> np.ndarray:
    """``[weighted_delta, weight]`` in fixed point, plus the self mask and the pairwise masks
    with every neighbour in the cohort (+ towards the neighbours after it, - before it)."""
    plan = roster.plan
    x = encode(np.append(weighted_delta, weight), plan.clip, plan.fraction_bits)
    y = x + _self_mask(secrets_.self_seed, roster.run_id, roster.round, site, x.size)
    in_cohort = set(cohort.names)
    for peer in neighbours(roster.names, site, plan):
        if peer not in in_cohort:
            continue  # it did not share: no mask with it (nothing to remove later)
        seed = _pair_seed(
            secrets_.mask_key, roster.advert(peer).mask_key, roster.run_id, roster.round, site, peer
        )
        m = mask(seed, x.size)
        y = y + m if site < peer else y - m
    return y.astype(np.uint32)


def reveal(
    secrets_: SiteSecrets,
    roster: Roster,
    cohort: Cohort,
    survivors: Survivors,
    site: str,
) -> Reveal:
    """This site's shares for the unmasking: for each neighbour in the cohort, its self-mask
    seed share if it survived, its mask-key share if it dropped after sharing."""
    got = open_shares(secrets_, roster, cohort, site)
    alive = set(survivors.sites)
    seeds, keys = {}, {}
    for sender, (_, seed_share, key_share) in got.items():
        if sender in alive:
            seeds[sender] = hex(seed_share)
        else:
            keys[sender] = hex(key_share)
    return Reveal(
        run_id=roster.run_id,
        round=roster.round,
        site=site,
        survivors_sha256=survivors.digest(),
        self_seeds=seeds,
        mask_keys=keys,
    )


# ----------------------------------------------------------------------------- the coordinator


def _rebuild(roster: Roster, owner: str, reveals: Sequence[Reveal], field: str) -> int:
    shares = {}
    for r in reveals:
        value = getattr(r, field).get(owner)
        if value is not None:
            shares[roster.index(r.site)] = int(value, 16)
    try:
        return shamir.combine(shares, roster.threshold)
    except ValueError as exc:
        raise SecAggError(
            f"{owner}'s {'self-mask seed' if field == 'self_seeds' else 'mask key'} cannot be "
            f"rebuilt: {exc}"
        ) from exc


def unmask(
    roster: Roster,
    cohort: Cohort,
    survivors: Survivors,
    masked: Mapping[str, np.ndarray],
    reveals: Sequence[Reveal],
) -> tuple[np.ndarray, float]:
    """The sum of the survivors' weighted updates and of their weights, from their masked
    inputs and ``t`` reveals for each secret needed."""
    plan = roster.plan
    alive = sorted(survivors.sites)
    dropped = sorted(set(cohort.names) - set(alive))
    size = next(iter(masked.values())).size
    total = np.zeros(size, dtype=np.uint32)
    for site in alive:
        total = total + masked[site]
    for site in alive:  # the self masks
        seed = _rebuild(roster, site, reveals, "self_seeds").to_bytes(32, "big")
        total = total - _self_mask(seed, roster.run_id, roster.round, site, size)
    for gone in dropped:  # the pairwise masks its survivor neighbours added with it
        key = _rebuild(roster, gone, reveals, "mask_keys")
        for site in neighbours(roster.names, gone, plan):
            if site not in alive:
                continue
            seed = _pair_seed(
                key, roster.advert(site).mask_key, roster.run_id, roster.round, gone, site
            )
            m = mask(seed, size)
            total = total - m if site < gone else total + m
    values = decode_sum(total.astype(np.uint32), plan.fraction_bits)
    return values[:-1], float(values[-1])


def b64_array(a: np.ndarray) -> str:
    return base64.b64encode(a.astype("<u4").tobytes()).decode()
