"""Federated strategies in Flower's shape: configure a round, aggregate replies, evaluate.

A strategy is chosen by name in the federation config (``strategy: {name: fedavgm, ...}`` or
just ``strategy: fedavgm``): its settings class is in :mod:`fedchem.strategy_config`, and
:func:`register_strategy` maps each settings class to the strategy it builds. A strategy holds
no hidden state: whatever must survive between rounds (server momentum, Adam moments) is
returned as ``StateArrays`` that the coordinator commits with the round, so a restarted
coordinator continues exactly where it stopped. The math lives in
:mod:`fedchem.federation.aggregate` as pure functions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from fedchem.federation.aggregate import (
    aggregate_weighted,
    coordinate_median,
    krum_select,
    server_adaptive_step,
    server_momentum_step,
    trimmed_mean,
)
from fedchem.messages import FitInstructions
from fedchem.strategy_config import (
    FedAdamConfig,
    FedAvgConfig,
    FedAvgMConfig,
    FedProxConfig,
    FedYogiConfig,
    KrumConfig,
    MedianConfig,
    StrategyConfig,
    TrimmedMeanConfig,
)
from fedchem.strict import StrictModel
from fedchem.types import StateArrays

__all__ = [
    "Aggregated",
    "SiteLevelDP",
    "SiteReply",
    "Strategy",
    "build_strategy",
    "register_strategy",
    "weighted_valid_summary",
]

_S = TypeVar("_S", bound="Strategy")
_REGISTRY: dict[type[StrictModel], Callable[[Any], Strategy]] = {}


def register_strategy(cfg_type: type[StrictModel]) -> Callable[[type[_S]], type[_S]]:
    """Decorator: the strategy class that ``cfg_type`` (its settings) builds."""

    def deco(cls: type[_S]) -> type[_S]:
        _REGISTRY[cfg_type] = cls
        return cls

    return deco


def build_strategy(cfg: StrategyConfig) -> Strategy:
    """The strategy named in the federation config, built from its settings."""
    try:
        return _REGISTRY[type(cfg)](cfg)
    except KeyError:
        raise TypeError(f"no strategy registered for {type(cfg).__name__}") from None


# ---------------------------------------------------------------------------- strategies


class SiteReply:
    """One site's accepted update for a round: its weights and its example count. ``arrays``
    is the weights, or a function that reads them (from the hub, checked against their hash)
    each time they are asked for: a strategy that aggregates a sum then holds one update at a
    time; one that needs every update at once (median, trimmed mean, Krum) reads them all."""

    def __init__(
        self, site: str, arrays: StateArrays | Callable[[], StateArrays], n_examples: int
    ) -> None:
        self.site, self.n_examples = site, n_examples
        self._arrays = arrays

    @property
    def arrays(self) -> StateArrays:
        return self._arrays() if callable(self._arrays) else self._arrays


@dataclass(frozen=True)
class Aggregated:
    """What a strategy returns for a round: the next global model and the server state."""

    arrays: StateArrays
    server_state: StateArrays
    used_sites: tuple[str, ...]


class Strategy(ABC):
    """Flower-like: ``configure_fit`` → sites train → ``aggregate_fit`` → ``evaluate``."""

    name: str = "strategy"

    def configure_fit(self, rnd: int) -> FitInstructions:
        """What every site applies when training round ``rnd`` (plain FedAvg: nothing extra)."""
        return FitInstructions()

    def aggregate_fit(
        self,
        rnd: int,
        current: StateArrays,
        server_state: StateArrays,
        replies: Sequence[SiteReply],
        failures: Sequence[str],
    ) -> Aggregated:
        """Combine the replies of round ``rnd`` into the next global model.

        ``failures`` names the sites that did not reply (or whose update was rejected): a
        strategy may refuse to proceed by overriding this; the built-in ones aggregate whoever
        replied. No reply at all is always an error.
        """
        if not replies:
            raise ValueError(f"round {rnd}: no site replied; nothing to aggregate")
        return self.combine(rnd, current, server_state, replies)

    @abstractmethod
    def combine(
        self,
        rnd: int,
        current: StateArrays,
        server_state: StateArrays,
        replies: Sequence[SiteReply],
    ) -> Aggregated:
        """The strategy's math over a non-empty list of replies."""

    def evaluate(
        self, rnd: int, summaries: dict[str, dict[str, float]], weights: dict[str, int]
    ) -> dict[str, float]:
        """The round's validation score: the sites' summaries, weighted by their examples."""
        return weighted_valid_summary(summaries, weights)


