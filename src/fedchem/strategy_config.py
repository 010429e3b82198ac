"""The federation's strategy settings, chosen by name in a config (``strategy: fedavgm`` or
``strategy: {name: fedavgm, momentum: 0.5}``). Plain pydantic: the strategies themselves (the
math) are :mod:`fedchem.federation.strategies`, which registers one per settings class.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Field

from fedchem.strict import StrictModel

__all__ = [
    "STRATEGY_NAMES",
    "FedAdamConfig",
    "FedAvgConfig",
    "FedAvgMConfig",
    "FedProxConfig",
    "FedYogiConfig",
    "KrumConfig",
    "MedianConfig",
    "StrategyConfig",
    "TrimmedMeanConfig",
]


class FedAvgConfig(StrictModel):
    """Example-weighted mean of the sites' models."""

    name: Literal["fedavg"] = "fedavg"


class FedAvgMConfig(StrictModel):
    """FedAvg with server momentum: ``v = momentum*v + delta``; ``x += server_lr*v``."""

    name: Literal["fedavgm"] = "fedavgm"
    server_lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.7, ge=0, lt=1, description="0.7: measured best on Tox21 + Lipo")


class FedProxConfig(StrictModel):
    """FedAvg with a proximal term ``mu/2*||w - w_global||^2`` in every site's loss."""

    name: Literal["fedprox"] = "fedprox"
    mu: float = Field(0.01, ge=0)


class _ServerOptimizerConfig(StrictModel):
    server_lr: float = Field(0.01, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0, description="adaptivity: added to sqrt(v)")


class FedAdamConfig(_ServerOptimizerConfig):
    """Adam at the server on the FedAvg pseudo-gradient (Reddi et al. 2021)."""

    name: Literal["fedadam"] = "fedadam"


class FedYogiConfig(_ServerOptimizerConfig):
    """Yogi at the server on the FedAvg pseudo-gradient (Reddi et al. 2021)."""

    name: Literal["fedyogi"] = "fedyogi"


class MedianConfig(StrictModel):
    """Coordinate-wise median (robust to a minority of bad updates)."""

    name: Literal["median"] = "median"


class TrimmedMeanConfig(StrictModel):
    """Coordinate-wise mean after cutting ``trim_fraction`` of values at each end."""

    name: Literal["trimmed_mean"] = "trimmed_mean"
    trim_fraction: float = Field(0.2, ge=0, lt=0.5)


class KrumConfig(StrictModel):
    """Multi-Krum: average the ``m`` updates closest to the others, ``n_byzantine`` tolerated."""

    name: Literal["krum"] = "krum"
    n_byzantine: int = Field(1, ge=0)
    m: int = Field(1, ge=1)


def _by_name(value: Any) -> Any:
    """``strategy: fedavg`` is ``strategy: {name: fedavg}`` (the defaults of that strategy)."""
    return {"name": value} if isinstance(value, str) else value


StrategyConfig = Annotated[
    FedAvgConfig
    | FedAvgMConfig
    | FedProxConfig
    | FedAdamConfig
    | FedYogiConfig
    | MedianConfig
    | TrimmedMeanConfig
    | KrumConfig,
    BeforeValidator(_by_name),
    Field(discriminator="name"),
]
#: the strategies by the name a federation config (or ``fedchem demo --strategy``) uses
STRATEGY_NAMES: tuple[str, ...] = tuple(
    c.model_fields["name"].default for c in get_args(get_args(StrategyConfig)[0])
)
