"""Off-policy evaluation on replayed production traffic (issue 14): do IPS, SNIPS and DR recover the truth?

For each dataset, per split seed: train the router (tierwise's own pipeline: MiniLM int8 + text features,
DifficultyModel) on the prompts outside a 2,000-prompt "production" sample, then replay the sample as
production `REPS` times: the logging policy (the router at 40% of the top tier's expected cost) picks a
tier, with or without ε = 0.05 exploration (router/exploration.py), and only the picked tier's outcome is
revealed. Each estimator (naive replay, the model's own predictions (DM), IPS, SNIPS, DR on the raw predictions,
DR and SWITCH on the cross-fitted recalibrated reward model; router/ope.py) estimates every target policy's mean
quality and cost; the truth is the full log's mean over the same
prompts. Also the budget question: how much quality going from 25% to 60% of the top tier's cost buys.

Datasets: routerbench_subset with config/tiers.toml's three tiers; llmrouter_dc with three of its models
as tiers (gemma-2-9b-it $0.1, llama-3.1-8b-instruct $0.2, llama-3.1-nemotron-51b-instruct $0.9 per 1M).

`python -m bench.trust_ope [--seeds N] [--reps N]` writes bench/results/trust_ope.json.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from bench.common import ONNX_DIR, REPO, machine_info, time_calls, write_json
from router.embedders.factory import make_embedder
from router.embedding_cache import EmbeddingCache
from router.exploration import exploration_probs, explore
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.ope import Estimate, LoggedDecisions, Unsupported, compare, estimate, one_hot, recalibrated
from router.policy import lambda_for_cost, tradeoff
from router.routing import Router
from router.schema import TiersConfig, load_outcomes, load_tiers, parse_tiers
from training.data import Split, pivot_log
from training.fit import train_router

logger = logging.getLogger("bench.trust_ope")
RESULTS = REPO / "bench" / "results" / "trust_ope.json"
N_LOGGED = 2000
EXPLORED_SHARE = 0.05  # the boundary designs explore this share of decisions, as uniform ε = 0.05 does (about)
BOUNDARY_FLOOR = 0.01  # their uniform ε, so no policy is refused outright


@dataclass(frozen=True)
class Design:
    """How the logging policy explores: uniform ε, and boundary exploration around λ x/÷ factor, or aimed at the
    operating points (shares of the top tier's expected cost) the budget question compares."""

    epsilon: float
    boundary_factor: float | None = None
    aimed_at: tuple[float, ...] = ()


DESIGNS = {
    "ε=0": Design(0.0),
    "ε=0.05": Design(0.05),  # the issue's
    "ε=0.2": Design(0.2),  # how the error scales
    "boundary ×2, 5% explored": Design(BOUNDARY_FLOOR, 2.0),
    "boundary ×4, 5% explored": Design(BOUNDARY_FLOOR, 4.0),
    # TIERWISE_EXPLORATION_BOUNDARY_COST_WEIGHTS set to the λ of the two budgets the operator will compare
    "aimed at 25% and 60%, 5% explored": Design(BOUNDARY_FLOOR, aimed_at=(0.25, 0.60)),
}
TARGET_DESIGNS = ("ε=0.05", "boundary ×2, 5% explored", "boundary ×4, 5% explored", "aimed at 25% and 60%, 5% explored")
LOGGING_POINT = 0.40  # the logging policy: the router at this share of the top tier's expected cost
OPERATING_POINTS = (0.25, 0.40, 0.60)
BUDGET_QUESTION = (0.25, 0.60)
TOLERANCE = 0.01
ESTIMATORS = ("naive", "dm", "ips", "snips", "dr_raw", "dr", "switch")
N_BOOT = 400
CONFIDENCE = 0.95

DC_TIERS = {
    "tiers": [
        {"name": "gemma", "model": "gemma-2-9b-it"},
        {"name": "llama8b", "model": "llama-3.1-8b-instruct"},
        {"name": "nemotron51b", "model": "llama-3.1-nemotron-51b-instruct"},
    ],
    "models": {
        "gemma-2-9b-it": {"input_per_1m": 0.1, "output_per_1m": 0.1},
        "llama-3.1-8b-instruct": {"input_per_1m": 0.2, "output_per_1m": 0.2},
        "llama-3.1-nemotron-51b-instruct": {"input_per_1m": 0.9, "output_per_1m": 0.9},
    },
}


def datasets() -> dict[str, TiersConfig]:
    return {
        "routerbench_subset": load_tiers(REPO / "config" / "tiers.toml"),
        "llmrouter_dc": parse_tiers(DC_TIERS, "bench.trust_ope:DC_TIERS"),
    }


@dataclass(frozen=True)
class World:
    """One split: the production sample's true scores and costs per tier, and the router's predictions."""

    scores: np.ndarray  # (n, k)
    costs: np.ndarray  # (n, k)
    pred: np.ndarray  # (n, k) predicted quality
    pred_cost: np.ndarray  # (n, k) expected cost
    names: list[str]


def build_world(log: pd.DataFrame, tiers: TiersConfig, seed: int, embedder: Any, cache: EmbeddingCache) -> World:
    """Train the router on the prompts outside a random 2,000-prompt production sample; score the sample."""
    used = log[log["model"].isin([t.model for t in tiers.tiers])]
    table = pivot_log(used, tiers)
    complete = table.complete
    rng = np.random.default_rng(seed)
    idx = rng.permutation(np.flatnonzero(complete))
    logged = np.zeros(len(complete), dtype=bool)
    logged[idx[:N_LOGGED]] = True
    # Keep prompt texts on one side only (duplicates exist in both logs).
    texts = table.prompts["prompt"].str.strip().str.lower()
    train = ~logged & ~texts.isin(set(texts[logged])).to_numpy()
    split = Split(table, train, logged, used, tiers)
    features = FeatureSpec(embedder_id=embedder.id, embedding_dim=embedder.dim)
    artifact = train_router(split, embedder, cache, features, DifficultyModel(random_state=seed, n_jobs=1))
    router = Router(artifact, embedder=embedder, cache=cache)
    pred, pred_cost = router.score(table.prompts["prompt"][logged].tolist())
    return World(table.scores[logged], table.costs[logged], pred, pred_cost, tiers.names)


def router_at(world: World, share_of_top: float) -> np.ndarray:
    """The router's choices at the λ whose mean expected cost is `share_of_top` of the top tier's."""
    top = int(np.argmax(world.pred_cost.mean(axis=0)))
    lam = lambda_for_cost(world.pred, world.pred_cost, share_of_top * float(world.pred_cost[:, top].mean()))
    return tradeoff(world.pred, world.pred_cost, lam)


def target_policies(world: World) -> dict[str, np.ndarray]:
    """Every target policy as (n, k) probabilities."""
    n, k = world.pred.shape
    out = {f"router@{int(p * 100)}%": one_hot(router_at(world, p), k) for p in OPERATING_POINTS}
    out.update({f"always {name}": one_hot(np.full(n, j), k) for j, name in enumerate(world.names)})
    out["random mix"] = np.full((n, k), 1.0 / k)
    return out


def logging_distribution(world: World, design: Design, rng: np.random.Generator) -> np.ndarray:
    """μ (n, k) of the logging policy under `design`, through router/exploration.py as the service does.

    A boundary design's rate is set so that EXPLORED_SHARE of decisions explore: the rate divided by the share
    of prompts whose neighbouring operating points disagree (an operator reads that share off their own log).
    An aimed design's λ values are set on a bootstrap resample of the prompts, not on the logged prompts
    themselves: an operator calibrates them on other prompts of the same traffic, so they miss the target
    policies' λ a little, as they would.
    """
    n, k = world.pred.shape
    choice = router_at(world, LOGGING_POINT)
    if design.boundary_factor is None and not design.aimed_at:
        return np.stack([exploration_probs(int(c), np.ones(k, bool), design.epsilon) for c in choice])
    top_cost = float(world.pred_cost[:, int(np.argmax(world.pred_cost.mean(axis=0)))].mean())
    lam = lambda_for_cost(world.pred, world.pred_cost, LOGGING_POINT * top_cost)
    if design.aimed_at:  # as `tierwise calibrate --mean-cost-usd` gives them (on the model's held-out prompts)
        other = rng.choice(n, n)
        pred, pred_cost = world.pred[other], world.pred_cost[other]
        top_other = float(pred_cost[:, int(np.argmax(pred_cost.mean(axis=0)))].mean())
        neighbours = [lambda_for_cost(pred, pred_cost, share * top_other) for share in design.aimed_at]
    else:
        assert design.boundary_factor is not None
        neighbours = [lam * design.boundary_factor, lam / design.boundary_factor]
    near = np.zeros((n, k), dtype=bool)
    for w in neighbours:
        near[np.arange(n), tradeoff(world.pred, world.pred_cost, w)] = True
    near[np.arange(n), choice] = False
    rate = min((EXPLORED_SHARE - design.epsilon * (k - 1) / k) / max(float(near.any(axis=1).mean()), 1e-9), 0.5)
    return np.stack(
        [exploration_probs(int(c), np.ones(k, bool), design.epsilon, near[i], rate) for i, c in enumerate(choice)]
    )


def log_production(world: World, design: Design, rng: np.random.Generator) -> LoggedDecisions:
    """Serve the sample with the logging policy (± exploration); reveal only the served tier's outcome."""
    n, _ = world.pred.shape
    mu = logging_distribution(world, design, rng)
    action = (rng.random(n)[:, None] > np.cumsum(mu, axis=1)).sum(axis=1)
    rows = np.arange(n)
    return LoggedDecisions(
        action, mu[rows, action], world.scores[rows, action], world.costs[rows, action], world.pred, world.pred_cost, mu
    )


def naive(target: np.ndarray, logged: LoggedDecisions, y: np.ndarray) -> float:
    """Replay without propensities: the logged outcomes where the target agrees with the served tier."""
    agree = target[np.arange(len(logged)), logged.action]
    return float((agree * y).sum() / agree.sum()) if agree.sum() > 0 else float("nan")


def truth_of(target: np.ndarray, world: World) -> tuple[float, float]:
    return float((target * world.scores).sum(axis=1).mean()), float((target * world.costs).sum(axis=1).mean())


def _record(row: dict[str, Any], est: Estimate, raw: Estimate) -> None:
    """Each estimator's value and interval into the row (DR on the raw predictions as dr_raw)."""
    for e, iv in [(e, getattr(est, e)) for e in ("ips", "snips", "dr", "switch")] + [("dr_raw", raw.dr)]:
        row.update({e: iv.value, f"{e}_low": iv.low, f"{e}_high": iv.high})


def one_rep(world: World, design: Design, seed: int) -> list[dict[str, Any]]:
    """Estimate every target policy and the budget question on one replayed log."""
    logged = log_production(world, design, np.random.default_rng(seed))
    rows: list[dict[str, Any]] = []
    policies = target_policies(world)
    greedy = one_hot(router_at(world, LOGGING_POINT), world.pred.shape[1])
    mu = logged.logging_probs
    assert mu is not None
    model = recalibrated(logged, seed=seed)  # what estimate() does by default, once for every policy
    kw: dict[str, Any] = {"n_boot": N_BOOT, "confidence": CONFIDENCE, "seed": seed, "recalibrate": False}
    # What serving with exploration costs: the logging distribution's own true quality and cost.
    for name, target in {"logging (as served)": mu, **policies}.items():
        true_q, true_c = truth_of(target, world)
        row: dict[str, Any] = {"policy": name, "truth_quality": true_q, "truth_cost": true_c}
        row["disagreement"] = float(1 - (target * greedy).sum(axis=1).mean())
        row["naive"] = naive(target, logged, logged.quality)
        try:
            est = estimate(name, target, model, world.names, **kw)
            raw = estimate(name, target, logged, world.names, **kw)
        except Unsupported:
            row.update(refused=True, dm=float((target * world.pred).sum(axis=1).mean()))
        else:
            row.update(
                refused=False, dm=raw.quality.dm, ess=est.quality.ess, switch_dm=np.isfinite(est.quality.switch_tau)
            )
            _record(row, est.quality, raw.quality)
            for e in ("ips", "snips", "dr", "switch"):
                row[f"{e}_cost"] = getattr(est.cost, e).value
        rows.append(row)
    lo, hi = (policies[f"router@{int(p * 100)}%"] for p in BUDGET_QUESTION)
    diff: dict[str, Any] = {
        "policy": "budget 25%->60%",
        "truth_quality": truth_of(hi, world)[0] - truth_of(lo, world)[0],
        "truth_cost": truth_of(hi, world)[1] - truth_of(lo, world)[1],
    }
    diff["naive"] = naive(hi, logged, logged.quality) - naive(lo, logged, logged.quality)
    diff["dm"] = float(((hi - lo) * world.pred).sum(axis=1).mean())
    try:
        q, _ = compare(hi, lo, model, world.names, **kw)
        q_raw, _ = compare(hi, lo, logged, world.names, **kw)
    except Unsupported:
        diff["refused"] = True
    else:
        diff.update(refused=False, switch_dm=np.isfinite(q.switch_tau))
        _record(diff, q, q_raw)
    rows.append(diff)
    return rows


def summarise(reps: pd.DataFrame) -> list[dict[str, Any]]:
    """Per policy: each estimator's bias, mean and p90 absolute error, share within the tolerance, CI coverage."""
    out = []
    for policy, g in reps.groupby("policy", sort=False):
        row: dict[str, Any] = {
            "policy": policy,
            "truth_quality_mean": round(float(g["truth_quality"].mean()), 4),
            "truth_cost_mean_usd": float(g["truth_cost"].mean()),
            "reps": len(g),
        }
        if "disagreement" in g:
            row["disagreement_with_logging"] = round(float(g["disagreement"].mean()), 3)
        row["refused_share"] = float(g["refused"].mean())
        for e in ESTIMATORS:
            if e not in g or g[e].isna().all():
                continue
            err = (g[e] - g["truth_quality"]).dropna()
            row[e] = {
                "bias": round(float(err.mean()), 4),
                "mean_abs_err": round(float(err.abs().mean()), 4),
                "p90_abs_err": round(float(err.abs().quantile(0.9)), 4),
                "within_tolerance": round(float((err.abs() <= TOLERANCE).mean()), 3),
            }
            if f"{e}_low" in g:
                ok = g[[f"{e}_low", f"{e}_high", "truth_quality"]].dropna()
                cover = (ok[f"{e}_low"] <= ok["truth_quality"]) & (ok["truth_quality"] <= ok[f"{e}_high"])
                row[e]["ci_coverage"] = round(float(cover.mean()), 3)
                row[e]["ci_half_width"] = round(float((ok[f"{e}_high"] - ok[f"{e}_low"]).mean() / 2), 4)
        if "switch_dm" in g:
            row["switch_picks_dm_share"] = round(float(g["switch_dm"].dropna().astype(float).mean()), 3)
        if "ess" in g:
            row["ess_mean"] = round(float(g["ess"].mean()), 1)
        out.append(row)
    return out


def run(seeds: int, reps: int, progress: Callable[[str], None]) -> dict[str, Any]:
    embedder = make_embedder("onnx-int8", onnx_dir=ONNX_DIR)
    cache = EmbeddingCache(REPO / ".cache" / "embeddings.sqlite")
    results: dict[str, Any] = {}
    for dataset, tiers in datasets().items():
        log = load_outcomes(REPO / "data" / dataset / "outcomes.parquet")
        per_design: dict[str, list[dict[str, Any]]] = {d: [] for d in DESIGNS}
        for seed in range(seeds):
            t0 = time.perf_counter()
            world = build_world(log, tiers, seed, embedder, cache)
            progress(f"{dataset} seed {seed}: router trained and scored in {time.perf_counter() - t0:.0f} s")
            for name, design in DESIGNS.items():
                for r in range(reps):
                    for row in one_rep(world, design, seed * 1000 + r):
                        per_design[name].append({**row, "seed": seed, "rep": r})
        results[dataset] = {
            "tiers": tiers.names,
            "by_logging": {d: summarise(pd.DataFrame(rows)) for d, rows in per_design.items()},
        }
    return results


def targets_met(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, per logging design exploring ~5% of decisions: |estimate − truth| ≤ 0.01 for the router
    at 3 points, and the budget question; for DR (unbiased, its interval is honest) and SWITCH."""
    out: dict[str, Any] = {}
    for dataset, r in results.items():
        for design in TARGET_DESIGNS:
            summary = {row["policy"]: row for row in r["by_logging"][design]}
            for policy in [f"router@{int(p * 100)}%" for p in OPERATING_POINTS] + ["budget 25%->60%"]:
                cell: dict[str, Any] = {}
                for e in ("dr_raw", "dr", "switch"):
                    err = summary[policy].get(e, {})
                    cell[e] = {
                        "mean_abs_err": err.get("mean_abs_err"),
                        "p90_abs_err": err.get("p90_abs_err"),
                        "within_0.01_share": err.get("within_tolerance"),
                        "mean_abs_err_met": err.get("mean_abs_err") is not None and err["mean_abs_err"] <= TOLERANCE,
                    }
                out[f"{dataset}, {design}: {policy}"] = cell
    return out


def bookkeeping_cost() -> dict[str, Any]:
    """Per decision, what serving/routing.py adds for OPE: the exploration draw and the three per-tier records."""
    names = ["main", "mid", "brain"]
    quality, cost = np.array([0.6, 0.7, 0.9]), np.array([1e-5, 5e-5, 1e-3])
    rng = np.random.default_rng(0)

    def evidence(epsilon: float) -> None:
        probs = np.zeros(3)
        probs[1] = 1.0
        if epsilon > 0:
            probs = explore(1, cost, epsilon, rng, 0, None, None).probs
        {n: float(q) for n, q in zip(names, quality, strict=True)}
        {n: float(p) for n, p in zip(names, probs, strict=True)}
        {n: float(c) for n, c in zip(names, cost, strict=True)}

    return {
        "note": "in-process, one decision with 3 tiers: the records kept for OPE (ε = 0) and with an exploration draw",
        "epsilon_0": time_calls(lambda: evidence(0.0), reps=20_000, warmup=1000),
        "epsilon_0.05": time_calls(lambda: evidence(0.05), reps=20_000, warmup=1000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=6, help="split seeds (a router trained per seed)")
    parser.add_argument("--reps", type=int, default=20, help="replayed production logs per seed and ε")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.perf_counter()
    with threadpool_limits(1):
        results = run(args.seeds, args.reps, logger.info)
    report = {
        "machine": machine_info(),
        "command": f"python -m bench.trust_ope --seeds {args.seeds} --reps {args.reps}",
        "design": {
            "logged_prompts": N_LOGGED,
            "logging_designs": {
                name: {"uniform_epsilon": d.epsilon, "boundary_factor": d.boundary_factor, "aimed_at": list(d.aimed_at)}
                for name, d in DESIGNS.items()
            },
            "boundary_designs_explore": EXPLORED_SHARE,
            "logging_policy": f"router@{int(LOGGING_POINT * 100)}% of the top tier's expected cost",
            "operating_points": OPERATING_POINTS,
            "budget_question": BUDGET_QUESTION,
            "tolerance": TOLERANCE,
            "bootstrap": {"n_boot": N_BOOT, "confidence": CONFIDENCE},
        },
        "targets": None,
        "results": results,
        "runtime_s": None,
    }
    report["targets"] = targets_met(results)
    report["bookkeeping_cost"] = bookkeeping_cost()
    report["runtime_s"] = round(time.perf_counter() - start, 1)
    write_json(RESULTS, report)
    logger.info("wrote %s in %.0f s", RESULTS, report["runtime_s"])


if __name__ == "__main__":
    main()
