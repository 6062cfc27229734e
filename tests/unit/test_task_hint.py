"""Task hints: each tier's mean score per category of the log, blended in for a task the model knows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router.artifact import RouterArtifact
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.routing import Router
from router.schema import parse_tiers
from router.task_hint import ROUTER_WEIGHT, TaskPrior
from tests.conftest import TIERS_TOML, HashingEmbedder, make_log
from training.data import split_log
from training.evaluation import evaluate_artifact
from training.fit import train_router

NAMES = ("cheap", "top")


def test_fit_keeps_categories_with_enough_prompts_and_fills_unseen_tiers() -> None:
    cats = ["a"] * 3 + ["b"] * 2 + [""] * 4
    scores = np.array(
        [[0.0, 1.0], [1.0, 1.0], [0.5, np.nan], [1.0, 0.0], [1.0, 0.0], [0.2, 0.2], [0.2, 0.2], [0.2, 0.2], [0.2, 0.2]]
    )
    prior = TaskPrior.fit(cats, scores, NAMES, min_prompts=3)
    assert prior is not None
    assert set(prior.means) == {"a"}  # "b" has 2 prompts, "" is no category
    assert prior.means["a"] == pytest.approx((0.5, 1.0))  # NaN left out of the mean
    assert prior.counts == {"a": 3}
    only_nan = np.array([[0.0, np.nan]] * 3 + [[1.0, 0.5]])
    filled = TaskPrior.fit(["a", "a", "a", "b"], only_nan, NAMES, min_prompts=3)
    assert filled is not None and filled.means["a"] == pytest.approx((0.0, 0.5))  # the tier's overall mean


def test_no_category_with_enough_prompts_gives_no_prior() -> None:
    assert TaskPrior.fit([""] * 30, np.ones((30, 2)), NAMES) is None
    assert TaskPrior.fit(["x"] * 5, np.ones((5, 2)), NAMES) is None
    with pytest.raises(ValueError, match="do not match"):
        TaskPrior.fit(["x"] * 5, np.ones((4, 2)), NAMES)


def test_blend_changes_known_tasks_only() -> None:
    prior = TaskPrior(NAMES, {"math": (0.2, 0.9)}, {"math": 40})
    quality = np.array([[0.6, 0.5], [0.6, 0.5], [0.6, 0.5]])
    out, known = prior.blend(quality, ["math", "poetry", None])
    assert known.tolist() == [True, False, False]
    w = ROUTER_WEIGHT
    assert out[0] == pytest.approx([w * 0.6 + (1 - w) * 0.2, w * 0.5 + (1 - w) * 0.9])
    assert (out[1:] == quality[1:]).all()
    assert (quality == 0.6).sum() == 3  # the input is not modified
    with pytest.raises(ValueError, match="2 task hints for 3 prompts"):
        prior.blend(quality, ["math", None])
    assert TaskPrior.from_dict(prior.to_dict()) == prior


def test_training_keeps_the_logs_categories_and_the_router_uses_them(tmp_path: Path) -> None:
    emb, tiers = HashingEmbedder(), parse_tiers(TIERS_TOML)
    split = split_log(make_log(300, seed=1), tiers, 0.3, seed=0)
    artifact = train_router(
        split, emb, None, FeatureSpec(embedder_id=emb.id), DifficultyModel(n_estimators=20, n_jobs=1)
    )
    assert artifact.task_prior is not None
    assert set(artifact.task_prior.means) == {"easy", "medium", "hard"}  # make_log's categories
    # In the generated log only brain answers hard prompts: the prior says so.
    hard = artifact.task_prior.means["hard"]
    assert hard[-1] > 0.8 and hard[0] < 0.2
    loaded = RouterArtifact.load(artifact.save(tmp_path / "art"))
    assert loaded.task_prior == artifact.task_prior
    router = Router(loaded, embedder=emb)
    prompts = ["hard question 7: alpha beta gamma delta omega"] * 2
    plain, _, _ = router.assess(prompts)
    hinted, _, _ = router.assess(prompts, ["hard", "unknown task"])
    assert hinted[0] == pytest.approx(ROUTER_WEIGHT * plain[0] + (1 - ROUTER_WEIGHT) * np.asarray(hard))
    assert (hinted[1] == plain[1]).all()
    assert router.knows_task("hard") and not router.knows_task("unknown task") and not router.knows_task(None)
    # The evaluation shows what callers would get by sending each prompt's category as its task hint.
    table = evaluate_artifact(loaded, split, emb, None, seed=0, n_boot=20).table
    assert np.isfinite(table.loc["router + task hint", "AIQ"])
    assert np.isfinite(table.loc["router + task hint", "router_minus_AIQ"])
