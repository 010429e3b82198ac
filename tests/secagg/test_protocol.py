"""Secure aggregation's primitives and protocol in memory: Shamir against known vectors, the
masks cancel to the sum, every dropout point recovers it, and nothing short of the threshold
rebuilds a secret."""

from __future__ import annotations

import numpy as np
import pytest

from fedchem.policy import SecAggPlan
from fedchem.secagg import shamir
from fedchem.secagg.crypto import decode_sum, encode, mask
from fedchem.secagg.protocol import (
    Cohort,
    Roster,
    SecAggError,
    SiteSecrets,
    Survivors,
    make_shares,
    masked_input,
    neighbours,
    reveal,
    unmask,
)

RUN, RND = "run", 3


def test_shamir_recovers_the_textbook_secret_from_any_three_points() -> None:
    # Shamir's example as textbooks give it: f(x) = 1234 + 166 x + 94 x^2 over the integers
    # (any prime above the values gives the same points): f(1..6) below
    points = {1: 1494, 2: 1942, 3: 2578, 4: 3402, 5: 4414, 6: 5614}
    prime = (1 << 127) - 1
    assert {x: shamir.evaluate([1234, 166, 94], x, prime) for x in points} == points
    for chosen in ([1, 2, 3], [2, 4, 6], [6, 5, 1], [3, 4, 5, 6]):
        assert shamir.combine({x: points[x] for x in chosen}, 3, prime) == 1234
    with pytest.raises(ValueError, match="2 share"):
        shamir.combine({1: points[1], 2: points[2]}, 3, prime)
    # with two points a degree-2 polynomial fits any secret: two shares say nothing of it
    for guess in (0, 1234, 999_999):
        # the unique quadratic through (0, guess), (1, 1494), (2, 1942) exists for every guess
        assert shamir.combine({0 + 1: 1494, 2: 1942, 3: _third(guess)}, 3, prime) == guess


def _third(secret: int) -> int:
    """f(3) of the quadratic through (0, secret), (1, 1494), (2, 1942) (integer arithmetic)."""
    # f(x) = s + a x + b x^2: a + b = 1494 - s, 2a + 4b = 1942 - s
    b2 = (1942 - secret) - 2 * (1494 - secret)  # 2b
    a2 = 2 * (1494 - secret) - b2  # 2a
    return secret + (3 * a2 + 9 * b2) // 2


def test_shamir_splits_a_256_bit_secret_in_the_default_field() -> None:
    secret = int.from_bytes(bytes(range(32)), "big")
    shares = shamir.split(secret, 7, 4)
    assert shamir.combine({x: shares[x] for x in (7, 2, 5, 3)}, 4) == secret
    assert shamir.combine({x: shares[x] for x in (1, 2, 3)}, 3) != secret  # t - 1: noise


def test_fixed_point_and_masks() -> None:
    x = np.array([0.5, -0.25, 1e-7, -7.999, 20.0])
    got = decode_sum(encode(x, clip=8.0, fraction_bits=20), 20)
    assert np.allclose(got[:4], [0.5, -0.25, 0.0, -7.999], atol=2**-20)
    assert got[4] == 8.0  # clipped to the declared range
    a, b = mask(b"\x01" * 32, 1000), mask(b"\x02" * 32, 1000)
    assert a.dtype == np.uint32 and not np.array_equal(a, b)
    assert np.array_equal(a, mask(b"\x01" * 32, 1000))  # a seed gives one stream
    assert 0.45 < float(np.mean(a / 2**32)) < 0.55  # uniform over the ring
    with pytest.raises(ValueError, match="32 bytes"):
        mask(b"short", 10)


