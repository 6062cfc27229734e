"""How the task prior's blend weight is learned (issue 10): per tier by squared error (shipped) against a weight per
(task, tier) and one weight chosen by out-of-fold AIQ. Measured on llmrouter_dc, where the task prior is ahead.

python -m bench.quality_blend_weights --only "llmrouter_dc" --out bench/results/quality_blend_weights

Per split: the router as `make train` fits it (boosters on the shared difficulty, task prior with learned
weights), then, from the same out-of-fold boosters and out-of-fold guessed priors the shipped weights come from:
- "per-task w n0=N": per task, the least-squares weight on that task's out-of-fold rows, shrunk toward the tier's
  weight with N pseudo-rows ((n w_task + N w_tier) / (n + N)); a prompt's weight is the tasks' weights averaged by
  the classifier's probabilities ("argmax": the most probable task's);
- "w by oof AIQ": one weight for every tier, the one of 0, 0.1, ..., 1 with the best out-of-fold AIQ.
Metrics and bootstrap as bench/quality.py (which this reuses).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

import bench.quality as q
from router.model import DifficultyModel
from router.task_hint import TaskPrior, least_squares_weights
from router.text import text_features
from training.fit import fit_task_prior, out_of_fold_boosters, out_of_fold_priors

logger = logging.getLogger("bench.quality_blend_weights")


def per_task_weights(
    prior: TaskPrior, B: np.ndarray, P: np.ndarray, S: np.ndarray, cats: np.ndarray, n0: int
) -> np.ndarray:
    """(tasks in the classifier's order, tiers): each task's least-squares weight shrunk toward the tier's."""
    assert prior.classifier is not None
    tier_w = np.asarray(prior.router_weight, dtype=float) * np.ones(S.shape[1])
    W = np.tile(tier_w, (len(prior.classifier.labels), 1))
    for i, task in enumerate(prior.classifier.labels):
        rows = cats == task
        if rows.any():
            w = least_squares_weights(B[rows], P[rows], S[rows])
            W[i] = (rows.sum() * np.where(np.isfinite(w), w, tier_w) + n0 * tier_w) / (rows.sum() + n0)
    return W


def split_predictions(sp: q.SplitData, feats: q.Features, seed: int) -> dict[str, np.ndarray]:
    tr, te, Y = sp.train, sp.test, sp.scores
    X = np.hstack([feats.view(sp.prompts, "tail700"), text_features(sp.prompts)])
    shared = q.shared_difficulty_for(sp, X, feats, seed)
    names = [str(j) for j in range(Y.shape[1])]
    e = shared.oof_easiness_[: int(tr.sum())]
    params = DifficultyModel(n_jobs=q.N_JOBS, random_state=seed, easiness="prior")
    boosters = DifficultyModel(**params.get_params()).fit(X[tr], Y[tr], names, shared=shared, train_easiness=e)
    Q = np.asarray(boosters.predict_quality(X[te]))
    B = out_of_fold_boosters(X[tr], Y[tr], names, params, shared, e)
    cats, Xt, Yt = sp.categories[tr], X[tr], Y[tr]
    prior = fit_task_prior(Xt, Yt, cats, names, params, shared, e, boosters_oof=B)
    assert prior is not None and prior.classifier is not None, "this bench needs a log with categories"
    P = out_of_fold_priors(Xt, Yt, cats, names, seed)  # what the shipped weights were learned from
    prior_te = prior.priors(None, X[te], int(te.sum()))[0]
    proba = prior.classifier.proba(X[te])

    def blend(w: np.ndarray | float) -> np.ndarray:
        return np.where(np.isfinite(prior_te), w * Q + (1 - w) * prior_te, Q)

    preds: dict[str, np.ndarray] = {"router": prior.blend(Q, None, X[te])[0], "boosters alone": Q}
    preds["task prior"] = q.prior_predictor(sp.categories, Y, tr)[te]
    for n0 in (0, 100, 300):
        preds[f"per-task w n0={n0}"] = blend(proba @ per_task_weights(prior, B, P, Yt, cats, n0))
    preds["per-task w n0=100 argmax"] = blend(per_task_weights(prior, B, P, Yt, cats, 100)[proba.argmax(axis=1)])
    S, PC, C = Yt, sp.pred_cost[tr], sp.costs[tr]
    grid = np.linspace(0, 1, 11)
    oof_aiq = [
        float(
            q.curve_metrics(
                q.lambda_choices(np.where(np.isfinite(P), w * B + (1 - w) * P, B), PC), S, C, np.zeros((0, len(S)))
            )["AIQ"][0]
        )
        for w in grid
    ]
    logger.info("tier weights %s; out-of-fold AIQ by weight %s", prior.router_weight, np.round(oof_aiq, 4))
    preds["w by oof AIQ"] = blend(float(grid[int(np.argmax(oof_aiq))]))
    return preds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="llmrouter_dc")
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--out", type=Path, default=q.RESULTS / "quality_blend_weights")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    threadpool_limits(q.N_JOBS)
    machine = q.machine_info()
    feats = q.Features(q.REPO / ".cache" / "embeddings.sqlite", q.REPO / ".cache" / "onnx")
    wanted = [w.strip() for w in args.only.split(",")]
    splits = [s for s in q.build_splits(False) if any(w in s.group for w in wanted)]
    per_split: list[dict[str, Any]] = []
    draws: dict[str, list[dict[str, dict[str, np.ndarray]]]] = {}
    started = time.perf_counter()
    for sp in splits:
        t0 = time.perf_counter()
        seed = sp.seed
        metrics = q.evaluate_split(sp, split_predictions(sp, feats, seed), args.n_boot, seed)
        draws.setdefault(sp.group, []).append(metrics)
        per_split.append(q.split_record(sp, metrics, time.perf_counter() - t0))
        q.write_results(per_split, draws, False, args.n_boot, args.out, time.perf_counter() - started, machine)


if __name__ == "__main__":
    main()
