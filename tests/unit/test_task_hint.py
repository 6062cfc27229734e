"""Task hints: each tier's mean score per category of the log, blended in for a task the model knows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router.artifact import RouterArtifact
from router.features import FeatureSpec, featurize
from router.model import DifficultyModel
from router.routing import Router
from router.schema import parse_tiers
from router.task_classifier import TASK_CLASSIFIER_FILE, TaskClassifier
from router.task_hint import MIN_PROMPTS, ROUTER_WEIGHT, TaskPrior
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
    assert artifact.task_prior.classifier is not None  # fitted on the train prompts' features
    loaded = RouterArtifact.load(artifact.save(tmp_path / "art"))
    assert loaded.task_prior == artifact.task_prior and loaded.task_prior is not None
    assert loaded.task_prior.classifier == artifact.task_prior.classifier
    router = Router(loaded, embedder=emb)
    prompts = ["hard question 7: alpha beta gamma delta omega"] * 2
    X = featurize(prompts, loaded.features, emb)
    boosters = loaded.model.predict_quality(X)
    plain, _, _ = router.assess(prompts)
    hinted, _, _ = router.assess(prompts, ["hard", "unknown task"])
    w = np.asarray(loaded.task_prior.router_weight)  # learned per tier, out of fold
    assert w.shape == (3,) and ((w >= 0) & (w <= 1)).all()
    assert hinted[0] == pytest.approx(w * boosters[0] + (1 - w) * np.asarray(hard))
    # Without a (known) hint the classifier's guess is blended in: the same prediction as no hint at all.
    guessed = loaded.task_prior.classifier.proba(X) @ np.array(
        [loaded.task_prior.means[c] for c in loaded.task_prior.classifier.labels]
    )
    assert plain == pytest.approx(w * boosters + (1 - w) * guessed)
    assert (hinted[1] == plain[1]).all()
    assert router.knows_task("hard") and not router.knows_task("unknown task") and not router.knows_task(None)
    # The evaluation shows what callers would get by sending each prompt's category as its task hint.
    table = evaluate_artifact(loaded, split, emb, None, seed=0, n_boot=20).table
    assert np.isfinite(table.loc["router + task hint", "AIQ"])
    assert np.isfinite(table.loc["router + task hint", "router_minus_AIQ"])


def test_a_model_saved_without_a_classifier_uses_hints_only(tmp_path: Path) -> None:
    """A model trained before the classifier existed (no task_classifier.npz) routes as it did: hints only."""
    emb, tiers = HashingEmbedder(), parse_tiers(TIERS_TOML)
    split = split_log(make_log(200, seed=2), tiers, 0.3, seed=0)
    artifact = train_router(
        split, emb, None, FeatureSpec(embedder_id=emb.id), DifficultyModel(n_estimators=10, n_jobs=1)
    )
    directory = artifact.save(tmp_path / "art")
    (directory / TASK_CLASSIFIER_FILE).unlink()
    old = RouterArtifact.load(directory)
    assert old.task_prior is not None and old.task_prior.classifier is None
    prompts = ["easy question 1: alpha", "hard question 2: omega"]
    boosters = old.model.predict_quality(featurize(prompts, old.features, emb))
    assert old.predict_quality(prompts, emb) == pytest.approx(boosters)


def test_priors_prefer_a_known_hint_and_leave_a_tier_without_prior_alone() -> None:
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(-4, 1, (60, 3)), rng.normal(4, 1, (60, 3))])
    cats = ["math"] * 60 + ["chat"] * 60
    scores = np.array([[0.1, 0.9]] * 60 + [[0.8, 0.9]] * 60)
    prior = TaskPrior.fit(cats, scores, NAMES, features=X)
    assert prior is not None and prior.classifier is not None
    probe = np.array([[-4.0, -4.0, -4.0], [4.0, 4.0, 4.0]])
    p, hinted = prior.priors(None, probe, 2)
    assert not hinted.any()
    assert p[0, 0] < 0.2 and p[1, 0] > 0.7 and p[:, 1] == pytest.approx([0.9, 0.9])  # near each class's means
    p, hinted = prior.priors(["chat", "nonsense"], probe, 2)
    assert hinted.tolist() == [True, False]
    assert p[0] == pytest.approx([0.8, 0.9])  # the hint wins over the guess
    quality = np.full((2, 2), 0.5)
    swapped = prior.without_tiers([1])
    out, _ = swapped.blend(quality, None, probe)
    assert out[:, 1] == pytest.approx([0.5, 0.5])  # tier 1 has no prior any more: the router's prediction stands
    guess, _ = prior.priors(None, probe, 2)
    assert out[:, 0] == pytest.approx(ROUTER_WEIGHT * 0.5 + (1 - ROUTER_WEIGHT) * guess[:, 0])
    assert TaskPrior.from_dict(swapped.to_dict(), swapped.classifier).to_dict() == swapped.to_dict()
    # Without features only a hint changes anything.
    out, _ = prior.blend(quality, [None, "math"])
    assert (out[0] == 0.5).all() and out[1] == pytest.approx([0.3, 0.7])


def test_a_new_models_means_come_from_its_few_outcomes_shrunk_toward_their_mean() -> None:
    prior = TaskPrior(
        NAMES, {"math": (0.2, 0.9), "chat": (0.8, 0.7), "code": (0.5, 0.5)}, {"math": 40, "chat": 40, "code": 40}
    )
    cats = ["math"] * 10 + ["chat"] * 30 + ["other"] * 10
    y = np.array([0.0] * 10 + [1.0] * 30 + [0.5] * 9 + [np.nan])  # a NaN score is left out
    new = prior.with_tier_outcomes(0, cats, y)
    overall = (0 + 30 + 4.5) / 49
    assert new.means["math"][0] == pytest.approx((0 + MIN_PROMPTS * overall) / (10 + MIN_PROMPTS))
    assert new.means["chat"][0] == pytest.approx((30 + MIN_PROMPTS * overall) / (30 + MIN_PROMPTS))
    assert new.means["code"][0] == pytest.approx(overall)  # no outcome in the task: the overall mean
    assert [m[1] for m in new.means.values()] == [0.9, 0.7, 0.5]  # the other tier is untouched
    assert new.router_weight == prior.router_weight and new.counts == prior.counts
    assert np.isnan(prior.with_tier_outcomes(1, ["math"], [np.nan]).means["math"][1])  # no score: no prior
    with pytest.raises(ValueError, match="2 categories for 1 scores"):
        prior.with_tier_outcomes(0, ["a", "b"], [1.0])


def test_a_new_models_task_profile_beats_its_raw_task_means_from_few_outcomes() -> None:
    """A new model that behaves like 0.7 x tier 0 + 0.3 x tier 2 (+0.05) on 12 tasks, 36 outcomes (3 a task): the
    profile's means are closer to its true per-task rates than the shrunk raw means, over 40 draws."""
    rng = np.random.default_rng(0)
    tasks = [f"t{i}" for i in range(12)]
    M = rng.uniform(0.1, 0.8, size=(12, 3))
    truth = np.clip(0.7 * M[:, 0] + 0.3 * M[:, 2] + 0.05, 0, 1)
    prior = TaskPrior(("a", "b", "c"), {t: tuple(M[i]) for i, t in enumerate(tasks)}, dict.fromkeys(tasks, 100))
    raw_err, profile_err = [], []
    for _ in range(40):
        cats = np.repeat(tasks, 3)
        y = (rng.random(len(cats)) < np.repeat(truth, 3)).astype(float)
        raw = prior.with_tier_outcomes(1, cats, y)
        profile = prior.with_tier_profile(1, cats, y)
        raw_err.append(np.abs([raw.means[t][1] for t in tasks] - truth).mean())
        profile_err.append(np.abs([profile.means[t][1] for t in tasks] - truth).mean())
        assert all(profile.means[t][0] == prior.means[t][0] for t in tasks)  # other tiers untouched
    # 0.57-0.90 of the raw error over 20 generated problems (seeds 0-19); a wrong profile (all weight on tier 2)
    # gives 1.5 and fails.
    assert np.mean(profile_err) < 0.92 * np.mean(raw_err), (np.mean(profile_err), np.mean(raw_err))


