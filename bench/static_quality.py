"""Does the static embedder route as well as MiniLM int8? Only the embedding changes; model, features, policy don't.

    python -m bench.static_quality      # a few minutes warm (int8 vectors cached), ~10 cold

- routerbench_subset (config/tiers.toml), 5 split seeds: int8 vs static vs text features alone.
- llmrouter_dc (every model a tier), its own split minus the test texts that also occur in train, 3 model seeds.
- A tokenlearn-style fit of the static vectors to the teacher on llmrouter_dc's train prompts (training/fit_static:
  ridge towards the distilled vectors, conjugate gradients): what fitting to the log's own prompts buys. Every
  group of the suite, and fits on other logs: bench/static_fit.py.
Writes bench/results/static_quality.json.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from bench.common import ONNX_DIR, REPO, machine_info, write_json
from router import evaluate as ev
from router.artifact import RouterArtifact, estimate_tokens_out
from router.embedders.factory import make_embedder
from router.embedding_cache import EmbeddingCache, embed_cached
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.schema import TiersConfig, load_outcomes, load_tiers
from router.text import normalize_text, text_features, text_window
from training.data import PromptTable, pivot_log, split_log
from training.fit_static import bag_of_pieces, base_vectors, ridge_to_teacher, static_embeddings, static_tokenizer

CACHE = EmbeddingCache(REPO / ".cache" / "embeddings.sqlite")


def _aiq(
    X: np.ndarray,
    table: PromptTable,
    train: np.ndarray,
    test: np.ndarray,
    tiers: TiersConfig,
    log: pd.DataFrame,
    seed: int,
) -> float:
    S, C = table.scores, table.costs
    comp = np.isfinite(S[test]).all(1) & np.isfinite(C[test]).all(1)
    St, Ct = S[test][comp], C[test][comp]
    model = DifficultyModel(random_state=seed, n_jobs=1).fit(X[train], S[train], tiers.names)
    art = RouterArtifact(model, FeatureSpec(embedder_id=""), tiers, estimate_tokens_out(log, tiers))
    prompts = [p for p, t in zip(table.prompts["prompt"], test, strict=True) if t]
    pred_cost = art.expected_cost(prompts)[comp]
    curve = ev.sweep_lambdas(model.predict_quality(X[test])[comp], pred_cost, St, Ct)
    return ev.aiq(curve, float(Ct[:, int(np.argmax(Ct.mean(0)))].mean()))


def _views(prompts: list[str]) -> dict[str, np.ndarray]:
    texts = [text_window(p, 700) for p in prompts]
    tf = text_features(prompts)
    return {
        "onnx-int8": np.hstack([embed_cached(make_embedder("onnx-int8", ONNX_DIR), texts, CACHE), tf]),
        "static": np.hstack([make_embedder("static", ONNX_DIR).encode(texts), tf]),
        "text features only": tf,
    }


def routerbench() -> dict[str, Any]:
    tiers = load_tiers(REPO / "config" / "tiers.toml")
    log = load_outcomes(REPO / "data" / "routerbench_subset" / "outcomes.parquet", tiers)
    out: dict[str, list[float]] = {}
    for seed in range(5):
        split = split_log(log, tiers, 0.3, seed)
        for name, X in _views(split.table.prompts["prompt"].tolist()).items():
            out.setdefault(name, []).append(_aiq(X, split.table, split.train, split.test, tiers, split.log, 0))
    return _summary(out, "split seeds 0-4, LightGBM seed 0")


def _llmrouter() -> tuple[TiersConfig, pd.DataFrame, PromptTable, np.ndarray, np.ndarray]:
    tiers = load_tiers(REPO / "config" / "tiers.llmrouter_dc.toml")
    path = REPO / "data" / "llmrouter_dc" / "outcomes.parquet"
    log = load_outcomes(path, tiers)
    split_of = pd.read_parquet(path, columns=["prompt_id", "split"]).drop_duplicates("prompt_id").set_index("prompt_id")
    table = pivot_log(log, tiers)
    test = (table.prompts["prompt_id"].map(split_of["split"]) == "test").to_numpy()
    norm = table.prompts["prompt"].map(normalize_text)
    train = ~test & ~norm.isin(set(norm[test])).to_numpy()
    return tiers, log, table, train, test


def llmrouter() -> dict[str, Any]:
    tiers, log, table, train, test = _llmrouter()
    out: dict[str, list[float]] = {}
    views = _views(table.prompts["prompt"].tolist())
    views["static fitted to the teacher"] = np.hstack([fit_to_teacher(table, train), views["text features only"]])
    for name, X in views.items():
        out[name] = [_aiq(X, table, train, test, tiers, log, seed) for seed in range(3)]
    return _summary(out, "its split minus leaking texts, LightGBM seeds 0-2")


def fit_to_teacher(table: PromptTable, train: np.ndarray) -> np.ndarray:
    """Static vectors fitted so a text's token mean matches the int8 teacher on the train prompts (training/fit_static,
    what `tierwise build-embedder --fit-on` does); all texts encoded."""
    tok = static_tokenizer(ONNX_DIR)
    texts = [text_window(p, 700) for p in table.prompts["prompt"]]
    teacher = embed_cached(make_embedder("onnx-int8", ONNX_DIR), texts, CACHE)
    B_all = bag_of_pieces(tok, texts)
    return static_embeddings(B_all, ridge_to_teacher(B_all[train], teacher[train], base_vectors(ONNX_DIR, tok)))


def _summary(out: dict[str, list[float]], how: str) -> dict[str, Any]:
    ref = np.array(out["onnx-int8"])
    return {
        "how": how,
        **{
            name: {
                "AIQ": [round(v, 4) for v in vals],
                "mean": round(float(np.mean(vals)), 4),
                "paired_delta_vs_int8": [round(float(d), 4) for d in np.array(vals) - ref],
            }
            for name, vals in out.items()
        },
    }


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    report = {"machine": machine_info(), "routerbench_subset": routerbench(), "llmrouter_dc": llmrouter()}
    write_json(REPO / "bench" / "results" / "static_quality.json", report)
    for data in ("routerbench_subset", "llmrouter_dc"):
        for name, row in report[data].items():
            if isinstance(row, dict):
                print(f"{data:20s} {name:32s} mean AIQ {row['mean']:.4f}")


if __name__ == "__main__":
    main()
