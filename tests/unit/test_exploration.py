"""Exploration never serves a tier the request or the session budget excludes, and reports true propensities."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from router.exploration import exploration_probs, explore
from router.policy import NoTierFits, allowed_tiers, decide

NAMES = ["main", "mid", "brain"]


@settings(max_examples=300, deadline=None)
@given(
    quality=st.lists(st.floats(0, 1), min_size=3, max_size=3),
    cost=st.lists(st.floats(1e-6, 1.0), min_size=3, max_size=3),
    min_tier=st.integers(0, 2),
    max_cost=st.none() | st.floats(1e-6, 1.0),
    budget=st.none() | st.floats(0, 1.0),
    epsilon=st.floats(0, 0.5),
    boundary=st.none() | st.lists(st.booleans(), min_size=3, max_size=3),
    boundary_rate=st.floats(0, 0.5),
    seed=st.integers(0, 2**32 - 1),
)
def test_exploration_stays_inside_the_request(
    quality: list[float],
    cost: list[float],
    min_tier: int,
    max_cost: float | None,
    budget: float | None,
    epsilon: float,
    boundary: list[bool] | None,
    boundary_rate: float,
    seed: int,
) -> None:
    try:
        d = decide(quality, cost, NAMES, 0.7, min_tier, max_cost, budget)
    except NoTierFits:
        return
    near = None if boundary is None else np.array(boundary)
    rng = np.random.default_rng(seed)
    draw = explore(d.tier_index, np.array(cost), epsilon, rng, min_tier, max_cost, budget, near, boundary_rate)
    assert draw.tier_index >= min_tier
    if max_cost is not None:
        assert cost[draw.tier_index] <= max_cost
    if budget is not None:
        assert cost[draw.tier_index] <= budget
    assert np.isclose(draw.probs.sum(), 1.0)
    assert draw.propensity == draw.probs[draw.tier_index] > 0
    assert (draw.probs[~allowed_tiers(np.array(cost), min_tier, max_cost, budget)] == 0).all()
    assert draw.explored == (draw.tier_index != d.tier_index)


def test_no_exploration_is_the_policy_with_propensity_one() -> None:
    draw = explore(1, np.array([0.1, 0.2, 0.3]), 0.0, np.random.default_rng(0))
    assert (draw.tier_index, draw.propensity, draw.explored) == (1, 1.0, False)


def test_exploration_rate_is_what_it_says() -> None:
    rng = np.random.default_rng(0)
    draws = [explore(0, np.array([0.1, 0.2, 0.3]), 0.3, rng) for _ in range(20_000)]
    explored = np.mean([d.explored for d in draws])
    assert abs(explored - 0.2) < 0.015  # 0.3 spread over 3 tiers, one of which is the choice: 2/3 of 0.3
    assert np.allclose(exploration_probs(0, np.ones(3, bool), 0.3), [0.8, 0.1, 0.1])


def test_boundary_exploration_goes_only_to_the_neighbours_choices() -> None:
    near = np.array([False, False, True])
    assert np.allclose(exploration_probs(1, np.ones(3, bool), 0.0, near, 0.2), [0, 0.8, 0.2])
    assert np.allclose(exploration_probs(1, np.ones(3, bool), 0.03, near, 0.2), [0.01, 0.78, 0.21])
    # No neighbour disagrees (or only with a tier the request excludes): nothing to explore at the boundary.
    assert np.allclose(exploration_probs(1, np.ones(3, bool), 0.0, np.array([False, True, False]), 0.2), [0, 1, 0])
    assert np.allclose(exploration_probs(1, np.array([True, True, False]), 0.0, near, 0.2), [0, 1, 0])
