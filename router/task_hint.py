"""TaskPrior: what the log's tasks add to the router's prediction, named by a caller's hint or guessed (issue 10).

When the outcome log has a `category` column, training keeps each tier's mean train score per category
(`TaskPrior.fit`). A request may name its task (`task` on `/route`, `X-Tierwise-Task` on `/v1`); for a task the
model knows, each tier's predicted quality becomes ROUTER_WEIGHT × the router's prediction + (1 − ROUTER_WEIGHT)
× the category's mean. An absent or unknown task gets the classifier's guess below (or, for a model without one,
the router's prediction as it is), so routing never depends on the hint.

Why a blend and why 50:50: in `make quality` (bench/results/quality.md, row "(d) blend router/prior 50:50", the
per-category means of `task_prior` below), the blend is ahead of the router alone on llmrouter_dc (official split
+0.014 AIQ [+0.001, +0.032]; random splits +0.012 [+0.009, +0.016]), routerbench with 11 tiers (+0.009 [+0.005,
+0.012]) and routellm's prompt split (+0.002 [+0.001, +0.003] AIQ, APGR share +0.025 [+0.015, +0.033]), and
within the CI of it on routerbench with 3 tiers (+0.001 [−0.001, +0.002]). Where the test task is one the log
never saw (routellm's cross-benchmark splits), the suite blended with the overall mean and lost up to 0.005;
here an unknown task is simply ignored. Weights learned per tier on out-of-fold predictions ("(d) blend
IRT/prior, learned w") were no better than the fixed half.

Without a hint, a prompt still gets a prior: the model's `TaskClassifier` (router/task_classifier.py) says which
of the log's tasks the prompt looks like, and the blend uses those tasks' means weighted by its probabilities.
That is the router's default prediction when the log has categories (`make quality`: "router" against
"boosters alone"); a hint replaces the classifier's guess with the named task. A tier whose model was swapped
after training (`tierwise train --add-model`) has no prior (its means are the old model's): the router's
prediction stands for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from router.task_classifier import TaskClassifier

ROUTER_WEIGHT = 0.5
MIN_PROMPTS = 20
"""A category with fewer train prompts is not kept: its mean would be noise (the model then ignores that hint)."""
MAX_TASK_CHARS = 128


@dataclass(frozen=True)
class TaskPrior:
    """Each tier's mean train score per category (tiers in the model's order; NaN: no prior for that tier), the
    prompts behind each, and the classifier that guesses a prompt's category when no hint names it."""

    tier_names: tuple[str, ...]
    means: dict[str, tuple[float, ...]]
    counts: dict[str, int]
    router_weight: float | tuple[float, ...] = ROUTER_WEIGHT  # one for all tiers, or one per tier
    classifier: TaskClassifier | None = None

    @classmethod
    def fit(
        cls,
        categories: Sequence[str] | np.ndarray,
        scores: np.ndarray,
        tier_names: Sequence[str],
        min_prompts: int = MIN_PROMPTS,
        features: np.ndarray | None = None,
        seed: int = 0,
    ) -> TaskPrior | None:
        """From train prompts' categories (n,) and scores (n, k), NaN where a tier has no outcome; None if no
        category has `min_prompts` prompts. A tier never seen in a category gets its overall mean there.

        With the prompts' `features` (n, d) and two or more categories kept, also the classifier (fitted on the
        prompts of the kept categories)."""
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
        classifier = None
        if features is not None and len(means) > 1:
            X = np.asarray(features)
            if len(X) != len(cats):
                raise ValueError(f"{len(X)} feature rows for {len(cats)} categories")
            kept = np.isin(cats, list(means))
            classifier = TaskClassifier.fit(X[kept], cats[kept], seed=seed)
        return cls(tuple(tier_names), means, counts, classifier=classifier)

    def priors(
        self, tasks: Sequence[str | None] | None, features: np.ndarray | None, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each prompt's prior (n, k), NaN where it has none: the hinted task's means, else (with `features`
        and a classifier) the categories' means weighted by the classifier's probabilities. And which rows
        had a hint the model knows (n,)."""
        if tasks is not None and len(tasks) != n:
            raise ValueError(f"{len(tasks)} task hints for {n} prompts")
        k = len(self.tier_names)
        prior = np.full((n, k), np.nan)
        if self.classifier is not None and features is not None:
            M = np.array([self.means[label] for label in self.classifier.labels], dtype=float)
            prior = self.classifier.proba(features) @ M  # a NaN tier (no prior) stays NaN
        hinted = np.zeros(n, dtype=bool)
        for i, task in enumerate(tasks or ()):
            if task is not None and task in self.means:
                hinted[i] = True
                prior[i] = self.means[task]
        return prior, hinted

    def blend(
        self, quality: np.ndarray, tasks: Sequence[str | None] | None = None, features: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The predicted quality (n, k) with each prompt's prior (see `priors`) blended in, and which rows had a
        known hint (n,). Without `features` only hinted rows change; a tier without a prior never does."""
        Q = np.asarray(quality, dtype=float)
        prior, hinted = self.priors(tasks, features, len(Q))
        w = np.asarray(self.router_weight, dtype=float)
        return np.where(np.isfinite(prior), w * Q + (1.0 - w) * prior, Q), hinted

    def with_learned_weights(self, router_oof: np.ndarray, prior_oof: np.ndarray, scores: np.ndarray) -> TaskPrior:
        """The same prior with each tier's router weight learned: the w on a 0.05 grid whose blend of the router's
        out-of-fold predictions (n, k) and the prompts' out-of-fold priors (n, k) has the least squared error on
        the train `scores` (n, k). Rows where any of the three is NaN are left out; a tier without rows keeps the
        current weight."""
        R, P, S = (np.asarray(a, dtype=float) for a in (router_oof, prior_oof, scores))
        if not R.shape == P.shape == S.shape or R.shape[1] != len(self.tier_names):
            raise ValueError(f"out-of-fold shapes {R.shape}, {P.shape}, {S.shape} for {len(self.tier_names)} tiers")
        current = np.broadcast_to(np.asarray(self.router_weight, dtype=float), (R.shape[1],))
        grid = np.linspace(0.0, 1.0, 21)
        weights = []
        for j in range(R.shape[1]):
            ok = np.isfinite(R[:, j]) & np.isfinite(P[:, j]) & np.isfinite(S[:, j])
            if not ok.any():
                weights.append(float(current[j]))
                continue
            err = [float(np.mean((w * R[ok, j] + (1 - w) * P[ok, j] - S[ok, j]) ** 2)) for w in grid]
            weights.append(round(float(grid[int(np.argmin(err))]), 2))
        return replace(self, router_weight=tuple(weights))

    def without_tiers(self, tiers: Sequence[int]) -> TaskPrior:
        """The same prior with no means for these tier indices (their model changed since the log)."""
        drop = set(tiers)
        means = {c: tuple(np.nan if j in drop else v for j, v in enumerate(m)) for c, m in self.means.items()}
        return replace(self, means=means)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the classifier's arrays (the artifact saves those beside it)."""
        return {
            "tier_names": list(self.tier_names),
            "means": {k: [v if np.isfinite(v) else None for v in m] for k, m in self.means.items()},
            "counts": dict(self.counts),
            "router_weight": self.router_weight if isinstance(self.router_weight, float) else list(self.router_weight),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], classifier: TaskClassifier | None = None) -> TaskPrior:
        return cls(
            tier_names=tuple(d["tier_names"]),
            means={k: tuple(np.nan if x is None else float(x) for x in v) for k, v in d["means"].items()},
            counts={k: int(v) for k, v in d["counts"].items()},
            router_weight=_weight(d["router_weight"]),
            classifier=classifier,
        )


def _weight(v: float | list[float]) -> float | tuple[float, ...]:
    return tuple(float(x) for x in v) if isinstance(v, list) else float(v)


def _nanmean(S: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN; `fill` where a column has no value."""
    have = np.isfinite(S)
    n = have.sum(axis=0)
    total = np.where(have, S, 0.0).sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), fill)