def _roster(sites: dict[str, SiteSecrets], weights: dict[str, int], plan: SecAggPlan) -> Roster:
    adverts = [sites[s].advert(RUN, RND, s, weights[s]) for s in sorted(sites)]
    k = len(neighbours([a.site for a in adverts], adverts[0].site, plan))
    return Roster(run_id=RUN, round=RND, adverts=adverts, threshold=k // 2 + 1, plan=plan)


def _run(
    n: int,
    plan: SecAggPlan,
    no_shares: tuple[str, ...] = (),
    no_upload: tuple[str, ...] = (),
    no_reveal: tuple[str, ...] = (),
) -> tuple[np.ndarray, float, np.ndarray, float, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    names = [f"site-{i:02d}" for i in range(n)]
    sites = {s: SiteSecrets.fresh() for s in names}
    weights = {s: int(rng.integers(50, 500)) for s in names}
    roster = _roster(sites, weights, plan)
    total = roster.total_weight
    bundles = [make_shares(sites[s], roster, s) for s in names if s not in no_shares]
    cohort = Cohort(run_id=RUN, round=RND, bundles=bundles)
    deltas = {s: rng.normal(0, 0.01, 1000) for s in cohort.names}
    masked = {
        s: masked_input(
            sites[s], roster, cohort, s, deltas[s] * weights[s] / total, weights[s] / total
        )
        for s in cohort.names
        if s not in no_upload
    }
    survivors = Survivors(run_id=RUN, round=RND, sites=sorted(masked))
    reveals = [
        reveal(sites[s], roster, cohort, survivors, s)
        for s in survivors.sites
        if s not in no_reveal
    ]
    got, weight = unmask(roster, cohort, survivors, masked, reveals)
    want = sum(deltas[s] * weights[s] / total for s in survivors.sites)
    want_weight = sum(weights[s] / total for s in survivors.sites)
    return got, weight, want, want_weight, masked


@pytest.mark.parametrize(
    ("case", "drops"),
    [
        ("everyone", {}),
        ("dropped before sharing", {"no_shares": ("site-01",)}),
        ("dropped after sharing", {"no_upload": ("site-02",)}),
        ("dropped after the masked upload", {"no_reveal": ("site-03",)}),
        (
            "one of each",
            {"no_shares": ("site-00",), "no_upload": ("site-04",), "no_reveal": ("site-05",)},
        ),
    ],
)
def test_the_unmasked_sum_is_the_survivors_sum_up_to_the_fixed_point_step(case, drops):
    plan = SecAggPlan(fraction_bits=20)
    got, weight, want, want_weight, masked = _run(8, plan, **drops)
    step = 2.0**-20
    assert np.max(np.abs(got - want)) <= len(masked) * step / 2 + 1e-12, case
    assert abs(weight - want_weight) <= len(masked) * step / 2 + 1e-12


def test_secagg_plus_neighbourhoods_mask_with_a_few_and_still_sum() -> None:
    plan = SecAggPlan(neighbours=4, graph_seed="ticket-1")
    names = [f"site-{i:02d}" for i in range(12)]
    graph = {s: neighbours(names, s, plan) for s in names}
    assert all(len(v) == 4 for v in graph.values())
    assert all(s in graph[p] for s in names for p in graph[s])  # symmetric
    got, _, want, _, _ = _run(12, plan, no_upload=("site-03",))
    assert np.max(np.abs(got - want)) < 1e-5


def test_a_masked_input_says_nothing_of_the_update() -> None:
    _, _, _, _, masked = _run(5, SecAggPlan())
    for y in masked.values():
        # each coordinate is uniform over the ring: an update of +-0.01 leaves no trace. The
        # bounds are 5 standard errors of n uniform draws (the masks are fresh each run: a
        # fixed bound like 0.1 on the correlation failed 1 run in ~12 at this n)
        n = y.size - 1
        u = y[:-1] / 2**32
        assert abs(float(np.mean(u)) - 0.5) < 5 * (1 / 12) ** 0.5 / n**0.5
        # unmasked, +-0.01 in fixed point sits at the ring's two ends, never in its middle half
        assert abs(float(np.mean((u > 0.25) & (u < 0.75))) - 0.5) < 5 * 0.5 / n**0.5
        r = np.corrcoef(y[:-1].astype(np.float64), np.arange(n))[0, 1]
        assert abs(r) < 5 / n**0.5


def test_below_the_threshold_nothing_is_rebuilt() -> None:
    with pytest.raises(SecAggError, match="cannot be rebuilt"):
        _run(5, SecAggPlan(), no_reveal=("site-00", "site-01", "site-02"))


def test_a_share_sealed_to_another_site_does_not_open() -> None:
    plan = SecAggPlan()
    sites = {f"s{i}": SiteSecrets.fresh() for i in range(4)}
    roster = _roster(sites, dict.fromkeys(sites, 10), plan)
    bundle = make_shares(sites["s0"], roster, "s0")
    swapped = bundle.model_copy(update={"boxes": {**bundle.boxes, "s1": bundle.boxes["s2"]}})
    cohort = Cohort(run_id=RUN, round=RND, bundles=[swapped])
    survivors = Survivors(run_id=RUN, round=RND, sites=["s0"])
    with pytest.raises(SecAggError, match="does not open"):
        reveal(sites["s1"], roster, cohort, survivors, "s1")
