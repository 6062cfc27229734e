"""What the LightGBM models share: their hyper-parameters, LightGBM's parameter dict and the input checks.

DifficultyModel and the research candidates (IrtModel, PooledModel, PriorBoostModel) derive from
BoostParams and redeclare only the defaults that differ.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np


class NotFittedError(RuntimeError):
    """predict was called before fit."""


@dataclass(eq=False, kw_only=True)
class BoostParams:
    """LightGBM hyper-parameters under their scikit-learn names; `get_params` is every constructor argument."""

    n_estimators: int = 800
    learning_rate: float = 0.02
    num_leaves: int = 4
    min_child_samples: int = 30
    colsample_bytree: float = 0.1
    subsample: float = 0.8
    reg_lambda: float = 10.0
    n_jobs: int = 0
    random_state: int = 0

    def get_params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def lgb_params(self, objective: str = "cross_entropy") -> dict[str, Any]:
        """The parameter dict for `lgb.train`: deterministic, quiet, column-wise."""
        return {
            "objective": objective,
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


def check_training(X: np.ndarray, Y: np.ndarray, n_columns: int, columns: str) -> tuple[np.ndarray, np.ndarray]:
    """X as float32 and Y as float64, after checking Y is (n_prompts, n_columns) with scores in [0, 1] or NaN."""
    X = np.asarray(X, dtype=np.float32)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[0] != X.shape[0] or Y.shape[1] != n_columns:
        raise ValueError(f"Y must be (n_prompts, n_{columns}); got {Y.shape} for X {X.shape}")
    finite = Y[np.isfinite(Y)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError("scores must lie in [0, 1]")
    return X, Y


def check_features(model: Any, fitted: str, X: np.ndarray, call: str) -> np.ndarray:
    """X as float32 for a fitted model: NotFittedError before fit (fit sets `fitted`), ValueError on a bad shape."""
    if not hasattr(model, fitted):
        raise NotFittedError(f"{type(model).__name__}.{call} called before fit")
    n_features: int = model.n_features_in_
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"expected (n, {n_features}) features, got {X.shape}")
    return X
