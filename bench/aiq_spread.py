"""How much the router's AIQ moves when only the LightGBM seed changes, on torch and on int8 features.

    python -m bench.aiq_spread      # ~10 minutes cold (torch embeds 3,164 texts), ~2 minutes warm

The int8 quality test asserts that int8 is not worse than torch by more than this spread: int8 numerics
differ from CPU to CPU (AVX2 vs AVX-512 VNNI), so a two-sided bound from one machine's run is no bound.
Writes bench/results/aiq_spread.json.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from bench.common import ONNX_DIR, REPO, machine_info, write_json
from bench.split import load_bench_split
from infra.settings import Settings
from router import evaluate as ev
from router.artifact import RouterArtifact, estimate_tokens_out
from router.embedders.factory import make_embedder
from router.embedding_cache import embed_cached
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.text import text_features

SEEDS = tuple(range(10))


def run() -> dict[str, Any]:
    settings = Settings()
    data = load_bench_split(settings)
    split, prompts, texts, cache = data.split, data.prompts, data.texts, data.cache
    tiers = split.tiers
    tf = text_features(prompts)
    tr, te = split.train, split.test
    scores, costs = split.table.scores, split.table.costs
    complete = np.isfinite(scores[te]).all(axis=1) & np.isfinite(costs[te]).all(axis=1)
    S, C = scores[te][complete], costs[te][complete]
    top = int(np.argmax(C.mean(axis=0)))
    test_prompts = [p for p, t in zip(prompts, te, strict=True) if t]
    tokens_out = estimate_tokens_out(split.log, tiers)
    report: dict[str, Any] = {"machine": machine_info(), "n_test_prompts": int(complete.sum()), "seeds": list(SEEDS)}
    for backend in ("torch", "onnx-int8"):
        emb = embed_cached(make_embedder(backend, ONNX_DIR), texts, cache)
        X = np.hstack([emb, tf])
        aiqs = []
        for seed in SEEDS:
            model = DifficultyModel(random_state=seed).fit(X[tr], scores[tr], tiers.names)
            pred = model.predict_quality(X[te])[complete]
            costing = RouterArtifact(model, FeatureSpec(embedder_id=""), tiers, tokens_out)
            pred_cost = costing.expected_cost(test_prompts)[complete]
            aiqs.append(ev.aiq(ev.sweep_lambdas(pred, pred_cost, S, C), float(C[:, top].mean())))
        a = np.array(aiqs)
        report[backend] = {
            "AIQ": [round(float(v), 5) for v in a],
            "mean": round(float(a.mean()), 5),
            "std": round(float(a.std(ddof=1)), 5),
            "range": round(float(a.max() - a.min()), 5),
        }
    report["int8_minus_torch_mean"] = round(report["onnx-int8"]["mean"] - report["torch"]["mean"], 5)
    return report


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    report = run()
    write_json(REPO / "bench" / "results" / "aiq_spread.json", report)
    for backend in ("torch", "onnx-int8"):
        r = report[backend]
        print(f"{backend:10s} AIQ mean {r['mean']:.4f} std {r['std']:.4f} range {r['range']:.4f}")
    print(f"int8 - torch (means): {report['int8_minus_torch_mean']:+.4f}")


if __name__ == "__main__":
    main()
