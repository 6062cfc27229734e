"""The evaluation tables: JSON round trip, and the README's block is the command's output, not typed by hand."""

from __future__ import annotations

import json
from pathlib import Path

from router.embedding_cache import EmbeddingCache
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.schema import parse_tiers
from tests.conftest import TIERS_TOML, HashingEmbedder, make_log
from training.data import split_log
from training.evaluation import evaluate_artifact
from training.fit import train_router
from training.report import BEGIN, END, format_table, readme_block, result_from_json, result_to_json, write_readme

ROOT = Path(__file__).resolve().parents[2]


def test_tables_survive_the_json_round_trip(tmp_path: Path) -> None:
    tiers = parse_tiers(TIERS_TOML)
    split = split_log(make_log(300, seed=0), tiers, 0.3, seed=0)
    emb, cache = HashingEmbedder(), EmbeddingCache(tmp_path / "emb.sqlite")
    art = train_router(split, emb, cache, FeatureSpec(embedder_id=emb.id), DifficultyModel(n_estimators=20, n_jobs=1))
    result = evaluate_artifact(art, split, emb, cache, seed=0, n_boot=50)
    data = json.loads(json.dumps(result_to_json(result, "test")))
    assert format_table(result_from_json(data)) == format_table(result)
    assert "task prior" in format_table(result) and "[" in format_table(result)  # categories present; CIs shown
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold\n{END}\noutro\n")
    write_readme(readme, data)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "old" not in text
    assert readme_block(data) in text


def test_the_readme_table_is_what_the_command_renders() -> None:
    """README.md's evaluation block must equal `python -m training.report` on bench/results/evaluation.json."""
    data = json.loads((ROOT / "bench" / "results" / "evaluation.json").read_text())
    assert readme_block(data) in (ROOT / "README.md").read_text(), (
        "the README's evaluation table differs from bench/results/evaluation.json: regenerate it with "
        "`tierwise evaluate --json-out bench/results/evaluation.json && python -m training.report --write`"
    )
