"""Credible ranges of measured values, by unit: a value outside its range is an error, not a label.

A site's export can hold a value no assay produces (``-1e308`` in a pIC50 column, a
concentration below zero), which the contract's number check lets through because it is a
finite number. Every unit gets a default range here; an assay narrows or widens it with the
``min_value`` / ``max_value`` columns of the site's assay table, and a contract may bound the
``value`` column itself (``logicalTypeOptions``). Any range is also within a 32-bit float, so
the cast to the training labels never overflows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["DEFAULT_RANGE", "FLOAT32_MAX", "UNIT_RANGES", "credible_range", "range_columns"]

FLOAT32_MAX = float(np.finfo(np.float32).max)

_LOG = (-20.0, 20.0)  # log10 of anything a drug-discovery assay measures
_P_VALUE = (0.0, 15.0)  # -log10(molar): pIC50, pKi and the like
_PERCENT = (-200.0, 300.0)  # inhibition and the like over- and undershoot, not by 10x

#: unit (compared case-insensitively, spaces ignored) -> (low, high), both inclusive
UNIT_RANGES: dict[str, tuple[float, float]] = {
    **{u: _LOG for u in ("log", "log10", "logd", "logp", "logs", "log(m)", "log(mol/l)")},
    **{u: _P_VALUE for u in ("pic50", "pec50", "pki", "pkd", "pxc50", "pchembl", "-log(m)")},
    **{u: _PERCENT for u in ("%", "percent", "pct")},
    "pm": (0.0, 1e13),
    "nm": (0.0, 1e10),
    "um": (0.0, 1e7),
    "µm": (0.0, 1e7),
    "μm": (0.0, 1e7),
    "mm": (0.0, 1e4),
    "m": (0.0, 10.0),
    "ng/ml": (0.0, 1e9),
    "ug/ml": (0.0, 1e6),
    "µg/ml": (0.0, 1e6),
    "mg/ml": (0.0, 1e3),
    "mg/l": (0.0, 1e6),
}
#: any other unit, or none: wide, but far from what a float32 cannot hold
DEFAULT_RANGE = (-1e9, 1e9)


def credible_range(unit: str | None) -> tuple[float, float]:
    """The default credible range of values in ``unit`` (``DEFAULT_RANGE`` if unknown)."""
    key = "".join((unit or "").split()).casefold()
    return UNIT_RANGES.get(key, DEFAULT_RANGE)


def range_columns(
    units: pd.Series, low: pd.Series, high: pd.Series
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the credible (low, high): an assay's own bound where it has one, else its
    unit's default; always within float32."""
    defaults = [credible_range(u if isinstance(u, str) else None) for u in units]
    lo = np.array([d[0] for d in defaults], dtype=np.float64)
    hi = np.array([d[1] for d in defaults], dtype=np.float64)
    own_lo, own_hi = low.to_numpy(dtype=np.float64), high.to_numpy(dtype=np.float64)
    lo = np.where(np.isfinite(own_lo), own_lo, lo)
    hi = np.where(np.isfinite(own_hi), own_hi, hi)
    return np.clip(lo, -FLOAT32_MAX, FLOAT32_MAX), np.clip(hi, -FLOAT32_MAX, FLOAT32_MAX)
