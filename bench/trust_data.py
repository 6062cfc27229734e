"""Shared data for the trust simulations: a shared dataset scored by a router trained on chosen prompts.

The router is tierwise's own (train_router on the int8 ONNX embedder's features, the default DifficultyModel);
embeddings come from .cache/trust-embeddings.sqlite, so a rerun embeds nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import ONNX_DIR, REPO
from router.artifact import RouterArtifact
from router.embedders.factory import make_embedder
from router.embedders.protocol import Embedder
from router.embedding_cache import EmbeddingCache
from router.features import FeatureSpec, featurize
from router.model import DifficultyModel
from router.schema import TiersConfig, load_tiers
from training.data import Split, pivot_log
from training.fit import train_router

logger = logging.getLogger(__name__)

CACHE = REPO / ".cache" / "trust-embeddings.sqlite"
TIERS = {
    "routerbench_subset": REPO / "config" / "tiers.toml",
    "llmrouter_dc": REPO / "config" / "tiers.llmrouter_dc.toml",
    "routellm_evals": REPO / "config" / "tiers.routellm_evals.toml",
}


@dataclass
class Scored:
    """Prompts with every tier's outcome, and what a router trained on `train` predicts for each."""

    prompts: list[str]
    categories: np.ndarray
    train: np.ndarray  # the prompts the router (and its novelty reference) was fitted on
    pred: np.ndarray  # (n, k) predicted quality
    cost: np.ndarray  # (n, k) expected cost (what the router decides with)
    scores: np.ndarray  # (n, k) realised scores
    costs: np.ndarray  # (n, k) realised costs
    embeddings: np.ndarray  # (n, d) the embedded part of the features
    artifact: RouterArtifact

    def take(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.pred[idx], self.cost[idx], self.scores[idx], self.costs[idx]


def embedder() -> Embedder:
    return make_embedder("onnx-int8", onnx_dir=ONNX_DIR, num_threads=1)


def load_log(name: str, max_prompts: int | None = None, seed: int = 0) -> pd.DataFrame:
    """A shared dataset's outcome log (data/<name>/outcomes.parquet), optionally a random subset of its prompts."""
    log = pd.read_parquet(REPO / "data" / name / "outcomes.parquet")
    if max_prompts is not None:
        ids = log["prompt_id"].drop_duplicates()
        if len(ids) > max_prompts:
            keep = set(ids.sample(n=max_prompts, random_state=seed))
            log = log[log["prompt_id"].isin(keep)]
    return log


def score_dataset(
    log: pd.DataFrame, tiers: TiersConfig, choose_train: Callable[[np.ndarray], np.ndarray], seed: int, emb: Embedder
) -> Scored:
    """Train a router on the complete prompts `choose_train(categories)` marks, then score every complete prompt."""
    table = pivot_log(log[log["model"].isin([t.model for t in tiers.tiers])], tiers)
    complete = table.complete
    prompts = table.prompts["prompt"][complete].tolist()
    cats = table.prompts["category"].to_numpy()[complete]
    train = np.asarray(choose_train(cats), dtype=bool)
    cache = EmbeddingCache(CACHE)
    features = FeatureSpec(embedder_id=emb.id, embedding_dim=emb.dim)
    X = featurize(prompts, features, emb, cache)
    sub = Split(
        table=type(table)(
            prompts=table.prompts[complete].reset_index(drop=True),
            scores=table.scores[complete],
            costs=table.costs[complete],
            model_scores=table.model_scores[complete],
            model_costs=table.model_costs[complete],
        ),
        train=train,
        test=~train,
        # Only the training prompts' rows: the artifact's output-token estimates come from them, as in training.
        log=log[log["prompt_id"].isin(set(table.prompts["prompt_id"][complete][train]))],
        tiers=tiers,
    )
    artifact = train_router(sub, emb, cache, features, DifficultyModel(random_state=seed))
    return Scored(
        prompts=prompts,
        categories=cats,
        train=train,
        pred=artifact.model.predict_quality(X),
        cost=artifact.expected_cost(prompts),
        scores=table.scores[complete],
        costs=table.costs[complete],
        embeddings=X[:, : emb.dim],
        artifact=artifact,
    )


def tiers_of(name: str) -> TiersConfig:
    return load_tiers(Path(TIERS[name]))
