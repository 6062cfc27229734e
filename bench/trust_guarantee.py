"""Does the quality guarantee hold? Many random calibration/test splits of each shared dataset.

Per dataset: a router (tierwise's own) is trained on a random half of the prompts; the other half is split at
random, `--splits` times, into a calibration half and a test half. On each split Learn then Test calibrates the
operating point for (ε, δ) on the calibration half (router/guarantee.py), and the test half measures what it
realises: the quality lost against always using the top tier (net: top's mean score minus the routed mean score;
and the clipped loss the guarantee bounds), and its cost as a share of the top tier's. The guarantee promises the
loss exceeds ε in at most δ of the splits (up to the test half's own sampling noise). Beside it, the naive point
estimate (the cheapest λ whose calibration loss is ≤ ε, no confidence) shows what the guarantee costs.

    python -m bench.trust_guarantee [--splits 200] [--quick]

Writes bench/results/trust_guarantee.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from typing import Any

import numpy as np

from bench.common import REPO, machine_info, write_json
from bench.trust_data import Scored, embedder, load_log, score_dataset, tiers_of
from router.guarantee import calibrate, choices_at, point_estimate, quality_loss, top_tier
from router.policy import lambda_grid, tradeoff

OUT = REPO / "bench" / "results" / "trust_guarantee.json"
# Datasets, and how many prompts of each are used (routellm_evals: a random 4,000 of its 15,521, for time).
DATASETS = {"routerbench_subset": None, "llmrouter_dc": None, "routellm_evals": 4000}
TARGETS = ((0.05, 0.1), (0.02, 0.1), (0.1, 0.2))


def realise(sc: Scored, test: np.ndarray, lam: float | None) -> dict[str, float]:
    """Net and clipped quality loss against the top tier, and cost as a share of the top tier's, on `test`."""
    pred, cost, scores, costs = sc.take(test)
    top = top_tier(cost)
    choice = choices_at(pred, cost, lam)
    rows = np.arange(len(choice))
    return {
        "net_loss": float(scores[:, top].mean() - scores[rows, choice].mean()),
        "clipped_loss": float(quality_loss(choice, scores, top).mean()),
        "cost_share": float(costs[rows, choice].mean() / costs[:, top].mean()),
    }


def point_estimate_net(pred: np.ndarray, cost: np.ndarray, scores: np.ndarray, epsilon: float) -> float | None:
    """The naive knob on the net loss: the largest λ in the same sequence whose calibration net loss is ≤ ε."""
    top, rows, chosen = top_tier(cost), np.arange(len(pred)), None
    for lam in lambda_grid(cost):
        choice = tradeoff(pred, cost, float(lam))
        if float(scores[:, top].mean() - scores[rows, choice].mean()) > epsilon:
            break
        chosen = float(lam)
    return chosen


