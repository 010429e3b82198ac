"""Aggregation math as pure functions over named arrays (no I/O, no state kept here).

Every function takes the sites' arrays as ``StateArrays`` (name → array) and returns new ones;
strategies in :mod:`fedchem.federation.strategies` compose them. Accumulation is float64 and
the result has the dtype of the first update.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fedchem.types import StateArrays

__all__ = [
    "aggregate_weighted",
    "coordinate_median",
    "krum_select",
    "server_adaptive_step",
    "server_momentum_step",
    "trimmed_mean",
]

F64 = npt.NDArray[np.float64]


def _check_same_names(updates: Sequence[StateArrays]) -> list[str]:
    if not updates:
        raise ValueError("nothing to aggregate")
    names = set(updates[0])
    for arrays in updates[1:]:
        if set(arrays) != names:
            raise ValueError("updates carry different parameter names")
        for n in names:
            if arrays[n].shape != updates[0][n].shape:
                raise ValueError(f"{n}: shapes differ across updates")
    return sorted(names)


def aggregate_weighted(updates: Iterable[tuple[StateArrays, float]]) -> StateArrays:
    """Example-weighted FedAvg: ``sum_i w_i * x_i / sum_i w_i`` per array.

    Every update must carry the same names and shapes; weights must be positive. The updates
    are taken one at a time, each once (a generator that reads each from storage as it is
    asked for keeps one update in memory beside the float64 running sum, not all of them).
    """
    acc: dict[str, F64] = {}
    dtypes: dict[str, np.dtype[Any]] = {}
    total = 0.0
    for arrays, w in updates:
        if not w > 0:
            raise ValueError(f"weights must be positive, got {w}")
        if not acc:
            for n in sorted(arrays):
                acc[n] = np.zeros(arrays[n].shape, dtype=np.float64)
                dtypes[n] = arrays[n].dtype
        elif set(arrays) != set(acc):
            raise ValueError("updates carry different parameter names")
        for n, a in acc.items():
            x = arrays[n]
            if x.shape != a.shape:
                raise ValueError(f"{n}: shapes differ across updates")
            _add_scaled(a, x, w)
            del x
        total += w
        del arrays  # the update is let go before the next is read
    if not acc:
        raise ValueError("nothing to aggregate")
    out: StateArrays = {}
    for n in list(acc):
        a = acc.pop(n)
        a /= total
        out[n] = a.astype(dtypes[n])
        del a
    return out


#: elements of an array scaled and added at a time by :func:`_add_scaled`
_BLOCK = 1 << 16


def _add_scaled(acc: F64, x: npt.NDArray[Any], w: float) -> None:
    """``acc += x * w`` a block at a time (``x * w`` in ``x``'s precision, cast to float64 as
    it is added): no temporary copy of a whole array."""
    flat, xs, wf = acc.reshape(-1), np.asarray(x).reshape(-1), np.float32(w)
    for at in range(0, flat.size, _BLOCK):
        flat[at : at + _BLOCK] += xs[at : at + _BLOCK] * wf


def _stack(updates: Sequence[StateArrays], name: str) -> F64:
    return np.stack([u[name].astype(np.float64) for u in updates])


def coordinate_median(updates: Sequence[StateArrays]) -> StateArrays:
    """Element-wise median over sites (Yin et al. 2018): robust to a minority of bad updates."""
    names = _check_same_names(updates)
    return {n: np.median(_stack(updates, n), axis=0).astype(updates[0][n].dtype) for n in names}


def trimmed_mean(updates: Sequence[StateArrays], trim_fraction: float) -> StateArrays:
    """Element-wise mean after dropping the ``trim_fraction`` largest and smallest values.

    ``k = floor(trim_fraction * n)`` values are cut at each end; at least one value must remain.
    """
    names = _check_same_names(updates)
    n = len(updates)
    k = int(np.floor(trim_fraction * n))
    if not 0 <= trim_fraction < 0.5 or n - 2 * k < 1:
        raise ValueError(f"trim_fraction {trim_fraction} leaves nothing of {n} updates")
    out: StateArrays = {}
    for name in names:
        s = np.sort(_stack(updates, name), axis=0)
        out[name] = s[k : n - k].mean(axis=0).astype(updates[0][name].dtype)
    return out


def _flat(u: StateArrays, names: Sequence[str]) -> F64:
    return np.concatenate([u[n].astype(np.float64).ravel() for n in names])


def krum_select(updates: Sequence[StateArrays], n_byzantine: int, m: int = 1) -> list[int]:
    """Indices of the ``m`` updates with the lowest Krum score (Blanchard et al. 2017).

    A score is the sum of squared distances to the ``n - f - 2`` nearest other updates, so an
    outlier far from the honest cluster scores high. Needs ``n >= f + 3`` updates.
    """
    names = _check_same_names(updates)
    n = len(updates)
    if n < n_byzantine + 3:
        raise ValueError(f"Krum with f={n_byzantine} needs at least {n_byzantine + 3} updates")
    if not 1 <= m <= n:
        raise ValueError(f"Krum m={m} must be between 1 and {n}")
    flat = np.stack([_flat(u, names) for u in updates])
    sq = (flat**2).sum(axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0)
    closest = n - n_byzantine - 2
    scores = [float(np.sort(np.delete(dist[i], i))[:closest].sum()) for i in range(n)]
    return [int(i) for i in np.argsort(scores, kind="stable")[:m]]


def server_momentum_step(
    current: StateArrays,
    target: StateArrays,
    momentum: StateArrays | None,
    server_lr: float,
    beta: float,
) -> tuple[StateArrays, StateArrays]:
    """FedAvgM (Hsu et al. 2019): ``v = beta * v + (target - x)``; ``x = x + server_lr * v``.

    ``target`` is the round's aggregate; returns the new model and the new momentum (float64).
    """
    names = _check_same_names([current, target])
    new_x: StateArrays = {}
    new_v: StateArrays = {}
    for n in names:
        x = current[n].astype(np.float64)
        delta = target[n].astype(np.float64) - x
        v = delta if momentum is None else beta * momentum[n].astype(np.float64) + delta
        new_v[n] = v
        new_x[n] = (x + server_lr * v).astype(current[n].dtype)
    return new_x, new_v


def server_adaptive_step(
    current: StateArrays,
    target: StateArrays,
    state: StateArrays | None,
    step: int,
    *,
    kind: str,
    server_lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[StateArrays, StateArrays]:
    """FedAdam / FedYogi (Reddi et al. 2021) on the pseudo-gradient ``target - x``.

    ``m = b1*m + (1-b1)*d``; Adam: ``v = b2*v + (1-b2)*d^2``; Yogi:
    ``v = v - (1-b2)*d^2*sign(v - d^2)``; ``x = x + lr * m_hat / (sqrt(v_hat) + tau)`` with bias
    correction at ``step`` (1-based). ``state`` holds ``m/<name>`` and ``v/<name>`` arrays.
    """
    if kind not in ("adam", "yogi"):
        raise ValueError(f"unknown adaptive server optimizer {kind!r}")
    names = _check_same_names([current, target])
    new_x: StateArrays = {}
    new_state: StateArrays = {}
    c1 = 1.0 - beta1**step
    c2 = 1.0 - beta2**step
    for n in names:
        x = current[n].astype(np.float64)
        d = target[n].astype(np.float64) - x
        m_old = state[f"m/{n}"] if state is not None else np.zeros_like(x)
        v_old = state[f"v/{n}"] if state is not None else np.zeros_like(x)
        m = beta1 * m_old + (1.0 - beta1) * d
        d2 = d * d
        if kind == "adam":
            v = beta2 * v_old + (1.0 - beta2) * d2
        else:
            v = v_old - (1.0 - beta2) * d2 * np.sign(v_old - d2)
        new_state[f"m/{n}"], new_state[f"v/{n}"] = m, v
        upd = server_lr * (m / c1) / (np.sqrt(np.maximum(v, 0.0) / c2) + tau)
        new_x[n] = (x + upd).astype(current[n].dtype)
    return new_x, new_state
