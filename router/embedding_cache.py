"""On-disk embedding cache: retraining never re-embeds a prompt it has seen."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router.embedders.protocol import Embedder

logger = logging.getLogger(__name__)


class EmbeddingCache:
    """SQLite file of vectors keyed by sha256(embedder id + text)."""

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
