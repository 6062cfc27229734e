"""Fitting: the difficulty model on the split's train prompts, and the parameters that define a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router.artifact import RouterArtifact, estimate_tokens_out
from router.embedders.protocol import Embedder
from router.embedding_cache import EmbeddingCache
from router.features import FeatureSpec, featurize
from router.model import DifficultyModel
from training.data import Split
from training.evaluation import EvalResult


@dataclass
class TrainResult:
    artifact: RouterArtifact
    evaluation: EvalResult
    params: dict[str, Any]
    test_prompt_ids: list[str]


def train_router(
    split: Split,
    embedder: Embedder,
    cache: EmbeddingCache | None,
    features: FeatureSpec,
    model: DifficultyModel,
) -> RouterArtifact:
    """Fit the difficulty model on the split's train prompts."""
    table = split.table
    X = featurize(table.prompts["prompt"][split.train].tolist(), features, embedder, cache)
    model.fit(X, table.scores[split.train], split.tiers.names)
    return RouterArtifact(
        model=model, features=features, tiers=split.tiers, tokens_out=estimate_tokens_out(split.log, split.tiers)
    )


def run_params(
    split: Split, features: FeatureSpec, model: DifficultyModel, test_size: float, seed: int
) -> dict[str, Any]:
    """Everything that defines a run, for MLflow."""
    return {
        **{f"model.{k}": v for k, v in model.get_params().items()},
        **{f"features.{k}": v for k, v in features.model_dump().items()},
        "tiers": ",".join(f"{t.name}={t.model}" for t in split.tiers.tiers),
        "test_size": test_size,
        "seed": seed,
        "n_prompts": len(split.table.prompts),
        "n_train_prompts": int(split.train.sum()),
        "n_outcomes": len(split.log),
    }
