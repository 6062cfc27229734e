"""Does fitting the static embedder to the teacher (`tierwise build-embedder --fit-on`) close its gap to MiniLM int8?

    python -m bench.static_fit [--only GROUP[,GROUP]] [--boot 200]   # ~15 min with the int8 embeddings cached

Every split of the quality suite (bench/quality.py: routerbench 3 and 11 tiers, llmrouter_dc's split and random
splits, routellm_evals random and cross-benchmark splits, 3 seeds per random split). Only the embedding changes;
the model is the per-tier boosters (DifficultyModel, LightGBM seed = split seed) on embedding + text features:

- "router": MiniLM int8 (the default embedder), the reference every ΔAIQ is paired against;
- "static": the plain distillation `make setup` builds (PCA 256, Zipf-SIF);
- "static fitted, shared prompts but the test split's": fitted on every prompt of the three shared logs except
  this split's test prompts (the fit never sees a test prompt, not even unlabelled);
- "static fitted, other logs only": fitted on the two other logs' prompts (a corpus unlike the traffic);
- "text features only": no embedding.

Writes bench/results/static_fit/quality.{json,md} (the suite's format: AIQ with 95% bootstrap CIs over test
prompts, paired differences against the int8 row).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from bench.common import ONNX_DIR, REPO, machine_info
from bench.quality import (
    N_JOBS,
    POOL_LOGS,
    SplitData,
    build_splits,
    evaluate_split,
    load_dataset,
    split_record,
    write_results,
)
from router.embedders.factory import make_embedder
from router.embedding_cache import EmbeddingCache, embed_cached
from router.model import DifficultyModel
from router.text import normalize_text, text_features, text_window
from training.fit_static import (
    bag_of_pieces,
    base_vectors,
    mean_cosine,
    ridge_to_teacher,
    static_embeddings,
    static_tokenizer,
)

logger = logging.getLogger("bench.static_fit")
TAIL = 700
FITTED_OWN = "static fitted, shared prompts but the test split's"
FITTED_OTHER = "static fitted, other logs only"


class Views:
    """The int8 teacher's vectors (cached), the plain static embedder, and fits on corpora (memoised)."""

    def __init__(self) -> None:
        self.int8 = make_embedder("onnx-int8", ONNX_DIR, num_threads=2)
        self.plain = make_embedder("static", ONNX_DIR)
        self.cache = EmbeddingCache(REPO / ".cache" / "embeddings.sqlite")
        self.tok = static_tokenizer(ONNX_DIR)
        self.W0 = base_vectors(ONNX_DIR, self.tok)
        logs = {n: load_dataset(n).drop_duplicates("prompt_id")["prompt"].tolist() for n in POOL_LOGS}
        self.shared = {n: [(normalize_text(p), text_window(p, TAIL)) for p in ps] for n, ps in logs.items()}
        self._fits: dict[tuple[str, ...], np.ndarray] = {}

    def teacher(self, texts: list[str]) -> np.ndarray:
        return embed_cached(self.int8, texts, self.cache)

    def fit(self, key: tuple[str, ...], texts: list[str]) -> np.ndarray:
        if key not in self._fits:
            t0 = time.perf_counter()
            B = bag_of_pieces(self.tok, texts)
            T = self.teacher(texts)
            self._fits[key] = ridge_to_teacher(B, T, self.W0).astype(np.float16)
            logger.info(
                "  fit %s on %d prompts: %.0f s, cosine to the teacher on them %.3f",
                key[0],
                len(texts),
                time.perf_counter() - t0,
                mean_cosine(B, self._fits[key], T),
            )
        return self._fits[key]

    def encode(self, W: np.ndarray, texts: list[str]) -> np.ndarray:
        return static_embeddings(bag_of_pieces(self.tok, texts), W)

    def for_split(self, sp: SplitData) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Each view's embeddings of the split's prompts, and each fitted view's mean cosine to the teacher on the
        split's test prompts."""
        texts = [text_window(p, TAIL) for p in sp.prompts]
        test_norm = {normalize_text(p) for p, t in zip(sp.prompts, sp.test, strict=True) if t}
        own = sorted({w for pairs in self.shared.values() for n, w in pairs if n not in test_norm})
        other = sorted({w for name, pairs in self.shared.items() if name != sp.source for _, w in pairs})
        T = self.teacher(texts)
        views = {
            "router": T,
            "static": self.plain.encode(texts),
            FITTED_OWN: self.encode(self.fit((FITTED_OWN, sp.group, sp.name), own), texts),
            FITTED_OTHER: self.encode(self.fit((FITTED_OTHER, sp.source), other), texts),
        }
        cos = {
            name: float((views[name][sp.test] * T[sp.test]).sum(axis=1).mean()) for name in (FITTED_OWN, FITTED_OTHER)
        }
        return views, cos


def predictions(sp: SplitData, views: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    tf = text_features(sp.prompts)
    names = [str(j) for j in range(sp.scores.shape[1])]

    def boosters(X: np.ndarray) -> np.ndarray:
        model = DifficultyModel(n_jobs=N_JOBS, random_state=seed)
        return np.asarray(model.fit(X[sp.train], sp.scores[sp.train], names).predict_quality(X[sp.test]))

    preds = {name: boosters(np.hstack([E, tf])) for name, E in views.items()}
    preds["text features only"] = boosters(tf)
    return preds


def run(n_boot: int, out_dir: Path, only: str | None) -> dict[str, Any]:
    t_start = time.perf_counter()
    machine = machine_info()
    threadpool_limits(N_JOBS)
    views = Views()
    wanted = [w.strip() for w in only.split(",")] if only else []
    splits = [s for s in build_splits(False) if not wanted or any(w in s.group for w in wanted)]
    per_split: list[dict[str, Any]] = []
    draws: dict[str, list[dict[str, dict[str, np.ndarray]]]] = {}
    result: dict[str, Any] = {}
    for i, sp in enumerate(splits):
        t0 = time.perf_counter()
        logger.info("[%d/%d] %s %s", i + 1, len(splits), sp.group, sp.name)
        seed = sp.seed
        embeddings, cosines = views.for_split(sp)
        metrics = evaluate_split(sp, predictions(sp, embeddings, seed), n_boot, seed)
        draws.setdefault(sp.group, []).append(metrics)
        record = split_record(sp, metrics, time.perf_counter() - t0)
        record["cosine_to_int8_on_test"] = {k: round(v, 3) for k, v in cosines.items()}
        per_split.append(record)
        result = write_results(per_split, draws, False, n_boot, out_dir, time.perf_counter() - t_start, machine)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boot", type=int, default=200, help="bootstrap draws over test prompts")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "static_fit")
    parser.add_argument("--only", help="run only the split groups whose name contains this text (comma: any of)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    res = run(args.boot, args.out, args.only)
    print(f"wrote {args.out / 'quality.md'} in {res['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
