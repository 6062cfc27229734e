"""The novelty reference and the quality guarantee survive MLflow packaging, and the run reports the guarantee."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from router.embedding_cache import EmbeddingCache
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.schema import parse_tiers
from tests.conftest import TIERS_TOML, HashingEmbedder, make_log
from training import tracking
from training.data import split_log
from training.evaluation import evaluate_artifact
from training.fit import TrainResult, run_params, train_router
from training.trust import trust_metrics, with_trust

NAME = "tierwise-router-trust"


def test_registered_model_carries_novelty_and_guarantee(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", "tierwise-trust")
    log = make_log(400, seed=2)
    emb, tiers = HashingEmbedder(), parse_tiers(TIERS_TOML)
    split = split_log(log, tiers, 0.3, seed=0)
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    features = FeatureSpec(embedder_id=emb.id)
    model = DifficultyModel(n_estimators=40, n_jobs=1)
    artifact = train_router(split, emb, cache, features, model)
    evaluation = evaluate_artifact(artifact, split, emb, cache, seed=0, baselines=False)
    artifact = with_trust(artifact, split, emb, cache, evaluation)
    evaluation.metrics.update(trust_metrics(artifact))
    prompts = split.table.prompts["prompt"][split.test].tolist()
    result = TrainResult(artifact, evaluation, run_params(split, features, model, 0.3, 0), prompts)
    reg = tracking.log_and_register(
        result, NAME, None, prompts, tracking.TrainingLog("generated", str(tmp_path / "o.parquet"), log)
    )
    mlflow.end_run()

    back = tracking.download_artifact(f"models:/{NAME}@{reg.alias}", tmp_path / "download")
    assert back.guarantee == artifact.guarantee and back.guarantee is not None
    assert back.novelty is not None and artifact.novelty is not None
    probe = ["easy question 1: alpha beta", "completely different words about cooking pasta tonight"]
    X = emb.encode(probe)
    assert np.abs(back.novelty.score(X) - artifact.novelty.score(X)).max() <= 0.02
    assert back.novelty.score(X)[1] >= 0.99

    metrics = MlflowClient().get_run(reg.run_id).data.metrics
    n_held = int((split.test & np.isfinite(split.table.scores).all(axis=1)).sum())
    assert metrics["guarantee_n_calibration"] == n_held
    assert (metrics["guarantee_epsilon"], metrics["guarantee_delta"]) == (0.05, 0.1)
    assert metrics["novelty_n_calibration"] > 0
