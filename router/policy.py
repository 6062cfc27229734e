"""Pure routing decisions on predicted quality and expected cost. Thresholds are arguments, never state.

Arrays are (n_prompts, n_tiers) with tiers in config order, cheapest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


class NoTierFits(ValueError):
    """The request's constraints (min_tier, max_cost_usd, budget) exclude every tier."""


def cheapest_sufficient(quality: np.ndarray, cost: np.ndarray, target: float) -> np.ndarray:
    """Index of the cheapest tier whose predicted quality clears `target`; the best tier if none does."""
    quality, cost = np.atleast_2d(quality), np.atleast_2d(cost)
    ok = quality >= target
    masked_cost = np.where(ok, cost, np.inf)
    cheapest = np.argmin(masked_cost, axis=1)
    return np.asarray(np.where(ok.any(axis=1), cheapest, np.argmax(quality, axis=1)))


def tradeoff(quality: np.ndarray, cost: np.ndarray, lam: float) -> np.ndarray:
    """Index of the tier that maximises quality - lam * cost; ties go to the cheaper tier."""
    quality, cost = np.atleast_2d(quality), np.atleast_2d(cost)
    utility = quality - lam * cost
    best = utility.max(axis=1, keepdims=True)
    return np.asarray(np.argmin(np.where(np.isclose(utility, best, rtol=0, atol=1e-12), cost, np.inf), axis=1))


def target_for_top_share(quality: np.ndarray, cost: np.ndarray, share: float) -> float:
    """The quality target at which the share of prompts routed to the top (most expensive) tier is nearest `share`.

    A prompt reaches the top tier when no cheaper tier clears the target, so candidate targets are
    quantiles of the best cheaper-tier prediction; the realised share is measured for each.
    """
    if not 0 <= share <= 1:
        raise ValueError("share must be in [0, 1]")
    quality, cost = np.atleast_2d(quality), np.atleast_2d(cost)
    top = int(np.argmax(cost.mean(axis=0)))
    others = np.delete(quality, top, axis=1).max(axis=1)
    candidates = np.unique(np.concatenate([np.quantile(others, np.linspace(0, 1, 1001)), [0.0, 1.0 + 1e-9]]))
    shares = np.array([(cheapest_sufficient(quality, cost, t) == top).mean() for t in candidates])
    return float(candidates[int(np.argmin(np.abs(shares - share)))])


def lambda_grid(cost: np.ndarray) -> np.ndarray:
    """The knob settings sweeps and searches try, ascending: 0 and ±10^-4..10^4 per median positive expected cost."""
    scale = float(np.median(cost[cost > 0])) if (cost > 0).any() else 1.0
    pos = np.logspace(-4, 4, 161)
    return np.concatenate([-pos[::-1], [0.0], pos]) / scale


def lambda_reaching(
    quality: np.ndarray, cost: np.ndarray, scores: np.ndarray, costs: np.ndarray, min_quality: float
) -> float:
    """The λ ≥ 0 on `lambda_grid` with the least realised mean cost whose realised mean quality reaches `min_quality`.

    Decisions use predicted `quality` and expected `cost`; `scores` and `costs` are the realised outcomes.
    0 when no setting reaches it. Never negative: a negative λ rewards spending (on a small log whose predictions
    are upside down it could reach the quality by buying the dearest tier, and was stored as the operating point).
    """
    rows = np.arange(len(quality))
    best_lam, best_c = 0.0, np.inf
    grid = lambda_grid(cost)
    for lam in grid[grid >= 0]:
        choice = tradeoff(quality, cost, float(lam))
        c, q = float(costs[rows, choice].mean()), float(scores[rows, choice].mean())
        if q >= min_quality and c < best_c:
            best_lam, best_c = float(lam), c
    return best_lam


