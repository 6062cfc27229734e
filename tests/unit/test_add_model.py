"""tierwise add-model: a model swapped in behind a tier is learned from its few outcomes, other tiers untouched."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest

from router.artifact import HeldOut
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.schema import parse_tiers
from tests.conftest import TIERS_TOML, HashingEmbedder, make_log
from training.add_model import NothingToAdd, add_models
from training.data import pool_logs, split_log
from training.fit import train_router


@pytest.fixture(scope="module")
def trained():
    log, tiers, emb = make_log(300), parse_tiers(TIERS_TOML), HashingEmbedder()
    split = split_log(log, tiers, 0.3, 0)
    pool = pool_logs(log, split, [], 3000, 0)
    model = DifficultyModel(n_estimators=60, n_jobs=1, min_child_samples=10)
    return log, emb, train_router(split, emb, None, FeatureSpec(embedder_id=emb.id), model, pool)


def _swapped_tiers():
    raw = copy.deepcopy(TIERS_TOML)
    raw["tiers"][1]["model"] = "unused"
    return parse_tiers(raw)


def test_a_swapped_model_is_learned_from_forty_outcomes(trained):
    log, emb, artifact = trained
    assert artifact.model.shared_ is not None
    # the new model behind mid solves what the large model solves: 40 of its outcomes
    new = log[log["model"] == "large"].head(40).assign(model="unused")
    split_from = replace(artifact, held_out=HeldOut(0.3, 0, "digest"))
    swapped, notes = add_models(split_from, _swapped_tiers(), new, emb, None)
    assert notes[0].startswith("tier mid: unused from 40 outcomes")
    # its new tier learned from held-out prompts too: evaluate says so (review findings)
    assert swapped.held_out == HeldOut(0.3, 0, "digest", ("mid",))
    hard = [p for p in log["prompt"].unique() if p.startswith("hard")][:50]
    before, after = artifact.predict_quality(hard, emb), swapped.predict_quality(hard, emb)
    np.testing.assert_allclose(after[:, [0, 2]], before[:, [0, 2]])
    assert after[:, 1].mean() > before[:, 1].mean() + 0.1
    assert swapped.tiers.tiers[1].model == "unused" and artifact.tiers.tiers[1].model == "medium"
    # The task prior's means for mid were the old model's: they are replaced by the new model's (its outcomes
    # carry categories), which solves the hard task as the large model does; the other tiers keep theirs.
    assert artifact.task_prior is not None and swapped.task_prior is not None
    old_means, new_means = artifact.task_prior.means, swapped.task_prior.means
    assert new_means["hard"][1] > old_means["hard"][1] + 0.4
    assert abs(new_means["hard"][1] - old_means["hard"][2]) < 0.15
    for cat, means in new_means.items():
        assert (means[0], means[2]) == (old_means[cat][0], old_means[cat][2])
    assert any("task prior from 40 outcomes" in n for n in notes)


def test_without_categories_the_swapped_tier_keeps_no_task_prior(trained):
    log, emb, artifact = trained
    new = log[log["model"] == "large"].head(40).assign(model="unused").drop(columns="category")
    swapped, _ = add_models(artifact, _swapped_tiers(), new, emb, None)
    assert swapped.task_prior is not None and artifact.task_prior is not None
    for cat, means in swapped.task_prior.means.items():
        assert np.isnan(means[1]) and means[0] == artifact.task_prior.means[cat][0]


def test_nothing_to_add_without_a_swap_or_with_too_few_outcomes(trained):
    log, emb, artifact = trained
    with pytest.raises(NothingToAdd, match="no tier's model differs"):
        add_models(artifact, artifact.tiers, log, emb, None)
    few = log[log["model"] == "large"].head(5).assign(model="unused")
    with pytest.raises(NothingToAdd, match="5 outcomes of unused"):
        add_models(artifact, _swapped_tiers(), few, emb, None)
