"""Evaluation: a fitted router's cost–quality curve against baselines, per category, and the champion's AIQ."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from router import evaluate as ev
from router.artifact import RouterArtifact
from router.embedders.protocol import Embedder
from router.embedding_cache import EmbeddingCache
from router.features import featurize
from router.policy import (
    DefaultKnob,
    cheapest_sufficient,
    lambda_for_cost,
    lambda_reaching,
    target_for_top_share,
    tradeoff,
)
from router.routing import Router
from router.schema import TiersConfig
from router.text import prompt_tokens
from training.data import PromptTable, Split

logger = logging.getLogger(__name__)


N_BOOT = 500
"""Bootstrap draws over test prompts for the CIs: the 2.5% tail is 12 draws, and evaluation stays a few seconds."""


@dataclass
class EvalResult:
    """Metrics table, curves for plots, bootstrap draws per method and metric, and the router's test predictions.

    `draws[method][metric]` is (1 + n_boot,): row 0 the test set as it is, then paired resamples of its prompts.
    """

    table: pd.DataFrame
    curves: dict[str, ev.Curve]
    per_category: pd.DataFrame
    metrics: dict[str, float] = field(default_factory=dict)
    test_pred: np.ndarray | None = None
    test_scores: np.ndarray | None = None
    draws: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def logreg_predictor(X: np.ndarray, Y: np.ndarray, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Logistic regression per tier on the same features (labels thresholded at 0.5)."""
    from sklearn.linear_model import LogisticRegression  # a baseline of training: `tierwise route` never imports it

    fits = []
    for j in range(Y.shape[1]):
        have = np.isfinite(Y[:, j])
        y = Y[have, j] >= 0.5
        if y.all() or not y.any():
            fits.append(float(y.mean()))
            continue
        fits.append(LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(X[have], y))

    def predict(Xq: np.ndarray) -> np.ndarray:
        cols = [np.full(len(Xq), f) if isinstance(f, float) else f.predict_proba(Xq)[:, 1] for f in fits]
        return np.stack(cols, axis=1)

    return predict


def _method_row(name: str, curve: ev.Curve, ref: dict[str, Any], ece: float | None = None) -> dict[str, Any]:
    top_cost, top_q = ref["top"]
    gm = ev.gap_metrics(curve, ref["weak"], ref["top"])
    return {
        "method": name,
        "AIQ": ev.aiq(curve, ref["max_cost"]),
        "AIQ_range": ev.aiq_range(curve, ref["min_cost"], ref["max_cost"]),
        "APGR": gm.apgr,
        "CPT50_pct": gm.cpt50,
        "CPT80_pct": gm.cpt80,
        "match_top_cost_pct": ev.cost_to_reach(curve, top_q) / top_cost * 100,
        "cost_for_95pct_top_pct": ev.cost_to_reach(curve, 0.95 * top_q) / top_cost * 100,
        "quality_at_half_top_cost": ev.hull_quality_at(curve, 0.5 * top_cost),
        "max_quality": float(curve.quality.max()),
        "ECE": np.nan if ece is None else ece,
    }


