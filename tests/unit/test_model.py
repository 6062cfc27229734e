"""DifficultyModel follows scikit-learn conventions and learns the generated difficulty."""

from __future__ import annotations

import numpy as np
import pytest

from router.artifact import RouterArtifact
from router.boosting import NotFittedError
from router.embedding_cache import EmbeddingCache, embed_cached
from router.features import EmbedderMismatch, FeatureSpec, featurize
from router.model import DifficultyModel
from router.text import text_window
from training.data import pivot_log


def _data(outcome_log, tiers, embedder):
    table = pivot_log(outcome_log, tiers)
    X = featurize(table.prompts["prompt"].tolist(), FeatureSpec(embedder_id=embedder.id), embedder)
    return table, X


def test_init_stores_params_and_predict_before_fit_raises():
    m = DifficultyModel(n_estimators=7, random_state=3)
    assert m.get_params()["n_estimators"] == 7 and not hasattr(m, "boosters_")
    with pytest.raises(NotFittedError):
        m.predict_quality(np.zeros((1, 4)))


@pytest.mark.parametrize("calibration", ["none", "isotonic"])
def test_learns_which_tier_a_prompt_needs(outcome_log, tiers, embedder, calibration):
    table, X = _data(outcome_log, tiers, embedder)
    m = DifficultyModel(n_estimators=60, learning_rate=0.2, num_leaves=7, colsample_bytree=1.0, calibration=calibration)
    assert m.fit(X, table.scores, tiers.names) is m
    pred = m.predict_quality(X)
    kinds = table.prompts["category"].to_numpy()
    assert pred.shape == (len(X), 3) and (pred >= 0).all() and (pred <= 1).all()
    # hard prompts: the cheap tier is predicted to fail and the brain tier to succeed
    assert pred[kinds == "hard", 0].mean() < 0.3 < 0.7 < pred[kinds == "hard", 2].mean()
    assert pred[kinds == "easy", 0].mean() > 0.7


def test_graded_scores_and_missing_outcomes(outcome_log, tiers, embedder):
    table, X = _data(outcome_log, tiers, embedder)
    Y = table.scores * 0.8 + 0.1
    Y[::3, 1] = np.nan  # one tier is missing for a third of the prompts
    pred = DifficultyModel(n_estimators=20).fit(X, Y, tiers.names).predict_quality(X)
    assert np.isfinite(pred).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DifficultyModel().fit(X, Y + 1, tiers.names)


def test_save_load_round_trip(tmp_path, outcome_log, tiers, embedder):
    table, X = _data(outcome_log, tiers, embedder)
    m = DifficultyModel(n_estimators=20, calibration="isotonic").fit(X, table.scores, tiers.names)
    art = RouterArtifact(m, FeatureSpec(embedder_id=embedder.id), tiers, {"main": 1.0, "mid": 2.0, "brain": 3.0})
    loaded = RouterArtifact.load(art.save(tmp_path / "art"))
    prompts = table.prompts["prompt"].tolist()[:10]
    np.testing.assert_allclose(loaded.predict_quality(prompts, embedder), art.predict_quality(prompts, embedder))
    assert loaded.tiers.names == tiers.names and loaded.features == art.features
    cost = loaded.expected_cost(prompts)
    assert cost.shape == (10, 3) and (np.diff(cost, axis=1) > 0).all()


def test_embedding_cache_never_reembeds(tmp_path, embedder):
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    texts = ["a b c", "d e f", "a b c"]
    first = embed_cached(embedder, texts, cache)
    calls = embedder.calls
    second = embed_cached(embedder, [*texts, "new text"], cache)
    assert embedder.calls == calls + 1
    np.testing.assert_array_equal(first, second[:3])


def test_features_refuse_another_embedder(embedder):
    with pytest.raises(EmbedderMismatch, match="trained with embedder"):
        featurize(["x"], FeatureSpec(embedder_id="other:torch"), embedder)


def test_text_window_takes_the_normalised_tail():
    assert text_window("  a \n\n b   c ", None) == "a b c"
    assert text_window("x" * 50 + " question?", 9) == "question?"


def test_a_prompts_category_comes_from_any_of_its_rows(outcome_log, tiers):
    """Only each prompt's first row was read: a log whose first model's rows lack the category lost its task prior
    without a word (new-user finding)."""
    log = outcome_log.copy()
    first_rows = ~log.duplicated("prompt_id")
    log["category"] = log["category"].astype(object)
    log.loc[first_rows, "category"] = None
    log.loc[first_rows & (log.index % 2 == 0), "category"] = "  "  # blank, as a JSONL row may give it
    table = pivot_log(log, tiers)
    expected = outcome_log.drop_duplicates("prompt_id").set_index("prompt_id")["category"]
    assert table.prompts["category"].tolist() == expected.reindex(table.prompts["prompt_id"]).tolist()


def test_saving_over_a_folder_removes_the_parts_this_model_lacks(tmp_path):
    """A model without a novelty reference or task classifier saved over a folder that held one loaded them back
    as its own (review finding: add-model --out an old model's folder)."""
    from dataclasses import replace

    from router.artifact import TASK_CLASSIFIER_FILE, RouterArtifact
    from router.features import FeatureSpec
    from router.novelty import NoveltyReference
    from router.schema import parse_tiers
    from tests.conftest import TIERS_TOML, HashingEmbedder, make_log
    from training.data import split_log
    from training.fit import train_router

    emb = HashingEmbedder()
    split = split_log(make_log(150), parse_tiers(TIERS_TOML), 0.3, 0)
    art = train_router(split, emb, None, FeatureSpec(embedder_id=emb.id), DifficultyModel(n_estimators=10))
    reference = NoveltyReference(n_reference=50).fit(np.random.default_rng(0).normal(size=(120, 384)))
    replace(art, novelty=reference).save(tmp_path)
    assert RouterArtifact.load(tmp_path).novelty is not None
    (tmp_path / TASK_CLASSIFIER_FILE).write_bytes(b"an older model's")
    replace(art, novelty=None, task_prior=None).save(tmp_path)
    assert RouterArtifact.load(tmp_path).novelty is None and not (tmp_path / TASK_CLASSIFIER_FILE).exists()
