"""Routing-quality suite (issue 10): every router design on all three shared datasets, with bootstrap CIs.

`make quality` (or `python -m bench.quality`) trains and evaluates, per split:
- routerbench_subset, 3 tiers (config/tiers.toml) and 11 tiers (config/tiers.per-model.toml),
  random 70/30 splits by normalised prompt text, seeds 0..2;
- llmrouter_dc, 9 tiers (config/tiers.llmrouter_dc.toml): its own train/test split with every train
  prompt whose text is also in test removed, plus random 70/30 splits, seeds 0..2;
- routellm_evals, 2 tiers (config/tiers.routellm_evals.toml; contaminated prompts dropped): random
  70/30 splits, seeds 0..2, and the cross-benchmark splits (train on two benchmarks, test on the third).

Methods: the router as `make train` fits it (training/fit.py: per-tier DifficultyModel boosters on MiniLM int8
tail-700 + text features, started from the shared difficulty pooled over all three logs; where the log has
categories, blended 50:50 with the per-category means weighted by a classifier's guess of each prompt's
category, router/task_hint.py), those boosters alone, the same boosters without the shared difficulty, kNN (k=25, same embeddings), logistic regression, the task-label prior (per-category train mean per tier), the zero router
(hull of the single tiers), the oracle (λ sweep on true scores), and the issue-10 candidates:
IRT two-stage (router/irt.py), one pooled booster over (prompt, model) rows (router/pooled.py), the router
with prompt-structure / category / question-view features (router/prompt_structure.py), and blends with the
prior; (f) direct gain targets (router/gain.py: per tier, LightGBM on score minus the cheapest's or the next
cheaper tier's, added to the router's cheapest-tier prediction), (g) stacking (router/stacking.py: a per-tier
logistic meta-model on 3-fold out-of-fold predictions of boosters, kNN and task prior) and (h) plain averages of
the same bases. IRT and the pooled booster learn from every model in the log, also models behind no tier.

Metrics: AIQ as router/evaluate.py defines it (hull over [0, top-tier cost] / top cost), RouterBench's AIQ
normalised to [cheapest, priciest tier cost], and for the two-model set RouteLLM's APGR on the
share-of-strong-calls axis (no hull; random = 0.5). 95% CIs: percentile bootstrap over test prompts
(decisions fixed, prompts resampled); the per-group mean over seeds averages the b-th draw of each seed.
Writes bench/results/quality.json and quality.md. Embeddings come from .cache/embeddings.sqlite.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from bench.common import REPO, machine_info
from router import evaluate as ev
from router.artifact import estimate_tokens_out
from router.embedders.factory import make_embedder
from router.embedding_cache import EmbeddingCache, embed_cached
from router.gain import GainModel
from router.irt import IrtModel
from router.model import DifficultyModel
from router.pooled import PooledModel
from router.prior_boost import PriorBoostModel
from router.prompt_structure import question_text, structure_features
from router.schema import TiersConfig, load_tiers
from router.shared_difficulty import SharedDifficulty
from router.stacking import StackedQuality, out_of_fold
from router.task_hint import least_squares_weights
from router.text import normalize_text, prompt_tokens, text_features, text_window
from training.data import Pool, stratified_sample
from training.evaluation import logreg_predictor
from training.fit import fit_task_prior, out_of_fold_boosters

logger = logging.getLogger("bench.quality")
RESULTS = REPO / "bench" / "results"
SEEDS = (0, 1, 2)
TEST_SIZE = 0.3
# One LightGBM / BLAS thread per fit: on a shared, busy machine OpenMP's spinning threads made a
# booster 30x slower than a single thread (17 s vs 0.5 s for one routerbench tier).
N_JOBS = 1
BOOSTERS = "boosters alone (no task prior)"
"""The router before the task prior is blended in: the per-tier boosters on the shared difficulty."""
IRT_PARAMS: dict[str, Any] = {"n_jobs": N_JOBS}
POOLED_PARAMS: dict[str, Any] = {"n_jobs": N_JOBS}


@dataclass(frozen=True)
class SplitData:
    """One train/test split: all-model score matrix, tier columns, features, costs."""

    group: str
    name: str
    prompts: list[str]
    categories: np.ndarray
    all_scores: np.ndarray  # (n, m) every model in the log
    tier_cols: list[int]  # columns of all_scores behind the tiers, cheapest first
    models: list[str]  # the models of all_scores' columns
    source: str  # the shared dataset's name
    costs: np.ndarray  # (n, k) realised cost per tier
    pred_cost: np.ndarray  # (n, k) expected cost per tier (router.text.prompt_tokens and mean output tokens)
    train: np.ndarray
    test: np.ndarray

    @property
    def scores(self) -> np.ndarray:
        return self.all_scores[:, self.tier_cols]

    @property
    def seed(self) -> int:
        """The random split's seed (its name is seed<N>); 0 for a fixed split."""
        return int(self.name[4:]) if self.name.startswith("seed") else 0


# ----------------------------------------------------------------------------- data


