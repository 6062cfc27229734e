"""Pure routing decisions."""

from __future__ import annotations

import numpy as np
import pytest

from router.policy import (
    NoTierFits,
    cheapest_sufficient,
    decide,
    lambda_for_cost,
    lambda_grid,
    lambda_reaching,
    target_for_top_share,
    tradeoff,
)

NAMES = ["main", "mid", "brain"]
COST = np.array([1.0, 3.0, 50.0])


def test_cheapest_sufficient_and_fallback():
    q = np.array([[0.9, 0.95, 0.99], [0.5, 0.85, 0.9], [0.1, 0.2, 0.3]])
    c = np.tile(COST, (3, 1))
    assert cheapest_sufficient(q, c, 0.8).tolist() == [0, 1, 2]
    assert cheapest_sufficient(q, c, 0.92).tolist() == [1, 2, 2]


def test_raising_the_target_never_lowers_the_tier():
    rng = np.random.default_rng(0)
    q = np.sort(rng.random((200, 3)), axis=1)  # monotone in price, as trained tiers mostly are
    c = np.tile(COST, (200, 1))
    prev = cheapest_sufficient(q, c, 0.0)
    for t in np.linspace(0, 1, 51):
        cur = cheapest_sufficient(q, c, t)
        assert (cur >= prev).all()
        prev = cur


def test_tradeoff_knob():
    q = np.array([[0.5, 0.8, 0.9]])
    c = np.array([[0.0, 0.01, 0.1]])
    assert tradeoff(q, c, 0.0)[0] == 2
    assert tradeoff(q, c, 10.0)[0] == 1  # 0.8-0.1=0.7 > 0.9-1.0, > 0.5
    assert tradeoff(q, c, 1000.0)[0] == 0


def ladder(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n prompts whose predicted quality rises with the tier, at the fixed tier costs."""
    q = np.sort(np.random.default_rng(seed).random((n, 3)), axis=1)
    return q, np.tile(COST, (n, 1))


@pytest.mark.parametrize("share", [0.1, 0.3, 0.6])
def test_target_for_top_share_hits_the_share(share: float) -> None:
    q, c = ladder(1000, seed=1)
    t = target_for_top_share(q, c, share)
    assert abs((cheapest_sufficient(q, c, t) == 2).mean() - share) < 0.02


@pytest.mark.parametrize("budget", [2.0, 10.0, 30.0])
def test_lambda_for_cost_meets_the_budget(budget: float) -> None:
    q, c = ladder(500, seed=2)
    lam = lambda_for_cost(q, c, budget)
    spent = c[np.arange(500), tradeoff(q, c, lam)].mean()
    assert spent <= budget + 1e-9
    assert c[np.arange(500), tradeoff(q, c, lam * 0.9)].mean() >= spent


def test_decide_overrides_and_reasons():
    q, c = [0.9, 0.95, 0.99], [1.0, 3.0, 50.0]
    d = decide(q, c, NAMES, 0.8)
    assert d.tier_index == 0 and "cheapest" in d.reason
    d = decide(q, c, NAMES, 0.8, min_tier=1)
    assert d.tier_index == 1 and "min_tier" in d.reason
    d = decide([0.1, 0.2, 0.99], c, NAMES, 0.8, max_cost_usd=5.0)
    assert d.tier_index == 1 and "max_cost_usd" in d.reason
    d = decide([0.1, 0.2, 0.99], c, NAMES, 0.8, budget_usd=4.0)
    assert d.tier_index == 1 and "budget" in d.reason
    with pytest.raises(NoTierFits, match="budget"):
        decide(q, c, NAMES, 0.8, budget_usd=0.5)
    with pytest.raises(NoTierFits, match="min_tier brain"):
        decide(q, c, NAMES, 0.8, min_tier=2, max_cost_usd=10)


def test_decide_with_the_cost_weight_knob():
    q, c = [0.5, 0.8, 0.9], [0.0, 0.01, 0.1]
    assert decide(q, c, NAMES, 0.99, cost_weight=0.0).tier_index == 2
    d = decide(q, c, NAMES, 0.99, cost_weight=10.0)
    assert d.tier_index == 1 and "maximises" in d.reason
    assert decide(q, c, NAMES, 0.99, cost_weight=1000.0).tier_index == 0
    assert decide(q, c, NAMES, 0.99, cost_weight=1000.0, min_tier=1).tier_index == 1
    assert decide(q, c, NAMES, 0.99, cost_weight=0.0, max_cost_usd=0.05).tier_index == 1


def test_lambda_for_cost_can_measure_spend_on_realised_costs():
    rng = np.random.default_rng(3)
    q = np.sort(rng.random((400, 3)), axis=1)
    expected = np.tile(COST, (400, 1))
    realised = expected * np.array([1.0, 1.0, 1.5])  # the top tier costs 50% more than estimated
    lam = lambda_for_cost(q, expected, 10.0, realised_cost=realised)
    spent = realised[np.arange(400), tradeoff(q, expected, lam)].mean()
    assert spent <= 10.0 + 1e-9
    assert lam > lambda_for_cost(q, expected, 10.0)


def test_lambda_grid_is_ascending_and_scaled_to_the_median_cost() -> None:
    cost = np.array([[0.0, 0.002, 0.002], [0.0, 0.002, 0.02]])  # positive costs: median 0.002
    grid = lambda_grid(cost)
    assert (np.diff(grid) > 0).all() and 0.0 in grid
    assert grid.max() == pytest.approx(1e4 / 0.002)


def test_lambda_reaching_is_the_cheapest_setting_that_reaches_the_quality() -> None:
    q = np.array([[0.5, 0.9], [0.8, 0.85], [0.2, 0.95]])
    c = np.array([[1.0, 10.0], [1.0, 10.0], [1.0, 10.0]])
    scores, costs = q.copy(), c.copy()
    lam = lambda_reaching(q, c, scores, costs, min_quality=0.8)
    rows = np.arange(3)
    choice = tradeoff(q, c, lam)
    assert scores[rows, choice].mean() >= 0.8
    cheaper = [g for g in lambda_grid(c) if costs[rows, tradeoff(q, c, g)].mean() < costs[rows, choice].mean()]
    assert all(scores[rows, tradeoff(q, c, g)].mean() < 0.8 for g in cheaper)
    assert lambda_reaching(q, c, scores, costs, min_quality=2.0) == 0.0  # unreachable: the neutral setting


def test_lambda_reaching_never_rewards_spending() -> None:
    # Predictions upside down: only a negative λ (buy the dearer tier) reaches the quality; the neutral 0 instead.
    q = np.tile([0.9, 0.5], (20, 1))
    c = np.tile([1.0, 10.0], (20, 1))
    scores = np.tile([0.0, 1.0], (20, 1))
    assert scores[np.arange(20), tradeoff(q, c, -1.0)].mean() == 1.0  # what a negative λ would have bought
    assert lambda_reaching(q, c, scores, c, min_quality=0.5) == 0.0
