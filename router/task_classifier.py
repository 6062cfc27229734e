"""TaskClassifier: which of the log's tasks a prompt looks like, from the router's own features.

A multinomial logistic regression on the standardised feature vector (embedding + text features), fitted with
scikit-learn at training time and applied in numpy at serving time (the weights are plain arrays in the
artifact, no pickles). Its probabilities weight the per-category means of `router.task_hint.TaskPrior`, so a
prompt whose caller names no task still gets the pooled outcome rates of the tasks it resembles.

Why: on the shared logs the per-tier boosters are noisier than a plain per-task mean (the task-label prior beat
the router on llmrouter_dc and routerbench with 11 tiers). The classifier recovers the task from the text
(0.88-0.90 of llmrouter_dc's test prompts to the right one of its tasks) and the blend keeps the boosters'
within-task signal; see `make quality`, "router" against "boosters alone (no task prior)".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

C_REGULARISATION = 0.1
"""Inverse L2 strength of the logistic regression on standardised features. C = 0.1 and 1 routed alike on the
shared logs (3 split seeds, every AIQ within 0.0013 of each other); the stronger regularisation is the safer guess."""
MAX_ITER = 300
TASK_CLASSIFIER_FILE = "task_classifier.npz"


@dataclass(frozen=True, eq=False)
class TaskClassifier:
    """Standardisation (mean, scale per feature), then softmax(z @ coef.T + intercept) over `labels`."""

    labels: tuple[str, ...]
    mean: np.ndarray  # (d,)
    scale: np.ndarray  # (d,)
    coef: np.ndarray  # (c, d)
    intercept: np.ndarray  # (c,)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskClassifier):
            return NotImplemented
        return self.labels == other.labels and all(
            np.array_equal(getattr(self, f), getattr(other, f)) for f in ("mean", "scale", "coef", "intercept")
        )

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def fit(
        cls, X: np.ndarray, labels: Sequence[str] | np.ndarray, seed: int = 0, c: float = C_REGULARISATION
    ) -> TaskClassifier:
        """From feature rows (n, d) and each row's task label; at least two distinct labels."""
        from sklearn.linear_model import LogisticRegression

        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(labels).astype(str)
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"features {X.shape} and {len(y)} labels do not match")
        if len(np.unique(y)) < 2:
            raise ValueError("a task classifier needs at least two tasks")
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        clf = LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed)
        clf.fit((X - mean) / scale, y)
        coef, intercept = np.asarray(clf.coef_), np.asarray(clf.intercept_)
        if len(clf.classes_) == 2:  # scikit-learn keeps one row for two classes: softmax over (0, z)
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        return cls(tuple(str(v) for v in clf.classes_), mean, scale, coef, intercept)

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Probability of each label per row, (n, c)."""
        X = np.asarray(X, dtype=np.float64).reshape(-1, len(self.mean))
        z = ((X - self.mean) / self.scale) @ self.coef.T + self.intercept
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return np.asarray(p / p.sum(axis=1, keepdims=True))

    def save(self, path: Path | str) -> None:
        np.savez(
            path,
            labels=np.asarray(self.labels, dtype=str),
            mean=self.mean,
            scale=self.scale,
            coef=self.coef,
            intercept=self.intercept,
        )

    @classmethod
    def load(cls, path: Path | str) -> TaskClassifier:
        with np.load(path, allow_pickle=False) as z:
            return cls(tuple(str(v) for v in z["labels"]), z["mean"], z["scale"], z["coef"], z["intercept"])
