"""Shamir's t-out-of-n secret sharing over a prime field.

A secret is an integer below the field's prime (a 32-byte seed or X25519 private key fits:
the default prime is the Mersenne prime 2^521 - 1). :func:`split` draws a random polynomial
``f`` of degree ``t - 1`` with ``f(0) = secret`` (coefficients from the operating system's
CSPRNG, :mod:`secrets`) and gives participant ``x`` the point ``(x, f(x))``; any ``t`` points
recover the secret by Lagrange interpolation at 0 (:func:`combine`), fewer say nothing about
it. Points are participants' indices from 1 (0 would be the secret itself).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

__all__ = ["PRIME", "Share", "combine", "evaluate", "split"]

#: 2^521 - 1, a Mersenne prime: room for any 512-bit secret
PRIME = (1 << 521) - 1

Share = tuple[int, int]  # (x, f(x))


def evaluate(coefficients: Sequence[int], x: int, prime: int = PRIME) -> int:
    """``f(x)`` for ``f = c0 + c1 x + c2 x^2 + ...`` modulo ``prime`` (Horner)."""
    y = 0
    for c in reversed(coefficients):
        y = (y * x + c) % prime
    return y


def split(secret: int, n: int, t: int, prime: int = PRIME) -> dict[int, int]:
    """Shares of ``secret`` for participants 1..n, any ``t`` of which recover it."""
    if not 0 <= secret < prime:
        raise ValueError("the secret must be an integer in [0, prime)")
    if not 1 <= t <= n:
        raise ValueError(f"threshold {t} must be between 1 and the {n} participants")
    coefficients = [secret, *(secrets.randbelow(prime) for _ in range(t - 1))]
    return {x: evaluate(coefficients, x, prime) for x in range(1, n + 1)}


def combine(shares: Mapping[int, int], t: int, prime: int = PRIME) -> int:
    """The secret from at least ``t`` shares (x -> f(x)); Lagrange interpolation at 0."""
    if len(shares) < t:
        raise ValueError(f"{len(shares)} share(s), {t} needed to recover the secret")
    points = sorted(shares.items())[:t]
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs) or any(not 0 < x < prime for x in xs):
        raise ValueError("shares need distinct, non-zero points")
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (-xj) % prime
                den = den * (xi - xj) % prime
        secret = (secret + yi * num * pow(den, -1, prime)) % prime
    return secret
