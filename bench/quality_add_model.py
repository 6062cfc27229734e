"""A new model from few outcomes (issue 10, item 2): how good is a tier whose model has only N outcomes?

For a held-out tier model m (the cheapest, a middle and the priciest tier) and N in {25, 50, 100, 200}, on
routerbench_subset (config/tiers.toml) and llmrouter_dc (config/tiers.llmrouter_dc.toml), random 70/30 split:
- the shared difficulty (router/shared_difficulty.py) is fitted on the pool (the split's train prompts with
  every model of the log, and up to 3,000 prompts of each other shared log) WITHOUT any outcome of m;
- m's tier keeps only N random train outcomes (the other tiers keep theirs) and goes through DifficultyModel's
  few-rows path (the shared easiness calibrated on its N outcomes, slope shrunk toward the other tiers');
  the "booster from the prior" variant (N >= 100) trains the tier's booster on its N rows as usual, and
  "plain booster" is what tierwise did before: a booster on the N rows alone, no shared difficulty (the
  other tiers keep the shared-difficulty router's predictions);
- compared, on the full test outcomes, with the router trained on all of m's outcomes: AIQ and the
  difference, and for m's column: mean predicted minus mean realised score, ECE (10 bins), Brier score
  and Spearman correlation of predicted with realised score;
- the shipped router blends the boosters with the guessed task prior (router/task_hint.py): the few-rows path
  is also blended with that prior, with m's tier given (a) no means (add-model without categories), (b) its N
  outcomes' per-task means shrunk toward their mean (TaskPrior.with_tier_outcomes, not shipped), (c) the same
  shrunk toward its task profile (TaskPrior.with_tier_profile: what add-model and `tierwise train` ship for a
  few-outcome tier), (d) their raw per-task means (what `tierwise train` did before), each compared with the
  full-data router with its prior ("full_data + task prior (shipped)").
Repeats: `--draws` random sets of N prompts. Writes bench/results/add_model.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from bench import quality as bq
from bench.common import REPO, machine_info
from router import evaluate as ev
from router.model import DifficultyModel, fit_logistic_1d
from router.schema import load_tiers
from router.shared_difficulty import SharedDifficulty
from router.task_hint import TaskPrior
from router.text import text_features
from training.fit import fit_task_prior

logger = logging.getLogger("bench.add_model")
NS = (25, 50, 100, 200)
DATASETS = {"routerbench_subset": "config/tiers.toml", "llmrouter_dc": "config/tiers.llmrouter_dc.toml"}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(pd.Series(a).corr(pd.Series(b), method="spearman"))


def column_metrics(p: np.ndarray, s: np.ndarray) -> dict[str, float]:
    return {
        "mean_pred_minus_realised": round(float(p.mean() - s.mean()), 4),
        "ece": round(ev.expected_calibration_error(p, s), 4),
        "brier": round(float(((p - s) ** 2).mean()), 4),
        "spearman": round(spearman(p, s), 4),
    }


def aiq_of(P: np.ndarray, sp: bq.SplitData) -> float:
    te = sp.test
    W = np.zeros((0, int(te.sum())))
    return float(bq.curve_metrics(bq.lambda_choices(P, sp.pred_cost[te]), sp.scores[te], sp.costs[te], W)["AIQ"][0])


def _summary(runs: list[dict[str, float]], draws: int) -> dict[str, Any]:
    """Means over the draws, the worst draw's ΔAIQ and the number of draws."""
    mean = {key: round(float(np.mean([r[key] for r in runs])), 4) for key in runs[0]}
    return mean | {"d_aiq_min": round(min(r["d_aiq"] for r in runs), 4), "draws": draws}


def run(draws: int, seed: int, feats: bq.Features) -> dict[str, Any]:
    return {name: run_dataset(name, tiers_path, draws, seed, feats) for name, tiers_path in DATASETS.items()}


