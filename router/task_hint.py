"""TaskPrior: what a caller's task hint adds to the router's prediction (issue 10, "better views", the task hint).

When the outcome log has a `category` column, training keeps each tier's mean train score per category
(`TaskPrior.fit`). A request may name its task (`task` on `/route`, `X-Tierwise-Task` on `/v1`); for a task the
model knows, each tier's predicted quality becomes ROUTER_WEIGHT × the router's prediction + (1 − ROUTER_WEIGHT)
× the category's mean. An absent or unknown task leaves the router's prediction as it is, so routing never
depends on the hint.

Why a blend and why 50:50: in `make quality` (bench/results/quality.md, row "(d) blend router/prior 50:50", the
per-category means of `task_prior` below), the blend is ahead of the router alone on llmrouter_dc (official split
+0.014 AIQ [+0.001, +0.032]; random splits +0.012 [+0.009, +0.016]), routerbench with 11 tiers (+0.009 [+0.005,
+0.012]) and routellm's prompt split (+0.002 [+0.001, +0.003] AIQ, APGR share +0.025 [+0.015, +0.033]), and
within the CI of it on routerbench with 3 tiers (+0.001 [−0.001, +0.002]). Where the test task is one the log
never saw (routellm's cross-benchmark splits), the suite blended with the overall mean and lost up to 0.005;
here an unknown task is simply ignored. Weights learned per tier on out-of-fold predictions ("(d) blend
IRT/prior, learned w") were no better than the fixed half.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ROUTER_WEIGHT = 0.5
MIN_PROMPTS = 20
"""A category with fewer train prompts is not kept: its mean would be noise (the model then ignores that hint)."""
MAX_TASK_CHARS = 128


@dataclass(frozen=True)
class TaskPrior:
    """Each tier's mean train score per category (tiers in the model's order), and the prompts behind each."""

    tier_names: tuple[str, ...]
    means: dict[str, tuple[float, ...]]
    counts: dict[str, int]
    router_weight: float = ROUTER_WEIGHT

    @classmethod
    def fit(
        cls,
        categories: Sequence[str] | np.ndarray,
        scores: np.ndarray,
        tier_names: Sequence[str],
        min_prompts: int = MIN_PROMPTS,
    ) -> TaskPrior | None:
        """From train prompts' categories (n,) and scores (n, k), NaN where a tier has no outcome; None if no
        category has `min_prompts` prompts. A tier never seen in a category gets its overall mean there."""
        cats = np.asarray(categories).astype(str)
        S = np.asarray(scores, dtype=float)
        if S.ndim != 2 or len(S) != len(cats) or S.shape[1] != len(tier_names):
            raise ValueError(f"categories {cats.shape} and scores {S.shape} for {len(tier_names)} tiers do not match")
        overall = _nanmean(S, np.full(S.shape[1], np.nan))
        means: dict[str, tuple[float, ...]] = {}
        counts: dict[str, int] = {}
        for cat in np.unique(cats):
            rows = cats == cat
            if cat == "" or int(rows.sum()) < min_prompts:
                continue
            means[str(cat)] = tuple(float(v) for v in _nanmean(S[rows], overall))
            counts[str(cat)] = int(rows.sum())
        if not means:
            return None
        return cls(tuple(tier_names), means, counts)

    def blend(self, quality: np.ndarray, tasks: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """The predicted quality (n, k) with each known task's prior blended in, and which rows were (n,)."""
        Q = np.array(quality, dtype=float, copy=True)
        if len(tasks) != len(Q):
            raise ValueError(f"{len(tasks)} task hints for {len(Q)} prompts")
        known = np.zeros(len(Q), dtype=bool)
        for i, task in enumerate(tasks):
            if task is not None and task in self.means:
                known[i] = True
                Q[i] = self.router_weight * Q[i] + (1.0 - self.router_weight) * np.asarray(self.means[task])
        return Q, known

    def to_dict(self) -> dict[str, Any]:
        return {
            "tier_names": list(self.tier_names),
            "means": {k: list(v) for k, v in self.means.items()},
            "counts": dict(self.counts),
            "router_weight": self.router_weight,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskPrior:
        return cls(
            tier_names=tuple(d["tier_names"]),
            means={k: tuple(float(x) for x in v) for k, v in d["means"].items()},
            counts={k: int(v) for k, v in d["counts"].items()},
            router_weight=float(d["router_weight"]),
        )


def _nanmean(S: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN; `fill` where a column has no value."""
    have = np.isfinite(S)
    n = have.sum(axis=0)
    total = np.where(have, S, 0.0).sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), fill)
