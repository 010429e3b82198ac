"""Differential privacy: the accountant, clipping and noise (no torch here).

Epsilon at delta is computed by Google's ``dp-accounting``: the privacy loss distribution
accountant (PLD, tight) is the reported value; the Rényi accountant (RDP, looser) is the
cross-check (:func:`epsilon` with ``accountant="rdp"``). A mechanism is a list of
:class:`Steps`: ``count`` releases of a Gaussian mechanism with noise multiplier ``z``, each on
a Poisson sample at rate ``q`` (``q = 1``: everything, every time).

Site level (DP-FedAvg): a site's contribution per round is its model delta clipped to L2 norm
``C``; the coordinator adds ``N(0, (z C)^2)`` to the sum of deltas: one Gaussian release per
round, ``q = 1``. Record level (DP-SGD): each step, a Poisson sample at rate ``q = B / n``,
per-example gradients clipped to ``C``, the same noise on their sum.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

from fedchem.types import StateArrays

__all__ = [
    "Steps",
    "add_noise",
    "clip_delta",
    "delta_norm",
    "epsilon",
    "noise_for_epsilon",
    "noise_rng",
]


#: the PLD accountant's grid: its pessimistic estimate is an upper bound at any grid; 1e-3 is
#: within 1e-3 of the default 1e-4 on this federation's mechanisms and about 15x faster
PLD_DISCRETIZATION = 1e-3
#: below this noise multiplier the PLD's grid grows as 1/z^2 (z = 0.01: a 6 GiB array) while
#: epsilon is in the thousands anyway: such releases are accounted by RDP, an upper bound
PLD_MIN_NOISE = 0.2


@dataclass(frozen=True)
class Steps:
    """``count`` Gaussian releases with noise multiplier ``z`` on Poisson samples at ``q``."""

    q: float
    z: float
    count: int

    def __post_init__(self) -> None:
        if not 0 < self.q <= 1 or not self.z > 0 or self.count < 0:
            raise ValueError(f"bad DP steps {self}")


def _event(steps: Iterable[Steps]) -> dp_accounting.DpEvent:
    grouped: Counter[tuple[float, float]] = (
        Counter()
    )  # identical releases compose as one self-composed event (fast)
    for s in steps:
        grouped[(s.q, s.z)] += s.count
    events: list[dp_accounting.DpEvent] = []
    for (q, z), count in sorted(grouped.items()):
        if count == 0:
            continue
        one: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(z)
        if q < 1:
            one = dp_accounting.PoissonSampledDpEvent(q, one)
        events.append(dp_accounting.SelfComposedDpEvent(one, count))
    return dp_accounting.ComposedDpEvent(events)


def epsilon(
    steps: Sequence[Steps], delta: float, accountant: Literal["pld", "rdp"] = "pld"
) -> float:
    """Epsilon at ``delta`` of the composition of ``steps`` (0 when nothing was released);
    with any release noised below :data:`PLD_MIN_NOISE`, RDP's (larger, still a bound)."""
    if not any(s.count for s in steps):
        return 0.0
    if any(s.count and s.z < PLD_MIN_NOISE for s in steps):
        accountant = "rdp"
    acc = (
        pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
        if accountant == "pld"
        else rdp.RdpAccountant()
    )
    acc.compose(_event(steps))
    return float(acc.get_epsilon(delta))


def noise_for_epsilon(
    target: float, delta: float, q: float, count: int, tolerance: float = 1e-3
) -> float:
    """The smallest noise multiplier (to ``tolerance``, relative) whose ``count`` releases at
    rate ``q`` stay within ``target`` epsilon at ``delta``: bisection on the PLD epsilon."""
    if count < 1:
        raise ValueError("no releases to calibrate")

    def eps(z: float) -> float:
        return epsilon([Steps(q, z, count)], delta)

    lo, hi = 0.05, 1.0
    while eps(hi) > target:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ValueError(f"epsilon {target} at delta {delta} needs more noise than 1e4")
    while hi / lo - 1 > tolerance:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if eps(mid) > target else (lo, mid)
    return hi


def delta_norm(update: StateArrays, base: StateArrays) -> float:
    """L2 norm of ``update - base`` over every array (float64)."""
    total = sum(
        float(np.square(update[k].astype(np.float64) - base[k].astype(np.float64)).sum())
        for k in base
    )
    return math.sqrt(total)


def clip_delta(update: StateArrays, base: StateArrays, clip: float) -> tuple[StateArrays, float]:
    """``base + (update - base) * min(1, clip / ||update - base||)``, and the norm before."""
    norm = delta_norm(update, base)
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    out: StateArrays = {}
    for k, ref in base.items():
        d = (update[k].astype(np.float64) - ref.astype(np.float64)) * factor
        out[k] = (ref.astype(np.float64) + d).astype(ref.dtype)
    return out, norm


def noise_rng() -> np.random.Generator:
    """Noise from the operating system's entropy: never seeded, never reproducible."""
    return np.random.default_rng(secrets.randbits(128))


def add_noise(
    total: dict[str, np.ndarray], sigma: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """``total + N(0, sigma^2)`` per coordinate (float64)."""
    return {k: v + rng.normal(0.0, sigma, size=v.shape) for k, v in total.items()}
