"""Fit the static embedder to its teacher on your own prompts (tokenlearn-style): `tierwise build-embedder --fit-on`.

The distilled static vectors (training/distill_static.py) see each word piece alone, as `[CLS] token [SEP]`; the
teacher sees it in context. This fits one vector per word piece so that a text's mean of them matches the int8
teacher's embedding of that text, on a corpus of prompts:

    minimise ||B W - T||^2 + alpha ||W - W0||^2

B (texts x vocabulary) holds each text's word-piece frequencies (its mean), T the teacher's unit embeddings (the
same `text_window` of the prompt the router's features embed), W0 the distilled per-token vectors before PCA (384
dimensions, Zipf-SIF weighted, scaled to T by least squares). Solved by conjugate gradients, all dimensions at
once. Word pieces the corpus never shows keep their distilled vector; the ridge keeps rare ones near it.

What it buys (make static-fit, bench/results/static_fit/): fitted on prompts like the test traffic, the
static embedder routes within the noise of MiniLM int8 where the plain distillation fell short; fitted on other
logs' prompts it routes like the plain one. So fit it on prompts like the traffic it will route.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from tokenizers import Tokenizer

from router.embedders.protocol import MINILM_ID, Embedder
from router.embedders.static import FORMAT_VERSION, META_FILE, VECTORS_FILE, static_tokenizer, text_pieces
from router.embedding_cache import EmbeddingCache, embed_cached
from router.text import text_window
from training.distill_static import FITTED_RECIPE_PREFIX, teacher_token_vectors, zipf_sif_weights

logger = logging.getLogger(__name__)

ALPHA = 1e-2
"""Ridge strength toward the distilled vectors (per word piece, in units of the mean-pooled squared error)."""
ITERATIONS = 60
MIN_PROMPTS = 50
MAX_PROMPTS = 50_000
"""A larger corpus is sampled down to this many distinct prompts (memory: the teacher's vectors and the bag of
pieces; time: the teacher embeds each once, ~2-3 minutes for 50,000 on 2 cores)."""


def fitted_recipe(corpus_digest: str) -> str:
    """The recipe of a fitted build, named by its corpus so two fits on different prompts never mix."""
    return f"{FITTED_RECIPE_PREFIX}{corpus_digest}"


def corpus_digest(texts: Sequence[str]) -> str:
    """12 hex digits of a hash of the corpus (its distinct texts, sorted)."""
    h = hashlib.sha256()
    for t in sorted(set(texts)):
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def base_vectors(onnx_dir: Path, tokenizer: Tokenizer) -> np.ndarray:
    """The fit's starting point: every word piece through the fp32 teacher, Zipf-SIF weighted, before PCA."""
    W0 = teacher_token_vectors(onnx_dir / "minilm-fp32.onnx", tokenizer)
    return np.asarray(W0 * zipf_sif_weights(len(W0))[:, None], dtype=np.float32)


def bag_of_pieces(tokenizer: Tokenizer, texts: Sequence[str]) -> sp.csr_matrix:
    """(texts x vocabulary) word-piece frequencies of each text (rows sum to 1; an empty text's row is empty)."""
    ids = text_pieces(tokenizer, texts)
    lengths = np.array([len(i) for i in ids])
    cols = np.concatenate([np.asarray(i, dtype=np.int64) for i in ids]) if lengths.sum() else np.zeros(0, np.int64)
    vals = np.repeat(1.0 / np.maximum(lengths, 1), lengths)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    return sp.csr_matrix((vals, cols, indptr), shape=(len(ids), tokenizer.get_vocab_size()))


