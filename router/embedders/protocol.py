"""The Embedder protocol and the constants every backend shares (the bundled MiniLM's id and width)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384


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