def test_the_profile_is_a_convex_combination_and_needs_known_tasks() -> None:
    from router.task_hint import _simplex_least_squares

    A = np.random.default_rng(1).random((200, 4))
    w = _simplex_least_squares(A - A.mean(0), (A @ [0.5, 0.5, 0, 0]) - (A @ [0.5, 0.5, 0, 0]).mean())
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-9 and np.allclose(w, [0.5, 0.5, 0, 0], atol=0.02)
    prior = TaskPrior(("a", "b"), {"x": (0.2, 0.4)}, {"x": 50})
    # no outcome in a known task: what with_tier_outcomes gives (the overall mean of its outcomes)
    assert prior.with_tier_profile(1, ["unknown"], [1.0]).means == prior.with_tier_outcomes(1, ["unknown"], [1.0]).means


def test_training_gives_a_few_outcome_tier_its_task_profile_means() -> None:
    """fit_task_prior: a tier with 40 outcomes next to tiers with 600 (a model just swapped in) takes its per-task
    means from its task profile, not the raw means of its handful of outcomes per task; the others keep theirs."""
    from training.fit import fit_task_prior

    rng = np.random.default_rng(0)
    n, tasks = 600, np.array(["a", "b", "c", "d"])
    cats = tasks[rng.integers(0, 4, n)]
    rates = {"a": (0.2, 0.3, 0.9), "b": (0.5, 0.6, 0.9), "c": (0.7, 0.8, 0.95), "d": (0.1, 0.2, 0.6)}
    S = np.array([[float(rng.random() < r) for r in rates[c]] for c in cats])
    S[40:, 1] = np.nan  # tier 1 has 40 outcomes
    X = rng.normal(size=(n, 5)).astype(np.float32)
    model = DifficultyModel(n_estimators=5, n_jobs=1)
    prior = fit_task_prior(X, S, cats, ["lo", "mid", "hi"], model, folds=2)
    raw = TaskPrior.fit(cats, S, ["lo", "mid", "hi"])
    assert prior is not None and raw is not None
    has = np.isfinite(S[:, 1])
    expected = raw.with_tier_profile(1, cats[has], S[has, 1])
    for t in tasks:
        assert prior.means[t][1] == pytest.approx(expected.means[t][1])
        assert (prior.means[t][0], prior.means[t][2]) == (raw.means[t][0], raw.means[t][2])
    assert any(prior.means[t][1] != pytest.approx(raw.means[t][1]) for t in tasks)


