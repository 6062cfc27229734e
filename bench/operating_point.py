"""Which operating point to store with a model (issue 10 item 4): how each goal holds on new prompts.

For each shared dataset: train the router (DifficultyModel, onnx-int8 tail-700 + text features) on a 70/30 split
by prompt text (seed 0), then 20 times split the held-out prompts in two halves: calibrate λ for a goal on one
half, measure realised quality and cost (as % of the top tier's) on the other. A goal is good as a default when
what it promises on the calibration half holds on the other half, on every dataset. The old default (cheapest
tier reaching the quality target 0.8) is measured beside it.

python -m bench.operating_point    # writes bench/results/operating_point.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from bench.common import REPO, machine_info
from router import evaluate as ev
from router.embedders.factory import make_embedder
from router.embedding_cache import EmbeddingCache
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.policy import cheapest_sufficient, tradeoff
from router.routing import Router
from router.schema import load_outcomes, load_tiers
from training.data import split_log
from training.evaluation import KnobGoal, calibrate_default_knob
from training.fit import train_router

DATASETS = {
    "routerbench_subset": "config/tiers.toml",
    "llmrouter_dc": "config/tiers.llmrouter_dc.toml",
    "routellm_evals": "config/tiers.routellm_evals.toml",
}
GOALS = [KnobGoal("quality", 0.95), KnobGoal("quality", 0.9), KnobGoal("cost", 0.5), KnobGoal("cost", 0.3)]
OLD_DEFAULT_TARGET = 0.8
HALVINGS = 20


def measure(name: str, tiers_path: str) -> dict[str, Any]:
    tiers = load_tiers(REPO / tiers_path)
    split = split_log(load_outcomes(REPO / "data" / name / "outcomes.parquet", tiers), tiers, 0.3, 0)
    emb = make_embedder("onnx-int8", onnx_dir=REPO / ".cache" / "onnx")
    cache = EmbeddingCache(REPO / ".cache" / "embeddings.sqlite")
    art = train_router(split, emb, cache, FeatureSpec(embedder_id=emb.id), DifficultyModel(n_jobs=1, random_state=0))
    sel = split.test & split.table.complete
    prompts = split.table.prompts["prompt"][sel].tolist()
    P, PC = Router(art, embedder=emb, cache=cache).score(prompts)
    S, C = split.table.scores[sel], split.table.costs[sel]
    top = int(np.argmax(C.mean(axis=0)))
    rng = np.random.default_rng(0)
    rows: dict[str, list[tuple[float, float, float, float]]] = {str(g): [] for g in GOALS}
    rows["old default: quality target 0.8"] = []
    for _ in range(HALVINGS):
        a = rng.permutation(len(S)) < len(S) // 2
        b = ~a
        tq_b, tc_b = float(S[b, top].mean()), float(C[b, top].mean())
        tq_a, tc_a = float(S[a, top].mean()), float(C[a, top].mean())
        for g in GOALS:
            knob = calibrate_default_knob(
                art, [p for p, m in zip(prompts, a, strict=True) if m], P[a], PC[a], S[a], C[a], g
            )
            lam = knob.cost_weight / art.reference_cost_usd(knob.reference_tokens_in)
            cb, qb = ev.realised(tradeoff(P[b], PC[b], lam), S[b], C[b])
            rows[str(g)].append((knob.realised_quality / tq_a, knob.realised_cost_usd / tc_a, qb / tq_b, cb / tc_b))
        cb, qb = ev.realised(cheapest_sufficient(P[b], PC[b], OLD_DEFAULT_TARGET), S[b], C[b])
        ca, qa = ev.realised(cheapest_sufficient(P[a], PC[a], OLD_DEFAULT_TARGET), S[a], C[a])
        rows["old default: quality target 0.8"].append((qa / tq_a, ca / tc_a, qb / tq_b, cb / tc_b))
    out: dict[str, Any] = {"n_test_prompts": int(sel.sum()), "n_tiers": len(tiers.tiers), "goals": {}}
    for goal, vals in rows.items():
        arr = np.array(vals) * 100
        out["goals"][goal] = {
            "calibration_half_quality_pct_of_top": round(float(arr[:, 0].mean()), 2),
            "calibration_half_cost_pct_of_top": round(float(arr[:, 1].mean()), 2),
            "other_half_quality_pct_of_top": [round(float(arr[:, 2].mean()), 2), round(float(arr[:, 2].std()), 2)],
            "other_half_cost_pct_of_top": [round(float(arr[:, 3].mean()), 2), round(float(arr[:, 3].std()), 2)],
        }
    return out


def main() -> None:
    threadpool_limits(1)
    t0 = time.perf_counter()
    result = {
        "machine": machine_info(),
        "halvings": HALVINGS,
        "note": "mean [and sd] over halvings of the held-out prompts; % of the top tier's quality / cost on each half",
        "datasets": {name: measure(name, tiers) for name, tiers in DATASETS.items()},
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    path = Path(REPO / "bench" / "results" / "operating_point.json")
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["datasets"], indent=1))


if __name__ == "__main__":
    main()
