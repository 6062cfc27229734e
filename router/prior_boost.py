"""PriorBoostModel: per-tier boosters that start from a prior and learn only the departures from it.

Candidate (d) of issue 10. The prior is any (n, k) matrix of expected scores known at request time,
e.g. the per-category train mean of each tier when a task label comes with the prompt. Boosting starts
from logit(prior), so with few or weak features the model stays at the prior (shrinkage toward the
category mean), and where prompt features tell easy from hard within a task, it moves away.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np

from router.model import NotFittedError


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 0.01, 0.99)
    return np.asarray(np.log(p / (1 - p)))


class PriorBoostModel:
    """One cross-entropy LightGBM booster per tier with init_score = logit(prior); labels in [0, 1]."""

    def __init__(
        self,
        n_estimators: int = 800,
        learning_rate: float = 0.02,
        num_leaves: int = 4,
        min_child_samples: int = 30,
        colsample_bytree: float = 0.1,
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

    def _params(self) -> dict[str, Any]:
        return {
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

    def fit(self, X: np.ndarray, Y: np.ndarray, prior: np.ndarray, names: Sequence[str]) -> PriorBoostModel:
        """Fit on features X (n, d), scores Y (n, k) in [0, 1] (NaN = no outcome) and the prior (n, k)."""
        X = np.asarray(X, dtype=np.float32)
        Y = np.asarray(Y, dtype=np.float64)
        prior = np.asarray(prior, dtype=np.float64)
        if Y.ndim != 2 or Y.shape[0] != X.shape[0] or Y.shape[1] != len(names) or prior.shape != Y.shape:
            raise ValueError(f"Y and prior must be (n_prompts, n_tiers); got {Y.shape}, {prior.shape} for X {X.shape}")
        finite = Y[np.isfinite(Y)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise ValueError("scores must lie in [0, 1]")
        self.names_ = list(names)
        self.n_features_in_ = X.shape[1]
        self.boosters_ = []
        for j in range(Y.shape[1]):
            have = np.isfinite(Y[:, j])
            data = lgb.Dataset(X[have], label=Y[have, j], init_score=_logit(prior[have, j]))
            self.boosters_.append(lgb.train(self._params(), data, num_boost_round=self.n_estimators))
        return self

    def predict_quality(self, X: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """Expected score per tier, (n, k): the prior moved by what the features say."""
        if not hasattr(self, "boosters_"):
            raise NotFittedError("PriorBoostModel.predict_quality called before fit")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected (n, {self.n_features_in_}) features, got {X.shape}")
        if prior.shape != (X.shape[0], len(self.names_)):
            raise ValueError(f"prior must be ({X.shape[0]}, {len(self.names_)}), got {prior.shape}")
        z = np.column_stack([b.predict(X, raw_score=True) for b in self.boosters_]) + _logit(prior)
        return np.asarray(1 / (1 + np.exp(-z)))
