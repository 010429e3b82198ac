"""Model architectures by name: what a registered model version says it is, and how to build it.

A name in this registry (``fedchem.multitask``, the federation's own network) or an importable
``package.module:Class`` the operator installed. Every architecture takes the input width and
the number of tasks plus its own parameters, and maps a batch of sparse fingerprints
(``indices``, ``offsets``, optional ``per_sample_weights``, as ``torch.nn.EmbeddingBag`` takes
them) to ``B x T`` outputs: logits for classification tasks, standardized values for
regression ones (``y_mean``/``y_std`` buffers map them back; without them, 0 and 1).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from fedchem.config import ModelConfig
from fedchem.model.network import build_model

__all__ = ["architecture_names", "build_architecture", "register_architecture"]

#: (fp_size, n_tasks, parameters) -> an untrained module
Builder = Callable[[int, int, dict[str, Any]], nn.Module]

_REGISTRY: dict[str, Builder] = {}


def register_architecture(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"architecture {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


@register_architecture("fedchem.multitask")
def _multitask(fp_size: int, n_tasks: int, params: dict[str, Any]) -> nn.Module:
    """The federation's own network (``fedchem.model.network``), params a ``ModelConfig``."""
    return build_model(fp_size, n_tasks, ModelConfig.model_validate(params))


def architecture_names() -> list[str]:
    return sorted(_REGISTRY)


def build_architecture(name: str, fp_size: int, n_tasks: int, params: dict[str, Any]) -> nn.Module:
    """An untrained module of architecture ``name``; an unknown one is a clear error."""
    if name in _REGISTRY:
        return _REGISTRY[name](fp_size, n_tasks, params)
    if ":" not in name:
        raise ValueError(
            f"unknown architecture {name!r}: registered are {', '.join(architecture_names())}, "
            "or name an installed class as 'package.module:Class'"
        )
    module, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"architecture {name!r} cannot be imported: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"architecture {name!r} is not a torch.nn.Module class")
    try:
        module_obj: nn.Module = cls(fp_size=fp_size, n_tasks=n_tasks, **params)
    except TypeError as exc:
        raise ValueError(f"architecture {name!r} does not take these parameters: {exc}") from exc
    return module_obj
