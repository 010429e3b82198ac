from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from fedchem.config import FaultConfig
from fedchem.federation.commits import commit_round, read_round
from fedchem.federation.coordinator import aggregate_round
from fedchem.federation.strategies import SiteReply, build_strategy
from fedchem.messages import EvalReport, SiteUpdateManifest
from fedchem.model.state import dump_arrays
from fedchem.storage.hub import HubLayout, HubStore
from fedchem.strategy_config import STRATEGY_NAMES, StrategyConfig

ADAPTER: TypeAdapter[StrategyConfig] = TypeAdapter(StrategyConfig)


def _arr(v: float) -> dict[str, np.ndarray]:
    return {"w": np.full(3, v, np.float32)}


def _v(*xs: float) -> dict[str, np.ndarray]:
    return {"w": np.array(xs, np.float64)}


# Two rounds from x0 = (0, 0). Round 1: a = (1, 2) with 1 example, b = (3, -2) with 3;
# FedAvg's target (1*1 + 3*3)/4, (1*2 - 3*2)/4 = (2.5, -1). Round 2: a = (4, 1), b = (4, -1)
# with the same weights: target (4, -0.5).
ROUND1 = [("a", _v(1, 2), 1), ("b", _v(3, -2), 3)]
ROUND2 = [("a", _v(4, 1), 1), ("b", _v(4, -1), 3)]

#: strategy settings -> the global model after round 1 and after round 2, worked by hand
#: (the arithmetic in each comment; adaptive ones with b1 = b2 = 0.5, tau = 1, lr = 1)
BY_HAND: dict[str, tuple[dict[str, object], tuple[float, float], tuple[float, float]]] = {
    # the targets themselves
    "fedavg": ({"name": "fedavg"}, (2.5, -1.0), (4.0, -0.5)),
    # FedProx aggregates as FedAvg (its term is in the sites' loss)
    "fedprox": ({"name": "fedprox", "mu": 0.1}, (2.5, -1.0), (4.0, -0.5)),
    # v1 = d1 = (2.5, -1); x1 = 0.5 * v1 = (1.25, -0.5).
    # d2 = (4, -0.5) - x1 = (2.75, 0); v2 = 0.5 * v1 + d2 = (4, -0.5); x2 = x1 + 0.5 * v2
    "fedavgm": (
        {"name": "fedavgm", "server_lr": 0.5, "momentum": 0.5},
        (1.25, -0.5),
        (3.25, -0.75),
    ),
    # round 1: m = 0.5 d = (1.25, -0.5), v = 0.5 d^2 = (3.125, 0.5); bias-corrected m^ = d,
    # v^ = d^2: x1 = d / (|d| + 1) = (2.5 / 3.5, -1 / 2).
    # round 2: d2 = (4 - 5/7, 0); m2 = (0.625 + 0.5 * 23/7, -0.25) = (2.2678571, -0.25);
    # v2 = (1.5625 + 0.5 * (23/7)^2, 0.25) = (6.9604592, 0.25); m^ = m2 / 0.75, v^ = v2 / 0.75;
    # x2 = x1 + m^ / (sqrt(v^) + 1) = (1.4615678, -0.5 - (1/3) / (sqrt(1/3) + 1))
    "fedadam": (
        {"name": "fedadam", "server_lr": 1.0, "beta1": 0.5, "beta2": 0.5, "tau": 1.0},
        (0.7142857142857143, -0.5),
        (1.46156780516322, -0.7113248654051871),
    ),
    # Yogi: round 1 as Adam (v0 = 0). Round 2: v2 = v1 - 0.5 d2^2 sign(v1 - d2^2) =
    # (3.125 + 0.5 * (23/7)^2, 0.5 - 0) = (8.5229592, 0.5), so x2 = (1.4060675, -0.6835034)
    "fedyogi": (
        {"name": "fedyogi", "server_lr": 1.0, "beta1": 0.5, "beta2": 0.5, "tau": 1.0},
        (0.7142857142857143, -0.5),
        (1.4060675198029604, -0.683503419072274),
    ),
}