def _with_ci(out: pd.DataFrame, draws: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Bootstrap 95% CI columns for AIQ (and the share-axis APGR), and the paired difference from the router."""
    ref = draws["router"]
    for method, d in draws.items():
        if method not in out.index:  # evidence for the gate only (ev.SHUFFLED)
            continue
        for metric in ("AIQ", "APGR_share"):
            if metric not in d:
                continue
            ci = ev.ci95(d[metric])
            out.loc[method, [f"{metric}_low", f"{metric}_high"]] = [ci.low, ci.high]
            if method != "router":
                diff = ev.ci95(ref[metric] - d[metric])
                cols = [f"router_minus_{metric}{end}" for end in ("", "_low", "_high")]
                out.loc[method, cols] = [diff.value, diff.low, diff.high]
    return out


def evaluate_router(
    pred: np.ndarray,
    pred_cost: np.ndarray,
    table: PromptTable,
    test: np.ndarray,
    tiers: TiersConfig,
    baselines: dict[str, np.ndarray],
    n_boot: int = N_BOOT,
    seed: int = 0,
    shuffled: bool = True,
) -> EvalResult:
    """Compare the router's cost–quality curve with every baseline on the complete test prompts.

    Every λ-swept method, the zero router (random mix of tiers), the best single tier and the oracle curve also
    get `n_boot` paired bootstrap draws over prompts (decisions fixed, prompts resampled): the CIs in the table
    and the evidence the champion gate reads, with `shuffled` its no-signal null (ev.SHUFFLED, 8 more sweeps).
    """
    sel = test & table.complete
    S, C = table.scores[sel], table.costs[sel]
    P, PC = pred[sel[test]], pred_cost[sel[test]]
    names = tiers.names
    top = int(np.argmax(C.mean(axis=0)))
    weakest = int(np.argmin(C.mean(axis=0)))
    W = ev.bootstrap_weights(len(S), n_boot, seed + 1000)
    choices = {"router": ev.lambda_choices(P, PC), "router (quality target)": ev.target_choices(P, PC)}
    choices.update({b: ev.lambda_choices(p[sel[test]], PC) for b, p in baselines.items()})
    curves: dict[str, ev.Curve] = {m: ev.curve_of(ch, S, C) for m, ch in choices.items()}
    draws = {m: ev.aiq_draws(ch, S, C, W) for m, ch in choices.items()}
    for j, n in enumerate(names):
        curves[f"tier:{n}"] = ev.point(S[:, j], C[:, j])
    curves["random mix"] = ev.Curve(C.mean(axis=0), S.mean(axis=0))
    draws["random mix"] = ev.zero_router_draws(S, C, W)
    if shuffled:  # the gate's evidence, not a table row
        draws[ev.SHUFFLED] = ev.shuffled_draws(choices["router"], S, C, W, seed + 2000)
    single = ev.single_tier_draws(S, C, W)
    best_tier = names[max(range(len(names)), key=lambda j: single[f"AIQ:{j}"][0])]
    draws[f"tier:{best_tier}"] = {"AIQ": single["AIQ"]}
    ms, mc = table.model_scores[sel], table.model_costs[sel]
    full = ms.notna().all(axis=0) & mc.notna().all(axis=0)
    best_model = ms.loc[:, full].mean().idxmax()
    curves[f"best model ({best_model})"] = ev.point(ms[best_model].to_numpy(), mc[best_model].to_numpy())
    curves["oracle"] = ev.oracle_curve(S, C)
    draws["oracle"] = ev.aiq_draws(ev.lambda_choices(S, C), S, C, W)
    if len(names) == 2:
        gains = {m: p[sel[test]] for m, p in {"router": pred, **baselines}.items()}
        gains["oracle"] = S
        for m, g in gains.items():
            draws[m].update(ev.share_gap_draws(g[:, 1] - g[:, 0], S, W, seed))
    ref: dict[str, Any] = {
        "top": (float(C[:, top].mean()), float(S[:, top].mean())),
        "weak": (float(C[:, weakest].mean()), float(S[:, weakest].mean())),
        "max_cost": float(C[:, top].mean()),
        "min_cost": float(C.mean(axis=0).min()),
    }
    eces = {"router": ev.expected_calibration_error(P, S)}
    eces["router (quality target)"] = eces["router"]
    eces.update({b: ev.expected_calibration_error(p[sel[test]], S) for b, p in baselines.items()})
    rows = [_method_row(n, c, ref, eces.get(n)) for n, c in curves.items()]
    out = pd.DataFrame(rows).set_index("method")
    for m, d in draws.items():
        for k in ("APGR_share", "CPT50_share", "CPT80_share"):
            if k in d:
                out.loc[m, k] = d[k][0]
    out = _with_ci(out, draws)
    router_row = {str(k): v for k, v in out.loc["router"].to_dict().items()}
    metrics = {f"router_{k}": float(v) for k, v in router_row.items() if np.isfinite(v)}
    metrics.update({f"{_slug(str(m))}_AIQ": float(a) for m, a in out["AIQ"].items() if m != "router"})
    metrics["n_test_prompts"] = float(sel.sum())
    metrics["top_quality"], metrics["top_cost_usd"] = ref["top"][1], ref["top"][0]
    per_cat = per_category(P, PC, S, C, table.prompts["category"].to_numpy()[sel], names, ref["top"][1])
    return EvalResult(out, curves, per_cat, metrics, test_pred=P, test_scores=S, draws=draws)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


def per_category(
    P: np.ndarray, PC: np.ndarray, S: np.ndarray, C: np.ndarray, cats: np.ndarray, names: list[str], top_q: float
) -> pd.DataFrame:
    """Per category, at the cheapest knob setting whose overall quality reaches 95% of the top tier's.

    The setting is read off the held-out curve, like the curve metrics; `tierwise calibrate` picks
    one for serving.
    """
    top = int(np.argmax(C.mean(axis=0)))
    lam = lambda_reaching(P, PC, S, C, 0.95 * top_q)
    choice = tradeoff(P, PC, lam)
    rows = []
    for cat in sorted(set(cats) - {""}):  # prompts without a category make no row
        m = cats == cat
        rc, rq = ev.realised(choice[m], S[m], C[m])
        row = {
            "category": cat,
            "prompts": int(m.sum()),
            "router_quality": rq,
            "top_quality": float(S[m, top].mean()),
            "router_cost_pct_of_top": rc / float(C[m, top].mean()) * 100,
        }
        row.update({f"share_{n}": float((choice[m] == j).mean()) for j, n in enumerate(names)})
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["lambda"] = lam
    return out


def evaluate_artifact(
    artifact: RouterArtifact,
    split: Split,
    embedder: Embedder,
    cache: EmbeddingCache | None,
    seed: int,
    baselines: bool = True,
    n_boot: int = N_BOOT,
) -> EvalResult:
    """Evaluate a fitted router on the split's test prompts (with kNN, logistic-regression and task-prior baselines,
    the router's boosters without the guessed task prior, and the gate's shuffled null; `baselines` False: the
    router alone, as the champion comparison scores both models).

    The router scores through `Router`, like the service; the baselines' features come first, so with a
    cache the router reads the test prompts' embeddings back rather than embedding them again.
    """
    prompts = split.table.prompts["prompt"].tolist()
    cats = split.table.prompts["category"].to_numpy().astype(str)
    train, test = split.train, split.test
    others: dict[str, np.ndarray] = {}
    if baselines:
        X = featurize(prompts, artifact.features, embedder, cache)
        emb = X[:, : artifact.features.embedding_dim]
        others["kNN (k=25)"] = ev.knn_predictor(emb[train], split.table.scores[train])(emb[test])
        others["logistic regression"] = logreg_predictor(X[train], split.table.scores[train], seed)(X[test])
        if len(set(cats[train]) - {""}) > 1:
            others["task prior"] = ev.task_prior(cats, split.table.scores, train)[test]
        if artifact.task_prior is not None:
            boosters = artifact.model.predict_quality(X[test])
            if artifact.task_prior.classifier is not None:
                # The router before its guessed task prior is blended in: what the classifier and the means add.
                others["boosters alone (no task prior)"] = boosters
            # What callers would get by sending each prompt's category as its task hint (router/task_hint.py).
            others["router + task hint"] = artifact.task_prior.blend(boosters, list(cats[test]), X[test])[0]
    # At the split's tiers' prices (a tiers file may have changed them since training), as the service routes.
    router = Router(artifact, split.tiers, embedder=embedder, cache=cache)
    pred, pred_cost = router.score([p for p, t in zip(prompts, test, strict=True) if t])
    return evaluate_router(pred, pred_cost, split.table, test, split.tiers, others, n_boot, seed, shuffled=baselines)


def calibrate_knob(router: Router, split: Split, top_share: float | None, mean_cost_usd: float | None) -> str:
    """The knob for the held-out prompts: a quality target for a top-tier share, else λ for a mean cost.

    Returns the setting and what it realises, as the lines `tierwise calibrate` prints; ValueError when no λ
    reaches the cost.
    """
    sel = split.test & np.isfinite(split.table.scores).all(axis=1)
    pred, cost = router.score(split.table.prompts["prompt"][sel].tolist())
    if top_share is not None:
        knob = target_for_top_share(pred, cost, top_share)
        choice, setting = cheapest_sufficient(pred, cost, knob), f"TIERWISE_QUALITY_TARGET={knob:.4f}"
        if router.knob(None, None, knob)[1] is not None:  # a stored operating point wins over the setting
            setting = (
                f'"quality_target": {knob:.4f} in /route (this model routes by its stored operating point, '
                "which TIERWISE_QUALITY_TARGET does not change)"
            )
    else:
        knob = lambda_for_cost(pred, cost, float(mean_cost_usd or 0.0), split.table.costs[sel])
        choice, setting = tradeoff(pred, cost, knob), f'"cost_weight_per_usd": {knob:.6g} in /route'
    real_cost, real_q = ev.realised(choice, split.table.scores[sel], split.table.costs[sel])
    shares = ", ".join(f"{n} {(choice == j).mean():.1%}" for j, n in enumerate(split.tiers.names))
    return f"{setting}\non {sel.sum()} held-out prompts: quality {real_q:.4f}, mean cost ${real_cost:.6g}; {shares}"


@dataclass(frozen=True)
class KnobGoal:
    """What the stored operating point aims at on held-out prompts: a share of the top tier's quality at the
    least cost ("quality"), or a mean cost as a share of the top tier's ("cost")."""

    kind: Literal["quality", "cost"]
    share: float

    def __str__(self) -> str:
        if self.kind == "quality":
            return f"least mean cost reaching {self.share:.0%} of the top tier's quality"
        return f"mean cost {self.share:.0%} of the top tier's"


