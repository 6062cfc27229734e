"""What training adds for trust: the novelty reference (train prompts) and the quality guarantee (held-out outcomes)."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from router.artifact import RouterArtifact
from router.embedders.protocol import Embedder
from router.embedding_cache import EmbeddingCache
from router.features import featurize
from router.guarantee import QualityGuarantee
from router.novelty import NoveltyReference
from router.routing import Router
from training.data import Pool, Split
from training.evaluation import EvalResult

logger = logging.getLogger(__name__)

# The guarantee the MLflow run headlines (the model stores the whole grid).
HEADLINE_EPSILON, HEADLINE_DELTA = 0.05, 0.1


def fit_novelty(
    artifact: RouterArtifact,
    split: Split,
    embedder: Embedder,
    cache: EmbeddingCache | None,
    seed: int = 0,
    pool: Pool | None = None,
) -> NoveltyReference:
    """The reference of the training prompts' embeddings (the embedded part of the model's features).

    With a pool (the shared difficulty learned from other logs too), the pooled prompts count as training
    prompts: the model has seen outcomes for them. Only a random sample the reference can use is embedded.
    """
    prompts = pool.prompts if pool is not None else split.table.prompts["prompt"][split.train].tolist()
    ref = NoveltyReference(random_state=seed)
    if len(prompts) > ref.n_reference + ref.max_calibration:
        pick = np.random.default_rng(seed).choice(len(prompts), ref.n_reference + ref.max_calibration, replace=False)
        prompts = [prompts[i] for i in sorted(pick)]
    X = featurize(prompts, artifact.features, embedder, cache)
    return ref.fit(X[:, : artifact.features.embedding_dim])


def fit_guarantee(
    artifact: RouterArtifact,
    split: Split,
    embedder: Embedder,
    cache: EmbeddingCache | None,
    evaluation: EvalResult | None = None,
) -> QualityGuarantee | None:
    """Learn-then-Test operating points on the held-out prompts with every tier's outcome; None if there are none.

    Reuses the evaluation's test predictions when they cover the same prompts, else scores them again.
    """
    table = split.table
    sel = split.test & table.complete
    if not sel.any():
        logger.warning("no held-out prompt has every tier's outcome: the model carries no quality guarantee")
        return None
    prompts = table.prompts["prompt"][sel].tolist()
    router = Router(artifact, embedder=embedder, cache=cache)
    pred = evaluation.test_pred if evaluation is not None else None
    if pred is None or len(pred) != len(prompts):
        pred = router.predict_quality(prompts)
    return QualityGuarantee.fit(pred, router.expected_cost(prompts), table.scores[sel])


def with_trust(
    artifact: RouterArtifact,
    split: Split,
    embedder: Embedder,
    cache: EmbeddingCache | None,
    evaluation: EvalResult | None = None,
    seed: int = 0,
    pool: Pool | None = None,
) -> RouterArtifact:
    """The artifact with its novelty reference and quality guarantee attached."""
    return replace(
        artifact,
        novelty=fit_novelty(artifact, split, embedder, cache, seed, pool),
        guarantee=fit_guarantee(artifact, split, embedder, cache, evaluation),
    )


def trust_metrics(artifact: RouterArtifact) -> dict[str, float]:
    """The headline guarantee and the novelty reference's size, for the MLflow run."""
    out: dict[str, float] = {}
    if artifact.novelty is not None:
        out["novelty_n_reference"] = float(len(artifact.novelty.reference_))
        out["novelty_n_calibration"] = float(artifact.novelty.n_calibration)
    point = artifact.guarantee.select(HEADLINE_EPSILON, HEADLINE_DELTA) if artifact.guarantee else None
    if point is not None:
        out["guarantee_epsilon"], out["guarantee_delta"] = point.epsilon, point.delta
        out["guarantee_n_calibration"] = float(point.n_calibration)
        out["guarantee_calibration_loss"] = point.calibration_loss
        out["guarantee_cost_share_of_top"] = point.calibration_cost_share
        out["guarantee_always_top"] = float(point.cost_weight_per_usd is None)
        if point.cost_weight_per_usd is not None:
            out["guarantee_cost_weight_per_usd"] = point.cost_weight_per_usd
    return out
