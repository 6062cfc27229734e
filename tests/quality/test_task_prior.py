"""The guessed task prior on shared data: routerbench_subset with one tier per model (11 tiers), split seed 0.

What it guards: the router `make train` builds blends its boosters with the per-category means of the log's
tasks, weighted by a classifier's guess of each prompt's task (router/task_hint.py). On this log the boosters
alone trailed the task-label prior; the blend must not trail either, and must stay ahead of kNN.

Measured on this test's own split (split_log, seed 0; int8; 2026-11-26): router AIQ minus the
boosters alone +0.0022, minus the task prior +0.0025, minus kNN +0.0191. The suite's random splits of the same log
(`make quality`, "routerbench 11 tiers", seeds 0-2) give +0.010 [+0.005, +0.014], +0.003 [+0.002, +0.008] and
+0.017 [+0.011, +0.023]: the gain over the boosters varies from split to split (+0.002 to +0.013). Each floor is
this split's value less the 0.005 that reseeding LightGBM alone moves an AIQ (AIQ_RESEED_RANGE in
test_int8_equivalence.py), rounded down: the router must not fall behind the boosters or the prior beyond that
noise, and must stay clearly ahead of kNN. The kNN floor takes twice that margin: another CPU's int8 rounding
moves kNN's AIQ as well as the router's, while the other two pairs share the router's features.
"""

from __future__ import annotations

import pytest

from infra.settings import Settings
from router.model import DifficultyModel
from router.schema import load_outcomes, load_tiers
from tests.quality.conftest import CACHE, FLOOR_SPLIT_RULE, OUTCOMES, POOL, ROOT, shared_embedder
from training.data import load_pool_logs, pool_logs, split_log
from training.evaluation import evaluate_artifact
from training.fit import train_router

pytestmark = pytest.mark.quality

PER_MODEL_TIERS = ROOT / "config" / "tiers.per-model.toml"
# AIQ of the router minus each method's, point value (paired, same test prompts): at least this much.
FLOORS = {"boosters alone (no task prior)": -0.003, "task prior": -0.003, "kNN (k=25)": 0.009}


@pytest.fixture(scope="module")
def eleven_tiers():
    from router.embedding_cache import EmbeddingCache
    from router.features import FeatureSpec

    missing = [p for p in (OUTCOMES, *POOL) if not p.is_file()]
    if missing:
        pytest.skip(f"{missing[0]} is missing: run `make data` (quality tests need the shared data)")
    tiers = load_tiers(PER_MODEL_TIERS)
    full = load_outcomes(OUTCOMES)
    split = split_log(load_outcomes(OUTCOMES, tiers), tiers, test_size=0.3, seed=0, rule=FLOOR_SPLIT_RULE)
    pool = pool_logs(full, split, load_pool_logs(POOL), Settings().pool_max_prompts, seed=0)
    embedder = shared_embedder("onnx-int8")
    cache = EmbeddingCache(CACHE / "embeddings.sqlite")
    features = FeatureSpec(embedder_id=embedder.id)
    artifact = train_router(split, embedder, cache, features, DifficultyModel(random_state=0), pool)
    return artifact, evaluate_artifact(artifact, split, embedder, cache, seed=0, n_boot=200)


def test_with_the_guessed_task_prior_the_router_keeps_up_with_the_boosters_and_the_prior_and_beats_knn(eleven_tiers):
    artifact, result = eleven_tiers
    assert artifact.task_prior is not None and artifact.task_prior.classifier is not None
    table = result.table
    gaps = {m: float(table.loc[m, "router_minus_AIQ"]) for m in FLOORS}
    assert all(gaps[m] >= floor for m, floor in FLOORS.items()), gaps
