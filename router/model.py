"""DifficultyModel: per tier, the expected score of that tier's answer to a prompt."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import KFold

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class NotFittedError(RuntimeError):
    """predict was called before fit."""


class DifficultyModel:
    """One LightGBM booster per tier, objective cross_entropy (0/1 or graded labels in [0, 1]).

    With `calibration="isotonic"`, out-of-fold predictions fit an isotonic map per tier, so the
    predicted score is a calibrated probability; the final boosters are fitted on all rows.
    """

    def __init__(
        self,
        n_estimators: int = 800,
        learning_rate: float = 0.02,
        num_leaves: int = 4,
        min_child_samples: int = 30,
        colsample_bytree: float = 0.1,
        subsample: float = 0.8,
        reg_lambda: float = 10.0,
        calibration: Literal["none", "isotonic"] = "none",
        calibration_folds: int = 3,
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
        self.calibration = calibration
        self.calibration_folds = calibration_folds
        self.n_jobs = n_jobs
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "n_estimators",
                "learning_rate",
                "num_leaves",
                "min_child_samples",
                "colsample_bytree",
                "subsample",
                "reg_lambda",
                "calibration",
                "calibration_folds",
                "n_jobs",
                "random_state",
            )
        }

    def _lgb_params(self) -> dict[str, Any]:
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

    def _train_one(self, X: np.ndarray, y: np.ndarray) -> lgb.Booster:
        data = lgb.Dataset(X, label=y, free_raw_data=True)
        return lgb.train(self._lgb_params(), data, num_boost_round=self.n_estimators)

    def fit(self, X: np.ndarray, Y: np.ndarray, tier_names: Sequence[str]) -> DifficultyModel:
        """Fit on features X (n, d) and scores Y (n, k); NaN in Y means that tier has no outcome."""
        X = np.asarray(X, dtype=np.float32)
        Y = np.asarray(Y, dtype=np.float64)
        if Y.ndim != 2 or Y.shape[0] != X.shape[0] or Y.shape[1] != len(tier_names):
            raise ValueError(f"Y must be (n_prompts, n_tiers); got {Y.shape} for X {X.shape}")
        finite = Y[np.isfinite(Y)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise ValueError("scores must lie in [0, 1]")
        self.tier_names_ = list(tier_names)
        self.n_features_in_ = X.shape[1]
        self.boosters_: list[lgb.Booster] = []
        self.calibrators_: list[tuple[list[float], list[float]] | None] = []
        for j, name in enumerate(self.tier_names_):
            have = np.isfinite(Y[:, j])
            if have.sum() < 10:
                raise ValueError(f"tier '{name}' has only {int(have.sum())} outcomes; need at least 10")
            Xj, yj = X[have], Y[have, j]
            self.calibrators_.append(self._fit_calibrator(Xj, yj) if self.calibration == "isotonic" else None)
            self.boosters_.append(self._train_one(Xj, yj))
        return self

    def _fit_calibrator(self, X: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
        oof = np.zeros(len(y))
        folds = KFold(self.calibration_folds, shuffle=True, random_state=self.random_state)
        for train_idx, held_idx in folds.split(X):
            oof[held_idx] = self._train_one(X[train_idx], y[train_idx]).predict(X[held_idx])
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(oof, y)
        return [float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_]

    def predict_quality(self, X: np.ndarray, num_threads: int | None = None) -> np.ndarray:
        """Expected score per tier, shape (n, k), columns in `tier_names_` order."""
        if not hasattr(self, "boosters_"):
            raise NotFittedError("DifficultyModel.predict_quality called before fit")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected (n, {self.n_features_in_}) features, got {X.shape}")
        out = np.empty((X.shape[0], len(self.boosters_)), dtype=np.float64)
        for j, (booster, cal) in enumerate(zip(self.boosters_, self.calibrators_, strict=True)):
            p = booster.predict(X, num_threads=num_threads) if num_threads else booster.predict(X)
            out[:, j] = np.interp(p, cal[0], cal[1]) if cal else p
        return np.clip(out, 0.0, 1.0)

    def save(self, directory: Path | str) -> None:
        """Write boosters as LightGBM text and the rest as JSON, with a format version."""
        if not hasattr(self, "boosters_"):
            raise NotFittedError("cannot save an unfitted DifficultyModel")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for j, booster in enumerate(self.boosters_):
            booster.save_model(str(directory / f"tier_{j}.txt"))
        meta = {
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "tier_names": self.tier_names_,
            "n_features_in": self.n_features_in_,
            "calibrators": self.calibrators_,
        }
        (directory / "difficulty_model.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: Path | str) -> DifficultyModel:
        directory = Path(directory)
        meta = json.loads((directory / "difficulty_model.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory}: model format {meta.get('format_version')} is not {FORMAT_VERSION}; retrain")
        model = cls(**meta["params"])
        model.tier_names_ = list(meta["tier_names"])
        model.n_features_in_ = int(meta["n_features_in"])
        model.calibrators_ = [(list(c[0]), list(c[1])) if c else None for c in meta["calibrators"]]
        model.boosters_ = [
            lgb.Booster(model_file=str(directory / f"tier_{j}.txt")) for j in range(len(model.tier_names_))
        ]
        return model
