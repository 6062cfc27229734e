"""TaskPrior: what the log's tasks add to the router's prediction, named by a caller's hint or guessed (issue 10).

When the outcome log has a `category` column, training keeps each tier's mean train score per category
(`TaskPrior.fit`) and a classifier that guesses a prompt's category from the router's features
(router/task_classifier.py). Each tier's predicted quality becomes w × the boosters' prediction + (1 − w) × the
prompt's prior: the named task's means when a request's hint (`task` on `/route`, `X-Tierwise-Task` on `/v1`)
is a task the model knows, else the categories' means weighted by the classifier's probabilities. The weight w
is learned per tier out of fold at training (`with_learned_weights`, called by training/fit.fit_task_prior);
ROUTER_WEIGHT (a half) is the default before that, and what models trained before learned weights carry. A model
without a classifier (trained before it existed) blends hinted prompts only, so routing never depends on a hint.

Why: on the shared logs the per-tier boosters were noisier than the plain per-task mean (the task-label prior beat
them on llmrouter_dc and routerbench with 11 tiers). In the full `make quality` run the guessed prior adds +0.010
AIQ [+0.005, +0.014] on routerbench 11 tiers, +0.011 [+0.008, +0.015] on llmrouter_dc random splits and +0.003
on routellm → mmlu, ties routerbench 3 tiers and routellm's prompt split, and costs −0.004 [−0.010, +0.004] on
routellm → gsm8k, a task training never saw (bench/results/quality.md: "router" against "boosters alone").

A tier whose model was swapped after training (`tierwise add-model`) loses the old model's means. When the new
model's outcomes carry categories, `with_tier_profile` gives it means from them: each task's mean of its outcomes
shrunk toward its *task profile*, a convex combination of the other tiers' means (which known models it behaves
like, task by task) fitted on those few outcomes; without categories it has no prior (NaN) and the boosters'
prediction stands for it. The plain shrunk means (`with_tier_outcomes`, toward its overall mean) were within the
draws' noise of no prior and worsened calibration on llmrouter_dc; the profile is measured against both in
bench/results/add_model.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
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
            prior = self.classifier.proba(features) @ self._label_means  # a NaN tier (no prior) stays NaN
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
        w = self._weights
        return np.where(np.isfinite(prior), w * Q + (1.0 - w) * prior, Q), hinted

    def with_learned_weights(self, router_oof: np.ndarray, prior_oof: np.ndarray, scores: np.ndarray) -> TaskPrior:
        """The same prior with each tier's router weight learned (`least_squares_weights` of the router's
        out-of-fold predictions (n, k), the prompts' out-of-fold priors (n, k) and the train `scores` (n, k)); a
        tier without complete rows keeps the current weight."""
        R, P, S = (np.asarray(a, dtype=float) for a in (router_oof, prior_oof, scores))
        if not R.shape == P.shape == S.shape or R.shape[1] != len(self.tier_names):
            raise ValueError(f"out-of-fold shapes {R.shape}, {P.shape}, {S.shape} for {len(self.tier_names)} tiers")
        learned = least_squares_weights(R, P, S)
        current = np.broadcast_to(self._weights, learned.shape)
        weights = np.where(np.isfinite(learned), np.round(learned, 2), current)
        return replace(self, router_weight=tuple(float(w) for w in weights))

    @cached_property
    def _label_means(self) -> np.ndarray:
        """The means (c, k) in the classifier's label order (computed once: /route calls `priors` per request)."""
        assert self.classifier is not None
        return np.array([self.means[label] for label in self.classifier.labels], dtype=float)

    @cached_property
    def _weights(self) -> np.ndarray:
        return np.asarray(self.router_weight, dtype=float)

    def with_tier_outcomes(
        self, tier: int, categories: Sequence[str] | np.ndarray, scores: Sequence[float] | np.ndarray
    ) -> TaskPrior:
        """The same prior with tier `tier`'s means taken from a new model's few outcomes (measured for
        `tierwise add-model` by bench/quality_add_model.py; not shipped, see the module's docstring): per task,
        the mean of its outcomes in that task shrunk toward the mean of all of them by MIN_PROMPTS pseudo-outcomes
        ((sum + MIN_PROMPTS × overall) / (n + MIN_PROMPTS)); a task it has no outcome in gets the overall mean.
        The tier keeps its learned router weight. No scores: the tier has no prior."""
        cats, y = _outcome_arrays(categories, scores)
        ok = np.isfinite(y)
        if not ok.any():
            return self.without_tiers([tier])
        return self._with_tier_shrunk(tier, cats[ok], y[ok], [float(y[ok].mean())] * len(self.means))

    def with_tier_profile(
        self, tier: int, categories: Sequence[str] | np.ndarray, scores: Sequence[float] | np.ndarray
    ) -> TaskPrior:
        """Like `with_tier_outcomes`, but each task's mean is shrunk toward what the new model's task profile
        predicts instead of toward its overall mean: its per-task means modelled as c + Σ_i w_i × (tier i's means),
        w ≥ 0 and Σ w = 1 over the other tiers (which known models it behaves like, task by task), fitted by least
        squares on its few outcomes. A task it has no outcome in gets that profile's value."""
        cats, y = _outcome_arrays(categories, scores)
        tasks = list(self.means)
        M = np.array([self.means[t] for t in tasks], dtype=float)  # (tasks, k)
        others = [i for i in range(M.shape[1]) if i != tier and np.isfinite(M[:, i]).all()]
        ok = np.isfinite(y) & np.isin(cats, tasks)
        if not ok.any() or not others:
            return self.with_tier_outcomes(tier, categories, scores)
        row = {t: r for r, t in enumerate(tasks)}
        A = M[[row[c] for c in cats[ok]]][:, others]  # each outcome's task means of the other tiers
        b = y[ok]
        weights = _simplex_least_squares(A - A.mean(axis=0), b - b.mean())
        c = float(b.mean() - A.mean(axis=0) @ weights)
        profile = np.clip(c + M[:, others] @ weights, 0.0, 1.0)
        return self._with_tier_shrunk(tier, cats[ok], b, [float(v) for v in profile])

    def _with_tier_shrunk(self, tier: int, cats: np.ndarray, y: np.ndarray, targets: Sequence[float]) -> TaskPrior:
        """Tier `tier`'s mean in each task (in `means` order): its outcomes' (cats, y) mean there shrunk toward that
        task's target by MIN_PROMPTS pseudo-outcomes, (sum + MIN_PROMPTS × target) / (n + MIN_PROMPTS)."""
        means = {}
        for target, (task, m) in zip(targets, self.means.items(), strict=True):
            rows = cats == task
            new = (float(y[rows].sum()) + MIN_PROMPTS * target) / (int(rows.sum()) + MIN_PROMPTS)
            means[task] = tuple(new if j == tier else v for j, v in enumerate(m))
        return replace(self, means=means)

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