@pytest.mark.parametrize("name", sorted(BY_HAND))
def test_each_strategy_over_two_rounds_gives_the_values_worked_by_hand(name: str) -> None:
    settings, want1, want2 = BY_HAND[name]
    strategy = build_strategy(ADAPTER.validate_python(settings))
    x, state = _v(0, 0), {}
    for rnd, ups, want in ((1, ROUND1, want1), (2, ROUND2, want2)):
        replies = [SiteReply(s, a, n) for s, a, n in ups]
        out = strategy.aggregate_fit(rnd, x, state, replies, failures=[])
        np.testing.assert_allclose(out.arrays["w"], want, rtol=1e-12, atol=1e-12)
        assert out.used_sites == ("a", "b")
        x, state = out.arrays, out.server_state


def test_the_robust_strategies_give_the_values_worked_by_hand() -> None:
    def run(settings: dict[str, object], ups: list[tuple[str, tuple[float, float], int]]):
        replies = [SiteReply(s, _v(*v), n) for s, v, n in ups]
        return build_strategy(ADAPTER.validate_python(settings)).aggregate_fit(
            1, _v(0, 0), {}, replies, failures=[]
        )

    # coordinate-wise, unweighted: median of (1, 2, 10) and of (5, -1, 0)
    out = run({"name": "median"}, [("a", (1, 5), 1), ("b", (2, -1), 100), ("c", (10, 0), 1)])
    np.testing.assert_array_equal(out.arrays["w"], [2.0, 0.0])
    # trim 0.2 of 5: floor(1.0) = 1 cut at each end; mean of (2, 3, 4) and of (-1, 0, 1)
    five = [("a", (1, 0), 1), ("b", (2, 1), 1), ("c", (3, -1), 1), ("d", (4, 9), 1)]
    out = run({"name": "trimmed_mean", "trim_fraction": 0.2}, [*five, ("e", (100, -50), 1)])
    np.testing.assert_allclose(out.arrays["w"], [3.0, 0.0], atol=1e-15)
    # Krum, f = 1 of n = 5: score = sum of the n - f - 2 = 2 smallest squared distances.
    # a (0,0) b (1,0) c (0,2) d (3,3) e (20,20): a 1+4 = 5, b 1+5 = 6, c 4+5 = 9,
    # d 10+13 = 23, e 578+724; m = 2 keeps a and b, FedAvg by examples: (1*0 + 3*1)/4 = 0.75
    pts = {"a": (0, 0), "b": (1, 0), "c": (0, 2), "d": (3, 3), "e": (20, 20)}
    ups = [(s, p, 3 if s == "b" else 1) for s, p in pts.items()]
    out = run({"name": "krum", "n_byzantine": 1, "m": 2}, ups)
    assert out.used_sites == ("a", "b")
    np.testing.assert_allclose(out.arrays["w"], [0.75, 0.0])


def test_every_named_strategy_has_values_worked_by_hand() -> None:
    robust = {"median", "trimmed_mean", "krum"}
    assert set(STRATEGY_NAMES) == set(BY_HAND) | robust


def test_strategy_config_errors_name_the_problem():
    with pytest.raises(ValidationError, match="fedavgx"):
        ADAPTER.validate_python({"name": "fedavgx"})
    with pytest.raises(ValidationError, match="server_lrr"):
        ADAPTER.validate_python({"name": "fedavgm", "server_lrr": 1.0})
    with pytest.raises(ValidationError, match="momentum"):
        ADAPTER.validate_python({"name": "fedavgm", "momentum": 1.0})


def test_fedprox_asks_sites_for_the_proximal_term():
    assert (
        build_strategy(ADAPTER.validate_python({"name": "fedavg"})).configure_fit(1).proximal_mu
        == 0
    )
    prox = build_strategy(ADAPTER.validate_python({"name": "fedprox", "mu": 0.1}))
    assert prox.configure_fit(3).proximal_mu == 0.1


