"""The benchmarks' shared view of the outcome log: the seed-0 split, its prompts, embedded windows and cache."""

from __future__ import annotations

from dataclasses import dataclass

from bench.common import REPO
from infra.settings import Settings
from router.embedding_cache import EmbeddingCache
from router.features import FeatureSpec
from router.schema import load_outcomes, load_tiers
from router.text import text_window
from training.data import Split, split_log


@dataclass(frozen=True)
class BenchSplit:
    split: Split
    prompts: list[str]
    texts: list[str]  # the embedded window of each prompt (the default tail_chars)
    cache: EmbeddingCache


def load_bench_split(settings: Settings) -> BenchSplit:
    """The configured outcome log split 70/30 with seed 0, as `make train` splits it."""
    tiers = load_tiers(REPO / settings.tiers_path)
    split = split_log(load_outcomes(REPO / settings.outcomes_path, tiers), tiers, test_size=0.3, seed=0)
    prompts = split.table.prompts["prompt"].tolist()
    texts = [text_window(p, FeatureSpec(embedder_id="").tail_chars) for p in prompts]
    return BenchSplit(split, prompts, texts, EmbeddingCache(REPO / settings.cache_dir / "embeddings.sqlite"))