def ridge_to_teacher(
    B: sp.csr_matrix, T: np.ndarray, W0: np.ndarray, alpha: float = ALPHA, iterations: int = ITERATIONS
) -> np.ndarray:
    """argmin_W ||B W - T||^2 + alpha ||W - W0||^2 by conjugate gradients (every column at once)."""
    W0 = np.asarray(W0, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    BW0 = B @ W0
    scale = float((BW0 * T).sum() / max(float((BW0**2).sum()), 1e-30))  # W0 on the teacher's scale
    W0 = W0 * scale

    def normal(X: np.ndarray) -> np.ndarray:
        return np.asarray(B.T @ (B @ X) + alpha * X)

    X = W0.copy()
    r = np.asarray(B.T @ T) + alpha * W0 - normal(X)
    p, rr = r.copy(), (r * r).sum(axis=0)
    for _ in range(iterations):
        Ap = normal(p)
        step = rr / np.maximum((p * Ap).sum(axis=0), 1e-30)
        X += p * step
        r -= Ap * step
        rn = (r * r).sum(axis=0)
        p, rr = r + p * (rn / np.maximum(rr, 1e-30)), rn
    return np.asarray(X, dtype=np.float32)


def corpus_texts(prompts: Iterable[str], tail_chars: int | None = 700, max_prompts: int = MAX_PROMPTS) -> list[str]:
    """The distinct texts a fit embeds (each prompt's `text_window`, as the router's features embed it), sorted.

    Streams its input in bounded memory: beyond `max_prompts` distinct texts it keeps the `max_prompts` whose hash
    is smallest (a bottom-k sample: the same texts whatever the input's order or length).
    """
    heap: list[tuple[int, str]] = []  # (-hash, text): the largest kept hash on top
    kept: set[str] = set()
    for prompt in prompts:
        if not prompt or not prompt.strip():
            continue
        text = text_window(prompt, tail_chars)
        if text in kept:
            continue
        h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
        if len(heap) < max_prompts:
            heapq.heappush(heap, (-h, text))
            kept.add(text)
        elif h < -heap[0][0]:
            _, dropped = heapq.heapreplace(heap, (-h, text))
            kept.discard(dropped)
            kept.add(text)
    if len(kept) < MIN_PROMPTS:
        raise ValueError(f"fitting the static embedder needs at least {MIN_PROMPTS} distinct prompts, got {len(kept)}")
    return sorted(kept)


def fit_static(
    onnx_dir: Path, texts: Sequence[str], teacher: Embedder, cache: EmbeddingCache | None = None
) -> dict[str, Any]:
    """Overwrite the static embedder in `onnx_dir` with vectors fitted to `teacher` on `texts` (`corpus_texts`);
    returns the new build's meta."""
    tokenizer = static_tokenizer(onnx_dir)
    logger.info("embedding %d prompts with the teacher (%s)", len(texts), teacher.id)
    T = embed_cached(teacher, list(texts), cache)
    logger.info(
        "distilled vectors as the starting point: %d word pieces through the fp32 teacher", tokenizer.get_vocab_size()
    )
    B = bag_of_pieces(tokenizer, texts)
    W = ridge_to_teacher(B, T, base_vectors(onnx_dir, tokenizer)).astype(np.float16)
    cosine = round(mean_cosine(B, W, T), 4)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "teacher": MINILM_ID,
        "recipe": fitted_recipe(corpus_digest(texts)),
        "dim": int(W.shape[1]),
        "fit": {
            "prompts": len(texts),
            "teacher": teacher.id,
            "alpha": ALPHA,
            "iterations": ITERATIONS,
            "mean_cosine_to_teacher_on_corpus": cosine,
        },
    }
    # Vectors first, then the meta that names them; each replaced whole, so a reader never sees half a file.
    tmp = onnx_dir / f".{VECTORS_FILE}.tmp.npy"
    np.save(tmp, W)
    os.replace(tmp, onnx_dir / VECTORS_FILE)
    tmp_meta = onnx_dir / f".{META_FILE}.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, onnx_dir / META_FILE)
    logger.info(
        "static embedder fitted on %d prompts: %s (mean cosine to the teacher %.3f)",
        len(texts),
        meta["recipe"],
        cosine,
    )
    return meta


def static_embeddings(B: sp.csr_matrix, W: np.ndarray) -> np.ndarray:
    """Unit rows of B @ W: the texts of a bag of pieces embedded with static vectors W, as StaticEmbedder does."""
    E = np.asarray(B @ np.asarray(W, dtype=np.float32))
    return np.asarray(E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12), dtype=np.float32)


def mean_cosine(B: sp.csr_matrix, W: np.ndarray, T: np.ndarray) -> float:
    """Mean cosine between each text's static embedding (its row of B times W) and the teacher's (rows of T)."""
    Tn = T / np.maximum(np.linalg.norm(T, axis=1, keepdims=True), 1e-12)
    return float((static_embeddings(B, W) * Tn).sum(axis=1).mean())