def _outcome_arrays(
    categories: Sequence[str] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A new model's outcomes as (categories as str, scores as float) arrays of the same length."""
    cats = np.asarray(categories).astype(str)
    y = np.asarray(scores, dtype=float)
    if len(cats) != len(y):
        raise ValueError(f"{len(cats)} categories for {len(y)} scores")
    return cats, y


def _simplex_least_squares(A: np.ndarray, b: np.ndarray, steps: int = 500) -> np.ndarray:
    """argmin ||A w - b||² over w ≥ 0, Σ w = 1 (projected gradient with the Lipschitz step)."""
    k = A.shape[1]
    w = np.full(k, 1.0 / k)
    lipschitz = float(np.linalg.norm(A, 2) ** 2) or 1.0
    for _ in range(steps):
        w = _project_to_simplex(w - (A.T @ (A @ w - b)) / lipschitz)
    return w


def _project_to_simplex(v: np.ndarray) -> np.ndarray:
    """The Euclidean projection of v onto {w ≥ 0, Σ w = 1} (Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    rho = np.nonzero(u - cumulative / np.arange(1, len(v) + 1) > 0)[0][-1]
    projected: np.ndarray = np.maximum(v - cumulative[rho] / (rho + 1.0), 0.0)
    return projected


def least_squares_weights(pred: np.ndarray, prior: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per column, the w on a 0.05 grid over [0, 1] whose blend w * pred + (1 - w) * prior has the least squared
    error against `scores` (all (n, k)); rows where any of the three is NaN are left out of that column, and a
    column without rows gets NaN."""
    ok = np.isfinite(pred) & np.isfinite(prior) & np.isfinite(scores)
    n = ok.sum(axis=0)
    grid = np.linspace(0.0, 1.0, 21)
    errs = np.stack([np.where(ok, (w * pred + (1 - w) * prior - scores) ** 2, 0.0).sum(axis=0) for w in grid])
    return np.where(n > 0, grid[np.argmin(errs, axis=0)], np.nan)


def _weight(v: float | list[float]) -> float | tuple[float, ...]:
    return tuple(float(x) for x in v) if isinstance(v, list) else float(v)


def _nanmean(S: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN; `fill` where a column has no value."""
    have = np.isfinite(S)
    n = have.sum(axis=0)
    total = np.where(have, S, 0.0).sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), fill)
