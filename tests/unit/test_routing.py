"""The Router facade: score many, decide many, and one place that says why no tier fits."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from router.policy import NoTierFits, decide
from router.routing import Router


@pytest.fixture
def router() -> Router:
    """A Router that decides only: its tiers need names, no artifact or embedder."""
    tiers = SimpleNamespace(names=["small", "mid", "large"])
    return Router(SimpleNamespace(tiers=tiers), tiers)  # type: ignore[arg-type]


QUALITY = np.array([[0.9, 0.95, 0.99], [0.2, 0.85, 0.9], [0.1, 0.3, 0.95]])
COST = np.array([[0.001, 0.01, 0.1], [0.002, 0.02, 0.2], [0.003, 0.03, 0.3]])


def test_decide_many_matches_decide_one(router: Router) -> None:
    many = router.decide(QUALITY, COST, target=0.8)
    assert [d.tier_index for d in many] == [0, 1, 2]
    assert many == [decide(q, c, router.names, 0.8) for q, c in zip(QUALITY, COST, strict=True)]


@pytest.mark.parametrize(
    ("min_tier", "max_cost_usd", "message"),
    [(2, 0.05, "no tier fits min_tier large and max_cost_usd 0.05"), (0, 0.0005, "no tier fits max_cost_usd 0.0005")],
)
def test_no_tier_fits_names_the_constraints(router: Router, min_tier: int, max_cost_usd: float, message: str) -> None:
    with pytest.raises(NoTierFits, match=f"^{message}$"):
        router.decide(QUALITY, COST, 0.8, min_tier=min_tier, max_cost_usd=max_cost_usd)


def test_cheapest_allowed_is_the_floor_per_prompt(router: Router) -> None:
    assert router.cheapest_allowed(COST, min_tier=1).tolist() == [0.01, 0.02, 0.03]
    with pytest.raises(NoTierFits):  # the third prompt's cheapest tier costs 0.003
        router.cheapest_allowed(COST, max_cost_usd=0.0025)


def test_budget_downgrades_earlier_prompts_so_the_batch_fits(router: Router) -> None:
    free = router.decide(QUALITY, COST, 0.8)
    budget = 0.02 + 0.02 + 0.03  # less than the free choice (0.001 + 0.02 + 0.3)
    tight = router.decide(QUALITY, COST, 0.8, budget_usd=budget)
    spent = sum(COST[i, d.tier_index] for i, d in enumerate(tight))
    assert spent <= budget
    assert tight[2].tier_index < free[2].tier_index


def test_scoring_needs_an_embedder(router: Router) -> None:
    with pytest.raises(ValueError, match="without an embedder"):
        router.score(["hello"])
