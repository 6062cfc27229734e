"""How often int8 features route like torch features, and why 98% is out of reach (issue 5).

    python -m bench.int8_agreement      # about 10 minutes cold (torch and two int8 variants embed 3,164 texts)

On the held-out prompts, the router trained on torch features is fed other features and its decisions are
compared with its decisions on torch features, at knob settings along the whole cost–quality curve:
- onnx-int8 (the shipped embedder: every weight MatMul in int8 but the six FFN outputs) and the plain
  recipe that quantizes all of them (what tierwise shipped first);
- torch features moved a fraction alpha of the way towards int8 (what a more accurate int8 would give);
- a reference: the same router retrained with another seed, on the very same torch features.
Writes bench/results/int8_agreement.json.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ONNX_DIR, REPO, machine_info, write_json
from bench.split import load_bench_split
from infra.settings import Settings
from router import evaluate as ev
from router.artifact import RouterArtifact, estimate_tokens_out
from router.embedders.factory import make_embedder
from router.embedders.onnx import OnnxEmbedder
from router.embedding_cache import embed_cached
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.policy import cheapest_sufficient, tradeoff
from router.text import text_features

logger = logging.getLogger("bench.int8_agreement")


class _Variant(OnnxEmbedder):
    """An int8 ONNX file of our own, with its own id so its vectors have their own cache entries.

    Opened as a plain (unchecked) file, one text per run like the shipped int8 embedder.
    """

    @property
    def id(self) -> str:
        return f"bench:{self.model_file.name}"


def _int8_every_matmul(out: Path) -> Path:
    from router.embedders.onnx import load_onnxruntime

    load_onnxruntime()  # its telemetry off, before it initializes
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = out / "minilm-int8-every-matmul.onnx"
    quantize_dynamic(
        ONNX_DIR / "minilm-fp32.onnx",
        path,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QInt8,
    )
    return path


def _cosine(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = (a * b).sum(axis=1)
    return {
        "mean": round(float(cos.mean()), 5),
        "p1": round(float(np.quantile(cos, 0.01)), 5),
        "min": round(float(cos.min()), 5),
    }


def run() -> dict[str, Any]:
    settings = Settings()
    data = load_bench_split(settings)
    split, prompts, texts, cache = data.split, data.prompts, data.texts, data.cache
    tiers = split.tiers
    tr, te = split.train, split.test
    with tempfile.TemporaryDirectory(prefix="tierwise-int8-") as tmp:
        variant = _Variant(_int8_every_matmul(Path(tmp)), ONNX_DIR / "tokenizer.json", quantized=False, batch_size=1)
        emb = {
            "torch": embed_cached(make_embedder("torch"), texts, cache),
            "onnx-int8": embed_cached(make_embedder("onnx-int8", ONNX_DIR), texts, cache),
            "int8, every MatMul": embed_cached(variant, texts, cache),
        }
    tf = text_features(prompts)

    def features(e: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.hstack([e[rows], tf[rows]])

    scores = split.table.scores
    model = DifficultyModel(random_state=0).fit(features(emb["torch"], tr), scores[tr], tiers.names)
    twin = DifficultyModel(random_state=1).fit(features(emb["torch"], tr), scores[tr], tiers.names)
    costing = RouterArtifact(
        model=model, features=FeatureSpec(embedder_id=""), tiers=tiers, tokens_out=estimate_tokens_out(split.log, tiers)
    )
    cost = costing.expected_cost([p for p, t in zip(prompts, te, strict=True) if t])
    scale = float(np.median(cost))
    rules: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        f"lambda x{m:g}/median cost": (lambda p, m=m: tradeoff(p, cost, m / scale)) for m in (0, 0.01, 0.1, 0.3, 1, 10)
    }
    rules.update({f"quality target {t}": (lambda p, t=t: cheapest_sufficient(p, cost, t)) for t in (0.7, 0.8, 0.9)})
    complete = np.isfinite(scores[te]).all(axis=1) & np.isfinite(split.table.costs[te]).all(axis=1)
    S, C = scores[te][complete], split.table.costs[te][complete]
    top = int(np.argmax(C.mean(axis=0)))
    p_ref = model.predict_quality(features(emb["torch"], te))

    def compare(p: np.ndarray) -> dict[str, Any]:
        same = {name: round(float((rule(p_ref) == rule(p)).mean()), 4) for name, rule in rules.items()}
        curve = ev.sweep_lambdas(p[complete], cost[complete], S, C)
        return {
            "same_tier": same,
            "same_tier_min": min(same.values()),
            "same_tier_mean": round(float(np.mean(list(same.values()))), 4),
            "abs_delta_pred_median": round(float(np.median(np.abs(p - p_ref))), 4),
            "AIQ": round(ev.aiq(curve, float(C[:, top].mean())), 4),
        }

    report: dict[str, Any] = {"machine": machine_info(), "n_test_prompts": int(te.sum())}
    report["torch features (reference)"] = compare(p_ref)
    report["reseeded twin on torch features"] = compare(twin.predict_quality(features(emb["torch"], te)))
    for name in ("onnx-int8", "int8, every MatMul"):
        report[name] = {
            "cosine_to_torch": _cosine(emb[name][te], emb["torch"][te]),
            **compare(model.predict_quality(features(emb[name], te))),
        }
    for alpha in (0.1, 0.25, 0.5):
        moved = emb["torch"] + alpha * (emb["onnx-int8"] - emb["torch"])
        moved /= np.linalg.norm(moved, axis=1, keepdims=True)
        report[f"torch moved {alpha:g} of the way to int8"] = {
            "cosine_to_torch": _cosine(moved[te], emb["torch"][te]),
            **compare(model.predict_quality(features(moved, te))),
        }
    return report


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    report = run()
    write_json(REPO / "bench" / "results" / "int8_agreement.json", report)
    for name, row in report.items():
        if isinstance(row, dict) and "same_tier_min" in row:
            print(
                f"{name:40s} same tier min {row['same_tier_min']:.3f} mean {row['same_tier_mean']:.3f} AIQ {row['AIQ']:.4f}"
            )


if __name__ == "__main__":
    main()
