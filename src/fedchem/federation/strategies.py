"""Federated strategies in Flower's shape: configure a round, aggregate replies, evaluate.

A strategy is chosen by name in the federation config (:class:`fedchem.config.StrategyConfig`).
It holds no hidden state: whatever must survive between rounds (server momentum, Adam moments)
is returned as ``StateArrays`` that the coordinator commits with the round, so a restarted
coordinator continues exactly where it stopped. The math lives in
:mod:`fedchem.federation.aggregate` as pure functions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedchem.config import (
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
from fedchem.federation.aggregate import (
    aggregate_weighted,
    coordinate_median,
    krum_select,
    server_adaptive_step,
    server_momentum_step,
    trimmed_mean,
)
from fedchem.federation.manifest import FitInstructions
from fedchem.types import StateArrays

__all__ = ["Aggregated", "SiteReply", "Strategy", "build_strategy", "weighted_valid_summary"]


@dataclass(frozen=True)
class SiteReply:
    """One site's accepted update for a round: its weights and its example count."""

    site: str
    arrays: StateArrays
    n_examples: int


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
        self, rnd: int, current: StateArrays, server_state: StateArrays,
        replies: Sequence[SiteReply], failures: Sequence[str],
    ) -> Aggregated:  # fmt: skip
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
        self, rnd: int, current: StateArrays, server_state: StateArrays,
        replies: Sequence[SiteReply],
    ) -> Aggregated:  # fmt: skip
        """The strategy's math over a non-empty list of replies."""

    def evaluate(self, rnd: int, summaries: dict[str, dict[str, float]],
                 weights: dict[str, int]) -> dict[str, float]:  # fmt: skip
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
    return aggregate_weighted([(r.arrays, float(r.n_examples)) for r in replies])


def _all(replies: Sequence[SiteReply]) -> tuple[str, ...]:
    return tuple(r.site for r in replies)


class FedAvg(Strategy):
    """McMahan et al. 2017: the example-weighted mean of the sites' models."""

    name = "fedavg"

    def combine(
        self, rnd: int, current: StateArrays, server_state: StateArrays,
        replies: Sequence[SiteReply],
    ) -> Aggregated:  # fmt: skip
        return Aggregated(_fedavg(replies), {}, _all(replies))


class FedProx(FedAvg):
    """Li et al. 2020: FedAvg plus a proximal term ``mu/2 * ||w - w_global||^2`` at the sites."""

    name = "fedprox"

    def __init__(self, cfg: FedProxConfig):
        self.cfg = cfg

    def configure_fit(self, rnd: int) -> FitInstructions:
        return FitInstructions(proximal_mu=self.cfg.mu)


class FedAvgM(Strategy):
    """Hsu et al. 2019: server momentum on the FedAvg pseudo-gradient."""

    name = "fedavgm"

    def __init__(self, cfg: FedAvgMConfig):
        self.cfg = cfg

    def combine(
        self, rnd: int, current: StateArrays, server_state: StateArrays,
        replies: Sequence[SiteReply],
    ) -> Aggregated:  # fmt: skip
        momentum = server_state or None
        x, v = server_momentum_step(
            current, _fedavg(replies), momentum, self.cfg.server_lr, self.cfg.momentum
        )
        return Aggregated(x, v, _all(replies))


class FedAdaptive(Strategy):
    """FedAdam / FedYogi (Reddi et al. 2021): an adaptive optimizer at the server."""

    def __init__(self, cfg: FedAdamConfig | FedYogiConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.kind = "adam" if cfg.name == "fedadam" else "yogi"

    def combine(
        self, rnd: int, current: StateArrays, server_state: StateArrays,
        replies: Sequence[SiteReply],
    ) -> Aggregated:  # fmt: skip
        c = self.cfg
        x, state = server_adaptive_step(
            current, _fedavg(replies), server_state or None, rnd, kind=self.kind,
            server_lr=c.server_lr, beta1=c.beta1, beta2=c.beta2, tau=c.tau,
        )  # fmt: skip
        return Aggregated(x, state, _all(replies))


class Median(Strategy):
    """Coordinate-wise median of the sites' models (unweighted, robust)."""

    name = "median"

    def combine(
        self, rnd: int, current: StateArrays, server_state: StateArrays,
        replies: Sequence[SiteReply],
    ) -> Aggregated:  # fmt: skip
        return Aggregated(coordinate_median([r.arrays for r in replies]), {}, _all(replies))


class TrimmedMean(Strategy):
    """Coordinate-wise trimmed mean (unweighted, robust)."""

    name = "trimmed_mean"

    def __init__(self, cfg: TrimmedMeanConfig):
        self.cfg = cfg

    def combine(
        self, rnd: int, current: StateArrays, server_state: StateArrays,
        replies: Sequence[SiteReply],
    ) -> Aggregated:  # fmt: skip
        merged = trimmed_mean([r.arrays for r in replies], self.cfg.trim_fraction)
        return Aggregated(merged, {}, _all(replies))


class Krum(Strategy):
    """(Multi-)Krum: FedAvg over the ``m`` updates closest to the others."""

    name = "krum"

    def __init__(self, cfg: KrumConfig):
        self.cfg = cfg

    def combine(
        self, rnd: int, current: StateArrays, server_state: StateArrays,
        replies: Sequence[SiteReply],
    ) -> Aggregated:  # fmt: skip
        chosen = krum_select([r.arrays for r in replies], self.cfg.n_byzantine, self.cfg.m)
        picked = [replies[i] for i in chosen]
        return Aggregated(_fedavg(picked), {}, _all(picked))


def build_strategy(cfg: StrategyConfig) -> Strategy:
    """The strategy named in the federation config."""
    if isinstance(cfg, FedAvgConfig):
        return FedAvg()
    if isinstance(cfg, FedProxConfig):
        return FedProx(cfg)
    if isinstance(cfg, FedAvgMConfig):
        return FedAvgM(cfg)
    if isinstance(cfg, FedAdamConfig | FedYogiConfig):
        return FedAdaptive(cfg)
    if isinstance(cfg, MedianConfig):
        return Median()
    if isinstance(cfg, TrimmedMeanConfig):
        return TrimmedMean(cfg)
    if isinstance(cfg, KrumConfig):
        return Krum(cfg)
    raise TypeError(f"no strategy for {type(cfg).__name__}")
