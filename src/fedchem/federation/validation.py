"""Screening of site updates before aggregation: one broken update must not poison the model.

Every reply is checked in order, each failure rejecting the update with its reason (recorded in
the round manifest): the site must be a member and reply once; the manifest must be for this
run and round and start from the committed global model; the file must match its hash and load;
names, shapes and dtypes must match the global model; every value must be finite; and, with
at least ``min_for_norm`` such updates, the distance from the global model must not exceed
``max_norm_ratio`` times the round's median distance (per optimizer step, when every update's
manifest states its steps: sites of very different sizes take very different numbers of
steps; a site can overstate its steps as it can its molecules, which its weight already
trusts, so this screen catches broken updates, not a Byzantine one: that is Krum's job).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO

import numpy as np

from fedchem.federation.strategies import SiteReply
from fedchem.messages import SiteUpdateManifest
from fedchem.model.compress import decode_update
from fedchem.storage.hub import IntegrityError
from fedchem.types import StateArrays

__all__ = ["Screened", "check_arrays", "screen_updates", "update_norm"]


@dataclass
class Screened:
    """The round's accepted replies and, per rejected site, why."""

    accepted: list[SiteReply] = field(default_factory=list)
    manifests: list[SiteUpdateManifest] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)


def check_arrays(arrays: StateArrays, reference: StateArrays) -> str | None:
    """Why ``arrays`` cannot be the same model as ``reference`` (None when it can)."""
    if set(arrays) != set(reference):
        extra, lacking = sorted(set(arrays) - set(reference)), sorted(set(reference) - set(arrays))
        return f"parameter names differ (unexpected {extra}, missing {lacking})"
    for name, ref in reference.items():
        a = arrays[name]
        if a.shape != ref.shape:
            return f"{name}: shape {a.shape} != global model's {ref.shape}"
        if a.dtype != ref.dtype:
            return f"{name}: dtype {a.dtype} != global model's {ref.dtype}"
        if not np.isfinite(a).all():
            return f"{name}: {int((~np.isfinite(a)).sum())} non-finite values (NaN/inf)"
    return None


def update_norm(arrays: StateArrays, reference: StateArrays) -> float:
    """L2 distance of an update from the global model it started from, over all parameters
    (in float64, a block of rows at a time: no copy of a whole array is made)."""
    total = 0.0
    for k, ref in reference.items():
        a = np.asarray(arrays[k]).reshape(len(ref) if ref.ndim else 1, -1)
        r = np.asarray(ref).reshape(a.shape)
        for at in range(0, len(a), _BLOCK):
            d = a[at : at + _BLOCK].astype(np.float64) - r[at : at + _BLOCK]
            total += float(np.einsum("ij,ij->", d, d))
    return float(np.sqrt(total))


#: rows of an array taken at a time by :func:`update_norm`
_BLOCK = 256


class UpdateChanged(IntegrityError):
    """An accepted update read again for aggregation no longer hashes to its manifest."""

    def __init__(self, site: str, why: str) -> None:
        super().__init__(why)
        self.site = site


#: how a screen reads an update: its verified bytes, or a verified file it then closes
Fetch = Callable[[SiteUpdateManifest], bytes | IO[bytes]]


def _decode(data: bytes | IO[bytes], reference: StateArrays, codec: str) -> StateArrays:
    try:
        return decode_update(data, reference, codec)
    finally:
        if not isinstance(data, bytes):
            data.close()


def _reader(
    fetch: Fetch, m: SiteUpdateManifest, reference: StateArrays
) -> Callable[[], StateArrays]:
    def read() -> StateArrays:
        try:
            data = fetch(m)
        except (IntegrityError, FileNotFoundError) as exc:
            raise UpdateChanged(m.site, str(exc)) from exc
        return _decode(data, reference, m.codec)

    return read


def screen_updates(
    replies: Sequence[SiteUpdateManifest],
    *,
    run_id: str,
    rnd: int,
    base_sha256: str,
    reference: StateArrays,
    members: Sequence[str],
    fetch: Fetch,
    max_norm_ratio: float = 10.0,
    min_for_norm: int = 3,
    max_delta_norm: float | None = None,
) -> Screened:
    """Check every reply of round ``rnd``; ``fetch`` returns an update's verified bytes or
    file (and raises :class:`~fedchem.storage.hub.IntegrityError` on a hash mismatch).
    ``max_delta_norm``: site-level DP's clip norm, which no update's distance from the
    global model may exceed."""
    out = Screened()
    seen: set[str] = set()
    candidates: list[SiteUpdateManifest] = []
    norms: dict[str, float] = {}
    for m in replies:
        if m.site not in members:
            out.rejected[m.site] = "unknown site: not a member of this federation"
            continue
        if m.site in seen:
            out.rejected[m.site] = "duplicate upload: the site replied more than once"
            continue
        seen.add(m.site)
        if m.run_id != run_id:
            out.rejected[m.site] = f"update for run {m.run_id!r}, not {run_id!r}"
            continue
        if m.round != rnd:
            age = "stale" if m.round < rnd else "future"
            out.rejected[m.site] = f"{age} update: for round {m.round}, not {rnd}"
            continue
        if m.base_sha256 != base_sha256:
            out.rejected[m.site] = (
                f"stale update: started from global {m.base_sha256[:12]}, "
                f"not the committed {base_sha256[:12]} of round {rnd - 1}"
            )
            continue
        try:
            data = fetch(m)
        except IntegrityError as exc:  # altered or truncated after its manifest
            out.rejected[m.site] = f"hash mismatch: {exc}"[:300]
            continue
        except FileNotFoundError as exc:
            out.rejected[m.site] = f"update missing: {exc}"[:300]
            continue
        try:
            arrays = _decode(data, reference, m.codec)  # a compressed delta: to weights
        except (ValueError, OSError, KeyError) as exc:  # not an npz of arrays
            out.rejected[m.site] = f"unreadable update: {type(exc).__name__}: {exc}"[:300]
            continue
        why = check_arrays(arrays, reference)
        if why is not None:
            out.rejected[m.site] = f"invalid update: {why}"
            continue
        if max_delta_norm is not None:
            norm = update_norm(arrays, reference)
            if norm > max_delta_norm * (1 + 1e-4):
                out.rejected[m.site] = (
                    f"update exceeds the DP clip norm: {norm:.4g} > {max_delta_norm:g}"
                )
                continue
        norms[m.site] = update_norm(arrays, reference)
        candidates.append(m)  # its weights are not kept: read again when aggregated
        del arrays
    # per optimizer step when every candidate says its steps: a site with ten times the
    # molecules takes ten times the steps and moves about ten times as far
    per_step = bool(candidates) and all(m.steps for m in candidates)
    scaled = {m.site: norms[m.site] / ((m.steps or 1) if per_step else 1) for m in candidates}
    unit = " a step" if per_step else ""
    median = float(np.median(list(scaled.values()))) if scaled else 0.0
    for m in candidates:
        if len(candidates) >= min_for_norm and scaled[m.site] > max_norm_ratio * max(median, 1e-12):
            out.rejected[m.site] = (
                f"update norm{unit} {scaled[m.site]:.4g} is more than {max_norm_ratio:g}x the "
                f"round's median {median:.4g}"
            )
            continue
        out.accepted.append(SiteReply(m.site, _reader(fetch, m, reference), m.n_examples))
        out.manifests.append(m)
    return out
