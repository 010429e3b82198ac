"""Type aliases shared across the library, with their shapes."""

from __future__ import annotations

from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = ["BoolArray", "Codec", "FloatArray", "IntArray", "PairedMetric", "StateArrays"]

FloatArray: TypeAlias = npt.NDArray[np.float32]
IntArray: TypeAlias = npt.NDArray[np.int64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
#: a model's parameters by name, as plain arrays (what travels to and from the hub)
StateArrays: TypeAlias = dict[str, npt.NDArray[np.floating]]
#: how a site's update travels: fp32 weights, or its delta in 16 or 8 bits (fedchem.model.compress)
Codec: TypeAlias = Literal["none", "fp16", "bf16", "int8"]
#: what a site compares a candidate and production on (fedchem.model.paired)
PairedMetric: TypeAlias = Literal["roc_auc", "rmse"]
