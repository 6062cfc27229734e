"""SharedDifficulty: one prompt-difficulty scale learned from every outcome log, predicted from prompt features.

Stage 1 fits a one-parameter item-response model to the pooled outcome matrix (rows: prompts of every log,
columns: every model of every log, NaN where a model never saw a prompt),
    logit P(model j solves prompt p) = e_p + c_j,
with prompt easiness e_p and model ability c_j (router/irt.py's fit_irt with no factors). Each prompt's
easiness pools the evidence of every model that answered it, so it is a denoised, topic-independent target.
Stage 2 regresses e_p on the prompt's features with LightGBM, so a new prompt gets an easiness from its
features alone. Logs with different model sets share the stage-2 regressor (and models with the same name
share an ability), which is how a log of maths and code teaches the router about prompts its own log lacks.

`oof_easiness_` holds out-of-fold predictions for the training rows: features built on it for a
downstream model carry the same noise at training time as at prediction time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np

from router.boosting import BoostParams, NotFittedError, check_features, check_training, predict_raw
from router.irt import fit_irt


@dataclass(eq=False, kw_only=True)
class SharedDifficulty(BoostParams):
    """Easiness per prompt from pooled outcomes (stage 1), predicted from features by LightGBM (stage 2)."""

    l2_prompt: float = 0.05
    l2_model: float = 0.01
    oof_folds: int = 3
    # stage 2's boosting defaults
    n_estimators: int = 400
    learning_rate: float = 0.04
    num_leaves: int = 8
    min_child_samples: int = 20
    colsample_bytree: float = 0.3

    def _regressor(self, X: np.ndarray, t: np.ndarray) -> lgb.Booster:
        return lgb.train(self.lgb_params("regression"), lgb.Dataset(X, label=t), num_boost_round=self.n_estimators)

    def fit(self, X: np.ndarray, Y: np.ndarray, model_names: Sequence[str]) -> SharedDifficulty:
        """Fit on features X (n, d) and scores Y (n, m) in [0, 1] of every model, NaN where unobserved."""
        X, Y = check_training(X, Y, len(model_names), "models")
        seen = np.isfinite(Y).any(axis=1)
        if seen.sum() < 20:
            raise ValueError(f"the pooled log has only {int(seen.sum())} prompts with an outcome; need at least 20")
        easiness, _, ability, _ = fit_irt(Y[seen], 0, self.l2_prompt, self.l2_model, seed=self.random_state)
        self.model_names_ = list(model_names)
        self.ability_ = ability
        self.n_features_in_ = X.shape[1]
        Xs = X[seen]
        self.booster_ = self._regressor(Xs, easiness)
        oof = np.full(len(X), np.nan)
        if self.oof_folds > 1:
            pred = np.zeros(len(Xs))
            from sklearn.model_selection import KFold  # training only: serving never imports scikit-learn

            folds = KFold(self.oof_folds, shuffle=True, random_state=self.random_state)
            for tr, held in folds.split(Xs):
                pred[held] = self._regressor(Xs[tr], easiness[tr]).predict(Xs[held])
            oof[seen] = pred
        self.oof_easiness_ = oof
        self.train_easiness_ = np.full(len(X), np.nan)
        self.train_easiness_[seen] = easiness
        return self

    def predict_easiness(self, X: np.ndarray, num_threads: int | None = None) -> np.ndarray:
        """Predicted easiness per prompt, (n,): higher is easier for every model."""
        X = check_features(self, "booster_", X, "predict_easiness")
        return np.asarray(predict_raw(self.booster_, X, num_threads), dtype=np.float64)  # regression: raw = prediction

    def save(self, directory: Path | str) -> None:
        if not hasattr(self, "booster_"):
            raise NotFittedError("cannot save an unfitted SharedDifficulty")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(str(directory / "easiness.txt"))
        meta = {
            "params": self.get_params(),
            "model_names": self.model_names_,
            "ability": [float(a) for a in self.ability_],
            "n_features_in": self.n_features_in_,
        }
        (directory / "shared_difficulty.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: Path | str) -> SharedDifficulty:
        directory = Path(directory)
        meta = json.loads((directory / "shared_difficulty.json").read_text())
        model = cls(**meta["params"])
        model.model_names_ = list(meta["model_names"])
        model.ability_ = np.asarray(meta["ability"], dtype=np.float64)
        model.n_features_in_ = int(meta["n_features_in"])
        model.booster_ = lgb.Booster(model_file=str(directory / "easiness.txt"))
        return model
