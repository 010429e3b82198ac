from __future__ import annotations

import numpy as np
import pytest

from fedchem.federation.aggregate import aggregate_weighted


def test_fedavg_is_the_exact_example_weighted_mean():
    a = {"w": np.array([[1.0, 2.0]], np.float32), "b": np.array([0.0], np.float32)}
    b = {"w": np.array([[3.0, 6.0]], np.float32), "b": np.array([4.0], np.float32)}
    out = aggregate_weighted([(a, 1.0), (b, 3.0)])
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], np.array([[2.5, 5.0]], np.float32))
    np.testing.assert_array_equal(out["b"], np.array([3.0], np.float32))


def test_fedavg_rejects_mismatched_updates():
    a = {"w": np.zeros(2, np.float32)}
    with pytest.raises(ValueError, match="names"):
        aggregate_weighted([(a, 1.0), ({"v": np.zeros(2, np.float32)}, 1.0)])
    with pytest.raises(ValueError, match="shapes"):
        aggregate_weighted([(a, 1.0), ({"w": np.zeros(3, np.float32)}, 1.0)])
    with pytest.raises(ValueError, match="positive"):
        aggregate_weighted([(a, 0.0)])
    with pytest.raises(ValueError, match="nothing"):
        aggregate_weighted([])
