"""What the LightGBM models share: their hyper-parameters, LightGBM's parameter dict and the input checks.

DifficultyModel and the research candidates (IrtModel, PooledModel, PriorBoostModel) derive from
BoostParams and redeclare only the defaults that differ.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from dataclasses import dataclass, fields
from typing import Any

import lightgbm as lgb
import numpy as np
from lightgbm.basic import _LIB, _safe_call


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


_PREDICT_RAW_SCORE, _DTYPE_FLOAT64 = 1, 1  # LightGBM's C API constants (C_API_PREDICT_RAW_SCORE, C_API_DTYPE_FLOAT64)


class _SingleRow:
    """LightGBM's single-row fast path (LGBM_BoosterPredictForMatSingleRowFast) for one booster.

    Hand-written with ctypes because the Python API has no door to it, and `Booster.predict` spends ~30 µs per
    call on parameter strings and checks around ~5 µs of tree walking: a third of a /route with 3 tiers.
    The fast config keeps per-call buffers, so calls are serialised by a lock (the GIL is released in C).
    """

    def __init__(self, booster: lgb.Booster, n_features: int):
        self._config = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(_PREDICT_RAW_SCORE),
                ctypes.c_int(0),
                ctypes.c_int(booster.best_iteration),
                ctypes.c_int(_DTYPE_FLOAT64),
                ctypes.c_int32(n_features),
                ctypes.c_char_p(b"num_threads=1"),
                ctypes.byref(self._config),
            )
        )
        self._finalizer = weakref.finalize(self, _LIB.LGBM_FastConfigFree, self._config)
        self._lock = threading.Lock()
        # Buffers and their pointers made once: numpy's `.ctypes` costs more than the prediction.
        self._row = np.zeros(n_features, dtype=np.float64)
        self._out = np.zeros(1, dtype=np.float64)
        self._out_len = ctypes.c_int64(0)
        self._args = (
            self._config,
            self._row.ctypes.data_as(ctypes.c_void_p),
            ctypes.byref(self._out_len),
            self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        )

    def raw_score(self, row: np.ndarray) -> float:
        """The raw score of one row of n_features values."""
        with self._lock:
            self._row[:] = row
            _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFast(*self._args))
            return float(self._out[0])


_fast: weakref.WeakKeyDictionary[lgb.Booster, _SingleRow] = weakref.WeakKeyDictionary()
_fast_lock = threading.Lock()


def predict_raw(booster: lgb.Booster, X: np.ndarray, num_threads: int | None = None) -> np.ndarray:
    """Raw scores of `booster` for the rows of X, (n,); one row goes through LightGBM's single-row fast path."""
    if X.shape[0] != 1:
        kw = {"num_threads": num_threads} if num_threads else {}
        return np.asarray(booster.predict(X, raw_score=True, **kw))  # type: ignore[arg-type]
    single = _fast.get(booster)
    if single is None:
        with _fast_lock:
            single = _fast.get(booster) or _SingleRow(booster, X.shape[1])
            _fast[booster] = single
    return np.array([single.raw_score(X[0])])
