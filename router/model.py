"""DifficultyModel: per tier, the expected score of that tier's answer to a prompt."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightgbm as lgb
import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import KFold

from router.boosting import BoostParams, NotFittedError, check_features, check_training

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(eq=False, kw_only=True)
class DifficultyModel(BoostParams):
    """One LightGBM booster per tier, objective cross_entropy (0/1 or graded labels in [0, 1]).

    With `calibration="isotonic"`, out-of-fold predictions fit an isotonic map per tier, so the
    predicted score is a calibrated probability; the final boosters are fitted on all rows.
    """

    calibration: Literal["none", "isotonic"] = "none"
    calibration_folds: int = 3

    def _train_one(self, X: np.ndarray, y: np.ndarray) -> lgb.Booster:
        data = lgb.Dataset(X, label=y, free_raw_data=True)
        return lgb.train(self.lgb_params(), data, num_boost_round=self.n_estimators)

    def fit(self, X: np.ndarray, Y: np.ndarray, tier_names: Sequence[str]) -> DifficultyModel:
        """Fit on features X (n, d) and scores Y (n, k); NaN in Y means that tier has no outcome."""
        X, Y = check_training(X, Y, len(tier_names), "tiers")
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
        X = check_features(self, "boosters_", X, "predict_quality")
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
