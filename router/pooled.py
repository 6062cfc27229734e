"""PooledModel: one LightGBM booster over (prompt, model) rows (candidate for issue 10).

Each row is a prompt's features plus the model's index as a categorical feature, and its label is
that model's score. Boosting starts from each model's mean score (as a logit), so trees learn how a
prompt departs from it: splits on prompt features alone are shared by every model (difficulty), splits
that also use the model id learn where models differ. Every model's outcomes inform one difficulty estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np

from router.boosting import BoostParams, check_features, check_training


@dataclass(eq=False, kw_only=True)
class PooledModel(BoostParams):
    """One cross-entropy booster on stacked (prompt features, model id) rows; labels in [0, 1]."""

    learning_rate: float = 0.03
    num_leaves: int = 16
    colsample_bytree: float = 0.2

    @staticmethod
    def _stack(X: np.ndarray, k: int) -> np.ndarray:
        n = X.shape[0]
        ids = np.tile(np.arange(k, dtype=np.float32), n)
        return np.column_stack([np.repeat(X, k, axis=0), ids])

    def fit(self, X: np.ndarray, Y: np.ndarray, names: Sequence[str]) -> PooledModel:
        """Fit on features X (n, d) and scores Y (n, k) in [0, 1], NaN where a model has no outcome."""
        X, Y = check_training(X, Y, len(names), "models")
        rows = self._stack(X, Y.shape[1])
        y = Y.ravel()
        have = np.isfinite(y)
        mean = np.clip(np.nanmean(Y, axis=0), 0.01, 0.99)
        self.base_logit_ = np.log(mean / (1 - mean))
        base = np.tile(self.base_logit_, X.shape[0])
        data = lgb.Dataset(rows[have], label=y[have], init_score=base[have], categorical_feature=[rows.shape[1] - 1])
        self.booster_ = lgb.train(self.lgb_params(), data, num_boost_round=self.n_estimators)
        self.names_ = list(names)
        self.n_features_in_ = X.shape[1]
        return self

    def predict_quality(self, X: np.ndarray) -> np.ndarray:
        """Expected score per model, (n, k) in `names_` order."""
        X = check_features(self, "booster_", X, "predict_quality")
        k = len(self.names_)
        z = np.asarray(self.booster_.predict(self._stack(X, k), raw_score=True)).reshape(X.shape[0], k)
        return np.asarray(np.clip(1 / (1 + np.exp(-(z + self.base_logit_[None, :]))), 0.0, 1.0))
