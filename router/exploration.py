"""Optional exploration around the policy's decision, with the propensities off-policy evaluation needs.

Two kinds, both within the tiers the request allows (min_tier, max_cost_usd and what the session's budget
leaves for this prompt), recorded with the probability each tier had (router/ope.py reads them):

- uniform: with probability ε, a tier drawn evenly from the allowed tiers replaces the policy's choice. Every
  policy becomes estimable, at a weight of about k/ε per disagreeing decision.
- boundary: with probability ε_b, on prompts where a neighbouring operating point of the policy would choose
  another tier, that tier is served. Exploration goes where nearby operating points disagree, so their
  estimates need far less of it (bench/trust_ope.py); policies far from the served one gain little.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router.policy import allowed_tiers


@dataclass(frozen=True)
class Draw:
    """The tier to serve, the probability it had, the whole distribution, and whether it differs from the policy's."""

    tier_index: int
    propensity: float
    probs: np.ndarray
    explored: bool


def exploration_probs(
    choice: int,
    allowed: np.ndarray,
    epsilon: float,
    boundary: np.ndarray | None = None,
    boundary_rate: float = 0.0,
) -> np.ndarray:
    """The logging distribution: ε spread over the allowed tiers, ε_b over the allowed `boundary` tiers other than
    the choice (when there are any), the rest on the policy's choice."""
    if not (0 <= epsilon <= 1 and 0 <= boundary_rate <= 1 and epsilon + boundary_rate <= 1):
        raise ValueError("epsilon and boundary_rate must be in [0, 1] and sum to at most 1")
    mask = np.asarray(allowed, dtype=bool).copy()
    mask[choice] = True  # the policy's choice already honours the request; exploration adds no tier it excludes
    probs = np.where(mask, epsilon / mask.sum(), 0.0)
    probs[choice] += 1.0 - epsilon
    if boundary is not None and boundary_rate > 0:
        near = np.asarray(boundary, dtype=bool) & mask
        near[choice] = False
        if near.any():
            probs[choice] -= boundary_rate
            probs[near] += boundary_rate / near.sum()
    return np.asarray(probs)


def explore(
    choice: int,
    cost: np.ndarray,
    epsilon: float,
    rng: np.random.Generator,
    min_tier: int = 0,
    max_cost_usd: float | None = None,
    budget_usd: float | None = None,
    boundary: np.ndarray | None = None,
    boundary_rate: float = 0.0,
) -> Draw:
    """Draw the tier to serve for one prompt whose policy chose `choice`; `cost` is its expected cost per tier,
    `boundary` marks the tiers neighbouring operating points choose."""
    allowed = allowed_tiers(np.asarray(cost, dtype=float), min_tier, max_cost_usd, budget_usd)
    probs = exploration_probs(choice, allowed, epsilon, boundary, boundary_rate)
    tier = choice if probs[choice] == 1.0 else int(rng.choice(len(probs), p=probs))
    return Draw(tier, float(probs[tier]), probs, tier != choice)