def run_dataset(sc: Scored, splits: int, seed: int) -> list[dict[str, Any]]:
    pool = np.flatnonzero(~sc.train)
    rng = np.random.default_rng(seed)
    out = []
    for epsilon, delta in TARGETS:
        rows = []
        for _ in range(splits):
            perm = rng.permutation(pool)
            cal, test = perm[: len(perm) // 2], perm[len(perm) // 2 :]
            point = calibrate(*sc.take(cal)[:3], epsilon=epsilon, delta=delta)
            naive = point_estimate(*sc.take(cal)[:3], epsilon=epsilon)
            naive_net = point_estimate_net(*sc.take(cal)[:3], epsilon=epsilon)
            g, n = realise(sc, test, point.cost_weight_per_usd), realise(sc, test, naive)
            rows.append((g, n, point.cost_weight_per_usd is None, realise(sc, test, naive_net)))
        g_net = np.array([r[0]["net_loss"] for r in rows])
        g_clip = np.array([r[0]["clipped_loss"] for r in rows])
        n_net = np.array([r[1]["net_loss"] for r in rows])
        g_cost = np.array([r[0]["cost_share"] for r in rows])
        n_cost = np.array([r[1]["cost_share"] for r in rows])
        nn_net = np.array([r[3]["net_loss"] for r in rows])
        nn_cost = np.array([r[3]["cost_share"] for r in rows])
        out.append(
            {
                "epsilon": epsilon,
                "delta": delta,
                "splits": splits,
                "n_calibration": len(pool) // 2,
                "n_test": len(pool) - len(pool) // 2,
                "violation_rate_net": float((g_net > epsilon).mean()),
                "violation_rate_clipped": float((g_clip > epsilon).mean()),
                "naive_violation_rate_net": float((n_net > epsilon).mean()),
                "binomial_sd_at_delta": math.sqrt(delta * (1 - delta) / splits),
                "mean_net_loss": float(g_net.mean()),
                "p95_net_loss": float(np.quantile(g_net, 0.95)),
                "mean_clipped_loss": float(g_clip.mean()),
                "naive_mean_net_loss": float(n_net.mean()),
                "cost_share_of_top": float(g_cost.mean()),
                "naive_cost_share_of_top": float(n_cost.mean()),
                "extra_cost_pct_of_top": float((g_cost - n_cost).mean() * 100),
                "naive_net_violation_rate_net": float((nn_net > epsilon).mean()),
                "naive_net_cost_share_of_top": float(nn_cost.mean()),
                "extra_cost_vs_naive_net_pct_of_top": float((g_cost - nn_cost).mean() * 100),
                "always_top_rate": float(np.mean([r[2] for r in rows])),
                "holds": bool((g_net > epsilon).mean() <= delta),
            }
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="routerbench_subset only, 100 splits")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    emb = embedder()
    datasets = {"routerbench_subset": None} if args.quick else DATASETS
    splits = 100 if args.quick else args.splits
    results: dict[str, Any] = {}
    for name, max_prompts in datasets.items():
        t0 = time.time()
        rng = np.random.default_rng(args.seed)

        def half(cats: np.ndarray, rng: np.random.Generator = rng) -> np.ndarray:
            return rng.random(len(cats)) < 0.5

        sc = score_dataset(load_log(name, max_prompts, args.seed), tiers_of(name), half, args.seed, emb)
        results[name] = {
            "tiers": sc.artifact.tier_names,
            "top_tier": sc.artifact.tier_names[top_tier(sc.cost)],
            "n_prompts": len(sc.prompts),
            "n_train": int(sc.train.sum()),
            "targets": run_dataset(sc, splits, args.seed),
            "seconds": round(time.time() - t0, 1),
        }
        print(json.dumps({name: results[name]["targets"][0]}, indent=1), flush=True)
    report = {
        "command": "python -m bench.trust_guarantee" + (" --quick" if args.quick else f" --splits {splits}"),
        "method": "Learn then Test (Angelopoulos et al. 2021) with the Hoeffding-Bentkus p-value (Bates et al. 2021), "
        "fixed-sequence over the λ grid; loss = max(0, top score - routed score)",
        "datasets": results,
        "seconds": round(time.time() - started, 1),
        "machine": machine_info(),
    }
    write_json(OUT, report)
    return report


def readme_section() -> str | None:
    """The README table of the last results (for `make trust`)."""
    if not OUT.is_file():
        return None
    r = json.loads(OUT.read_text())
    lines = [
        "#### Quality guarantee (bench/trust_guarantee.py)",
        "",
        f"`{r['command']}`: per dataset a router trained on half the prompts; the other half split "
        "into calibration and test halves at random, again and again. *violated* = share of splits whose test "
        "half lost more than ε of the top tier's mean quality (net); the guarantee allows δ. *extra cost* = what "
        "the guarantee spends beyond the naive point estimate (same λ sequence and loss, no confidence), in % of the "
        "top tier's cost; *naive net* = the cheapest λ whose calibration *net* loss is ≤ ε.",
        "",
        "| dataset | ε | δ | splits | calibration prompts | violated (net) | naive violated | mean net loss "
        "| cost % of top | naive cost % of top | extra cost (% of top) | naive net: violated, cost % of top |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in r["datasets"].items():
        for t in d["targets"]:
            lines.append(
                f"| {name} | {t['epsilon']:g} | {t['delta']:g} | {t['splits']} | {t['n_calibration']} "
                f"| {t['violation_rate_net']:.1%} | {t['naive_violation_rate_net']:.1%} | {t['mean_net_loss']:.4f} "
                f"| {t['cost_share_of_top']:.1%} | {t['naive_cost_share_of_top']:.1%} "
                f"| {t['extra_cost_pct_of_top']:.1f} "
                f"| {t['naive_net_violation_rate_net']:.1%}, {t['naive_net_cost_share_of_top']:.1%} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