DEFAULT_GOAL = KnobGoal("quality", 0.95)
"""The stored default: see bench/operating_point.py for how the goals compare on the shared datasets."""


def calibrate_default_knob(
    artifact: RouterArtifact,
    prompts: list[str],
    pred: np.ndarray,
    pred_cost: np.ndarray,
    scores: np.ndarray,
    costs: np.ndarray,
    goal: KnobGoal = DEFAULT_GOAL,
    tiers: TiersConfig | None = None,
) -> DefaultKnob:
    """λ for `goal` on held-out prompts (predicted quality and expected cost decide, realised outcomes measure),
    stored per reference cost (the top tier's expected cost for the prompts' mean input tokens, at the prices of
    `tiers`, default the model's: those `pred_cost` was computed with)."""
    top = int(np.argmax(costs.mean(axis=0)))
    if goal.kind == "quality":
        lam = lambda_reaching(pred, pred_cost, scores, costs, goal.share * float(scores[:, top].mean()))
    else:
        lam = lambda_for_cost(pred, pred_cost, goal.share * float(costs[:, top].mean()), costs)
    real_cost, real_q = ev.realised(tradeoff(pred, pred_cost, lam), scores, costs)
    tokens_in = float(prompt_tokens(prompts).mean())
    return DefaultKnob(
        cost_weight=lam * artifact.reference_cost_usd(tokens_in, tiers),
        reference_tokens_in=tokens_in,
        goal=str(goal),
        n_prompts=len(prompts),
        realised_quality=real_q,
        realised_cost_usd=real_cost,
    )


