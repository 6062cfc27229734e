"""Training with a shared-difficulty pool that holds only the log's own prompts (the pooled logs are missing, as
when `tierwise train` runs outside the checkout): the shared difficulty is fitted on them alone, no crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from router.embedding_cache import EmbeddingCache
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.schema import parse_tiers
from tests.conftest import TIERS_TOML, HashingEmbedder, make_log
from training.data import pool_logs, split_log
from training.fit import MIN_POOL_PROMPTS, train_router


def test_a_pool_of_the_logs_own_prompts_trains(tmp_path: Path) -> None:
    log = make_log(400, seed=3)
    emb, tiers = HashingEmbedder(), parse_tiers(TIERS_TOML)
    split = split_log(log, tiers, 0.3, seed=0)
    pool = pool_logs(split.log, split, [], 3000, seed=0)
    assert len(pool.prompts) == pool.n_train >= MIN_POOL_PROMPTS  # the case: nothing beyond the train prompts
    artifact = train_router(
        split,
        emb,
        EmbeddingCache(tmp_path / "emb.sqlite"),
        FeatureSpec(embedder_id=emb.id),
        DifficultyModel(n_estimators=20, n_jobs=1),
        pool,
    )
    quality = artifact.predict_quality(split.table.prompts["prompt"][split.test].tolist(), emb)
    assert quality.shape == (int(split.test.sum()), len(tiers.names)) and np.isfinite(quality).all()
