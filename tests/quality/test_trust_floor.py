"""Floors for novelty and the quality guarantee on the shared RouterBench data (the int8 router of conftest)."""

from __future__ import annotations

from router.embedders.protocol import Embedder
from router.embedding_cache import EmbeddingCache
from tests.quality.conftest import CACHE, Trained
from training.trust import with_trust

EVERYDAY = [
    "What is 2+2?",
    "Bonjour, comment allez-vous ?",
    "Format this as JSON: name Bob, age 3",
    "Summarise in one line: the meeting moved to Tuesday.",
    "Implement a lock-free concurrent hash map in Rust.",
    "Prove that there are infinitely many twin primes.",
    "Plan the refactor of a 20,000-line legacy codebase into services.",
]
# Not among them: "Write a Python function that returns the n-th Fibonacci number." MBPP is in this training log,
# so such a prompt is not out of distribution (measured novelty 0.977).


def test_novelty_and_guarantee_floors(trained_int8: Trained, embedder_int8: Embedder) -> None:
    t = trained_int8
    art = with_trust(t.artifact, t.split, embedder_int8, EmbeddingCache(CACHE / "embeddings.sqlite"), t.result)
    assert art.novelty is not None and art.guarantee is not None
    held_out = art.novelty.score(t.X_test[:, : art.features.embedding_dim])
    # By construction ~1% of held-out prompts reach 0.99. 4% leaves room for the ranks'
    # resolution (~660 calibration prompts) and the binomial spread of ~950 test prompts.
    assert (held_out >= 0.99).mean() < 0.04
    everyday = art.predict_quality_and_novelty(EVERYDAY, embedder_int8)[1]
    assert everyday is not None and (everyday >= 0.99).all()  # measured: all 1.0
    point = art.guarantee.select(0.05, 0.1)
    assert point is not None and point.cost_weight_per_usd is not None
    # Measured (seed 0): calibration loss 0.036 at 47% of the top tier's expected cost.
    assert point.calibration_loss <= 0.05 and point.calibration_cost_share < 0.75
