"""A static embedder: one vector per word piece, distilled from the bundled MiniLM; encoding is a lookup and a mean.

Built by `training/distill_static.py` (Model2Vec's recipe: every vocabulary token through the teacher, PCA,
Zipf-SIF weights). Needs numpy and tokenizers only: no ONNX Runtime session, no torch.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from tokenizers import Tokenizer

VECTORS_FILE = "static-vectors.npy"
META_FILE = "static-meta.json"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1
# Up to this many texts are summed by gathering their rows; more by one sparse product (bulk routing).
SMALL_BATCH = 8
MAX_TOKENS = 512  # a text's first this many word pieces are embedded


class StaleStaticFile(RuntimeError):
    """The static vectors on disk were built by another recipe or format than this code reads."""


def static_tokenizer(directory: Path) -> Tokenizer:
    """The word-piece tokenizer of a static build as the embedder reads it (no padding, no truncation: the embedder
    cuts at its own max_tokens); training/fit_static.py fits on the same pieces."""
    tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def text_pieces(tokenizer: Tokenizer, texts: Sequence[str], max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    """Each text's word-piece ids as the static embedder sums them: no special tokens, the first `max_tokens`.
    (`encode_batch_fast`: the same ids without the character offsets, which nothing here reads: ~20% less time
    for one short prompt, ~12% for a batch of long ones.)"""
    return [e.ids[:max_tokens] for e in tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]


class StaticEmbedder:
    """Mean of the (SIF-weighted) static vectors of a text's word pieces, L2-normalised; loaded on first encode."""

    def __init__(self, directory: Path, max_tokens: int = MAX_TOKENS):
        self.directory = Path(directory)
        self.max_tokens = max_tokens
        self._vectors: np.ndarray | None = None
        self._tokenizer: Tokenizer | None = None
        self._meta: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _read_meta(self) -> dict[str, Any]:
        if self._meta is None:
            path = self.directory / META_FILE
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing; build the static embedder with `make setup`")
            meta = json.loads(path.read_text())
            if meta.get("format_version") != FORMAT_VERSION:
                raise StaleStaticFile(
                    f"{path}: static embedder format {meta.get('format_version')} is not {FORMAT_VERSION}; "
                    "rebuild it with `make setup`"
                )
            self._meta = meta
        return self._meta

    @property
    def id(self) -> str:
        meta = self._read_meta()
        return f"{meta['teacher']}:static+{meta['recipe']}"

    @property
    def dim(self) -> int:
        return int(self._read_meta()["dim"])

    def _load(self) -> tuple[np.ndarray, Tokenizer]:
        with self._lock:
            if self._vectors is None or self._tokenizer is None:
                self._read_meta()
                tokenizer = static_tokenizer(self.directory)
                vectors = np.load(self.directory / VECTORS_FILE).astype(np.float32)
                if vectors.shape[0] < tokenizer.get_vocab_size():
                    raise StaleStaticFile(f"{self.directory}: {vectors.shape[0]} vectors for a larger vocabulary")
                self._tokenizer, self._vectors = tokenizer, vectors
        return self._vectors, self._tokenizer

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return an (n, dim) float32 array of unit vectors, one per text, in input order."""
        vectors, tokenizer = (
            (self._vectors, self._tokenizer)
            if self._vectors is not None and self._tokenizer is not None
            else self._load()
        )
        out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        if not texts:
            return out
        ids = text_pieces(tokenizer, texts, self.max_tokens)
        lengths = np.array([len(i) for i in ids])
        have = lengths > 0
        if have.any():
            if len(ids) <= SMALL_BATCH:
                # A few texts (one /route): a gather and a row-by-row sum, the same additions in the same order
                # as the sparse product below, without its ~0.07 ms of scipy set-up.
                sums = np.zeros_like(out)
                for k, i in enumerate(ids):
                    if i:
                        sums[k] = vectors[i].sum(axis=0)
            else:
                # Sum each text's vectors as a sparse (texts x vocabulary) count matrix times the vectors: no
                # (tokens x dim) gather, ~100x faster than a gather + reduceat on a batch of long prompts.
                flat = np.concatenate([np.asarray(i, dtype=np.int64) for i in ids if i])
                indptr = np.concatenate([[0], np.cumsum(lengths)])
                shape = (len(ids), vectors.shape[0])
                sums = np.asarray(csr_matrix((np.ones(len(flat), dtype=np.float32), flat, indptr), shape) @ vectors)
            out[have] = sums[have] / lengths[have, None]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.asarray(np.divide(out, norms, out=out, where=norms > 0), dtype=np.float32)
