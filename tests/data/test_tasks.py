from __future__ import annotations

import numpy as np
import pandas as pd

from fedchem.config import TaskSpec
from fedchem.data.tasks import build_tasks

CATALOGUE = [
    TaskSpec(name="tox1", kind="classification"),
    TaskSpec(name="pot1", kind="classification"),
    TaskSpec(name="sol1", kind="regression"),
]
ASSAYS = pd.DataFrame(
    {
        "assay_id": ["tox1", "pot1", "sol1", "extra"],
        "assay_type": ["binary", "continuous", "continuous", "binary"],
        "threshold": [np.nan, 6.0, np.nan, np.nan],
        "direction": [None, "higher_is_active", None, None],
    }
)


def _rows(records):
    df = pd.DataFrame(records, columns=["mol", "assay_id", "value", "qualifier"])
    df.insert(0, "source_row", range(len(df)))
    return df


def test_labels_thresholds_replicates_and_censoring():
    rows = _rows(
        [
            (0, "tox1", 1.0, "="),
            (0, "tox1", 1.0, "="),
            (0, "tox1", 0.0, "="),  # majority -> 1
            (1, "tox1", 1.0, "="),
            (1, "tox1", 0.0, "="),  # tie -> dropped
            (0, "pot1", 6.5, "="),
            (1, "pot1", 5.0, "="),
            (2, "pot1", 7.0, ">"),  # 1, 0, 1
            (2, "pot1", 6.2, "<"),  # '<' above threshold -> ambiguous
            (0, "sol1", 1.0, "="),
            (0, "sol1", 3.0, "="),
            (0, "sol1", 2.5, "<"),  # median of '=' -> 2
            (1, "sol1", 4.0, "<"),
            (1, "sol1", 3.0, "<"),  # tightest upper bound -> < 3
            (2, "sol1", 1.0, "<"),
            (2, "sol1", 2.0, ">"),  # conflicting -> dropped
            (0, "extra", 1.0, "="),  # not in the catalogue
            (1, "tox1", 2.0, "="),  # binary value not 0/1
        ]
    )
    t = build_tasks(rows, ASSAYS, CATALOGUE, n_molecules=3)
    assert t.y[0, 0] == 1.0 and np.isnan(t.y[1, 0])
    assert t.y[0, 1] == 1.0 and t.y[1, 1] == 0.0 and t.y[2, 1] == 1.0
    assert t.y[0, 2] == 2.0 and t.censor[0, 2] == 0
    assert t.y[1, 2] == 3.0 and t.censor[1, 2] == -1
    assert np.isnan(t.y[2, 2])
    reasons = dict(zip(t.quarantine["source_row"], t.quarantine["reason"], strict=True))
    assert reasons[3] == reasons[4] == "replicate labels tie"
    assert reasons[8] == "censored value is ambiguous at the threshold"
    assert reasons[14] == reasons[15] == "conflicting censored replicates ('<' and '>')"
    assert reasons[16] == "assay is not in the federation's task catalogue"
    assert reasons[17] == "binary assay value is not 0 or 1"
    a = t.account
    assert a.rows_in == len(rows) == a.accepted + a.quarantined and a.quarantined == 7
