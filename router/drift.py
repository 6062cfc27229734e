"""Drift checks on a window of recent traffic: inputs (novelty), promises (predicted vs realised quality, cost).

Pure functions on arrays, shared by the service's rolling windows (serving/drift.py) and the simulations
(bench/trust_drift.py), so what is measured offline is what runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from router.novelty import window_shift_z
from router.policy import lambda_for_cost, mean_spend

# How many standard errors a quality gap must clear beyond its tolerance before it alerts.
GAP_Z = 2.0


@dataclass(frozen=True)
class Check:
    """One drift check on one window: the statistic, its limit, how many observations, and whether it alerts."""

    name: str
    statistic: float
    limit: float
    n: int
    alert: bool
    detail: str


def novelty_check(novelty: np.ndarray, n_calibration: int, z_limit: float, min_n: int = 30) -> Check:
    """Inputs: are recent prompts farther from the training prompts than held-out training prompts were?

    Alerts when the window's mean novelty is `z_limit` standard errors above 1/2 (a one-sided rank test whose
    false-alarm rate per check is about 1 − Φ(z_limit): 3e-5 at z = 4), once it holds `min_n` prompts.
    """
    u = np.asarray(novelty, dtype=float)
    u = u[np.isfinite(u)]
    z = window_shift_z(u, n_calibration)
    mean = float(u.mean()) if len(u) else float("nan")
    return Check(
        "novelty",
        z,
        z_limit,
        len(u),
        bool(len(u) >= min_n and z >= z_limit),
        f"mean novelty {mean:.3f} over {len(u)} prompts (1/2 when they are drawn like the training prompts), "
        f"{z:.1f} standard errors from 1/2; alert at {z_limit:g} (needs {min_n})",
    )


def quality_check(tier: str, predicted: np.ndarray, realised: np.ndarray, gap_limit: float, min_n: int) -> Check:
    """Promises: is a tier's predicted quality off its realised quality by more than `gap_limit`, beyond noise?"""
    diff = np.asarray(predicted, dtype=float) - np.asarray(realised, dtype=float)
    n = len(diff)
    gap = float(diff.mean()) if n else float("nan")
    se = float(diff.std(ddof=1)) / math.sqrt(n) if n > 1 else float("inf")
    alert = n >= min_n and abs(gap) - GAP_Z * se > gap_limit
    measured = f"{gap:+.3f} (± {GAP_Z:g} × {se:.3f}) over {n} outcomes" if n > 1 else f"not measured: {n} outcomes"
    return Check(
        f"quality:{tier}",
        gap,
        gap_limit,
        n,
        bool(alert),
        f"{tier}: predicted minus realised quality {measured}; alert beyond ±{gap_limit:g} (needs {min_n})",
    )


def fallback_tiers(
    novelty: np.ndarray, limit: float | None, fell_back: np.ndarray, served: np.ndarray, expected_cost: np.ndarray
) -> np.ndarray:
    """Per logged decision, the tier the service now serves whatever λ (−1 where λ decides): a prompt whose novelty
    reaches today's `limit` gets the fallback's tier, the one it was served if it took the fallback then (within that
    request's limits), else the dearest tier by its expected costs (it was routed under another limit). NaN novelty
    (not recorded) and no limit: λ decides."""
    novel = np.zeros(len(served), dtype=bool)
    if limit is not None:
        novel = np.nan_to_num(np.asarray(novelty, dtype=float), nan=-np.inf) >= limit
    dearest = np.argmax(expected_cost, axis=1) if len(served) else np.zeros(0, dtype=int)
    return np.asarray(np.where(novel, np.where(fell_back, served, dearest), -1))


def estimated_costs(
    expected_cost: np.ndarray, served: np.ndarray, realised_cost: np.ndarray, groups: np.ndarray | None = None
) -> np.ndarray:
    """Each prompt's estimated realised cost on every tier (n, k), as `recalibrate` describes: the realised cost where
    it is known, else the expected cost scaled by the realised / expected ratio of that (group and) tier."""
    rows = np.arange(len(served))
    exp_served = expected_cost[rows, served]
    seen = np.isfinite(realised_cost)
    labels = np.zeros(len(served), dtype=int) if groups is None else np.unique(groups, return_inverse=True)[1]

    def ratio(m: np.ndarray, default: float) -> float:
        m = m & seen
        return (
            float(realised_cost[m].sum() / exp_served[m].sum())
            if m.sum() >= 10 and exp_served[m].sum() > 0
            else default
        )

    overall = ratio(np.ones(len(served), dtype=bool), 1.0)
    scale = np.ones_like(expected_cost, dtype=float)
    for g in np.unique(labels):
        in_g = labels == g
        group_ratio = ratio(in_g, overall)
        for j in range(expected_cost.shape[1]):
            scale[in_g, j] = ratio(in_g & (served == j), group_ratio)
    paid = expected_cost * scale
    paid[rows[seen], served[seen]] = realised_cost[seen]
    return np.asarray(paid)


@dataclass(frozen=True)
class Recalibrated:
    """A recalibrated λ and its estimated realised mean cost on the traffic it was set on."""

    cost_weight: float
    mean_cost: float


def recalibrate(
    pred: np.ndarray,
    expected_cost: np.ndarray,
    served: np.ndarray,
    realised_cost: np.ndarray,
    target_mean_cost: float,
    groups: np.ndarray | None = None,
    fixed: np.ndarray | None = None,
) -> Recalibrated:
    """λ whose estimated realised mean cost on recent traffic is the target, and that estimate.

    `pred` and `expected_cost` are (n, k) as the router saw them, `served` the tier each prompt got and
    `realised_cost` what it cost (NaN where no outcome came back). A candidate λ's spend is estimated per prompt
    doubly robustly with a deterministic logger (Dudík et al. 2011): the realised cost where λ picks the tier that
    was served and its cost is known, else the expected cost scaled by the realised / expected ratio of that tier.
    The ratios come from the prompts with a realised cost only: counting the others at their expected cost would pull
    every ratio toward 1. With `groups` (a label per prompt, e.g. novel or not), ratios are per group and tier, since
    prompts of another kind may answer at other lengths. A (group, tier) with fewer than 10 outcomes takes its
    group's ratio, a group with fewer than 10 the overall one. `fixed` (a tier index a prompt, −1 where λ decides):
    the prompts whose tier no λ changes, such as the fallback's for a prompt unlike the training prompts (the tier
    served), counted at that tier for every candidate λ.
    """
    paid = estimated_costs(expected_cost, served, realised_cost, groups)
    lam = lambda_for_cost(pred, expected_cost, target_mean_cost, paid, fixed=fixed)
    return Recalibrated(lam, mean_spend(pred, expected_cost, paid, lam, fixed))


def cost_check(realised: np.ndarray, expected: np.ndarray, ratio_limit: float, min_n: int) -> Check:
    """Promises: does the realised cost of recent decisions match what the router expected them to cost?"""
    r, e = np.asarray(realised, dtype=float), np.asarray(expected, dtype=float)
    n = len(r)
    ratio = float(r.sum() / e.sum()) if n and e.sum() > 0 else float("nan")
    alert = n >= min_n and np.isfinite(ratio) and not (1 / (1 + ratio_limit) <= ratio <= 1 + ratio_limit)
    return Check(
        "cost",
        ratio,
        ratio_limit,
        n,
        bool(alert),
        f"realised / expected cost {ratio:.3f} over {n} outcomes; alert outside "
        f"[{1 / (1 + ratio_limit):.3f}, {1 + ratio_limit:.3f}] (needs {min_n})",
    )