def run_dataset(name: str, tiers_path: str, draws: int, seed: int, feats: bq.Features) -> dict[str, Any]:
    log = bq.load_dataset(name)
    piv = bq.pivot(log, load_tiers(REPO / tiers_path), name)
    [sp] = bq.random_splits(name, piv, (seed,))
    models = sp.models
    X = np.hstack([feats.view(sp.prompts, "tail700"), text_features(sp.prompts)])
    tr, te = sp.train, sp.test
    Y = sp.scores
    tier_names = [str(j) for j in range(Y.shape[1])]

    def shared_for(drop: str | None) -> SharedDifficulty:
        return bq.shared_difficulty_for(sp, X, feats, seed, drop_model=drop)

    def fit(Ytr: np.ndarray, shared: SharedDifficulty | None, **kw: Any) -> np.ndarray:
        model = DifficultyModel(n_jobs=1, random_state=seed, **kw)
        e = shared.oof_easiness_[: int(tr.sum())] if shared is not None else None
        model.fit(X[tr], Ytr, tier_names, shared=shared, train_easiness=e)
        return model.predict_quality(X[te])

    t0 = time.perf_counter()
    shared_full = shared_for(None)
    P_full = fit(Y[tr], shared_full)
    P_plain = fit(Y[tr], None)
    res: dict[str, Any] = {
        "n_train": int(tr.sum()),
        "n_test": int(te.sum()),
        "full_router_aiq": round(aiq_of(P_full, sp), 4),
        "full_router_without_shared_aiq": round(aiq_of(P_plain, sp), 4),
        "held_out": {},
    }
    # The shipped router blends the boosters with the guessed task prior (router/task_hint.py); its arms are
    # compared with the full-data router that has one.
    cats = np.asarray(sp.categories).astype(str)
    prior = fit_task_prior(
        X[tr], Y[tr], cats[tr], tier_names, DifficultyModel(n_jobs=1, random_state=seed), shared_full,
        shared_full.oof_easiness_[: int(tr.sum())],
    )  # fmt: skip

    def raw_means(task_prior: TaskPrior, j: int, keep: np.ndarray) -> TaskPrior:
        """Tier j's means as TaskPrior.fit took them from its N outcomes alone (no shrinkage): what `tierwise
        train` gave a few-outcome tier before it used the task profile."""
        S = Y[tr].copy()
        S[:, j] = np.nan
        S[keep, j] = Y[tr][keep, j]
        fitted = TaskPrior.fit(cats[tr], S, tier_names)
        assert fitted is not None
        means = {
            t: tuple(fitted.means[t][j] if i == j else v for i, v in enumerate(m)) for t, m in task_prior.means.items()
        }
        return replace(task_prior, means=means)

    def shipped(P: np.ndarray, task_prior: TaskPrior) -> np.ndarray:
        return np.asarray(task_prior.blend(P, None, X[te])[0])

    if prior is not None:
        res["full_router_with_prior_aiq"] = round(aiq_of(shipped(P_full, prior), sp), 4)
    logger.info("%s: full router AIQ %.4f (%.0f s)", name, res["full_router_aiq"], time.perf_counter() - t0)
    S_te = Y[te]
    rng = np.random.default_rng(seed)
    n_tr = int(tr.sum())
    k = Y.shape[1]
    for j in sorted({0, k // 2, k - 1}):  # the cheapest, a middle and the priciest tier (all three of 3)
        model_name = models[sp.tier_cols[j]]
        t1 = time.perf_counter()
        shared = shared_for(model_name)
        e_tr, e_te = shared.oof_easiness_[:n_tr], shared.predict_easiness(X[te])
        base = DifficultyModel(n_jobs=1, random_state=seed)
        base.fit(X[tr], Y[tr], tier_names, shared=shared, train_easiness=e_tr)
        P_base = base.predict_quality(X[te])
        b0 = float(np.median([b for i, (_, b) in enumerate(base.easiness_calibration_) if i != j]))
        rows: dict[str, Any] = {
            "full_data": {"aiq": res["full_router_aiq"], **column_metrics(P_full[:, j], S_te[:, j])},
            **(
                {
                    "full_data + task prior (shipped)": {
                        "aiq": res["full_router_with_prior_aiq"],
                        **column_metrics(shipped(P_full, prior)[:, j], S_te[:, j]),
                    }
                }
                if prior is not None
                else {}
            ),
            "full_data, shared difficulty without the model": {
                "aiq": round(aiq_of(P_base, sp), 4),
                **column_metrics(P_base[:, j], S_te[:, j]),
            },
        }
        y_tr = Y[tr, j]
        for n in NS:
            variants = ["few-rows path", "plain booster, no shared difficulty"]
            variants += ["booster from the prior"] if n >= 100 else []
            with_prior: dict[str, list[dict[str, float]]] = {}
            for variant in variants:
                runs = []
                for _ in range(draws):
                    keep = rng.choice(n_tr, size=n, replace=False)
                    P = P_base.copy()
                    # The other tiers' boosters do not depend on tier j's rows: only column j is refitted.
                    if variant == "few-rows path":
                        a, b = fit_logistic_1d(e_tr[keep], y_tr[keep], b_prior=b0, prior_rows=50)
                        P[:, j] = 1 / (1 + np.exp(-(a + b * e_te)))
                    elif variant == "plain booster, no shared difficulty":  # what tierwise did before
                        one = DifficultyModel(n_jobs=1, random_state=seed)
                        one.fit(X[tr][keep], y_tr[keep, None], ["new"])
                        P[:, j] = one.predict_quality(X[te])[:, 0]
                    else:
                        one = DifficultyModel(n_jobs=1, random_state=seed, few_rows=0)
                        one.fit(X[tr][keep], y_tr[keep, None], ["new"], shared=shared, train_easiness=e_tr[keep])
                        P[:, j] = one.predict_quality(X[te])[:, 0]
                    a_ = aiq_of(P, sp)
                    runs.append(
                        {"aiq": a_, "d_aiq": a_ - res["full_router_aiq"], **column_metrics(P[:, j], S_te[:, j])}
                    )
                    if prior is not None and variant == "few-rows path":  # the few-outcome tier's prior, four ways
                        for how, tp in (
                            ("+ task prior without the tier (no categories)", prior.without_tiers([j])),
                            (
                                "+ task prior from its N outcomes",
                                prior.with_tier_outcomes(j, cats[tr][keep], y_tr[keep]),
                            ),
                            (
                                "+ task prior from its N outcomes and its task profile (shipped)",
                                prior.with_tier_profile(j, cats[tr][keep], y_tr[keep]),
                            ),
                            ("+ raw task means of its N outcomes (train before)", raw_means(prior, j, keep)),
                        ):
                            Pb = shipped(P, tp)
                            ab = aiq_of(Pb, sp)
                            d = ab - res["full_router_with_prior_aiq"]
                            with_prior.setdefault(how, []).append(
                                {"aiq": ab, "d_aiq": d, **column_metrics(Pb[:, j], S_te[:, j])}
                            )
                rows[f"N={n} {variant}"] = _summary(runs, draws)
                logger.info("%s %s N=%d %s: %s", name, model_name, n, variant, rows[f"N={n} {variant}"])
            for how, runs in with_prior.items():
                rows[f"N={n} few-rows path {how}"] = _summary(runs, draws)
        if j == 0:  # the shortcut above equals DifficultyModel's own few-rows path
            keep = rng.choice(n_tr, size=100, replace=False)
            Ytr = Y[tr].copy()
            Ytr[np.setdiff1d(np.arange(n_tr), keep), j] = np.nan
            whole = DifficultyModel(n_jobs=1, random_state=seed).fit(
                X[tr], Ytr, tier_names, shared=shared, train_easiness=e_tr
            )
            a, b = fit_logistic_1d(e_tr[keep], y_tr[keep], b_prior=b0, prior_rows=50)
            gap = float(np.abs(whole.predict_quality(X[te])[:, j] - 1 / (1 + np.exp(-(a + b * e_te)))).max())
            res["few_rows_shortcut_max_abs_gap"] = gap
        res["held_out"][model_name] = rows
        logger.info("%s %s done in %.0f s", name, model_name, time.perf_counter() - t1)
    return res


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# A tier model from few outcomes (bench/quality_add_model.py)",
        "",
        f"`python -m bench.quality_add_model --draws {result['draws']}` (seed {result['seed']}, "
        f"{result['total_seconds'] / 60:.1f} min). ΔAIQ: against the router trained with all of the model's "
        "outcomes (mean over draws of N outcomes; worst draw in brackets). Calibration columns are the held-out "
        "model's column on the test prompts: mean predicted − mean realised score, ECE (10 bins), Spearman ρ.",
        "",
    ]
    for name, res in result["datasets"].items():
        lines += [
            f"## {name} ({res['n_train']} train / {res['n_test']} test prompts; full-data router AIQ "
            f"{res['full_router_aiq']:.4f}, without the shared difficulty {res['full_router_without_shared_aiq']:.4f}"
            + (
                f", with the task prior (shipped) {res['full_router_with_prior_aiq']:.4f}; the rows '+ task prior' "
                "are against that one)"
                if "full_router_with_prior_aiq" in res
                else ")"
            ),
            "",
            "| held-out model | setting | ΔAIQ [worst] | pred − realised | ECE | Spearman ρ |",
            "|---|---|---|---|---|---|",
        ]
        for model, rows in res["held_out"].items():
            for setting, r in rows.items():
                d = f"{r['d_aiq']:+.4f} [{r['d_aiq_min']:+.4f}]" if "d_aiq" in r else f"AIQ {r['aiq']:.4f}"
                lines.append(
                    f"| {model} | {setting} | {d} | {r['mean_pred_minus_realised']:+.3f} | {r['ece']:.3f} "
                    f"| {r['spearman']:.3f} |"
                )
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=3, help="random sets of N outcomes per setting")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    threadpool_limits(1)
    feats = bq.Features(REPO / ".cache" / "embeddings.sqlite", REPO / ".cache" / "onnx")
    t0 = time.perf_counter()
    result = {
        "machine": machine_info(),
        "draws": args.draws,
        "seed": args.seed,
        "ns": list(NS),
        "datasets": run(args.draws, args.seed, feats),
    }
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    path = bq.RESULTS / "add_model.json"
    path.write_text(json.dumps(result, indent=1))
    path.with_suffix(".md").write_text(to_markdown(result))
    print(f"wrote {path} in {result['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