def mean_spend(
    quality: np.ndarray, cost: np.ndarray, paid: np.ndarray, lam: float, fixed: np.ndarray | None = None
) -> float:
    """The mean of `paid` over the tiers λ = `lam` picks (on predicted `quality` and expected `cost`); where `fixed`
    (a tier index a prompt, −1 where λ decides) names a tier, that tier whatever λ."""
    choice = tradeoff(quality, cost, lam)
    if fixed is not None:
        choice = np.where(fixed >= 0, fixed, choice)
    return float(paid[np.arange(len(quality)), choice].mean())


def lambda_for_cost(
    quality: np.ndarray,
    cost: np.ndarray,
    target_cost_usd: float,
    realised_cost: np.ndarray | None = None,
    iters: int = 60,
    fixed: np.ndarray | None = None,
) -> float:
    """The smallest knob lam whose mean cost is at most `target_cost_usd` (bisection on a log scale).

    Decisions use the expected `cost`; the spend is measured on `realised_cost` when given (the
    logged costs of held-out prompts), else on the expected cost. `fixed`: the prompts whose tier λ does not
    choose (the service's fallback for a prompt unlike the training prompts), as in `mean_spend`.
    """
    quality, cost = np.atleast_2d(quality), np.atleast_2d(cost)
    paid = cost if realised_cost is None else np.atleast_2d(realised_cost)

    def spend(lam: float) -> float:
        return mean_spend(quality, cost, paid, lam, fixed)

    if spend(0.0) <= target_cost_usd:
        return 0.0
    lo, hi = 1e-9, 1.0
    while spend(hi) > target_cost_usd:
        hi *= 10
        if hi > 1e15:
            why = (
                "the cheapest tier costs more"
                if fixed is None or not (fixed >= 0).any()
                else (
                    f"the cheapest tier costs more, with the {int((fixed >= 0).sum())} prompts whose tier is fixed "
                    "(the fallback for prompts unlike the training prompts) at theirs"
                )
            )
            raise ValueError(f"no knob reaches a mean cost of {target_cost_usd:.6g}; {why}")
    for _ in range(iters):
        mid = float(np.sqrt(lo * hi))
        lo, hi = (lo, mid) if spend(mid) <= target_cost_usd else (mid, hi)
    return hi


@dataclass(frozen=True)
class Decision:
    """The tier chosen for one prompt, and why, in plain words."""

    tier_index: int
    reason: str
    # The tier the policy picks without the request's limits (min_tier, max_cost_usd, budget), when they moved it.
    unconstrained: int | None = None


def allowed_tiers(
    cost: Sequence[float] | np.ndarray,
    min_tier: int = 0,
    max_cost_usd: float | None = None,
    budget_usd: float | None = None,
) -> np.ndarray:
    """Boolean mask of the tiers a request may use (per row when `cost` is (n, k))."""
    cost_arr = np.asarray(cost, dtype=float)
    mask = np.broadcast_to(np.arange(cost_arr.shape[-1]) >= min_tier, cost_arr.shape).copy()
    if max_cost_usd is not None:
        mask &= cost_arr <= max_cost_usd
    if budget_usd is not None:
        mask &= cost_arr <= budget_usd
    return mask


def no_tier_fits(
    names: Sequence[str], min_tier: int = 0, max_cost_usd: float | None = None, budget_usd: float | None = None
) -> NoTierFits:
    """The error for a request whose constraints exclude every tier, naming the constraints."""
    why = []
    if min_tier:
        why.append(f"min_tier {names[min_tier]}")
    if max_cost_usd is not None:
        why.append(f"max_cost_usd {max_cost_usd:.6g}")
    if budget_usd is not None:
        why.append(f"remaining budget ${budget_usd:.6g}")
    return NoTierFits(f"no tier fits {' and '.join(why)}")


