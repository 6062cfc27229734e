"""SharedDifficulty learns one easiness scale across logs with different models; DifficultyModel builds on it."""

from __future__ import annotations

import numpy as np
import pytest

from router.boosting import NotFittedError
from router.model import DifficultyModel, fit_logistic_1d
from router.shared_difficulty import SharedDifficulty


def _two_logs(n: int = 1200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, true easiness (2 x0) and outcomes of 5 models in two logs that share no model.

    Log A (first half) has models 0-2, log B models 3-4: every cell of the other log is NaN.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    easiness = 2.0 * X[:, 0]
    ability = np.array([-1.0, 0.0, 1.0, -0.5, 0.5])
    p = 1 / (1 + np.exp(-(easiness[:, None] + ability[None, :])))
    Y = (rng.random(p.shape) < p).astype(float)
    Y[: n // 2, 3:] = np.nan
    Y[n // 2 :, :3] = np.nan
    return X, easiness, Y


def test_easiness_is_learned_across_logs_without_shared_models():
    X, easiness, Y = _two_logs()
    sd = SharedDifficulty(n_estimators=150, n_jobs=1).fit(X, Y, [f"m{j}" for j in range(5)])
    X_new, e_new, _ = _two_logs(seed=1)
    assert np.corrcoef(sd.predict_easiness(X_new), e_new)[0, 1] > 0.8
    oof = sd.oof_easiness_
    assert np.isfinite(oof).all() and np.corrcoef(oof, easiness)[0, 1] > 0.7


def test_predict_before_fit_raises():
    with pytest.raises(NotFittedError):
        SharedDifficulty().predict_easiness(np.zeros((1, 5)))


def test_logistic_1d_recovers_its_parameters_and_shrinks_toward_the_prior_slope():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000)
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-(0.5 + 1.5 * x)))).astype(float)
    a, b = fit_logistic_1d(x, y)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(1.5, abs=0.05)
    _, b_few = fit_logistic_1d(x[:20], y[:20], b_prior=3.0, prior_rows=1e6)
    assert b_few == pytest.approx(3.0, abs=0.01)


def test_difficulty_model_on_shared_easiness_round_trips_and_handles_a_tier_with_few_rows(tmp_path):
    X, _, Y_all = _two_logs()
    sd = SharedDifficulty(n_estimators=100, n_jobs=1).fit(X, Y_all, [f"m{j}" for j in range(5)])
    half = len(X) // 2
    Y = Y_all[:half, :3].copy()
    Y[40:, 2] = np.nan  # tier 2's model was just swapped in: 40 outcomes
    model = DifficultyModel(n_estimators=60, n_jobs=1, few_rows=100)
    model.fit(X[:half], Y, ["a", "b", "c"], shared=sd, train_easiness=sd.oof_easiness_[:half])
    assert model.boosters_[2] is None and model.boosters_[0] is not None
    pred = model.predict_quality(X[half:])
    # the few-rows tier follows the shared easiness: a monotone function of it, so higher x0, higher quality
    order = np.argsort(sd.predict_easiness(X[half:]))
    assert (np.diff(pred[order, 2]) >= 0).all()
    assert np.corrcoef(pred[:, 2], X[half:, 0])[0, 1] > 0.8
    model.save(tmp_path / "m")
    np.testing.assert_allclose(DifficultyModel.load(tmp_path / "m").predict_quality(X[half:]), pred, atol=1e-12)


def test_feature_mode_uses_the_easiness_as_a_column():
    X, _, Y_all = _two_logs()
    sd = SharedDifficulty(n_estimators=100, n_jobs=1).fit(X, Y_all, [f"m{j}" for j in range(5)])
    half = len(X) // 2
    model = DifficultyModel(n_estimators=60, n_jobs=1, easiness="feature")
    model.fit(X[:half], Y_all[:half, :3], ["a", "b", "c"], shared=sd)
    assert model.boosters_[0] is not None and model.boosters_[0].num_feature() == X.shape[1] + 1
    assert model.predict_quality(X[half:]).shape == (len(X) - half, 3)


def test_refit_tier_swaps_one_tier_from_few_outcomes_and_leaves_the_others():
    X, _, Y_all = _two_logs()
    sd = SharedDifficulty(n_estimators=100, n_jobs=1).fit(X, Y_all, [f"m{j}" for j in range(5)])
    half = len(X) // 2
    model = DifficultyModel(n_estimators=60, n_jobs=1, few_rows=100)
    model.fit(X[:half], Y_all[:half, :3], ["a", "b", "c"], shared=sd, train_easiness=sd.oof_easiness_[:half])
    before = model.predict_quality(X[half:])
    # a new, weaker model behind tier "c", seen on 60 prompts of the other log (its outcomes are model 3's)
    swapped = model.refit_tier(2, X[half : half + 60], Y_all[half : half + 60, 3])
    after = swapped.predict_quality(X[half:])
    np.testing.assert_allclose(after[:, :2], before[:, :2])
    assert swapped.boosters_[2] is None and model.boosters_[2] is not None
    truth = np.nanmean(Y_all[half:, 3])
    two_se = 2 * np.sqrt(truth * (1 - truth) / 60)  # of a mean over the 60 outcomes it learned from
    assert abs(after[:, 2].mean() - truth) < two_se < abs(before[:, 2].mean() - truth)
    with pytest.raises(ValueError, match="at least 10"):
        model.refit_tier(2, X[:5], Y_all[:5, 0])


def test_graded_scores_work_like_outcomes():
    """Win probabilities / judge scores in [0, 1] (not 0/1) are soft labels for both stages and the tiers."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(800, 5)).astype(np.float32)
    Y = 1 / (1 + np.exp(-(2.0 * X[:, :1] + np.array([-1.0, 0.0, 1.0])[None, :])))  # graded, never 0 or 1
    sd = SharedDifficulty(n_estimators=100, n_jobs=1).fit(X, Y, ["a", "b", "c"])
    assert np.corrcoef(sd.predict_easiness(X), X[:, 0])[0, 1] > 0.9
    model = DifficultyModel(n_estimators=60, n_jobs=1).fit(X, Y, ["a", "b", "c"], shared=sd)
    pred = model.predict_quality(X)
    assert np.abs(pred.mean(axis=0) - Y.mean(axis=0)).max() < 0.03