def load_dataset(name: str) -> pd.DataFrame:
    log = pd.read_parquet(REPO / "data" / name / "outcomes.parquet")
    if "contaminated" in log:
        log = log[~log["contaminated"].fillna(False).astype(bool)]
    return log


def pivot(log: pd.DataFrame, tiers: TiersConfig, source: str) -> dict[str, Any]:
    """Per prompt: text, category, all-model scores, tier costs; only prompts complete on the tiers."""
    first = log.drop_duplicates("prompt_id").set_index("prompt_id")
    scores = log.pivot(index="prompt_id", columns="model", values="score").reindex(first.index)
    costs = log.pivot(index="prompt_id", columns="model", values="cost_usd").reindex(first.index)
    models = [t.model for t in tiers.tiers]
    complete = scores[models].notna().all(axis=1) & costs[models].notna().all(axis=1)
    all_models = list(scores.columns)
    tok_out = estimate_tokens_out(log[log["model"].isin(models)], tiers)
    prompts = first["prompt"][complete].tolist()
    tokens_in = prompt_tokens(prompts)
    pred_cost = np.stack(
        [tokens_in * t.input_per_1m / 1e6 + tok_out[t.name] * t.output_per_1m / 1e6 for t in tiers.tiers], axis=1
    )
    return {
        "ids": first.index[complete].to_numpy(),
        "prompts": prompts,
        "categories": first["category"][complete].fillna("").astype(str).to_numpy(),
        "extra": first[complete],
        "all_scores": scores[complete].to_numpy(dtype=float),
        "tier_cols": [all_models.index(m) for m in models],
        "models": [str(m) for m in all_models],
        "source": source,
        "costs": costs[complete][models].to_numpy(dtype=float),
        "pred_cost": pred_cost,
    }


def random_splits(group: str, piv: dict[str, Any], seeds: tuple[int, ...]) -> list[SplitData]:
    texts = [normalize_text(p) for p in piv["prompts"]]
    out = []
    for seed in seeds:
        train, test = ev.split_by_group(texts, TEST_SIZE, seed)
        out.append(_split(group, f"seed{seed}", piv, train, test))
    return out


def _split(group: str, name: str, piv: dict[str, Any], train: np.ndarray, test: np.ndarray) -> SplitData:
    keys = ("prompts", "categories", "all_scores", "tier_cols", "models", "source", "costs", "pred_cost")
    return SplitData(group, name, train=train, test=test, **{k: piv[k] for k in keys})


