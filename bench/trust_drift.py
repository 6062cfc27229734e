"""Drift simulations: does the detector fire on a shift to unseen tasks, stay quiet without one, and does
recalibration restore the promised mean cost?

Per dataset, a router (tierwise's own) and its novelty reference are fitted on 60% of the prompts of the
training tasks (routerbench_subset: ARC-Challenge + Winogrande; llmrouter_dc: every task but MBPP and
HumanEval); the rest of those prompts are split into a calibration half (where λ is set for the promised mean
cost, 40% of the top tier's) and a stream half. The service's policy is simulated: λ, plus the conservative
fallback (the top tier) for prompts with novelty >= 0.99. Streams of `--length` requests are drawn:
- unshifted: every request from the stream half;
- shifted: the first `--shift-at` from the stream half, then each request from the unseen tasks with
  probability f (1.0, and 0.3 for a partial shift).
The detector is router/drift.novelty_check on the last `window` decisions, checked after every request (as a
scrape could), with the service's defaults (window 200, z 4, from 30 decisions). The quality and cost checks
(router/drift.quality_check and cost_check, on the outcomes of the served tiers) are reported beside it.
Recalibration: after the alert, λ is recalibrated (router/drift.recalibrate) on the next N (RECENTS)
requests for the promised mean cost, and the expected realised mean cost on the shifted traffic is compared
with the promise (fallback off after recalibration: the operator accepts the new traffic; with it on, the
fallback alone may cost more than the promise, which is reported).

    python -m bench.trust_drift [--runs 200] [--quick]

Writes bench/results/trust_drift.json. Also times the novelty score of one prompt (the route-time cost).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import REPO, machine_info, summarize_ms, write_json
from bench.trust_data import Scored, embedder, load_log, score_dataset, tiers_of
from router.drift import cost_check, novelty_check, quality_check, recalibrate
from router.guarantee import top_tier
from router.novelty import OOD_NOVELTY, NoveltyReference
from router.policy import lambda_for_cost, tradeoff

OUT = REPO / "bench" / "results" / "trust_drift.json"
WINDOW, Z_LIMIT, MIN_N, GAP, COST_RATIO = 200, 4.0, 30, 0.1, 0.25  # the service's defaults (infra/settings.py)
RECENTS = (1000, 2000, 4000, 8000, 16000)  # requests of the new traffic each recalibration round sees
ROUNDS = 3  # recalibrate, serve a round at the new λ, recalibrate again on what it served
PROMISE_SHARE = 0.4  # the promised mean cost, as a share of the top tier's mean cost on the calibration prompts
SHIFTS: dict[str, Callable[[str], bool]] = {
    "routerbench_subset": lambda c: c == "mbpp",
    "llmrouter_dc": lambda c: c in ("mbpp", "human_eval"),
}
SHIFT_NAMES = {"routerbench_subset": "ARC + Winogrande -> MBPP", "llmrouter_dc": "11 tasks -> MBPP + HumanEval"}


class World:
    """A dataset scored by the router, its novelty reference, the pools and the promised operating point."""

    def __init__(self, sc: Scored, shifted: np.ndarray, seed: int):
        self.sc = sc
        rng = np.random.default_rng(seed)
        held = rng.permutation(np.flatnonzero(~sc.train & ~shifted))
        self.cal, self.stream = held[: len(held) // 2], held[len(held) // 2 :]
        self.unseen = np.flatnonzero(shifted)
        self.ref = NoveltyReference(random_state=seed).fit(sc.embeddings[sc.train])
        self.novelty = self.ref.score(sc.embeddings)
        self.top = top_tier(sc.cost)
        pred, cost, _, costs = sc.take(self.cal)
        self.promise = PROMISE_SHARE * float(costs[:, self.top].mean())
        self.lam0 = lambda_for_cost(pred, cost, self.promise, costs)

    def serve(self, idx: np.ndarray, lam: float, fallback: bool = True) -> np.ndarray:
        """The tier the service gives each prompt: λ's choice, or the top tier for a novel prompt."""
        choice = tradeoff(self.sc.pred[idx], self.sc.cost[idx], lam)
        if fallback:
            choice = np.where(self.novelty[idx] >= OOD_NOVELTY, self.top, choice)
        return np.asarray(choice)

    def mean_cost(self, idx: np.ndarray, lam: float, fallback: bool) -> float:
        choice = self.serve(idx, lam, fallback)
        return float(self.sc.costs[idx, choice].mean())

    def traffic_cost(self, f: float, lam: float, fallback: bool) -> float:
        """Expected realised cost per request of traffic that is a share f unseen tasks (over the whole pools)."""
        unseen = self.mean_cost(self.unseen, lam, fallback)
        return f * unseen + (1 - f) * self.mean_cost(self.stream, lam, fallback)


