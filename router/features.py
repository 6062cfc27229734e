"""Model inputs: the FeatureSpec saved with a model, and featurize (embedding of the prompt's tail + text features)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from router.embedders.protocol import EMBEDDING_DIM, Embedder
from router.embedding_cache import EmbeddingCache, embed_cached
from router.text import TEXT_FEATURE_NAMES, text_features, text_window


class EmbedderMismatch(ValueError):
    """Features were asked for with an embedder other than the one the model was trained with."""


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


def check_embedder(spec: FeatureSpec, embedder: Embedder) -> None:
    """EmbedderMismatch unless `embedder` is the one the model was trained with."""
    if embedder.id != spec.embedder_id:
        raise EmbedderMismatch(
            f"the model was trained with embedder '{spec.embedder_id}' but '{embedder.id}' was given"
        )


def featurize(
    prompts: Sequence[str], spec: FeatureSpec, embedder: Embedder, cache: EmbeddingCache | None = None
) -> np.ndarray:
    """Model inputs for prompts: the embedding of each prompt's tail, plus cheap text features."""
    check_embedder(spec, embedder)
    emb = embed_cached(embedder, [text_window(p, spec.tail_chars) for p in prompts], cache)
    if not spec.text_features:
        return emb
    return np.hstack([emb, text_features(prompts)])
