"""Optional ε-exploration around the policy's decision, with the propensities off-policy evaluation needs.

With probability ε a decision is replaced by a tier drawn uniformly from the tiers the request allows
(min_tier, max_cost_usd and what the session's budget leaves for this prompt); the policy's own choice keeps
the rest. The tier actually served and its probability are recorded, so logged traffic can estimate what
other policies would have done (router/ope.py). Exploration never adds a tier the request excludes.
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


def exploration_probs(choice: int, allowed: np.ndarray, epsilon: float) -> np.ndarray:
    """The logging distribution: ε spread evenly over the allowed tiers, 1 − ε more on the policy's choice."""
    if not 0 <= epsilon <= 1:
        raise ValueError("epsilon must be in [0, 1]")
    mask = np.asarray(allowed, dtype=bool).copy()
    mask[choice] = True  # the policy's choice already honours the request; exploration adds no tier it excludes
    probs = np.where(mask, epsilon / mask.sum(), 0.0)
    probs[choice] += 1.0 - epsilon
    return np.asarray(probs)


def explore(
    choice: int,
    cost: np.ndarray,
    epsilon: float,
    rng: np.random.Generator,
    min_tier: int = 0,
    max_cost_usd: float | None = None,
    budget_usd: float | None = None,
) -> Draw:
    """Draw the tier to serve for one prompt whose policy chose `choice`; `cost` is its expected cost per tier."""
    allowed = allowed_tiers(np.asarray(cost, dtype=float), min_tier, max_cost_usd, budget_usd)
    probs = exploration_probs(choice, allowed, epsilon)
    tier = choice if epsilon == 0 else int(rng.choice(len(probs), p=probs))
    return Draw(tier, float(probs[tier]), probs, tier != choice)