def held_out_knob(router: Router, split: Split, goal: KnobGoal = DEFAULT_GOAL) -> DefaultKnob:
    """The operating point for `goal`, calibrated on the split's complete held-out prompts."""
    sel = split.test & split.table.complete
    prompts = split.table.prompts["prompt"][sel].tolist()
    pred, cost = router.score(prompts)
    S, C = split.table.scores[sel], split.table.costs[sel]
    return calibrate_default_knob(router.artifact, prompts, pred, cost, S, C, goal, router.tiers)


def goal_for_mean_cost(split: Split, mean_cost_usd: float) -> KnobGoal:
    """A mean cost in USD as a share of the top tier's mean cost on the held-out prompts."""
    sel = split.test & np.isfinite(split.table.costs).all(axis=1)
    return KnobGoal("cost", mean_cost_usd / float(split.table.costs[sel].mean(axis=0).max()))


def with_default_knob(
    artifact: RouterArtifact,
    split: Split,
    embedder: Embedder,
    cache: EmbeddingCache | None,
    goal: KnobGoal = DEFAULT_GOAL,
) -> RouterArtifact:
    """The artifact with its operating point calibrated on the split's complete held-out prompts."""
    knob = held_out_knob(Router(artifact, embedder=embedder, cache=cache), split, goal)
    logger.info("stored operating point: %s", knob)
    return replace(artifact, default_knob=knob)
