from __future__ import annotations

import numpy as np
import pytest

from fedchem.federation.aggregate import (
    aggregate_weighted,
    coordinate_median,
    krum_select,
    server_adaptive_step,
    server_momentum_step,
    trimmed_mean,
)


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


def _u(*vals: float) -> dict[str, np.ndarray]:
    return {"w": np.array(vals, np.float32)}


def test_coordinate_median_and_trimmed_mean_ignore_an_outlier():
    ups = [_u(1, 10), _u(2, 20), _u(3, 30), _u(1000, -1000)]
    np.testing.assert_allclose(coordinate_median(ups)["w"], [2.5, 15.0])
    # 4 updates, trim 0.25 → cut 1 at each end per coordinate
    np.testing.assert_allclose(trimmed_mean(ups, 0.25)["w"], [2.5, 15.0])
    np.testing.assert_allclose(trimmed_mean(ups, 0.0)["w"], np.mean([u["w"] for u in ups], 0))
    with pytest.raises(ValueError, match="leaves nothing"):
        trimmed_mean(ups, 0.5)


def test_krum_picks_the_update_closest_to_the_cluster():
    ups = [_u(1.0, 1.0), _u(1.1, 0.9), _u(0.9, 1.05), _u(50.0, -50.0)]
    # f=1, n=4: a score is the squared distance to the nearest other update;
    # 0-2: 0.0125, 0-1: 0.02, 1-2: 0.0625 → 0 and 2 tie at 0.0125, the first wins
    assert krum_select(ups, n_byzantine=1) == [0]
    assert 3 not in krum_select(ups, n_byzantine=1, m=3)
    with pytest.raises(ValueError, match="at least 4"):
        krum_select(ups[:3], n_byzantine=1)


def test_server_momentum_matches_the_hand_computed_recursion():
    x0, v = _u(0.0), None
    x, v = server_momentum_step(x0, _u(1.0), v, server_lr=1.0, beta=0.9)
    np.testing.assert_allclose(x["w"], [1.0])  # first step: plain FedAvg
    x, v = server_momentum_step(x, _u(1.5), v, server_lr=1.0, beta=0.9)
    # delta 0.5, v = 0.9*1 + 0.5 = 1.4, x = 1 + 1.4
    np.testing.assert_allclose(x["w"], [2.4])
    np.testing.assert_allclose(v["w"], [1.4])
    x, _ = server_momentum_step(x0, _u(1.0), None, server_lr=0.5, beta=0.0)
    np.testing.assert_allclose(x["w"], [0.5])


@pytest.mark.parametrize("kind", ["adam", "yogi"])
def test_server_adaptive_first_step_moves_by_about_the_server_lr(kind: str):
    # with bias correction the first Adam/Yogi step is lr * d / (|d| + tau) ≈ lr * sign(d)
    x, state = server_adaptive_step(
        _u(0.0, 0.0),
        _u(2.0, -0.5),
        None,
        1,
        kind=kind,
        server_lr=0.1,
        beta1=0.9,
        beta2=0.99,
        tau=1e-9,
    )
    np.testing.assert_allclose(x["w"], [0.1, -0.1], rtol=1e-5)
    assert set(state) == {"m/w", "v/w"}
    with pytest.raises(ValueError, match="unknown"):
        server_adaptive_step(
            _u(0), _u(1), None, 1, kind="sgd", server_lr=1, beta1=0, beta2=0, tau=1
        )


def test_adam_and_yogi_second_moments_differ():
    kw = {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.5, "tau": 1e-3}
    _, sa = server_adaptive_step(_u(0.0), _u(1.0), None, 1, kind="adam", **kw)
    _, sy = server_adaptive_step(_u(0.0), _u(1.0), None, 1, kind="yogi", **kw)
    # from v=0 with d^2 = 1: Adam 0.5*0 + 0.5*1 = 0.5; Yogi 0 - 0.5*1*sign(0-1) = 0.5
    np.testing.assert_allclose(sa["v/w"], [0.5])
    np.testing.assert_allclose(sy["v/w"], [0.5])
    _, sa2 = server_adaptive_step(_u(0.0), _u(0.1), sa, 2, kind="adam", **kw)
    _, sy2 = server_adaptive_step(_u(0.0), _u(0.1), sy, 2, kind="yogi", **kw)
    # Adam: 0.5*0.5 + 0.5*0.01 = 0.255; Yogi: 0.5 - 0.5*0.01*sign(0.5-0.01) = 0.495
    np.testing.assert_allclose(sa2["v/w"], [0.255])
    np.testing.assert_allclose(sy2["v/w"], [0.495])


def test_fedavg_holds_the_running_sum_and_one_update_not_all_of_them():
    """Memory of a streamed FedAvg (tracemalloc: numpy's arrays are counted): the float64
    running sum (two models) and the update being added (one), whatever the number of
    updates; the old path (``sum += x * w``) also held a whole temporary per array."""
    import tracemalloc

    shape = (1024, 256)  # one model: 1 MiB of float32
    one = 4 * shape[0] * shape[1]

    def updates(n: int):
        for i in range(n):
            yield {"w": np.full(shape, float(i), dtype=np.float32)}, float(i + 1)

    peaks = []
    for n in (4, 32):
        tracemalloc.start()
        out = aggregate_weighted(updates(n))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peaks.append(peak)
        expect = sum(i * (i + 1) for i in range(n)) / sum(i + 1 for i in range(n))
        np.testing.assert_allclose(out["w"], expect, rtol=1e-6)
    assert max(peaks) < 3 * one + 2**20  # three models and a constant, not n of them
    assert abs(peaks[1] - peaks[0]) < 0.1 * one