def test_a_tier_with_a_dozen_outcomes_keeps_the_default_weights_instead_of_failing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With 12 outcomes, a fold's fit rows held fewer than DifficultyModel's 10 for that tier, and learning the
    blend weights out of fold raised a ValueError through `tierwise train` (new-user finding)."""
    from training.fit import fit_task_prior

    rng = np.random.default_rng(0)
    n, tasks = 300, np.array(["a", "b", "c"])
    cats = tasks[rng.integers(0, 3, n)]
    S = (rng.random((n, 3)) < [0.3, 0.6, 0.9]).astype(float)
    S[12:, 1] = np.nan  # tier 1 has 12 outcomes: some of 5 folds fit on 9
    X = rng.normal(size=(n, 5)).astype(np.float32)
    prior = fit_task_prior(X, S, cats, ["lo", "mid", "hi"], DifficultyModel(n_estimators=5, n_jobs=1), folds=5)
    default = TaskPrior.fit(cats, S, ["lo", "mid", "hi"], features=X)
    assert prior is not None and default is not None and prior.router_weight == default.router_weight
    assert "tier mid has fewer than 10 outcomes in some of the 5 folds" in caplog.text


def test_classifier_probabilities_and_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(c, 0.5, (40, 4)) for c in (-3, 0, 3)])
    labels = ["a"] * 40 + ["b"] * 40 + ["c"] * 40
    clf = TaskClassifier.fit(X, labels)
    P = clf.proba(X)
    assert P.shape == (120, 3) and P.sum(axis=1) == pytest.approx(np.ones(120))
    assert (np.array(clf.labels)[P.argmax(axis=1)] == np.array(labels)).mean() > 0.95
    two = TaskClassifier.fit(X[:80], labels[:80])  # scikit-learn's one-row binary case, as a softmax
    assert (np.array(two.labels)[two.proba(X[:80]).argmax(axis=1)] == np.array(labels[:80])).mean() > 0.95
    clf.save(tmp_path / "c.npz")
    back = TaskClassifier.load(tmp_path / "c.npz")
    assert back == clf and back.proba(X) == pytest.approx(P)
    with pytest.raises(ValueError, match="two tasks"):
        TaskClassifier.fit(X[:40], labels[:40])


def test_learned_weights_follow_the_better_out_of_fold_predictor() -> None:
    rng = np.random.default_rng(3)
    S = rng.random((400, 3))
    good, noise = S + rng.normal(0, 0.05, S.shape), rng.random(S.shape)
    prior = TaskPrior(("a", "b", "c"), {"x": (0.5, 0.5, 0.5)}, {"x": 400})
    # tier 0: the router is right and the prior noise; tier 1: the reverse; tier 2: no usable rows
    R = np.column_stack([good[:, 0], noise[:, 1], np.full(400, np.nan)])
    P = np.column_stack([noise[:, 0], good[:, 1], good[:, 2]])
    learned = prior.with_learned_weights(R, P, S)
    assert isinstance(learned.router_weight, tuple)
    w0, w1, w2 = learned.router_weight
    assert w0 >= 0.9 and w1 <= 0.1 and w2 == ROUTER_WEIGHT
    assert TaskPrior.from_dict(learned.to_dict()) == learned  # per-tier weights survive the round trip
    out, _ = learned.blend(np.zeros((1, 3)), ["x"])
    assert out[0] == pytest.approx([(1 - w) * 0.5 for w in learned.router_weight])
    with pytest.raises(ValueError, match="out-of-fold shapes"):
        prior.with_learned_weights(R[:, :2], P[:, :2], S[:, :2])