def _publish(
    hub: HubStore, run: str, rnd: int, site: str, arrays: dict, n: int, base: str
) -> SiteUpdateManifest:
    layout = HubLayout(run)
    data = dump_arrays(arrays)
    hub.put_bytes(layout.site_update(rnd, site), data)
    valid = EvalReport(
        site=site,
        model="m",
        fold="valid",
        n_molecules=n,
        per_task={},
        summary={"mean_roc_auc": 0.5 + 0.1 * n / 10},
    )
    return SiteUpdateManifest(
        run_id=run,
        round=rnd,
        site=site,
        n_examples=n,
        n_labels=n,
        base_sha256=base,
        update_path=layout.site_update(rnd, site),
        update_sha256=hashlib.sha256(data).hexdigest(),
        train_loss=0.1,
        train_seconds=0.1,
        device="cpu",
        valid=valid,
    )


def test_server_momentum_survives_between_rounds_on_the_hub(tmp_path: Path):
    hub, run = HubStore(str(tmp_path)), "r1"
    m0 = commit_round(hub, run, 0, dump_arrays(_arr(0.0)), "init", {}, {})
    fedavgm = build_strategy(ADAPTER.validate_python({"name": "fedavgm", "momentum": 0.5}))
    ups = [
        _publish(hub, run, 1, "a", _arr(1.0), 10, m0.global_sha256),
        _publish(hub, run, 1, "b", _arr(3.0), 30, m0.global_sha256),
    ]
    m1 = aggregate_round(hub, run, 1, ups, fedavgm)
    _, g1, state1 = read_round(hub, run, 1)
    np.testing.assert_allclose(g1["w"], 2.5)  # first step = FedAvg
    np.testing.assert_allclose(state1["w"], 2.5)
    assert m1.aggregation == "fedavgm" and m1.server_state_sha256
    assert m1.valid_score["mean_roc_auc"] == pytest.approx((0.6 * 10 + 0.8 * 30) / 40)
    ups = [_publish(hub, run, 2, "a", _arr(3.5), 10, m1.global_sha256)]
    aggregate_round(hub, run, 2, ups, fedavgm, failures=["b"])
    m2, g2, state2 = read_round(hub, run, 2)
    # delta 1.0, v = 0.5 * 2.5 + 1.0 = 2.25, x = 2.5 + 2.25
    np.testing.assert_allclose(g2["w"], 4.75)
    np.testing.assert_allclose(state2["w"], 2.25)
    assert m2.missing == ["b"] and m2.sites == ["a"] and m2.missing_reasons == {"b": "no reply"}


def test_a_round_without_an_accepted_update_keeps_the_model_and_says_why(tmp_path: Path):
    hub, run = HubStore(str(tmp_path)), "r1"
    m0 = commit_round(hub, run, 0, dump_arrays(_arr(0.0)), "init", {}, {})
    stale = _publish(hub, run, 1, "a", _arr(1.0), 10, "0" * 64)
    m1 = aggregate_round(hub, run, 1, [stale])
    assert m1.outcome == "failed" and "stale update" in m1.rejected["a"]
    good = _publish(hub, run, 1, "a", _arr(1.0), 10, m0.global_sha256)
    hub.put_bytes(good.update_path, dump_arrays(_arr(9.0)))
    m1 = aggregate_round(hub, run, 1, [good])
    assert m1.outcome == "failed" and "does not match its manifest" in m1.rejected["a"]
    _, g1, _ = read_round(hub, run, 1)
    np.testing.assert_array_equal(g1["w"], 0.0)  # round 0's model, unchanged
    assert m1.global_sha256 == m0.global_sha256