def weighted_valid_summary(
    summaries: dict[str, dict[str, float]], weights: dict[str, int]
) -> dict[str, float]:
    """Example-weighted mean of each ``mean_*`` metric over the sites that report it."""
    keys = sorted({k for s in summaries.values() for k in s if k.startswith("mean_")})
    out: dict[str, float] = {}
    for k in keys:
        pairs = [
            (s[k], weights.get(site, 0))
            for site, s in summaries.items()
            if k in s and np.isfinite(s[k]) and weights.get(site, 0) > 0
        ]
        if pairs:
            vals, ws = zip(*pairs, strict=True)
            out[k] = float(np.average(vals, weights=ws))
    return out


def _fedavg(replies: Sequence[SiteReply]) -> StateArrays:
    return aggregate_weighted((r.arrays, float(r.n_examples)) for r in replies)


def _all(replies: Sequence[SiteReply]) -> tuple[str, ...]:
    return tuple(r.site for r in replies)


@register_strategy(FedAvgConfig)
class FedAvg(Strategy):
    """McMahan et al. 2017: the example-weighted mean of the sites' models."""

    name = "fedavg"

    def __init__(self, cfg: FedAvgConfig | FedProxConfig | None = None):
        self.cfg = cfg or FedAvgConfig()

    def combine(
        self,
        rnd: int,
        current: StateArrays,
        server_state: StateArrays,
        replies: Sequence[SiteReply],
    ) -> Aggregated:
        return Aggregated(_fedavg(replies), {}, _all(replies))


@register_strategy(FedProxConfig)
class FedProx(FedAvg):
    """Li et al. 2020: FedAvg plus a proximal term ``mu/2 * ||w - w_global||^2`` at the sites."""

    name = "fedprox"

    def __init__(self, cfg: FedProxConfig):
        self.prox = cfg

    def configure_fit(self, rnd: int) -> FitInstructions:
        return FitInstructions(proximal_mu=self.prox.mu)


@register_strategy(FedAvgMConfig)
class FedAvgM(Strategy):
    """Hsu et al. 2019: server momentum on the FedAvg pseudo-gradient."""

    name = "fedavgm"

    def __init__(self, cfg: FedAvgMConfig):
        self.cfg = cfg

    def combine(
        self,
        rnd: int,
        current: StateArrays,
        server_state: StateArrays,
        replies: Sequence[SiteReply],
    ) -> Aggregated:
        momentum = server_state or None
        x, v = server_momentum_step(
            current, _fedavg(replies), momentum, self.cfg.server_lr, self.cfg.momentum
        )
        return Aggregated(x, v, _all(replies))


