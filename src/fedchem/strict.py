"""The base of every configuration and wire message: unknown keys are errors, values frozen.

A typo in a YAML file, a flow parameter or a manifest is an error that names the key, never a
setting or a field silently dropped.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["StrictModel"]


class StrictModel(BaseModel):
    """``extra="forbid"``, ``frozen=True``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