def first_alert(novelty: np.ndarray, n_cal: int) -> int | None:
    """Index of the first request after which the novelty check on the last WINDOW decisions alerts."""
    for t in range(MIN_N, len(novelty) + 1):
        if novelty_check(novelty[max(0, t - WINDOW) : t], n_cal, Z_LIMIT, MIN_N).alert:
            return t
    return None


def promise_checks(w: World, idx: np.ndarray, lam: float) -> dict[str, bool]:
    """The quality and cost checks on the last WINDOW outcomes of a stream (served tiers only)."""
    last = idx[-WINDOW:]
    served = w.serve(last, lam)
    rows = np.arange(len(last))
    out = {}
    for j, name in enumerate(w.sc.artifact.tier_names):
        m = served == j
        out[f"quality:{name}"] = quality_check(
            name, w.sc.pred[last][rows, served][m], w.sc.scores[last][rows, served][m], GAP, MIN_N
        ).alert
    out["cost"] = cost_check(w.sc.costs[last][rows, served], w.sc.cost[last][rows, served], COST_RATIO, MIN_N).alert
    return out


def simulate(
    w: World, runs: int, length: int, shift_at: int, f: float, recents: tuple[int, ...], seed: int
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    n_cal = w.ref.n_calibration
    quiet_alerts, delays, early, missed = 0, [], 0, 0
    unshifted_promise: dict[str, int] = {}
    shifted_promise: dict[str, int] = {}
    recal_err: dict[str, list[float]] = {f"{n}x{r}": [] for n in recents for r in range(1, ROUNDS + 1)}
    recal_err.update({f"{n} oracle": [] for n in recents})
    recal_err_fallback: list[float] = []
    for _ in range(runs):
        calm = rng.choice(w.stream, length)
        quiet_alerts += first_alert(w.novelty[calm], n_cal) is not None
        for name, fired in promise_checks(w, calm, w.lam0).items():
            unshifted_promise[name] = unshifted_promise.get(name, 0) + int(fired)
        n_after = length - shift_at
        after = np.where(rng.random(n_after) < f, rng.choice(w.unseen, n_after), rng.choice(w.stream, n_after))
        stream = np.concatenate([rng.choice(w.stream, shift_at), after])
        t = first_alert(w.novelty[stream], n_cal)
        for name, fired in promise_checks(w, stream, w.lam0).items():
            shifted_promise[name] = shifted_promise.get(name, 0) + int(fired)
        if t is None:
            missed += 1
            continue
        if t <= shift_at:
            early += 1
            continue
        delays.append(t - shift_at)
        # Recalibrate on the next `recent` requests of the new traffic (served at the current λ), judge the new λ
        # on the whole new traffic; repeat for ROUNDS rounds, each on a fresh round served at the latest λ.
        for recent in recents:
            # The floor any method on `recent` requests has: λ set knowing every tier's realised cost on them.
            new = np.where(rng.random(recent) < f, rng.choice(w.unseen, recent), rng.choice(w.stream, recent))
            try:
                lam = lambda_for_cost(w.sc.pred[new], w.sc.cost[new], w.promise, w.sc.costs[new])
                recal_err[f"{recent} oracle"].append(w.traffic_cost(f, lam, False) / w.promise - 1)
            except ValueError:
                recal_err[f"{recent} oracle"].append(float("inf"))
            lam = w.lam0
            for r in range(1, ROUNDS + 1):
                new = np.where(rng.random(recent) < f, rng.choice(w.unseen, recent), rng.choice(w.stream, recent))
                served = w.serve(new, lam, fallback=False)
                paid = w.sc.costs[new][np.arange(recent), served]
                novel = w.novelty[new] >= OOD_NOVELTY
                try:
                    lam = recalibrate(w.sc.pred[new], w.sc.cost[new], served, paid, w.promise, novel).cost_weight
                    recal_err[f"{recent}x{r}"].append(w.traffic_cost(f, lam, False) / w.promise - 1)
                except ValueError:  # no λ reaches the promise
                    recal_err[f"{recent}x{r}"].append(float("inf"))
                    break
        new = np.where(rng.random(recents[0]) < f, rng.choice(w.unseen, recents[0]), rng.choice(w.stream, recents[0]))
        served = w.serve(new, w.lam0, fallback=True)
        paid = w.sc.costs[new][np.arange(recents[0]), served]
        try:
            novel = w.novelty[new] >= OOD_NOVELTY
            # The fallback serves the novel prompts their tier whatever λ: counted there for every λ (as the service).
            fixed = np.where(novel, served, -1)
            lam_fb = recalibrate(w.sc.pred[new], w.sc.cost[new], served, paid, w.promise, novel, fixed).cost_weight
            recal_err_fallback.append(w.traffic_cost(f, lam_fb, True) / w.promise - 1)
        except ValueError:
            recal_err_fallback.append(float("inf"))
    d = np.array(delays) if delays else np.array([np.nan])
    err_fb = np.abs(np.array(recal_err_fallback)) if recal_err_fallback else np.array([np.nan])

    def errors(values: list[float]) -> dict[str, float]:
        e = np.abs(np.array(values)) if values else np.array([np.nan])
        return {
            "mean": float(np.nanmean(e)),
            "median": float(np.nanmedian(e)),
            "p90": float(np.nanquantile(e, 0.9)),
            "p95": float(np.nanquantile(e, 0.95)),
            "within_5pct_rate": float(np.mean(e <= 0.05)),
            "mean_signed": float(np.nanmean(values)) if values else float("nan"),
        }

    return {
        "unseen_share_after_shift": f,
        "runs": runs,
        "length": length,
        "shift_at": shift_at,
        "unshifted_quiet_rate": 1 - quiet_alerts / runs,
        "shifted_fired_rate": len(delays) / runs,
        "shifted_alert_before_shift": early / runs,
        "shifted_missed": missed / runs,
        "delay_requests": {
            "median": float(np.nanmedian(d)),
            "p95": float(np.nanquantile(d, 0.95)),
            "max": float(np.nanmax(d)),
        },
        "promise_checks_alert_rate_unshifted": {k: v / runs for k, v in unshifted_promise.items()},
        "promise_checks_alert_rate_shifted": {k: v / runs for k, v in shifted_promise.items()},
        "mean_cost_before_recalibration_vs_promise": w.traffic_cost(f, w.lam0, True) / w.promise - 1,
        "recalibration_abs_error": {k: errors(v) for k, v in recal_err.items()},
        "recalibration_with_fallback_abs_error": {
            "on_requests": recents[0],
            "median": float(np.nanmedian(err_fb)),
            "within_5pct_rate": float(np.mean(err_fb <= 0.05)),
            "fallback_alone_vs_promise": f
            * float(np.mean(w.novelty[w.unseen] >= OOD_NOVELTY))
            * float(w.sc.costs[w.unseen, w.top].mean())
            / w.promise,
        },
    }


def novelty_latency(w: World) -> dict[str, float]:
    """The route-time cost of novelty: scoring one prompt's embedding against the reference."""
    rows = w.sc.embeddings[w.stream[:500]]
    samples = []
    for i in range(2000):
        x = rows[i % len(rows)][None, :]
        start = time.perf_counter_ns()
        w.ref.score(x)
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return summarize_ms(samples)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--shift-at", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="routerbench_subset only, 40 runs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    emb = embedder()
    names = ["routerbench_subset"] if args.quick else list(SHIFTS)
    runs = 40 if args.quick else args.runs
    results: dict[str, Any] = {}
    for name in names:
        t0 = time.time()
        rng = np.random.default_rng(args.seed)
        is_unseen = SHIFTS[name]

        def choose(
            cats: np.ndarray, rng: np.random.Generator = rng, is_unseen: Callable[[str], bool] = is_unseen
        ) -> np.ndarray:
            return np.array([not is_unseen(c) for c in cats]) & (rng.random(len(cats)) < 0.6)

        sc = score_dataset(load_log(name), tiers_of(name), choose, args.seed, emb)
        shifted = np.array([is_unseen(c) for c in sc.categories])
        w = World(sc, shifted, args.seed)
        results[name] = {
            "shift": SHIFT_NAMES[name],
            "n_train": int(sc.train.sum()),
            "n_calibration": len(w.cal),
            "n_stream_pool": len(w.stream),
            "n_unseen_pool": len(w.unseen),
            "novelty_reference": {"n_reference": len(w.ref.reference_), "n_calibration": w.ref.n_calibration},
            "novel_share": {
                "stream_pool": float(np.mean(w.novelty[w.stream] >= OOD_NOVELTY)),
                "unseen_pool": float(np.mean(w.novelty[w.unseen] >= OOD_NOVELTY)),
            },
            "promised_mean_cost_usd": w.promise,
            "lambda0": w.lam0,
            "mean_cost_unshifted_vs_promise": w.mean_cost(w.stream, w.lam0, True) / w.promise - 1,
            "simulations": [
                simulate(w, runs, args.length, args.shift_at, f, RECENTS, args.seed + i)
                for i, f in enumerate((1.0, 0.3))
            ],
            "novelty_latency_one_prompt": novelty_latency(w),
            "seconds": round(time.time() - t0, 1),
        }
        print(json.dumps({name: results[name]["simulations"][0]}, indent=1), flush=True)
    report = {
        "command": "python -m bench.trust_drift" + (" --quick" if args.quick else f" --runs {runs}"),
        "detector": {"window": WINDOW, "z": Z_LIMIT, "min_n": MIN_N, "novelty_limit": OOD_NOVELTY},
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
    det = r["detector"]
    lines = [
        "#### Drift detection and recalibration (bench/trust_drift.py)",
        "",
        f"`{r['command']}`: novelty check on the last {det['window']} decisions after every request, alert at "
        f"z >= {det['z']:g} (from {det['min_n']} decisions); streams of 1,000 requests, the shift after 300. "
        "*quiet* = unshifted streams with no alert (the target is >= 95%); *alert before* = shifted streams that "
        "alerted before the shift; *delay* = requests after the shift until the alert; *cost before* = expected "
        "mean cost at the old λ with the out-of-distribution fallback, against the promise (40% of the top tier's "
        "mean cost); *recalibrated N×r* = λ recalibrated (router/drift.recalibrate: each candidate λ's spend "
        "is the realised cost where it keeps the served tier, else the expected cost scaled by the tier's realised / "
        "expected ratio, novel and familiar prompts apart; fallback off) on N requests of the new traffic served at "
        "the current λ, r rounds in a row: share of runs whose expected mean cost on the new traffic is within 5% of "
        "the promise (mean / p90 |error|); *oracle N* = λ set knowing every tier's realised cost on N requests, the "
        "floor of any method that sees N requests (their sampling noise).",
        "",
        "| dataset | shift | unseen share | quiet (unshifted) | fired | alert before | delay median / p95 / max "
        "| cost before | recalibrated 1000×1 | 1000×3 | 4000×3 | 8000×1 | 8000×3 | 16000×3 | oracle 1000 | oracle 8000 "
        "| novelty p50 (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in r["datasets"].items():
        for s in d["simulations"]:
            dl, rc = s["delay_requests"], s["recalibration_abs_error"]
            recal = " | ".join(
                f"{rc[k]['within_5pct_rate']:.0%} ({rc[k]['mean']:.1%} / {rc[k]['p90']:.1%})"
                for k in ("1000x1", "1000x3", "4000x3", "8000x1", "8000x3", "16000x3", "1000 oracle", "8000 oracle")
            )
            lines.append(
                f"| {name} | {d['shift']} | {s['unseen_share_after_shift']:.0%} | {s['unshifted_quiet_rate']:.1%} "
                f"| {s['shifted_fired_rate']:.1%} | {s['shifted_alert_before_shift']:.1%} "
                f"| {dl['median']:.0f} / {dl['p95']:.0f} / {dl['max']:.0f} "
                f"| {s['mean_cost_before_recalibration_vs_promise']:+.0%} | {recal} "
                f"| {d['novelty_latency_one_prompt']['p50_ms']:.3f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
