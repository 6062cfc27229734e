"""LightGBM's single-row fast path gives what Booster.predict gives, from one thread or many."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import lightgbm as lgb
import numpy as np
import pytest

from router.boosting import predict_raw
from router.model import DifficultyModel


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 12)).astype(np.float32)
    Y = np.column_stack([(X[:, j] + rng.normal(size=400) > 0).astype(float) for j in range(3)])
    return X, Y


@pytest.fixture(scope="module")
def booster(data: tuple[np.ndarray, np.ndarray]) -> lgb.Booster:
    X, Y = data
    params = {"objective": "cross_entropy", "verbose": -1, "num_leaves": 4, "num_threads": 1}
    return lgb.train(params, lgb.Dataset(X, Y[:, 0]), num_boost_round=60)


def test_one_row_matches_booster_predict(booster: lgb.Booster, data: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = data
    expected = booster.predict(X[:100], raw_score=True)
    got = np.concatenate([predict_raw(booster, X[i : i + 1], num_threads=1) for i in range(100)])
    np.testing.assert_array_equal(got, expected)
    assert np.ptp(got) > 0  # the rows really differ


def test_one_row_is_thread_safe(booster: lgb.Booster, data: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = data
    expected = booster.predict(X, raw_score=True)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: predict_raw(booster, X[i : i + 1])[0], range(len(X))))
    np.testing.assert_array_equal(got, expected)


def test_model_scores_one_prompt_as_in_a_batch(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, Y = data
    model = DifficultyModel(n_estimators=40, n_jobs=1, colsample_bytree=1.0).fit(X, Y, ["a", "b", "c"])
    batch = model.predict_quality(X[:50], num_threads=1)
    one_by_one = np.vstack([model.predict_quality(X[i : i + 1], num_threads=1) for i in range(50)])
    np.testing.assert_allclose(one_by_one, batch, rtol=0, atol=1e-12)
