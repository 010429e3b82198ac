"""The accountant against known values, clipping, noise, and a site's running budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedchem.trust.budget import PrivacyBudget, Release
from fedchem.trust.dp import (
    Steps,
    add_noise,
    clip_delta,
    delta_norm,
    epsilon,
    noise_for_epsilon,
)


def test_epsilon_is_the_analytic_gaussian_value_where_one_exists():
    # q = 1, z = 5, T = 100: Gaussian DP with mu = sqrt(T)/z = 2, epsilon 9.997 at 1e-5
    steps = [Steps(1.0, 5.0, 100)]
    assert epsilon(steps, 1e-5) == pytest.approx(9.997, abs=2e-3)
    assert epsilon(steps, 1e-5, "rdp") >= epsilon(steps, 1e-5)


@pytest.mark.parametrize(("q", "z", "t"), [(0.01, 1.0, 1000), (0.05, 0.8, 200), (1.0, 2.0, 10)])
def test_rdp_is_never_tighter_than_pld(q: float, z: float, t: int):
    pld, rdp = epsilon([Steps(q, z, t)], 1e-5), epsilon([Steps(q, z, t)], 1e-5, "rdp")
    assert 0 < pld <= rdp


def test_composition_groups_identical_releases_and_more_releases_cost_more():
    one = epsilon([Steps(0.01, 1.0, 500), Steps(0.01, 1.0, 500)], 1e-5)
    assert one == pytest.approx(epsilon([Steps(0.01, 1.0, 1000)], 1e-5), rel=1e-9)
    assert epsilon([Steps(0.01, 1.0, 2000)], 1e-5) > one
    assert epsilon([], 1e-5) == 0.0


def test_the_calibrated_noise_meets_the_target_and_barely():
    z = noise_for_epsilon(3.0, 1e-5, 0.02, 500)
    assert epsilon([Steps(0.02, z, 500)], 1e-5) <= 3.0
    assert epsilon([Steps(0.02, z * 0.98, 500)], 1e-5) > 3.0


def test_clipping_bounds_every_norm_and_keeps_small_deltas():
    rng = np.random.default_rng(0)
    base = {"w": rng.normal(size=(50, 20)).astype(np.float32), "b": np.zeros(20, np.float32)}
    for scale in (0.01, 1.0, 100.0):
        noise = {k: scale * rng.normal(size=v.shape).astype(np.float32) for k, v in base.items()}
        update = {k: v + noise[k] for k, v in base.items()}
        clipped, before = clip_delta(update, base, 1.0)
        assert before == pytest.approx(delta_norm(update, base))
        assert delta_norm(clipped, base) <= 1.0 + 1e-5
        if before <= 1.0:
            np.testing.assert_allclose(clipped["w"], update["w"], rtol=1e-6)
        else:  # the direction is kept
            d0 = (update["w"] - base["w"]).ravel()
            d1 = (clipped["w"] - base["w"]).ravel()
            cos = d0 @ d1 / np.linalg.norm(d0) / np.linalg.norm(d1)
            assert cos > 0.9999


def test_the_noise_has_the_stated_spread():
    total = {"w": np.zeros(200_000)}
    noisy = add_noise(total, 0.7, np.random.default_rng(1))["w"]
    assert noisy.std() == pytest.approx(0.7, rel=0.01)
    assert abs(noisy.mean()) < 0.01


def test_a_sites_budget_composes_every_release_and_a_resend_counts_once(tmp_path: Path):
    budget = PrivacyBudget.of_site(tmp_path)
    step = [Steps(0.05, 1.0, 20)]
    assert budget.projected("run1", step, 1e-5)[1] == pytest.approx(epsilon(step, 1e-5))
    budget.record(Release("run1", 1, "base-a", "record", tuple(step)))
    budget.record(Release("run1", 1, "base-a", "record", tuple(step)))  # sent again: no release
    again = PrivacyBudget.of_site(tmp_path)
    assert again.spent(1e-5) == pytest.approx(epsilon(step, 1e-5))
    # round 1 trained again from another base model (a re-commit): a release of its own
    again.record(Release("run1", 1, "base-b", "record", tuple(step)))
    assert PrivacyBudget.of_site(tmp_path).spent(1e-5) == pytest.approx(epsilon(step * 2, 1e-5))
    assert again.rounds("run1") == [1]
    run_eps, total = again.projected("run2", step, 1e-5)
    assert run_eps == pytest.approx(epsilon(step, 1e-5))
    assert total == pytest.approx(epsilon(step * 3, 1e-5))


def test_a_tiny_noise_multiplier_is_accounted_without_exhausting_memory():
    """PLD at z = 0.01 would allocate gigabytes; RDP bounds it in milliseconds."""
    steps = [Steps(0.136, 0.01, 740)]
    assert epsilon(steps, 1e-5) == epsilon(steps, 1e-5, "rdp") > 1e6
    at_floor = [Steps(0.136, 0.2, 740)]
    assert epsilon(at_floor, 1e-5) < epsilon(at_floor, 1e-5, "rdp")  # PLD from the floor up
