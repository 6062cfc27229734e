"""PriorBoostModel: per-tier boosters that start from a prior and learn only the departures from it.

Candidate (d) of issue 10. The prior is any (n, k) matrix of expected scores known at request time,
e.g. the per-category train mean of each tier when a task label comes with the prompt. Boosting starts
from logit(prior), so with few or weak features the model stays at the prior (shrinkage toward the
category mean), and where prompt features tell easy from hard within a task, it moves away.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np

from router.boosting import BoostParams, check_features, check_training


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 0.01, 0.99)
    return np.asarray(np.log(p / (1 - p)))


@dataclass(eq=False, kw_only=True)
class PriorBoostModel(BoostParams):
    """One cross-entropy LightGBM booster per tier with init_score = logit(prior); labels in [0, 1]."""

    def fit(self, X: np.ndarray, Y: np.ndarray, prior: np.ndarray, names: Sequence[str]) -> PriorBoostModel:
        """Fit on features X (n, d), scores Y (n, k) in [0, 1] (NaN = no outcome) and the prior (n, k)."""
        X, Y = check_training(X, Y, len(names), "tiers")
        prior = np.asarray(prior, dtype=np.float64)
        if prior.shape != Y.shape:
            raise ValueError(f"prior must be (n_prompts, n_tiers) like Y {Y.shape}; got {prior.shape}")
        self.names_ = list(names)
        self.n_features_in_ = X.shape[1]
        self.boosters_ = []
        for j in range(Y.shape[1]):
            have = np.isfinite(Y[:, j])
            data = lgb.Dataset(X[have], label=Y[have, j], init_score=_logit(prior[have, j]))
            self.boosters_.append(lgb.train(self.lgb_params(), data, num_boost_round=self.n_estimators))
        return self

    def predict_quality(self, X: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """Expected score per tier, (n, k): the prior moved by what the features say."""
        X = check_features(self, "boosters_", X, "predict_quality")
        if prior.shape != (X.shape[0], len(self.names_)):
            raise ValueError(f"prior must be ({X.shape[0]}, {len(self.names_)}), got {prior.shape}")
        z = np.column_stack([b.predict(X, raw_score=True) for b in self.boosters_]) + _logit(prior)
        return np.asarray(1 / (1 + np.exp(-z)))
