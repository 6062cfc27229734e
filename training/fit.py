"""Fitting: the difficulty model on the split's train prompts, and the parameters that define a run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.artifact import RouterArtifact, estimate_tokens_out
from router.embedders.protocol import Embedder
from router.embedding_cache import EmbeddingCache
from router.features import FeatureSpec, featurize
from router.model import MIN_TIER_OUTCOMES, DifficultyModel, few_outcome_tiers
from router.shared_difficulty import SharedDifficulty
from router.stacking import fold_rows, out_of_fold
from router.task_hint import TaskPrior
from training.data import Pool, Split
from training.evaluation import EvalResult

logger = logging.getLogger(__name__)

TASK_PRIOR_FOLDS = 3
MIN_POOL_PROMPTS = 200
"""Below this many pooled prompts the shared difficulty's regressor has too little to learn from: plain boosters."""


@dataclass
class TrainResult:
    artifact: RouterArtifact
    evaluation: EvalResult
    params: dict[str, Any]
    test_prompt_ids: list[str]


def train_router(
    split: Split,
    embedder: Embedder,
    cache: EmbeddingCache | None,
    features: FeatureSpec,
    model: DifficultyModel,
    pool: Pool | None = None,
) -> RouterArtifact:
    """Fit the difficulty model on the split's train prompts; with a pool, on top of a shared difficulty."""
    table = split.table
    X = featurize(table.prompts["prompt"][split.train].tolist(), features, embedder, cache)
    shared, easiness = None, None
    if pool is None or len(pool.prompts) < MIN_POOL_PROMPTS:
        if pool is not None:
            logger.info(
                "shared difficulty skipped: the pool has %d prompts, fewer than %d", len(pool.prompts), MIN_POOL_PROMPTS
            )
        model.fit(X, table.scores[split.train], split.tiers.names)
    else:
        shared = fit_shared_difficulty(X, pool, features, embedder, cache, model.random_state, model.n_jobs)
        easiness = shared.oof_easiness_[: pool.n_train]
        model.fit(X, table.scores[split.train], split.tiers.names, shared=shared, train_easiness=easiness)
    categories = table.prompts["category"].to_numpy()[split.train]  # "" where the log has none
    task_prior = fit_task_prior(X, table.scores[split.train], categories, split.tiers.names, model, shared, easiness)
    if task_prior is not None:
        guessed = (
            f"guessed from the prompt when no hint names one, router weight per tier {task_prior.router_weight}"
            if task_prior.classifier
            else "hints only"
        )
        logger.info(
            "task prior: %d categories of the log (%s); %s", len(task_prior.means), ", ".join(task_prior.means), guessed
        )
    return RouterArtifact(
        model=model,
        features=features,
        tiers=split.tiers,
        tokens_out=estimate_tokens_out(split.log, split.tiers),
        task_prior=task_prior,
    )


def fit_task_prior(
    X: np.ndarray,
    scores: np.ndarray,
    categories: np.ndarray,
    tier_names: list[str],
    model: DifficultyModel,
    shared: SharedDifficulty | None = None,
    easiness: np.ndarray | None = None,
    folds: int = TASK_PRIOR_FOLDS,
    boosters_oof: np.ndarray | None = None,
) -> TaskPrior | None:
    """The log's task prior (router/task_hint.py) for train features X (n, d) and scores (n, k): per-category
    means, the classifier that guesses a prompt's category, and each tier's blend weight learned out of fold. A
    tier with few outcomes (`few_outcome_tiers`) takes its means from its task profile.

    The weight compares, on the train prompts, the boosters' out-of-fold predictions (boosters with `model`'s
    parameters, on the same shared difficulty and out-of-fold easiness) with the out-of-fold guessed priors. The
    learned weights run 0-0.6 (mostly 0.15-0.45) on routerbench and llmrouter_dc, 0.4-0.55 on routellm; in a
    one-seed run of the suite's splits they were at or above the fixed half on all 7 groups tried, each difference
    inside its CI. `boosters_oof`: those boosters' predictions when the caller has them already
    (`out_of_fold_boosters` with the same arguments).
    """
    seed = model.random_state
    prior = TaskPrior.fit(categories, scores, tier_names, features=X, seed=seed)
    if prior is None:
        return None
    learn = prior.classifier is not None and len(X) >= 10 * folds
    thin = _thin_in_a_fold(scores, tier_names, folds, seed) if learn else None
    if thin:
        logger.warning(
            "task prior: tier %s has fewer than %d outcomes in some of the %d folds that learn the blend weights; "
            "every tier keeps the default weight",
            thin,
            MIN_TIER_OUTCOMES,
            folds,
        )
    if learn and not thin:
        if boosters_oof is None:
            boosters_oof = out_of_fold_boosters(X, scores, tier_names, model, shared, easiness, folds)
        prior_oof = out_of_fold_priors(X, scores, categories, tier_names, seed, folds)
        prior = prior.with_learned_weights(boosters_oof, prior_oof, scores)
    # A tier with few outcomes (a model just swapped in): its per-task means from its task profile, as add-model
    # gives it, not the raw means of a handful of outcomes per task.
    S = np.asarray(scores, dtype=float)
    cats = np.asarray(categories).astype(str)
    for j in np.flatnonzero(few_outcome_tiers(np.isfinite(S).sum(axis=0), model.few_rows)):
        has = np.isfinite(S[:, j])
        prior = prior.with_tier_profile(int(j), cats[has], S[has, j])
    return prior