def leak_free(train: np.ndarray, test: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Train mask without the prompts whose normalised text is also a test prompt's."""
    test_texts = {normalize_text(p) for p, t in zip(prompts, test, strict=True) if t}
    return np.asarray(train & np.array([normalize_text(p) not in test_texts for p in prompts]))


POOL_LOGS = ("routerbench_subset", "llmrouter_dc", "routellm_evals")
POOL_CAP = 3000
"""Prompts taken from each other shared log into a split's pool (by category), as `make train` does."""


def pool_for(sp: SplitData, seed: int, drop_model: str | None = None) -> Pool:
    """The split's train prompts with every model of its log, then up to POOL_CAP prompts of each other log.

    Other logs' prompts whose normalised text is one of this split's prompts are left out (no test leak).
    `drop_model` removes one model's outcomes from the pool (bench/quality_add_model.py).
    """
    taken = {normalize_text(p) for p in sp.prompts}
    tr = np.flatnonzero(sp.train)
    prompts = [sp.prompts[i] for i in tr]
    blocks = [pd.DataFrame(sp.all_scores[tr], columns=sp.models)]
    for other in POOL_LOGS:
        if other == sp.source:
            continue
        log = load_dataset(other)
        first = log.drop_duplicates("prompt_id").set_index("prompt_id")
        texts = first["prompt"].map(normalize_text)
        first = stratified_sample(first[~texts.isin(taken) & ~texts.duplicated()], POOL_CAP, seed)
        wide = log.pivot_table(index="prompt_id", columns="model", values="score", aggfunc="mean")
        blocks.append(wide.reindex(first.index).reset_index(drop=True))
        prompts += first["prompt"].tolist()
    scores = pd.concat(blocks, ignore_index=True)
    if drop_model is not None:
        scores = scores.drop(columns=[drop_model])
    return Pool(prompts=prompts, scores=scores, n_train=len(tr))


def build_splits(quick: bool, seeds: tuple[int, ...] = SEEDS) -> list[SplitData]:
    """Every split of the suite, grouped; groups in the order they run (headline comparisons first); the random ones
    at `seeds` (the first only with `quick`)."""
    seeds = seeds[:1] if quick else seeds
    rb = load_dataset("routerbench_subset")
    dc = load_dataset("llmrouter_dc")
    rl = load_dataset("routellm_evals")
    splits = random_splits(
        "routerbench 3 tiers", pivot(rb, load_tiers(REPO / "config/tiers.toml"), "routerbench_subset"), seeds
    )

    piv = pivot(dc, load_tiers(REPO / "config/tiers.llmrouter_dc.toml"), "llmrouter_dc")
    split_col = piv["extra"]["split"].to_numpy()
    test = split_col == "test"
    splits.append(
        _split("llmrouter_dc official", "official-minus-leaks", piv, leak_free(~test, test, piv["prompts"]), test)
    )
    dc_random = random_splits("llmrouter_dc random", piv, seeds)

    piv = pivot(rl, load_tiers(REPO / "config/tiers.routellm_evals.toml"), "routellm_evals")
    splits += random_splits("routellm random", piv, seeds)
    bench = np.array([c.split("/")[0] for c in piv["categories"]])
    for held in ("mt_bench", "mmlu", "gsm8k"):
        test = bench == held
        splits.append(_split(f"routellm cross -> {held}", "cross", piv, leak_free(~test, test, piv["prompts"]), test))

    splits += dc_random
    per_model = load_tiers(REPO / "config/tiers.per-model.toml")
    splits += random_splits("routerbench 11 tiers", pivot(rb, per_model, "routerbench_subset"), seeds)
    return splits


# ----------------------------------------------------------------------------- features


class Features:
    """Embedding views (cached) and text / structure features for a dataset's prompts."""

    def __init__(self, cache_path: Path, onnx_dir: Path):
        self.embedder = make_embedder("onnx-int8", onnx_dir=onnx_dir)
        self.cache = EmbeddingCache(cache_path)
        self._memo: dict[tuple[int, str], np.ndarray] = {}

    def view(self, prompts: list[str], name: str) -> np.ndarray:
        key = (hash(tuple(prompts)), name)
        if key not in self._memo:
            if name == "tail700":
                texts = [text_window(p, 700) for p in prompts]
            elif name == "question":
                texts = [question_text(p) for p in prompts]
            else:
                raise ValueError(name)
            self._memo[key] = embed_cached(self.embedder, texts, self.cache)
        return self._memo[key]


def category_encoding(cats: np.ndarray, Y: np.ndarray, train: np.ndarray, seed: int, folds: int = 5) -> np.ndarray:
    """Per-category mean score of each column, out-of-fold on train rows (no label leak), train-wide on others.

    Unseen categories get the train mean; means are shrunk toward it with 10 pseudo-prompts.
    """
    out = np.zeros_like(Y)
    rng = np.random.default_rng(seed)
    tr_idx = np.flatnonzero(train)
    fold_of = rng.integers(0, folds, len(tr_idx))

    def fill(fit_rows: np.ndarray, apply_rows: np.ndarray) -> None:
        glob = np.nanmean(Y[fit_rows], axis=0)
        df = pd.DataFrame(Y[fit_rows]).assign(cat=cats[fit_rows])
        sums, counts = df.groupby("cat").sum(), df.groupby("cat").count()
        enc = (sums + 10 * glob) / (counts + 10)
        table = enc.reindex(cats[apply_rows]).to_numpy(dtype=float)
        out[apply_rows] = np.where(np.isfinite(table), table, glob)

    for f in range(folds):
        fill(tr_idx[fold_of != f], tr_idx[fold_of == f])
    fill(tr_idx, np.flatnonzero(~train))
    return out


prior_predictor = ev.task_prior  # the task-label prior: per-category train mean of each tier


# ----------------------------------------------------------------------------- metrics


# The metric code lives in router/evaluate.py (shared with the training table and the champion gate). Here W holds
# the bootstrap draws only; the full test set is prepended as row 0, so every metric array is (1 + B,).
lambda_choices = ev.lambda_choices
share_choices = ev.share_choices


def bootstrap_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    return ev.bootstrap_weights(n, n_boot, seed)[1:]


def _with_full(W: np.ndarray) -> np.ndarray:
    return np.vstack([np.full(W.shape[1], 1 / W.shape[1]), W])


def curve_metrics(
    choices: np.ndarray, S: np.ndarray, C: np.ndarray, W: np.ndarray, extra_points: bool = False
) -> dict[str, np.ndarray]:
    """AIQ and range AIQ of a decision matrix (or, with extra_points, the zero router), full set then draws."""
    return ev.zero_router_draws(S, C, _with_full(W)) if extra_points else ev.aiq_draws(choices, S, C, _with_full(W))


def apgr_share(diff: np.ndarray, S: np.ndarray, W: np.ndarray, seed: int) -> np.ndarray:
    """RouteLLM's APGR on the share-of-strong-calls axis (column 1 strong), full set then bootstrap draws."""
    return np.asarray(ev.share_gap_draws(diff, S, _with_full(W), seed)["APGR_share"])


# ----------------------------------------------------------------------------- methods


def fit_predict_methods(
    sp: SplitData, feats: Features, seed: int, extras: bool
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Predicted tier quality on the test prompts, per method, and each method's fit-and-predict seconds.

    `extras` adds the costlier variants (feature views, easiness as a feature); --quick leaves them out. IRT ranks 0
    and 2 (never ahead of rank 1, 30-90 s a split) left the suite in 2026-11; their last full-run rows are in git.
    """
    tr, te = sp.train, sp.test
    Y, Yall = sp.scores, sp.all_scores
    emb = feats.view(sp.prompts, "tail700")
    tf = text_features(sp.prompts)
    st = structure_features(sp.prompts)
    X = np.hstack([emb, tf])
    has_cats = len(set(sp.categories[tr])) > 1
    all_names = [str(j) for j in range(Yall.shape[1])]
    preds: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], np.ndarray]) -> None:
        t0 = time.perf_counter()
        preds[name] = fn()
        timings[name] = time.perf_counter() - t0
        logger.info("  %-40s %.1f s", name, timings[name])

    def booster(Xm: np.ndarray) -> np.ndarray:
        names = [str(j) for j in range(Y.shape[1])]
        return DifficultyModel(n_jobs=N_JOBS, random_state=seed).fit(Xm[tr], Y[tr], names).predict_quality(Xm[te])

    def prior_boost(Xm: np.ndarray, prior: np.ndarray) -> np.ndarray:
        names = [str(j) for j in range(Y.shape[1])]
        model = PriorBoostModel(n_jobs=N_JOBS, random_state=seed).fit(Xm[tr], Y[tr], prior[tr], names)
        return model.predict_quality(Xm[te], prior[te])

    def irt(**kw: Any) -> np.ndarray:
        model = IrtModel(random_state=seed, **{**IRT_PARAMS, **kw}).fit(X[tr], Yall[tr], all_names)
        return model.predict_quality(X[te])[:, sp.tier_cols]

    def on_shared(easiness: str) -> np.ndarray:
        names = [str(j) for j in range(Y.shape[1])]
        model = DifficultyModel(n_jobs=N_JOBS, random_state=seed, easiness=easiness)  # type: ignore[arg-type]
        e = shared.oof_easiness_[: int(tr.sum())]
        return model.fit(X[tr], Y[tr], names, shared=shared, train_easiness=e).predict_quality(X[te])

    t0 = time.perf_counter()
    shared = shared_difficulty_for(sp, X, feats, seed)
    timings["shared difficulty fit"] = time.perf_counter() - t0
    # The default (training/fit.py): boosters on the shared difficulty, then (with categories) the task prior the
    # classifier guesses from each prompt blended in (router/task_hint.py), as the service predicts without a hint.
    timed(BOOSTERS, lambda: on_shared("prior"))
    # Out-of-fold predictions of the boosters, kNN and task-label prior: the task prior's weights and (g) stacking.
    t0 = time.perf_counter()
    oof = oof_bases(sp, X, emb, shared, seed)
    timings["(g) out-of-fold bases"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    names = [str(j) for j in range(Y.shape[1])]
    booster_params = DifficultyModel(n_jobs=N_JOBS, random_state=seed, easiness="prior")
    e_train = shared.oof_easiness_[: int(tr.sum())]
    task_prior = fit_task_prior(
        X[tr], Y[tr], sp.categories[tr], names, booster_params, shared, e_train, boosters_oof=oof["boosters"]
    )
    timings["task prior fit (out-of-fold weights)"] = time.perf_counter() - t0
    if task_prior is not None:
        logger.info("  task prior router weights %s", task_prior.router_weight)
    timed(
        "router", lambda: preds[BOOSTERS] if task_prior is None else task_prior.blend(preds[BOOSTERS], None, X[te])[0]
    )
    timed("per-tier boosters, no shared difficulty", lambda: booster(X))
    if extras:
        timed("(e) router + shared easiness feature", lambda: on_shared("feature"))
    timed("kNN (k=25)", lambda: ev.knn_predictor(emb[tr], Y[tr])(emb[te]))
    # (f) direct gain targets on the features plus the shared easiness, from the router's cheapest-tier prediction
    e_tr, e_te = shared.oof_easiness_[: int(tr.sum())], shared.predict_easiness(X[te])
    Xe_tr, Xe_te = np.column_stack([X[tr], e_tr]), np.column_stack([X[te], e_te])

    def gain(reference: Literal["cheapest", "adjacent"]) -> np.ndarray:
        model = GainModel(reference=reference, n_jobs=N_JOBS, random_state=seed)
        model.fit(Xe_tr, Y[tr], [str(j) for j in range(Y.shape[1])])
        return model.predict_quality(Xe_te, preds[BOOSTERS][:, 0])

    timed("(f) gain over the cheapest tier", lambda: gain("cheapest"))
    if Y.shape[1] > 2:  # with two tiers the next cheaper tier is the cheapest
        timed("(f) gain over the next cheaper tier", lambda: gain("adjacent"))
    # (g) stacking and (h) averages of the boosters, kNN and (with categories) the task prior
    prior_te = prior_predictor(sp.categories, Y, tr)[te]
    test_bases = {"boosters": preds[BOOSTERS], "kNN": preds["kNN (k=25)"], "prior": prior_te}

    def stacked(bases: tuple[str, ...]) -> np.ndarray:
        meta = StackedQuality().fit([oof[b] for b in bases], Y[tr])
        return meta.predict_quality([test_bases[b] for b in bases])

    for bases in (("boosters", "kNN"), ("boosters", "kNN", "prior")) if has_cats else (("boosters", "kNN"),):
        label = " + ".join(bases)
        timed(f"(g) stacking {label}", lambda b=bases: stacked(b))  # type: ignore[misc]
        timed(f"(h) average {label}", lambda b=bases: np.mean([test_bases[n] for n in b], axis=0))  # type: ignore[misc]
    timed("logistic regression", lambda: logreg_predictor(X[tr], Y[tr], seed)(X[te]))
    timed("(a) IRT r=1", lambda: irt(n_factors=1))
    timed("(a) IRT r=1, ridge stage 2", lambda: irt(n_factors=1, regressor="ridge"))
    pooled = PooledModel(random_state=seed, **POOLED_PARAMS)
    timed("(b) pooled booster", lambda: pooled.fit(X[tr], Yall[tr], all_names).predict_quality(X[te])[:, sp.tier_cols])
    if extras:
        timed("(c) router + structure", lambda: booster(np.hstack([X, st])))
    if has_cats:
        timed("task prior", lambda: prior_te)
        enc = category_encoding(sp.categories, Y, tr, seed)
        timed("(c) router + structure + category", lambda: booster(np.hstack([X, st, enc])))
        timed("(d) blend boosters/prior 50:50", lambda: 0.5 * preds[BOOSTERS] + 0.5 * prior_te)
        if task_prior is not None:  # what the service does with each test prompt's category as its task hint
            timed(
                "task hint (the service's)",
                lambda: task_prior.blend(preds[BOOSTERS], list(sp.categories[te]), X[te])[0],
            )
        timed("(d) router boosted from the prior", lambda: prior_boost(X, enc))
        timed("(d) router + structure boosted from the prior", lambda: prior_boost(np.hstack([X, st]), enc))
        timed("(d) blend IRT/prior, learned w", lambda: _learned_blend(sp, X, seed, preds["(a) IRT r=1"]))
    if extras and sp.group.startswith("routerbench"):
        q_emb = feats.view(sp.prompts, "question")
        timed("(c) router, question view + structure", lambda: booster(np.hstack([q_emb, tf, st])))
        timed("(c) router, tail + question views", lambda: booster(np.hstack([emb, q_emb, tf, st])))
    return preds, timings


def shared_difficulty_for(
    sp: SplitData, X: np.ndarray, feats: Features, seed: int, drop_model: str | None = None
) -> SharedDifficulty:
    """The shared difficulty `make train` fits for the split: its train prompts (features X of all its prompts) and
    the other logs' pool (pool_for; `drop_model` leaves one model's outcomes out)."""
    pool = pool_for(sp, seed, drop_model)
    rest = pool.prompts[pool.n_train :]
    Xp = np.vstack([X[sp.train], np.hstack([feats.view(rest, "tail700"), text_features(rest)])])
    return SharedDifficulty(n_jobs=N_JOBS, random_state=seed).fit(
        Xp, pool.scores.to_numpy(dtype=float), [str(c) for c in pool.scores.columns]
    )


def oof_bases(
    sp: SplitData, X: np.ndarray, emb: np.ndarray, shared: SharedDifficulty, seed: int, folds: int = 3
) -> dict[str, np.ndarray]:
    """Out-of-fold predictions on the train prompts of the boosters, the kNN and the task prior (stacking's inputs).

    The boosters' folds (training.fit.out_of_fold_boosters) use the shared difficulty's out-of-fold easiness, for
    fitting and for the held rows alike.
    """
    tr = sp.train
    Xt, Et, Yt, cats = X[tr], emb[tr], sp.scores[tr], sp.categories[tr]
    e = shared.oof_easiness_[: len(Yt)]
    names = [str(j) for j in range(Yt.shape[1])]
    booster_params = DifficultyModel(n_jobs=N_JOBS, random_state=seed)

    def prior(fit: np.ndarray, held: np.ndarray) -> np.ndarray:
        return np.asarray(prior_predictor(cats, Yt, np.isin(np.arange(len(Yt)), fit))[held])

    return {
        "boosters": out_of_fold_boosters(Xt, Yt, names, booster_params, shared, e, folds),
        "kNN": out_of_fold(lambda f, h: ev.knn_predictor(Et[f], Yt[f])(Et[h]), len(Yt), folds, seed),
        "prior": out_of_fold(prior, len(Yt), folds, seed),
    }


@dataclass
class ShippedRouter:
    """The router as `make train` fits it on a split, for the A/B scripts that compare a candidate beside it."""

    X: np.ndarray  # features of every prompt of the split (embedding of the tail view + text features)
    emb: np.ndarray  # the embedding part
    boosters: np.ndarray  # the boosters' predicted tier quality on the test prompts
    oof: dict[str, np.ndarray]  # out-of-fold train predictions of the boosters, kNN and task prior (oof_bases)
    prior_fit: Any  # the task prior's blend (training.fit.fit_task_prior), None without categories
    test: np.ndarray

    def blended(self, quality: np.ndarray) -> np.ndarray:
        """Tier quality on the test prompts blended with the guessed task prior, as the service predicts."""
        return (
            quality if self.prior_fit is None else np.asarray(self.prior_fit.blend(quality, None, self.X[self.test])[0])
        )


def fit_shipped_router(sp: SplitData, feats: Features, seed: int) -> ShippedRouter:
    """Per-tier boosters on the shared difficulty, their out-of-fold bases and the task prior's weights."""
    tr, te, Y = sp.train, sp.test, sp.scores
    emb = feats.view(sp.prompts, "tail700")
    X = np.hstack([emb, text_features(sp.prompts)])
    shared = shared_difficulty_for(sp, X, feats, seed)
    names = [str(j) for j in range(Y.shape[1])]
    easiness = shared.oof_easiness_[: int(tr.sum())]
    booster = DifficultyModel(n_jobs=N_JOBS, random_state=seed, easiness="prior")
    boosters = booster.fit(X[tr], Y[tr], names, shared=shared, train_easiness=easiness).predict_quality(X[te])
    oof = oof_bases(sp, X, emb, shared, seed)
    params = DifficultyModel(n_jobs=N_JOBS, random_state=seed, easiness="prior")
    prior_fit = fit_task_prior(
        X[tr], Y[tr], sp.categories[tr], names, params, shared, easiness, boosters_oof=oof["boosters"]
    )
    return ShippedRouter(X, emb, boosters, oof, prior_fit, te)


def ab_splits(only: str, seeds: str) -> list[SplitData]:
    """An A/B script's splits: the suite's, of the groups whose names contain a comma-separated part of `only`, the
    random ones at the comma-separated `seeds`."""
    wanted = [w.strip() for w in only.split(",")]
    return [
        s for s in build_splits(False, tuple(int(x) for x in seeds.split(","))) if any(w in s.group for w in wanted)
    ]


def ab_summary(
    draws: dict[str, list[dict[str, dict[str, np.ndarray]]]], with_rho: bool = False
) -> dict[str, dict[str, list[float]]]:
    """An A/B script's table, per group and method: AIQ, Δ vs the router with its 95% CI (the seeds' b-th draws
    averaged), and with `with_rho` the mean within-category ρ (NaN where a method has none)."""
    table: dict[str, dict[str, list[float]]] = {}
    for group, splits in draws.items():
        router = np.mean([s["router"]["AIQ"] for s in splits], axis=0)
        table[group] = {}
        for name in splits[0]:
            aiq = np.mean([s[name]["AIQ"] for s in splits], axis=0)
            lo, hi = np.nanpercentile((aiq - router)[1:], [2.5, 97.5])
            row = [float(aiq[0]), float(aiq[0] - router[0]), float(lo), float(hi)]
            if with_rho:
                row.append(float(np.mean([s[name].get("within_category_rho", [np.nan])[0] for s in splits])))
            table[group][name] = [round(v, 4) for v in row]
    return table


def _learned_blend(sp: SplitData, X: np.ndarray, seed: int, test_pred: np.ndarray) -> np.ndarray:
    """w * IRT + (1 - w) * category prior, w per tier chosen on 3-fold out-of-fold train predictions."""
    tr_idx = np.flatnonzero(sp.train)
    fold_of = np.random.default_rng(seed).integers(0, 3, len(tr_idx))
    Y = sp.scores
    oof, prior_oof = np.zeros((len(tr_idx), Y.shape[1])), np.zeros((len(tr_idx), Y.shape[1]))
    names = [str(j) for j in range(sp.all_scores.shape[1])]
    for f in range(3):
        fit_rows, held = tr_idx[fold_of != f], fold_of == f
        params = {**IRT_PARAMS, "n_factors": 1, "uncertainty_folds": 0}
        m = IrtModel(random_state=seed, **params).fit(X[fit_rows], sp.all_scores[fit_rows], names)
        oof[held] = m.predict_quality(X[tr_idx[held]])[:, sp.tier_cols]
        mask = np.zeros(len(Y), dtype=bool)
        mask[fit_rows] = True
        prior_oof[held] = prior_predictor(sp.categories, Y, mask)[tr_idx[held]]
    w = least_squares_weights(oof, prior_oof, Y[tr_idx])
    prior = prior_predictor(sp.categories, Y, sp.train)[sp.test]
    return np.asarray(w * test_pred + (1 - w) * prior)


# ----------------------------------------------------------------------------- run


def within_category_rho(P: np.ndarray, S: np.ndarray, cats: np.ndarray) -> float:
    """Mean Spearman correlation of predicted and realised score inside a category (and tier).

    A router that only knows the topic scores 0 here: this is the part of its signal that is difficulty.
    Categories with fewer than 30 test prompts, or a constant outcome, are skipped; weights are sizes.
    """
    total, weight = 0.0, 0
    for cat in np.unique(cats):
        m = cats == cat
        if m.sum() < 30:
            continue
        for j in range(S.shape[1]):
            if np.ptp(S[m, j]) == 0 or np.ptp(P[m, j]) == 0:
                continue
            rho = pd.Series(P[m, j]).corr(pd.Series(S[m, j]), method="spearman")
            total, weight = total + rho * m.sum(), weight + int(m.sum())
    return total / weight if weight else float("nan")


MIN_APGR_CATEGORY = 30  # test prompts a category needs for its own APGR


def _apgr_categories(cats: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The test prompts' benchmarks (a category's part before '/': `mmlu/anatomy` is MMLU) with their own APGR
    (when there are two or more), with their row masks."""
    bench = np.array([str(c).split("/", 1)[0] for c in cats])
    names = [c for c in np.unique(bench) if (bench == c).sum() >= MIN_APGR_CATEGORY]
    return [(str(c), bench == c) for c in names] if len(names) > 1 else []


def evaluate_split(
    sp: SplitData, preds: dict[str, np.ndarray], n_boot: int, seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """Metric arrays (full set first, then bootstrap draws) per method, on the split's test prompts."""
    te = sp.test
    S, C, PC = sp.scores[te], sp.costs[te], sp.pred_cost[te]
    W = bootstrap_weights(len(S), n_boot, seed + 1000)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, P in {**preds, "oracle": S}.items():
        pc = C if name == "oracle" else PC
        out[name] = curve_metrics(lambda_choices(P, pc), S, C, W)
        rho = within_category_rho(P, S, sp.categories[te])
        out[name]["within_category_rho"] = np.full(n_boot + 1, rho)
        if S.shape[1] == 2:
            out[name]["APGR_share"] = apgr_share(P[:, 1] - P[:, 0], S, W, seed)
            for cat, m in _apgr_categories(sp.categories[te]):  # RouteLLM reports APGR per benchmark
                out[name][f"APGR_share:{cat}"] = apgr_share(P[m, 1] - P[m, 0], S[m], W[:, m], seed)
    out["zero router"] = curve_metrics(lambda_choices(PC, PC)[:1], S, C, W, extra_points=True)
    if S.shape[1] == 2:
        out["zero router"]["APGR_share"] = np.full(n_boot + 1, 0.5)
    return out


def summarise(arrs: dict[str, np.ndarray], ref: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """Point value, 95% bootstrap CI, and (vs the router) the difference with its CI."""
    res: dict[str, Any] = {}
    for metric, a in arrs.items():
        lo, hi = np.nanpercentile(a[1:], [2.5, 97.5])
        res[metric] = [round(float(a[0]), 4), round(float(lo), 4), round(float(hi), 4)]
        if ref is not None and metric in ref:
            d = a - ref[metric]
            dlo, dhi = np.nanpercentile(d[1:], [2.5, 97.5])
            res[f"d_{metric}"] = [round(float(d[0]), 4), round(float(dlo), 4), round(float(dhi), 4)]
    return res


def run(quick: bool, n_boot: int, out_dir: Path, only: str | None = None) -> dict[str, Any]:
    t_start = time.perf_counter()
    machine = machine_info()  # the commit the run started on, not the one checked out when it ends
    threadpool_limits(N_JOBS)
    feats = Features(REPO / ".cache" / "embeddings.sqlite", REPO / ".cache" / "onnx")
    wanted = [w.strip() for w in only.split(",")] if only else []
    splits = [s for s in build_splits(quick) if not wanted or any(w in s.group for w in wanted)]
    per_split: list[dict[str, Any]] = []
    draws: dict[str, list[dict[str, dict[str, np.ndarray]]]] = {}
    for i, sp in enumerate(splits):
        t0 = time.perf_counter()
        logger.info(
            "[%d/%d] %s %s: %d train, %d test", i + 1, len(splits), sp.group, sp.name, sp.train.sum(), sp.test.sum()
        )
        seed = sp.seed
        extras = not quick
        preds, timings = fit_predict_methods(sp, feats, seed, extras)
        metrics = evaluate_split(sp, preds, n_boot, seed)
        draws.setdefault(sp.group, []).append(metrics)
        per_split.append(split_record(sp, metrics, time.perf_counter() - t0, timings))
        write_results(per_split, draws, quick, n_boot, out_dir, time.perf_counter() - t_start, machine)
    return write_results(per_split, draws, quick, n_boot, out_dir, time.perf_counter() - t_start, machine)


def split_record(
    sp: SplitData, metrics: dict[str, dict[str, np.ndarray]], seconds: float, timings: dict[str, float] | None = None
) -> dict[str, Any]:
    """One split's entry of quality.json: its sizes, every method's metrics (against the router) and its time."""
    return {
        "group": sp.group,
        "split": sp.name,
        "n_train": int(sp.train.sum()),
        "n_test": int(sp.test.sum()),
        "n_tiers": len(sp.tier_cols),
        "n_models_in_log": int(sp.all_scores.shape[1]),
        **({} if timings is None else {"fit_seconds": {k: round(v, 2) for k, v in timings.items()}}),
        "methods": {m: summarise(a, metrics["router"] if m != "router" else None) for m, a in metrics.items()},
        "seconds": round(seconds, 1),
    }


def write_results(
    per_split: list[dict[str, Any]],
    draws: dict[str, list[dict[str, dict[str, np.ndarray]]]],
    quick: bool,
    n_boot: int,
    out_dir: Path,
    seconds: float,
    machine: dict[str, Any],
) -> dict[str, Any]:
    """Aggregate groups over their splits and (re)write quality.json and quality.md; `machine` as at the start."""
    groups = {}
    for group, runs in draws.items():
        common = [m for m in runs[0] if all(m in r for r in runs)]
        mean = {
            m: {k: np.mean([r[m][k] for r in runs], axis=0) for k in runs[0][m] if all(k in r[m] for r in runs)}
            for m in common
        }
        groups[group] = {
            "n_splits": len(runs),
            "methods": {m: summarise(a, mean["router"] if m != "router" else None) for m, a in mean.items()},
        }
    result = {
        "machine": machine,
        "quick": quick,
        "n_boot": n_boot,
        "seeds": list(SEEDS[:1] if quick else SEEDS),
        "test_size": TEST_SIZE,
        "groups": groups,
        "splits": per_split,
        "total_seconds": round(seconds, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps(result, indent=1))
    (out_dir / "quality.md").write_text(to_markdown(result))
    return result


def _fmt(v: list[float] | None) -> str:
    return "" if v is None else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def _apgr_by_category(methods: dict[str, Any]) -> list[str]:
    """A group's APGR share per benchmark, as RouteLLM reports it: empty when it has none."""
    cats = sorted({k.split(":", 1)[1] for v in methods.values() for k in v if k.startswith("APGR_share:")})
    if not cats:
        return []
    head = "| method | " + " | ".join(f"APGR share {c} | Δ vs router" for c in cats) + " |"
    lines = [
        f"APGR share per benchmark (those with ≥ {MIN_APGR_CATEGORY} test prompts), as RouteLLM reports it:",
        "",
        head,
    ]
    lines.append("|---" * (head.count("|") - 1) + "|")
    rows = [(m, v) for m, v in methods.items() if f"APGR_share:{cats[0]}" in v]
    for m, v in sorted(rows, key=lambda kv: -kv[1][f"APGR_share:{cats[0]}"][0]):
        cells = [f"{_fmt(v.get(f'APGR_share:{c}'))} | {_fmt(v.get(f'd_APGR_share:{c}'))}" for c in cats]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Routing quality suite (bench/quality.py)",
        "",
        "Point value on the test prompts, then the 95% percentile-bootstrap CI over test prompts in brackets. "
        "Group rows average the splits (seeds) and their b-th bootstrap draws. ΔAIQ is method minus router "
        "(paired: same resampled prompts). AIQ: router/evaluate.py (hull over [0, top-tier cost]). "
        "AIQ range: RouterBench's normalisation over [cheapest, priciest tier]. Within-category ρ: mean Spearman "
        "correlation of predicted and realised score inside each category and tier (the difficulty signal; a "
        "topic-only router has 0, – when constant inside a category; point value). APGR share: RouteLLM's APGR "
        "on the share-of-strong-calls axis, no hull, random = 0.5.",
        "",
        f"Total run time: {result['total_seconds'] / 60:.1f} min, {result['n_boot']} bootstrap draws"
        f"{' (quick mode)' if result['quick'] else ''}.",
        "",
    ]
    for group, g in result["groups"].items():
        lines += [f"## {group} ({g['n_splits']} split{'s' if g['n_splits'] > 1 else ''})", ""]
        two = any("APGR_share" in m for m in g["methods"].values())
        head = "| method | AIQ | ΔAIQ vs router | AIQ range |" + (" APGR share | ΔAPGR share |" if two else "")
        head += " within-category ρ |"
        lines += [head, "|---" * (head.count("|") - 1) + "|"]
        for m, v in sorted(g["methods"].items(), key=lambda kv: -kv[1]["AIQ"][0]):
            row = f"| {m} | {_fmt(v['AIQ'])} | {_fmt(v.get('d_AIQ'))} | {_fmt(v['AIQ_range'])} |"
            if two:
                row += f" {_fmt(v.get('APGR_share'))} | {_fmt(v.get('d_APGR_share'))} |"
            rho = v.get("within_category_rho", [float("nan")])[0]
            row += f" {rho:.3f} |" if np.isfinite(rho) else " – |"
            lines.append(row)
        lines.append("")
        lines += _apgr_by_category(g["methods"])
    lines += [
        "## Per split",
        "",
        "| group | split | train | test | router AIQ | best other (AIQ) | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in result["splits"]:
        ms = {m: v for m, v in s["methods"].items() if m not in ("router", "oracle")}
        best = max(ms, key=lambda m: ms[m]["AIQ"][0])
        lines.append(
            f"| {s['group']} | {s['split']} | {s['n_train']} | {s['n_test']} | {_fmt(s['methods']['router']['AIQ'])} "
            f"| {best} {ms[best]['AIQ'][0]:.3f} | {s['seconds']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed per random split, fewer candidates")
    parser.add_argument("--boot", type=int, default=200, help="bootstrap draws over test prompts")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", help="run only the split groups whose name contains this text (comma: any of)")
    parser.add_argument("--render", action="store_true", help="only rewrite quality.md from quality.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.render:
        (args.out / "quality.md").write_text(to_markdown(json.loads((args.out / "quality.json").read_text())))
        return
    res = run(args.quick, args.boot, args.out, args.only)
    print(f"wrote {args.out / 'quality.md'} in {res['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