def test_krum_records_whom_it_left_out(tmp_path: Path):
    hub, run = HubStore(str(tmp_path)), "r1"
    m0 = commit_round(hub, run, 0, dump_arrays(_arr(0.0)), "init", {}, {})
    vals = {"a": 1.0, "b": 1.1, "c": 0.9, "d": 80.0}
    ups = [_publish(hub, run, 1, s, _arr(v), 10, m0.global_sha256) for s, v in vals.items()]
    krum = build_strategy(ADAPTER.validate_python({"name": "krum", "n_byzantine": 1, "m": 3}))
    # the update screen would reject d's far-off update first; let Krum see it here
    m1 = aggregate_round(hub, run, 1, ups, krum, faults=FaultConfig(max_norm_ratio=1e6))
    assert m1.excluded == ["d"] and m1.sites == ["a", "b", "c"]
    np.testing.assert_allclose(read_round(hub, run, 1)[1]["w"], 1.0, rtol=1e-6)


def test_no_reply_is_an_error_for_every_strategy():
    for name in STRATEGY_NAMES:
        strategy = build_strategy(ADAPTER.validate_python({"name": name}))
        with pytest.raises(ValueError, match="no site replied"):
            strategy.aggregate_fit(2, _arr(0.0), {}, [], failures=["site-a", "site-b"])


def test_the_best_round_by_validation_is_recorded(tmp_path: Path):
    from fedchem.federation.commits import best_round, record_best_round

    hub, run = HubStore(str(tmp_path)), "r1"
    m0 = commit_round(hub, run, 0, dump_arrays(_arr(0.0)), "init", {}, {})
    ms = [m0]
    for rnd, auc in ((1, 0.61), (2, 0.70), (3, 0.66)):
        ms.append(
            commit_round(
                hub,
                run,
                rnd,
                dump_arrays(_arr(float(rnd))),
                "fedavg",
                {"a": 1},
                {},
                valid_score={"mean_roc_auc": auc, "mean_rmse": 1.0},
            )
        )
    assert best_round(ms) == (2, "mean_roc_auc", 0.70)
    doc = record_best_round(hub, run, ms)
    assert (
        hub.get_json(f"runs/{run}/best.json") == doc and doc["global_sha256"] == ms[2].global_sha256
    )
    reg = [
        m.model_copy(update={"valid_score": {"mean_rmse": v}})
        for m, v in zip(ms[1:], (0.9, 0.8, 0.85), strict=True)
    ]
    assert best_round(reg) == (2, "mean_rmse", 0.8)  # regression: lowest RMSE
    assert best_round([m0]) is None


def test_a_site_refuses_a_global_model_that_does_not_match_its_manifest(tmp_path: Path):
    from fedchem.federation.site import fetch_global

    hub, run = HubStore(str(tmp_path)), "r1"
    m0 = commit_round(hub, run, 0, dump_arrays(_arr(0.0)), "init", {}, {})
    arrays, sha = fetch_global(hub, run, 0)
    assert sha == m0.global_sha256 and np.array_equal(arrays["w"], _arr(0.0)["w"])
    hub.put_bytes(m0.global_path, dump_arrays(_arr(5.0)))  # altered after the commit
    with pytest.raises(ValueError, match=r"global model of round 0 .* refusing it"):
        fetch_global(hub, run, 0)


def test_the_committed_model_does_not_depend_on_the_order_replies_arrived(tmp_path: Path):
    # float sums depend on their order: 1e17 + 1 - 1e17 is 0 in float64, 1e17 - 1e17 + 1 is 1
    values = {"a": 1e17, "b": 1.0, "c": -1e17}
    shas = []
    for run, order in (("in-order", "abc"), ("late-b", "acb"), ("reversed", "cba")):
        hub = HubStore(str(tmp_path / run))
        m0 = commit_round(hub, run, 0, dump_arrays(_arr(0.0)), "init", {}, {})
        ups = [_publish(hub, run, 1, s, _arr(values[s]), 10, m0.global_sha256) for s in order]
        shas.append(
            aggregate_round(hub, run, 1, ups, faults=FaultConfig(max_norm_ratio=1e12)).global_sha256
        )
    assert len(set(shas)) == 1