@register_strategy(FedYogiConfig)
@register_strategy(FedAdamConfig)
class FedAdaptive(Strategy):
    """FedAdam / FedYogi (Reddi et al. 2021): an adaptive optimizer at the server."""

    def __init__(self, cfg: FedAdamConfig | FedYogiConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.kind = "adam" if cfg.name == "fedadam" else "yogi"

    def combine(
        self,
        rnd: int,
        current: StateArrays,
        server_state: StateArrays,
        replies: Sequence[SiteReply],
    ) -> Aggregated:
        c = self.cfg
        x, state = server_adaptive_step(
            current,
            _fedavg(replies),
            server_state or None,
            rnd,
            kind=self.kind,
            server_lr=c.server_lr,
            beta1=c.beta1,
            beta2=c.beta2,
            tau=c.tau,
        )
        return Aggregated(x, state, _all(replies))


@register_strategy(MedianConfig)
class Median(Strategy):
    """Coordinate-wise median of the sites' models (unweighted, robust)."""

    name = "median"

    def __init__(self, cfg: MedianConfig):
        self.cfg = cfg

    def combine(
        self,
        rnd: int,
        current: StateArrays,
        server_state: StateArrays,
        replies: Sequence[SiteReply],
    ) -> Aggregated:
        return Aggregated(coordinate_median([r.arrays for r in replies]), {}, _all(replies))


@register_strategy(TrimmedMeanConfig)
class TrimmedMean(Strategy):
    """Coordinate-wise trimmed mean (unweighted, robust)."""

    name = "trimmed_mean"

    def __init__(self, cfg: TrimmedMeanConfig):
        self.cfg = cfg

    def combine(
        self,
        rnd: int,
        current: StateArrays,
        server_state: StateArrays,
        replies: Sequence[SiteReply],
    ) -> Aggregated:
        merged = trimmed_mean([r.arrays for r in replies], self.cfg.trim_fraction)
        return Aggregated(merged, {}, _all(replies))


@register_strategy(KrumConfig)
class Krum(Strategy):
    """(Multi-)Krum: FedAvg over the ``m`` updates closest to the others."""

    name = "krum"

    def __init__(self, cfg: KrumConfig):
        self.cfg = cfg

    def combine(
        self,
        rnd: int,
        current: StateArrays,
        server_state: StateArrays,
        replies: Sequence[SiteReply],
    ) -> Aggregated:
        chosen = krum_select([r.arrays for r in replies], self.cfg.n_byzantine, self.cfg.m)
        picked = [replies[i] for i in chosen]
        return Aggregated(_fedavg(picked), {}, _all(picked))


class SiteLevelDP(Strategy):
    """DP-FedAvg around a strategy that aggregates a sum (Flower's
    ``DifferentialPrivacyServerSideFixedClipping`` shape, with the clipping at the sites).

    Every site clipped its delta to L2 norm ``clip`` before it left (the screen rejected any
    that did not); the coordinator adds ``N(0, (noise_multiplier * clip)^2)`` to the sum of the
    deltas, per coordinate, divides by the number of replies (an unweighted mean: example
    weights would let a site's size change the sensitivity) and hands the noisy mean to the
    wrapped strategy as the round's single aggregate. ``frozen``: arrays nobody trains (the
    target-scaling buffers) get neither delta nor noise. The noise comes from the operating
    system's entropy and is not reproducible.
    """

    def __init__(
        self,
        inner: Strategy,
        clip: float,
        noise_multiplier: float,
        frozen: Sequence[str] = (),
        rng: np.random.Generator | None = None,
    ) -> None:
        from fedchem.trust.dp import noise_rng

        self.inner, self.clip, self.z = inner, clip, noise_multiplier
        self.frozen = frozenset(frozen)
        self.rng = rng or noise_rng()
        self.name = inner.name

    def configure_fit(self, rnd: int) -> FitInstructions:
        return self.inner.configure_fit(rnd)

    def combine(
        self,
        rnd: int,
        current: StateArrays,
        server_state: StateArrays,
        replies: Sequence[SiteReply],
    ) -> Aggregated:
        from fedchem.trust.dp import add_noise, clip_delta

        total: dict[str, np.ndarray] = {
            k: np.zeros(v.shape, np.float64) for k, v in current.items() if k not in self.frozen
        }
        for r in replies:
            clipped, _ = clip_delta(r.arrays, current, self.clip)  # a no-op for a screened one
            for k in total:
                total[k] += clipped[k].astype(np.float64) - current[k].astype(np.float64)
        noisy = add_noise(total, self.z * self.clip, self.rng)
        target: StateArrays = dict(current)
        for k, v in noisy.items():
            target[k] = (current[k].astype(np.float64) + v / len(replies)).astype(current[k].dtype)
        out = self.inner.combine(rnd, current, server_state, [SiteReply("dp-mean", target, 1)])
        return Aggregated(out.arrays, out.server_state, _all(replies))

    def evaluate(
        self, rnd: int, summaries: dict[str, dict[str, float]], weights: dict[str, int]
    ) -> dict[str, float]:
        return self.inner.evaluate(rnd, summaries, weights)
