"""DifficultyModel: per tier, the expected score of that tier's answer to a prompt.

Optionally on top of a SharedDifficulty (router/shared_difficulty.py): a prompt easiness learned from every
outcome log, so the tier boosters start from what all logs say about a prompt's difficulty
(`easiness="prior"`: each tier's booster starts from a logistic calibration a_j + b_j * easiness and learns
only the departures from it) or see it as one more feature (`easiness="feature"`).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightgbm as lgb
import numpy as np

from router.boosting import BoostParams, NotFittedError, check_features, check_training, predict_raw
from router.shared_difficulty import SharedDifficulty

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MIN_TIER_OUTCOMES = 10
"""The fewest training outcomes a tier's booster is fitted from."""


def few_outcome_tiers(counts: np.ndarray, few_rows: int) -> np.ndarray:
    """Which tiers (by their outcome counts) are "new": fewer than `few_rows` outcomes, and fewer than half the
    best-covered tier's (a small log keeps its boosters). On a shared difficulty such a tier gets no booster of its
    own; its task prior comes from its task profile (TaskPrior.with_tier_profile, training/fit.fit_task_prior)."""
    counts = np.asarray(counts)
    few: np.ndarray = counts < min(few_rows, 0.5 * counts.max())
    return few


@dataclass(eq=False, kw_only=True)
class DifficultyModel(BoostParams):
    """One LightGBM booster per tier, objective cross_entropy (0/1 or graded labels in [0, 1]).

    With `calibration="isotonic"`, out-of-fold predictions fit an isotonic map per tier, so the
    predicted score is a calibrated probability; the final boosters are fitted on all rows.

    With a shared difficulty (easiness="prior"), a tier with fewer than `few_rows` outcomes and fewer than half
    the best-covered tier's (a model just swapped in) gets no booster: its prediction is the shared easiness
    calibrated on its outcomes, with the slope shrunk toward the other tiers' (bench/quality_add_model.py
    measures this path).
    """

    calibration: Literal["none", "isotonic"] = "none"
    calibration_folds: int = 3
    easiness: Literal["prior", "feature"] = "prior"
    few_rows: int = 300

    def _train_one(self, X: np.ndarray, y: np.ndarray, init: np.ndarray | None = None) -> lgb.Booster:
        data = lgb.Dataset(X, label=y, init_score=init, free_raw_data=True)
        return lgb.train(self.lgb_params(), data, num_boost_round=self.n_estimators)

    def fit(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        tier_names: Sequence[str],
        shared: SharedDifficulty | None = None,
        train_easiness: np.ndarray | None = None,
    ) -> DifficultyModel:
        """Fit on features X (n, d) and scores Y (n, k); NaN in Y means that tier has no outcome.

        With a fitted `shared` difficulty, `train_easiness` (n,) is the easiness of the training prompts as the
        model will see it at prediction time (out-of-fold predictions); default: `shared`'s predictions on X.
        """
        X, Y = check_training(X, Y, len(tier_names), "tiers")
        self.tier_names_ = list(tier_names)
        self.n_features_in_ = X.shape[1]
        self.shared_ = shared
        self.easiness_calibration_: list[tuple[float, float]] = []
        e = None
        if shared is not None:
            e = shared.predict_easiness(X) if train_easiness is None else np.asarray(train_easiness, dtype=np.float64)
            if e.shape != (X.shape[0],) or not np.isfinite(e).all():
                raise ValueError(f"train_easiness must be {X.shape[0]} finite values, one per prompt")
        self.boosters_: list[lgb.Booster | None] = []
        self.calibrators_: list[tuple[list[float], list[float]] | None] = []
        counts = np.isfinite(Y).sum(axis=0)
        for j, name in enumerate(self.tier_names_):
            if counts[j] < MIN_TIER_OUTCOMES:
                raise ValueError(f"tier '{name}' has only {int(counts[j])} outcomes; need at least {MIN_TIER_OUTCOMES}")
        few = few_outcome_tiers(counts, self.few_rows) & (e is not None) & (self.easiness == "prior")
        slopes: list[float] = []
        for j in np.argsort(few, kind="stable"):  # tiers with many rows first: their slopes are the prior
            have = np.isfinite(Y[:, j])
            Xj, yj = X[have], Y[have, j]
            init = None
            if e is not None:
                ej = e[have]
                if self.easiness == "feature":
                    Xj = np.column_stack([Xj, ej]).astype(np.float32)
                else:
                    b0 = float(np.median(slopes)) if slopes else 1.0
                    a, b = fit_logistic_1d(ej, yj, b_prior=b0, prior_rows=50 if few[j] else 0)
                    slopes.append(b)
                    self.easiness_calibration_.append((a, b))
                    init = a + b * ej
            boost = not few[j]
            cal = self._fit_calibrator(Xj, yj, init) if self.calibration == "isotonic" and boost else None
            self.calibrators_.append(cal)
            self.boosters_.append(self._train_one(Xj, yj, init) if boost else None)
        order = list(np.argsort(few, kind="stable"))
        back = [order.index(j) for j in range(len(order))]
        self.boosters_ = [self.boosters_[i] for i in back]
        self.calibrators_ = [self.calibrators_[i] for i in back]
        if self.easiness_calibration_:
            self.easiness_calibration_ = [self.easiness_calibration_[i] for i in back]
        return self

    def refit_tier(self, j: int, X: np.ndarray, y: np.ndarray) -> DifficultyModel:
        """A copy whose tier j is fitted afresh from one model's outcomes (X, y) alone, the other tiers untouched.

        For a model swapped in behind tier j: its shared easiness calibrated on its outcomes (slope shrunk toward
        the other tiers'), plus a booster from that start when it has at least `few_rows` outcomes.
        """
        X = check_features(self, "boosters_", X, "refit_tier")
        y = np.asarray(y, dtype=np.float64)
        if self.shared_ is None or self.easiness != "prior":
            raise ValueError("refitting one tier needs a model trained on the shared difficulty (easiness='prior')")
        if y.shape != (X.shape[0],) or len(y) < 10 or not np.isfinite(y).all() or y.min() < 0 or y.max() > 1:
            raise ValueError(f"need at least 10 scores in [0, 1], one per prompt; got {y.shape[0]}")
        e = self.shared_.predict_easiness(X)
        others = [b for i, (_, b) in enumerate(self.easiness_calibration_) if i != j]
        few = len(y) < self.few_rows
        a, b = fit_logistic_1d(e, y, b_prior=float(np.median(others)) if others else 1.0, prior_rows=50 if few else 0)
        out = copy.copy(self)
        out.easiness_calibration_ = list(self.easiness_calibration_)
        out.easiness_calibration_[j] = (a, b)
        out.boosters_ = list(self.boosters_)
        out.boosters_[j] = None if few else self._train_one(X, y, a + b * e)
        out.calibrators_ = list(self.calibrators_)
        out.calibrators_[j] = None
        return out

    def _inputs(self, X: np.ndarray, j: int, e: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Tier j's booster input and init score (logit) for features X and easiness e."""
        if e is None:
            return X, None
        if self.easiness == "feature":
            return np.column_stack([X, e]).astype(np.float32), None
        a, b = self.easiness_calibration_[j]
        return X, a + b * e

    def _fit_calibrator(self, X: np.ndarray, y: np.ndarray, init: np.ndarray | None) -> tuple[list[float], list[float]]:
        # scikit-learn in training only: serving loads the thresholds, never scikit-learn (router/lean_lightgbm.py)
        from sklearn.isotonic import IsotonicRegression
        from sklearn.model_selection import KFold

        oof = np.zeros(len(y))
        folds = KFold(self.calibration_folds, shuffle=True, random_state=self.random_state)
        for train_idx, held_idx in folds.split(X):
            fold_init = None if init is None else init[train_idx]
            booster = self._train_one(X[train_idx], y[train_idx], fold_init)
            raw = np.asarray(booster.predict(X[held_idx], raw_score=True))
            oof[held_idx] = _sigmoid(raw if init is None else raw + init[held_idx])
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(oof, y)
        return [float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_]

    def predict_quality(
        self, X: np.ndarray, num_threads: int | None = None, easiness: np.ndarray | None = None
    ) -> np.ndarray:
        """Expected score per tier, shape (n, k), columns in `tier_names_` order.

        `easiness` (n,) replaces the shared difficulty's prediction, e.g. its out-of-fold values for training
        prompts (stacking, bench/quality.py); default: predicted from X.
        """
        X = check_features(self, "boosters_", X, "predict_quality")
        e = None
        if self.shared_ is not None:
            e = self.shared_.predict_easiness(X, num_threads) if easiness is None else np.asarray(easiness, np.float64)
            if e.shape != (X.shape[0],):
                raise ValueError(f"easiness must be one value per prompt, ({X.shape[0]},); got {e.shape}")
        out = np.empty((X.shape[0], len(self.boosters_)), dtype=np.float64)
        for j, (booster, cal) in enumerate(zip(self.boosters_, self.calibrators_, strict=True)):
            Xj, init = self._inputs(X, j, e)
            raw = np.zeros(X.shape[0])
            if booster is not None:
                raw = predict_raw(booster, Xj, num_threads)
            p = _sigmoid(raw if init is None else raw + init)
            out[:, j] = np.interp(p, cal[0], cal[1]) if cal else p
        return np.clip(out, 0.0, 1.0)

    def save(self, directory: Path | str) -> None:
        """Write boosters as LightGBM text and the rest as JSON, with a format version."""
        if not hasattr(self, "boosters_"):
            raise NotFittedError("cannot save an unfitted DifficultyModel")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for j, booster in enumerate(self.boosters_):
            if booster is not None:
                booster.save_model(str(directory / f"tier_{j}.txt"))
        if self.shared_ is not None:
            self.shared_.save(directory / "shared_difficulty")
        meta = {
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "tier_names": self.tier_names_,
            "n_features_in": self.n_features_in_,
            "calibrators": self.calibrators_,
            "easiness_calibration": self.easiness_calibration_,
            # Which tiers have a booster file: a missing one is a damaged model, and a stray one (a folder written
            # over) is not read (models saved before this key: whichever files are there).
            "boosters": [booster is not None for booster in self.boosters_],
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
        model.easiness_calibration_ = [(float(a), float(b)) for a, b in meta.get("easiness_calibration", [])]
        shared_dir = directory / "shared_difficulty"
        model.shared_ = SharedDifficulty.load(shared_dir) if shared_dir.is_dir() else None
        paths = [directory / f"tier_{j}.txt" for j in range(len(model.tier_names_))]
        saved = meta.get("boosters") or [path.is_file() for path in paths]
        missing = [path.name for path, has in zip(paths, saved, strict=True) if has and not path.is_file()]
        if missing:
            raise ValueError(f"{directory}: {', '.join(missing)} missing: the model is incomplete")
        try:
            model.boosters_ = [
                lgb.Booster(model_file=str(path)) if has else None for path, has in zip(paths, saved, strict=True)
            ]
        except lgb.basic.LightGBMError as exc:
            raise ValueError(f"{directory}: a booster file is damaged: {exc}") from None
        return model


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64))))


def fit_logistic_1d(
    x: np.ndarray, y: np.ndarray, b_prior: float = 1.0, prior_rows: float = 0.0, iters: int = 50
) -> tuple[float, float]:
    """(a, b) maximising the Bernoulli likelihood of soft labels y in [0, 1] under sigmoid(a + b x) (Newton steps).

    The slope b is shrunk toward `b_prior` with the weight of about `prior_rows` observations (0: a tiny ridge).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    Z = np.column_stack([np.ones_like(x), x])
    w = np.array([0.0, b_prior])
    strength = max(prior_rows * 0.25 * float(np.var(x)), 1e-3 * len(x))
    reg = strength * np.diag([0.0, 1.0])
    target = np.array([0.0, b_prior])
    for _ in range(iters):
        p = _sigmoid(Z @ w)
        grad = Z.T @ (p - y) + reg @ (w - target)
        hess = (Z * (p * (1 - p))[:, None]).T @ Z + reg + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return float(w[0]), float(w[1])
