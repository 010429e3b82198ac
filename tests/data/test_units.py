"""Credible ranges: a value no assay in its unit produces is quarantined, never a label."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from fedchem.config import TaskSpec
from fedchem.data.tasks import build_tasks
from fedchem.data.units import DEFAULT_RANGE, credible_range

CATALOGUE = [TaskSpec(name="sol1", kind="regression"), TaskSpec(name="ic50", kind="regression")]


def _assays(**bounds: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "assay_id": ["sol1", "ic50"],
            "assay_type": ["continuous", "continuous"],
            "threshold": [np.nan, np.nan],
            "direction": [None, None],
            "unit": ["log", "nM"],
            **bounds,
        }
    )


def _rows(records: list[tuple[int, str, float, str]]) -> pd.DataFrame:
    df = pd.DataFrame(records, columns=["mol", "assay_id", "value", "unit"])
    df.insert(0, "source_row", range(len(df)))
    df["qualifier"] = "="
    return df


def test_units_have_default_ranges():
    assert credible_range("log") == (-20.0, 20.0) and credible_range(" pIC50 ") == (0.0, 15.0)
    assert credible_range("nM") == credible_range("nm") == (0.0, 1e10)
    assert credible_range("%") == (-200.0, 300.0)
    assert credible_range("mL/min/kg") == credible_range(None) == DEFAULT_RANGE


def test_values_outside_the_credible_range_are_quarantined_and_no_cast_overflows():
    rows = _rows(
        [
            (0, "sol1", -1e308, ""),  # the hand-made case: a log unit, -1e308
            (0, "sol1", -2.5, ""),
            (1, "sol1", 25.0, "log"),
            (1, "ic50", -3.0, ""),  # a negative concentration
            (1, "ic50", 120.0, ""),
            (2, "ic50", 1e300, "nM"),
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "overflow encountered in cast" would fail here
        t = build_tasks(rows, _assays(), CATALOGUE, n_molecules=3)
    reasons = dict(zip(t.quarantine["source_row"], t.quarantine["reason"], strict=True))
    assert reasons == {
        0: "value -1e+308 is outside the credible range [-20, 20] for unit 'log' (an assay's "
        "own range: min_value/max_value in the assay table)",
        2: "value 25 is outside the credible range [-20, 20] for unit 'log' (an assay's own "
        "range: min_value/max_value in the assay table)",
        3: "value -3 is outside the credible range [0, 1e+10] for unit 'nM' (an assay's own "
        "range: min_value/max_value in the assay table)",
        5: "value 1e+300 is outside the credible range [0, 1e+10] for unit 'nM' (an assay's own "
        "range: min_value/max_value in the assay table)",
    }
    assert t.account.rows_in == 6 == t.account.accepted + t.account.quarantined
    assert np.isfinite(t.y[np.isfinite(t.y)]).all()
    assert t.y[0, 0] == pytest.approx(-2.5) and t.y[1, 1] == pytest.approx(120.0)


def test_an_assay_sets_its_own_range_in_the_assay_table():
    rows = _rows([(0, "sol1", 25.0, ""), (1, "sol1", 4.0, ""), (0, "ic50", 50.0, "")])
    t = build_tasks(
        rows, _assays(min_value=[0.0, np.nan], max_value=[30.0, 40.0]), CATALOGUE, n_molecules=2
    )
    reasons = dict(zip(t.quarantine["source_row"], t.quarantine["reason"], strict=True))
    assert list(reasons) == [2] and "[0, 40] for unit 'nM'" in reasons[2]  # its own maximum
    assert t.y[0, 0] == pytest.approx(25.0)  # beyond the unit's 20, within the assay's 30
