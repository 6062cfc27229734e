"""NoveltyReference: how unlike the training prompts a prompt is, as a percentile of held-out training prompts.

The reference is a random subsample of the training prompts' (unit) embeddings; a prompt's distance is its
mean cosine distance to its `k` nearest reference rows. Training prompts left out of the reference give the
null distribution of that distance, so a prompt's novelty is the share of them that lie closer than it does:
for a prompt drawn like the training prompts it is uniform on [0, 1] (a conformal rank), and 0.99 means
"farther out than 99% of training prompts". A window of novelties is then a two-sample rank test
(`window_shift_z`), with a false-alarm rate that follows from the ranks, not from a tuned threshold.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router.boosting import NotFittedError

NOVELTY_FORMAT = 1
# A prompt farther out than this share of held-out training prompts is out of distribution (1% of in-distribution
# prompts cross it, by construction); the router then falls back to its conservative choice.
OOD_NOVELTY = 0.99
OOD_REASON = "out of distribution"
"""How the reason of a decision that took the fallback for a novel prompt begins (router.routing.Router.decide)."""
_META, _REFERENCE = "novelty.json", "novelty_reference.npy"


def took_fallback(reason: str | None) -> bool:
    """Whether a logged decision's reason says it took the fallback for a novel prompt."""
    return (reason or "").startswith(OOD_REASON)


@dataclass(eq=False)
class NoveltyReference:
    """Reference embeddings of the training prompts and the null distribution of their neighbour distance."""

    n_reference: int = 1024
    max_calibration: int = 1000
    calibration_share: float = 0.3
    k: int = 5
    random_state: int = 0

    @property
    def min_prompts(self) -> int:
        """The fewest training prompts (embeddings) a reference can be fitted on."""
        return 2 * self.k + 10

    def fit(self, embeddings: np.ndarray) -> NoveltyReference:
        """Split the training embeddings (n, d) into reference rows and held-out calibration rows."""
        E = np.asarray(embeddings, dtype=np.float32)
        if E.ndim != 2 or len(E) < self.min_prompts:
            raise ValueError(f"a novelty reference needs at least {self.min_prompts} embeddings (n, d), got {E.shape}")
        order = np.random.default_rng(self.random_state).permutation(len(E))
        n_cal = min(self.max_calibration, max(self.k + 5, int(round(len(E) * self.calibration_share))))
        cal, ref = order[:n_cal], order[n_cal:][: self.n_reference]
        if len(ref) < self.k:
            raise ValueError(f"only {len(ref)} reference rows for k={self.k}")
        self.reference_ = _unit(E[ref])
        self.calibration_ = np.sort(self.distance(E[cal]))
        return self

    def distance(self, embeddings: np.ndarray) -> np.ndarray:
        """Mean cosine distance of each row (n, d) to its k nearest reference rows, (n,)."""
        if not hasattr(self, "reference_"):
            raise NotFittedError("NoveltyReference.distance before fit")
        E = _unit(np.asarray(embeddings, dtype=np.float32).reshape(-1, self.reference_.shape[1]))
        sim = E @ self.reference_.T
        k = min(self.k, sim.shape[1])
        top = np.partition(sim, sim.shape[1] - k, axis=1)[:, -k:]
        return np.asarray(1.0 - top.mean(axis=1), dtype=np.float64)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Novelty of each row: the share of held-out training prompts closer to the reference, (n,) in [0, 1]."""
        d = self.distance(embeddings)
        return np.searchsorted(self.calibration_, d, side="left") / len(self.calibration_)

    @property
    def n_calibration(self) -> int:
        return len(self.calibration_)

    def save(self, directory: Path | str) -> None:
        """The reference as float16 .npy (no pickles) and the rest as JSON, with a format version."""
        if not hasattr(self, "reference_"):
            raise NotFittedError("cannot save an unfitted NoveltyReference")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / _REFERENCE, self.reference_.astype(np.float16), allow_pickle=False)
        meta = {
            "format_version": NOVELTY_FORMAT,
            "params": {
                "n_reference": self.n_reference,
                "max_calibration": self.max_calibration,
                "calibration_share": self.calibration_share,
                "k": self.k,
                "random_state": self.random_state,
            },
            "calibration": [float(v) for v in self.calibration_],
        }
        (directory / _META).write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path | str) -> NoveltyReference | None:
        """The saved reference, or None where the directory has none (a model trained before novelty existed)."""
        directory = Path(directory)
        if not (directory / _META).is_file():
            return None
        meta = json.loads((directory / _META).read_text())
        if meta.get("format_version") != NOVELTY_FORMAT:
            raise ValueError(f"{directory}: novelty format {meta.get('format_version')} is not {NOVELTY_FORMAT}")
        ref = cls(**meta["params"])
        # Re-normalised after the float16 round trip, so distances stay in [0, 2].
        ref.reference_ = _unit(np.load(directory / _REFERENCE, allow_pickle=False).astype(np.float32))
        ref.calibration_ = np.asarray(meta["calibration"], dtype=np.float64)
        return ref


def _unit(E: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    return np.asarray(E / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def window_shift_z(novelty: np.ndarray, n_calibration: int) -> float:
    """How far a window's mean novelty is above 1/2, in standard errors (Mann–Whitney under no shift).

    Under no shift the window and the calibration prompts are exchangeable, so the mean rank has mean 1/2
    and variance (w + n + 1) / (12 w n): the second term is the calibration set's own luck, shared by every
    window of a deployment.
    """
    w = len(novelty)
    if w == 0 or n_calibration <= 0:
        return 0.0
    sd = math.sqrt((w + n_calibration + 1) / (12.0 * w * n_calibration))
    return (float(np.mean(novelty)) - 0.5) / sd
