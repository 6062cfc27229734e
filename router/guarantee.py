"""A quality guarantee: "lose at most ε of the top tier's quality, with confidence 1 − δ".

Method: Learn then Test (Angelopoulos, Bates, Candès, Jordan & Lei, 2021, "Learn then Test: Calibrating
Predictive Algorithms to Achieve Risk Control", arXiv:2110.01052) with the Hoeffding–Bentkus p-value (Bates,
Angelopoulos, Lei, Malik & Jordan, 2021, "Distribution-Free, Risk-Controlling Prediction Sets", JACM; Prop. 3).

- The policies are the cost–quality knob's (`tradeoff`) on the λ grid, ascending: the first ones send every
  prompt to the most expensive tier (loss 0), later ones spend less.
- A prompt's loss is max(0, top tier's score − routed tier's score) in [0, 1]; its mean bounds the mean quality
  lost against always using the top tier (gains elsewhere are not credited, so the bound is conservative).
- Each λ's null "mean loss > ε" is tested with the Hoeffding–Bentkus p-value on the held-out calibration
  outcomes; fixed-sequence testing walks the grid from the safe end and stops at the first λ it cannot reject.
  The chosen λ is the last rejected one, so with probability ≥ 1 − δ over the calibration set, its mean loss on
  new prompts drawn like the calibration prompts is at most ε (marginally over prompts; drift breaks this).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from router.policy import lambda_grid, tradeoff

METHOD = "Learn then Test, Hoeffding-Bentkus p-value, fixed-sequence over the λ grid"
EPSILONS = (0.01, 0.02, 0.05, 0.1)
DELTAS = (0.05, 0.1, 0.2)


def hb_p_value(risk_hat: float, n: int, epsilon: float) -> float:
    """Hoeffding–Bentkus p-value of the null "mean loss > ε" for a mean loss `risk_hat` of n losses in [0, 1]."""
    if n <= 0:
        return 1.0
    if epsilon >= 1.0:
        return 0.0
    r = min(max(risk_hat, 0.0), epsilon)
    hoeffding = math.exp(-n * _kl(r, epsilon))
    bentkus = math.e * binomial_cdf(math.ceil(n * risk_hat - 1e-9), n, epsilon)
    return min(1.0, hoeffding, bentkus)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space from the pmf's recurrence (no scipy in the serving path)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    i = np.arange(k, dtype=float)
    steps = np.log((n - i) / (i + 1)) + math.log(p / (1 - p))
    log_pmf = np.concatenate([[0.0], np.cumsum(steps)]) + n * math.log1p(-p)
    top = float(log_pmf.max())
    return min(1.0, math.exp(top) * float(np.exp(log_pmf - top).sum()))


def _kl(a: float, b: float) -> float:
    """Bernoulli KL(a || b), with 0 log 0 = 0."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def top_tier(cost: np.ndarray) -> int:
    """The most expensive tier on average: the reference whose quality the guarantee protects."""
    return int(np.argmax(np.atleast_2d(cost).mean(axis=0)))


def quality_loss(choice: np.ndarray, scores: np.ndarray, top: int) -> np.ndarray:
    """Per prompt, how much worse the routed tier scored than the top tier (0 when it did as well), (n,)."""
    rows = np.arange(len(scores))
    return np.asarray(np.clip(scores[rows, top] - scores[rows, choice], 0.0, 1.0))


@dataclass(frozen=True)
class OperatingPoint:
    """The calibrated knob for one (ε, δ); `cost_weight_per_usd` None means "always the top tier"."""

    epsilon: float
    delta: float
    cost_weight_per_usd: float | None
    n_calibration: int
    calibration_loss: float
    calibration_cost_share: float

    def describe(self) -> str:
        return (
            f"guarantee: loses at most {self.epsilon:g} of the top tier's mean quality with confidence "
            f"{1 - self.delta:g} (Learn then Test on {self.n_calibration} held-out prompts)"
        )


def calibrate(pred: np.ndarray, cost: np.ndarray, scores: np.ndarray, epsilon: float, delta: float) -> OperatingPoint:
    """The cheapest λ on the grid that Learn then Test certifies for (ε, δ) on these held-out prompts.

    `pred` and `cost` are the router's predicted quality and expected cost, `scores` the realised scores,
    all (n, k) with every tier scored.
    """
    if not (0 < epsilon < 1 and 0 < delta < 1):
        raise ValueError(f"need 0 < epsilon < 1 and 0 < delta < 1, got {epsilon}, {delta}")
    pred, cost, scores = (np.asarray(a, dtype=float) for a in (pred, cost, scores))
    if not np.isfinite(scores).all():
        raise ValueError("calibration needs every tier's score on every prompt")
    n, top = len(scores), top_tier(cost)
    chosen: float | None = None
    loss_at, share_at = 0.0, 1.0
    top_cost = float(cost[:, top].mean())
    for lam in lambda_grid(cost):
        choice = tradeoff(pred, cost, float(lam))
        risk = float(quality_loss(choice, scores, top).mean())
        if hb_p_value(risk, n, epsilon) > delta:
            break
        chosen, loss_at = float(lam), risk
        share_at = float(cost[np.arange(n), choice].mean()) / top_cost if top_cost > 0 else 1.0
    return OperatingPoint(epsilon, delta, chosen, n, loss_at, share_at)


def point_estimate(pred: np.ndarray, cost: np.ndarray, scores: np.ndarray, epsilon: float) -> float | None:
    """The naive knob without confidence: the largest λ in the same sequence whose calibration loss is ≤ ε."""
    top, chosen = top_tier(cost), None
    for lam in lambda_grid(cost):
        if float(quality_loss(tradeoff(pred, cost, float(lam)), scores, top).mean()) > epsilon:
            break
        chosen = float(lam)
    return chosen


def choices_at(pred: np.ndarray, cost: np.ndarray, cost_weight_per_usd: float | None) -> np.ndarray:
    """The tier each prompt gets at an operating point's knob (None: the top tier)."""
    if cost_weight_per_usd is None:
        return np.full(len(pred), top_tier(cost))
    return tradeoff(pred, cost, cost_weight_per_usd)


@dataclass(frozen=True)
class QualityGuarantee:
    """The operating points calibrated for a grid of (ε, δ), stored with the model."""

    points: tuple[OperatingPoint, ...]
    method: str = METHOD

    @classmethod
    def fit(
        cls,
        pred: np.ndarray,
        cost: np.ndarray,
        scores: np.ndarray,
        epsilons: Iterable[float] = EPSILONS,
        deltas: Iterable[float] = DELTAS,
    ) -> QualityGuarantee:
        ds = list(deltas)
        return cls(tuple(calibrate(pred, cost, scores, e, d) for e in epsilons for d in ds))

    def select(self, epsilon: float, delta: float) -> OperatingPoint | None:
        """The stored point that implies the asked one: the largest ε' ≤ ε, then the largest δ' ≤ δ.

        The choice depends only on the request, never on the calibration data, so the point's own
        guarantee (ε', δ') carries over.
        """
        ok = [p for p in self.points if p.epsilon <= epsilon + 1e-12 and p.delta <= delta + 1e-12]
        return max(ok, key=lambda p: (p.epsilon, p.delta)) if ok else None

    def offered(self) -> str:
        return ", ".join(f"(ε={p.epsilon:g}, δ={p.delta:g})" for p in self.points)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "points": [asdict(p) for p in self.points]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityGuarantee:
        points: Sequence[Mapping[str, Any]] = data["points"]
        return cls(tuple(OperatingPoint(**p) for p in points), str(data.get("method", METHOD)))
