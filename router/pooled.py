"""PooledModel: one LightGBM booster over (prompt, model) rows (candidate for issue 10).

Each row is a prompt's features plus the model's index as a categorical feature, and its label is
that model's score. Boosting starts from each model's mean score (as a logit), so trees learn how a
prompt departs from it: splits on prompt features alone are shared by every model (difficulty), splits
that also use the model id learn where models differ. Every model's outcomes inform one difficulty estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np

from router.model import NotFittedError


class PooledModel:
    """One cross-entropy booster on stacked (prompt features, model id) rows; labels in [0, 1]."""

    def __init__(
        self,
        n_estimators: int = 800,
        learning_rate: float = 0.03,
        num_leaves: int = 16,
        min_child_samples: int = 30,
        colsample_bytree: float = 0.2,
        subsample: float = 0.8,
        reg_lambda: float = 10.0,
        n_jobs: int = 0,
        random_state: int = 0,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.colsample_bytree = colsample_bytree
        self.subsample = subsample
        self.reg_lambda = reg_lambda
        self.n_jobs = n_jobs
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    @staticmethod
    def _stack(X: np.ndarray, k: int) -> np.ndarray:
        n = X.shape[0]
        ids = np.tile(np.arange(k, dtype=np.float32), n)
        return np.column_stack([np.repeat(X, k, axis=0), ids])

    def fit(self, X: np.ndarray, Y: np.ndarray, names: Sequence[str]) -> PooledModel:
        """Fit on features X (n, d) and scores Y (n, k) in [0, 1], NaN where a model has no outcome."""
        X = np.asarray(X, dtype=np.float32)
        Y = np.asarray(Y, dtype=np.float64)
        if Y.ndim != 2 or Y.shape[0] != X.shape[0] or Y.shape[1] != len(names):
            raise ValueError(f"Y must be (n_prompts, n_models); got {Y.shape} for X {X.shape}")
        finite = Y[np.isfinite(Y)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise ValueError("scores must lie in [0, 1]")
        rows = self._stack(X, Y.shape[1])
        y = Y.ravel()
        have = np.isfinite(y)
        params = {
            "objective": "cross_entropy",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "feature_fraction": self.colsample_bytree,
            "bagging_fraction": self.subsample,
            "bagging_freq": 1 if self.subsample < 1 else 0,
            "lambda_l2": self.reg_lambda,
            "num_threads": self.n_jobs,
            "seed": self.random_state,
            "deterministic": True,
            "force_col_wise": True,
            "verbose": -1,
        }
        mean = np.clip(np.nanmean(Y, axis=0), 0.01, 0.99)
        self.base_logit_ = np.log(mean / (1 - mean))
        base = np.tile(self.base_logit_, X.shape[0])
        data = lgb.Dataset(rows[have], label=y[have], init_score=base[have], categorical_feature=[rows.shape[1] - 1])
        self.booster_ = lgb.train(params, data, num_boost_round=self.n_estimators)
        self.names_ = list(names)
        self.n_features_in_ = X.shape[1]
        return self

    def predict_quality(self, X: np.ndarray) -> np.ndarray:
        """Expected score per model, (n, k) in `names_` order."""
        if not hasattr(self, "booster_"):
            raise NotFittedError("PooledModel.predict_quality called before fit")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected (n, {self.n_features_in_}) features, got {X.shape}")
        k = len(self.names_)
        z = np.asarray(self.booster_.predict(self._stack(X, k), raw_score=True)).reshape(X.shape[0], k)
        return np.asarray(np.clip(1 / (1 + np.exp(-(z + self.base_logit_[None, :]))), 0.0, 1.0))