def _thin_in_a_fold(scores: np.ndarray, tier_names: list[str], folds: int, seed: int) -> str | None:
    """The first tier with fewer than MIN_TIER_OUTCOMES outcomes in some fold's fitting rows (a model swapped in
    with a dozen outcomes), whose out-of-fold boosters cannot be fitted; None when every tier has enough."""
    have = np.isfinite(np.asarray(scores, dtype=float))
    for fit, _ in fold_rows(len(have), folds, seed):
        short = np.flatnonzero(have[fit].sum(axis=0) < MIN_TIER_OUTCOMES)
        if len(short):
            return tier_names[int(short[0])]
    return None


def out_of_fold_priors(
    X: np.ndarray,
    scores: np.ndarray,
    categories: np.ndarray,
    tier_names: list[str],
    seed: int,
    folds: int = TASK_PRIOR_FOLDS,
) -> np.ndarray:
    """Each train prompt's guessed task prior (n, k) from a TaskPrior (means and classifier) fitted without its
    fold; NaN where a fold's prior has nothing to say."""

    def priors(fit: np.ndarray, held: np.ndarray) -> np.ndarray:
        p = TaskPrior.fit(categories[fit], scores[fit], tier_names, features=X[fit], seed=seed)
        return p.priors(None, X[held], len(held))[0] if p is not None else np.full((len(held), len(tier_names)), np.nan)

    return out_of_fold(priors, len(X), folds, seed)


def out_of_fold_boosters(
    X: np.ndarray,
    scores: np.ndarray,
    tier_names: list[str],
    model: DifficultyModel,
    shared: SharedDifficulty | None = None,
    easiness: np.ndarray | None = None,
    folds: int = TASK_PRIOR_FOLDS,
) -> np.ndarray:
    """Each train prompt's per-tier prediction (n, k) by boosters with `model`'s parameters fitted without its fold;
    with a shared difficulty, on the prompts' out-of-fold `easiness` for fitting and for the held rows alike."""

    def boosters(fit: np.ndarray, held: np.ndarray) -> np.ndarray:
        m = type(model)(**model.get_params())
        if shared is None or easiness is None:
            return np.asarray(m.fit(X[fit], scores[fit], tier_names).predict_quality(X[held]))
        m.fit(X[fit], scores[fit], tier_names, shared=shared, train_easiness=easiness[fit])
        return np.asarray(m.predict_quality(X[held], easiness=easiness[held]))

    return out_of_fold(boosters, len(X), folds, model.random_state)


def fit_shared_difficulty(
    X_train: np.ndarray,
    pool: Pool,
    features: FeatureSpec,
    embedder: Embedder,
    cache: EmbeddingCache | None,
    seed: int,
    n_jobs: int = 0,
) -> SharedDifficulty:
    """The shared difficulty on the pool: the split's train features `X_train` (the pool's first rows) and the rest."""
    if X_train.shape[0] != pool.n_train:
        raise ValueError(f"the pool starts with {pool.n_train} training prompts, X_train has {X_train.shape[0]}")
    others = pool.prompts[pool.n_train :]
    # A pool of the log's own prompts only (the pooled logs missing, e.g. run outside the checkout) has no rest.
    X = np.vstack([X_train, featurize(others, features, embedder, cache)]) if len(others) else X_train
    logger.info("shared difficulty on %s", pool.describe())
    model = SharedDifficulty(random_state=seed, n_jobs=n_jobs)
    return model.fit(X, pool.scores.to_numpy(dtype=float), [str(c) for c in pool.scores.columns])


def run_params(
    split: Split,
    features: FeatureSpec,
    model: DifficultyModel,
    test_size: float,
    seed: int,
    pool: Pool | None = None,
    task_prior: TaskPrior | None = None,
) -> dict[str, Any]:
    """Everything that defines a run, for MLflow (with the fitted task prior: its tasks, whether it guesses them,
    and each tier's learned blend weight)."""
    prior: dict[str, Any] = {"task_prior.tasks": len(task_prior.means) if task_prior else 0}
    if task_prior is not None:
        prior["task_prior.guesses_task"] = task_prior.classifier is not None
        weights = task_prior.router_weight
        per_tier = weights if isinstance(weights, tuple) else (weights,) * len(split.tiers.names)
        named = zip(split.tiers.names, per_tier, strict=True)
        prior["task_prior.router_weight"] = ",".join(f"{n}={w:g}" for n, w in named)
    return {
        **prior,
        "shared_difficulty_pool": pool.describe() if pool and len(pool.prompts) >= MIN_POOL_PROMPTS else "none",
        **{f"model.{k}": v for k, v in model.get_params().items()},
        **{f"features.{k}": v for k, v in features.model_dump().items()},
        "tiers": ",".join(f"{t.name}={t.model}" for t in split.tiers.tiers),
        "test_size": test_size,
        "seed": seed,
        "n_prompts": len(split.table.prompts),
        "n_train_prompts": int(split.train.sum()),
        "n_outcomes": len(split.log),
    }
