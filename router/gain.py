"""GainModel: per tier, the score it gains over a reference tier, regressed directly (issue 10, candidate f).

A cost-aware router decides by differences: with two tiers, routing by predicted quality is routing by
predicted strong-minus-weak gain (what RouteLLM's routers estimate as a win probability, and what APGR scores).
Per-tier boosters learn each tier's score separately and the gain is a difference of two noisy estimates;
here one LightGBM regressor per tier learns y_j - y_ref itself, where ref is the cheapest tier
(`reference="cheapest"`) or the next cheaper one (`"adjacent"`, gains chained). A tier's predicted quality is
a base prediction of the cheapest tier (any model's) plus the predicted gains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import lightgbm as lgb
import numpy as np

from router.boosting import BoostParams, check_features, check_training


@dataclass(eq=False, kw_only=True)
class GainModel(BoostParams):
    """One L2 LightGBM regressor per tier but the cheapest, on y_tier - y_reference (labels in [-1, 1])."""

    reference: Literal["cheapest", "adjacent"] = "cheapest"

    def _ref(self, j: int) -> int:
        return 0 if self.reference == "cheapest" else j - 1

    def fit(self, X: np.ndarray, Y: np.ndarray, tier_names: Sequence[str]) -> GainModel:
        """Fit on features X (n, d) and scores Y (n, k), tiers cheapest first; NaN means no outcome."""
        X, Y = check_training(X, Y, len(tier_names), "tiers")
        if Y.shape[1] < 2:
            raise ValueError("a gain model needs at least two tiers")
        self.tier_names_ = list(tier_names)
        self.n_features_in_ = X.shape[1]
        self.boosters_: list[lgb.Booster] = []
        for j in range(1, Y.shape[1]):
            gain = Y[:, j] - Y[:, self._ref(j)]
            have = np.isfinite(gain)
            if have.sum() < 10:
                raise ValueError(
                    f"tier '{self.tier_names_[j]}' shares only {int(have.sum())} prompts with its reference"
                )
            data = lgb.Dataset(X[have], label=gain[have])
            self.boosters_.append(lgb.train(self.lgb_params("regression"), data, num_boost_round=self.n_estimators))
        return self

    def predict_gain(self, X: np.ndarray) -> np.ndarray:
        """Predicted gain of each tier over the cheapest, (n, k); column 0 is 0."""
        X = check_features(self, "boosters_", X, "predict_gain")
        out = np.zeros((X.shape[0], len(self.tier_names_)))
        for j, booster in enumerate(self.boosters_, start=1):
            out[:, j] = out[:, self._ref(j)] + np.asarray(booster.predict(X))
        return out

    def predict_quality(self, X: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Expected score per tier, (n, k): `base` (n,), the cheapest tier's predicted score, plus the gains."""
        base = np.asarray(base, dtype=np.float64)
        if base.shape != (np.shape(X)[0],):
            raise ValueError(f"base must be one score per prompt, ({np.shape(X)[0]},); got {base.shape}")
        return np.asarray(np.clip(base[:, None] + self.predict_gain(X), 0.0, 1.0))
