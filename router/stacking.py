"""StackedQuality: per tier, a logistic meta-model over several routers' predictions (issue 10, candidate g).

Routers that each tie on AIQ (the boosters, a kNN, a task-label prior) err on different prompts. The meta-model
learns, per tier, how much to trust each: logit P(score) = w0 + sum_b w_b * logit(base_b). It must be fitted on
out-of-fold predictions of the bases (`out_of_fold`), so it weighs them as they behave on unseen prompts, and
applied to the bases fitted on all training rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from router.boosting import NotFittedError

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression


def fold_rows(n: int, folds: int = 3, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (fit rows, held rows) of each fold of n rows, as `out_of_fold` uses them."""
    from sklearn.model_selection import KFold  # training only: routing never imports scikit-learn

    return list(KFold(folds, shuffle=True, random_state=seed).split(np.arange(n)))


def out_of_fold(
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], n: int, folds: int = 3, seed: int = 0
) -> np.ndarray:
    """Each of n rows predicted by a model fitted without its fold; `fit_predict(fit_rows, held_rows)` -> (held, k)."""
    out: np.ndarray | None = None
    for fit_rows, held_rows in fold_rows(n, folds, seed):
        pred = np.asarray(fit_predict(fit_rows, held_rows), dtype=np.float64)
        if out is None:
            out = np.full((n, pred.shape[1]), np.nan)
        out[held_rows] = pred
    assert out is not None  # KFold yields at least two folds
    return out


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 0.01, 0.99)
    return np.asarray(np.log(p / (1 - p)))


@dataclass(eq=False, kw_only=True)
class StackedQuality:
    """Per tier, a logistic regression (soft labels in [0, 1]) on the logits of each base's prediction."""

    C: float = 1.0

    def _design(self, bases: Sequence[np.ndarray], j: int) -> np.ndarray:
        return np.column_stack([_logit(np.asarray(b, dtype=np.float64)[:, j]) for b in bases])

    def fit(self, bases: Sequence[np.ndarray], Y: np.ndarray) -> StackedQuality:
        """Fit on the bases' out-of-fold predictions (each (n, k)) and the scores Y (n, k), NaN = no outcome."""
        Y = np.asarray(Y, dtype=np.float64)
        if not bases or any(np.shape(b) != Y.shape for b in bases):
            raise ValueError(f"need at least one base, each shaped like Y {Y.shape}")
        from sklearn.linear_model import LogisticRegression  # training only, as above

        self.n_bases_ = len(bases)
        self.models_: list[LogisticRegression] = []
        for j in range(Y.shape[1]):
            have = np.isfinite(Y[:, j])
            Z, y = self._design(bases, j)[have], Y[have, j]
            # a soft label y is a success with weight y and a failure with weight 1 - y
            rows = np.vstack([Z, Z])
            labels = np.r_[np.ones(len(y)), np.zeros(len(y))]
            weights = np.r_[y, 1 - y]
            self.models_.append(LogisticRegression(C=self.C).fit(rows, labels, sample_weight=weights))
        return self

    @property
    def weights_(self) -> np.ndarray:
        """(k, n_bases) weight of each base's logit per tier."""
        return np.array([m.coef_[0] for m in self.models_])

    def predict_quality(self, bases: Sequence[np.ndarray]) -> np.ndarray:
        """Expected score per tier, (n, k), from the bases' predictions on new prompts."""
        if not hasattr(self, "models_"):
            raise NotFittedError("StackedQuality.predict_quality called before fit")
        if len(bases) != self.n_bases_:
            raise ValueError(f"fitted on {self.n_bases_} bases, got {len(bases)}")
        cols = [m.predict_proba(self._design(bases, j))[:, 1] for j, m in enumerate(self.models_)]
        return np.column_stack(cols)