def decide(
    quality: Sequence[float],
    cost: Sequence[float],
    names: Sequence[str],
    target: float,
    min_tier: int = 0,
    max_cost_usd: float | None = None,
    budget_usd: float | None = None,
    cost_weight: float | None = None,
    rank_cost: Sequence[float] | None = None,
) -> Decision:
    """Route one prompt: the cheapest sufficient tier (or, with `cost_weight` = λ per USD, the tier
    maximising predicted quality − λ·cost), then the request's overrides and budget. `rank_cost`, when given, is
    the cost the choice trades quality against (the scale λ was calibrated on); `cost` still sets what fits.

    Raises NoTierFits when the constraints exclude every tier.
    """
    q, c = np.asarray(quality, dtype=float), np.asarray(cost, dtype=float)
    r = c if rank_cost is None else np.asarray(rank_cost, dtype=float)

    def choose(qm: np.ndarray, cm: np.ndarray) -> int:
        if cost_weight is None:
            return int(cheapest_sufficient(qm, cm, target)[0])
        allowed = np.isfinite(cm)
        utility = np.where(allowed, qm - cost_weight * np.where(allowed, cm, 0.0), -np.inf)
        return int(np.argmax(utility))

    free = choose(q, r)
    unbudgeted = allowed_tiers(c, min_tier, max_cost_usd)
    mask = unbudgeted if budget_usd is None else unbudgeted & allowed_tiers(c, budget_usd=budget_usd)
    if not mask.any():
        raise no_tier_fits(names, min_tier, max_cost_usd, budget_usd)
    # Every tier allowed (most requests): the choice among them is the free one, without choosing twice.
    pick = free if mask.all() else choose(np.where(mask, q, -np.inf), np.where(mask, r, np.inf))
    if pick == free:
        if cost_weight is not None:
            reason = (
                f"{names[pick]} maximises predicted quality - {cost_weight:.6g} x cost "
                f"({q[pick]:.2f} at ${r[pick]:.6g}{'' if np.array_equal(r, c) else ', priced as calibrated'})"
            )
        elif q[pick] >= target:
            reason = f"{names[pick]} is the cheapest tier predicted to reach the target {target:.2f} ({q[pick]:.2f})"
        else:
            reason = (
                f"no tier is predicted to reach the target {target:.2f}; "
                f"{names[pick]} is predicted best ({q[pick]:.2f})"
            )
        return Decision(pick, reason)
    if not mask[free] and unbudgeted[free]:
        reason = (
            f"{names[free]} would be chosen but costs ${c[free]:.6g}, more than the ${budget_usd:.6g} left "
            f"in the session budget; {names[pick]} is the best tier that fits"
        )
    elif free < min_tier:
        reason = (
            f"{names[free]} would suffice, but the request asks for min_tier {names[min_tier]}; using {names[pick]}"
        )
    else:
        reason = (
            f"{names[free]} would be chosen but costs ${c[free]:.6g}, over max_cost_usd {max_cost_usd:.6g}; "
            f"{names[pick]} is the best tier that fits"
        )
    return Decision(pick, reason, unconstrained=free)


@dataclass(frozen=True)
class DefaultKnob:
    """The operating point stored with a model: the λ knob it routes with when a request sets no knob.

    λ is kept per *reference cost*, the top tier's expected cost for a prompt of `reference_tokens_in` input
    tokens (the calibration prompts' mean), so it reads "quality traded for one top-tier call's worth of
    spend" and follows the live prices: the service divides it by the reference cost at the live tier prices.
    """

    cost_weight: float
    reference_tokens_in: float
    goal: str
    n_prompts: int
    realised_quality: float
    realised_cost_usd: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DefaultKnob:
        return cls(**data)


def resolve_knob(
    quality_target: float | None, cost_weight: float | None, default_cost_weight: float | None, default_target: float
) -> tuple[float, float | None]:
    """The (target, λ per USD) a request routes with: its own knob if it sets one, else the model's stored λ,
    else the default quality target (a model trained before operating points were stored)."""
    if cost_weight is not None:
        return default_target, cost_weight
    if quality_target is not None:
        return quality_target, None
    return default_target, default_cost_weight
