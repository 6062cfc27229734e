"""Off-policy evaluation: what another policy would have earned and spent on logged traffic.

The log holds, per decision, the tier the logging policy chose, the probability it chose it with (its
propensity, and when known its whole distribution over tiers), the realised outcome of that tier only, and
the model's predictions for every tier. A target policy is a distribution over tiers per decision (one-hot
for a deterministic router). Estimators (Dudík, Langford & Li 2011, "Doubly Robust Policy Evaluation and
Learning"; Swaminathan & Joachims 2015 for SNIPS):

- IPS: mean of w·y, w = π(a|x) / μ(a|x) for the logged tier a; unbiased, high variance.
- SNIPS: Σ w·y / Σ w; a little biased, much lower variance.
- DR: the direct method (the model's predictions under π) plus the IPS-weighted residual of the logged tier;
  unbiased when the propensities are right, low variance when the predictions are good.

Every estimate carries a percentile-bootstrap interval over decisions and the effective sample size
(Σw)² / Σw². A target that puts probability on a tier the logging policy could not have chosen for some
decision has no unbiased estimate from this log: `estimate` refuses it and says which tiers and how many
decisions, rather than returning a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

ESTIMATORS = ("ips", "snips", "dr")


class Unsupported(ValueError):
    """The log cannot support an estimate: the target picks tiers the logging policy never could have."""


@dataclass(frozen=True)
class LoggedDecisions:
    """Logged decisions with their outcomes, as arrays over n decisions and k tiers (config order)."""

    action: np.ndarray  # (n,) index of the tier served
    propensity: np.ndarray  # (n,) probability the logging policy gave that tier
    quality: np.ndarray  # (n,) realised score of the served tier
    cost: np.ndarray  # (n,) realised cost of the served tier, USD
    predicted_quality: np.ndarray  # (n, k) the model's prediction per tier (the direct method)
    predicted_cost: np.ndarray  # (n, k) expected cost per tier
    logging_probs: np.ndarray | None = None  # (n, k) the logging distribution, when recorded

    def __post_init__(self) -> None:
        n, k = np.shape(self.predicted_quality)
        for name in ("action", "propensity", "quality", "cost"):
            if np.shape(getattr(self, name)) != (n,):
                raise ValueError(f"{name} must have shape ({n},), not {np.shape(getattr(self, name))}")
        if np.shape(self.predicted_cost) != (n, k):
            raise ValueError(f"predicted_cost must have shape ({n}, {k})")
        if self.logging_probs is not None and np.shape(self.logging_probs) != (n, k):
            raise ValueError(f"logging_probs must have shape ({n}, {k})")
        if n and not ((self.action >= 0) & (self.action < k)).all():
            raise ValueError(f"action must index one of {k} tiers")
        if n and not ((self.propensity > 0) & (self.propensity <= 1)).all():
            raise ValueError("propensity must be in (0, 1]: a served tier had a positive probability")

    def __len__(self) -> int:
        return len(self.action)

    @property
    def n_tiers(self) -> int:
        return int(np.shape(self.predicted_quality)[1])

    def take(self, rows: np.ndarray) -> LoggedDecisions:
        """The decisions at `rows` (a boolean mask or indices)."""
        mu = None if self.logging_probs is None else self.logging_probs[rows]
        return LoggedDecisions(
            self.action[rows],
            self.propensity[rows],
            self.quality[rows],
            self.cost[rows],
            self.predicted_quality[rows],
            self.predicted_cost[rows],
            mu,
        )

    def with_predictions(self, quality: np.ndarray, cost: np.ndarray) -> LoggedDecisions:
        """The same decisions with another model's predictions for the direct method (a candidate's own)."""
        return LoggedDecisions(self.action, self.propensity, self.quality, self.cost, quality, cost, self.logging_probs)

    def logging_distribution(self) -> np.ndarray:
        """μ(·|x) per decision: the recorded one, else inferred where it is certain (propensity 1 = one-hot)."""
        if self.logging_probs is not None:
            return np.asarray(self.logging_probs, dtype=float)
        if not np.allclose(self.propensity, 1.0):
            raise ValueError("the log has propensities below 1 but no logging distribution to check support with")
        return one_hot(self.action, self.n_tiers)


def one_hot(choice: np.ndarray, k: int) -> np.ndarray:
    """A deterministic policy's choices as a distribution over k tiers, (n, k)."""
    out = np.zeros((len(choice), k))
    out[np.arange(len(choice)), np.asarray(choice, dtype=int)] = 1.0
    return out


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile-bootstrap interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Estimate:
    """IPS, SNIPS, DR (and the model-only direct method) of one quantity under one target policy."""

    ips: Interval
    snips: Interval
    dr: Interval
    dm: float  # the model's own prediction: no outcome enters it, so it is no evidence, only a comparison
    ess: float  # effective sample size of the importance weights
    n: int
    confidence: float

    def as_dict(self) -> dict[str, object]:
        return {
            **{name: getattr(self, name).as_dict() for name in ESTIMATORS},
            "dm": self.dm,
            "ess": self.ess,
            "n": self.n,
            "confidence": self.confidence,
        }


@dataclass(frozen=True)
class PolicyEstimate:
    """Quality and cost of one target policy on the log."""

    name: str
    quality: Estimate
    cost: Estimate
    notes: list[str] = field(default_factory=list)


def check_support(target: np.ndarray, logged: LoggedDecisions, names: Sequence[str] | None = None) -> None:
    """Raise Unsupported when the target gives probability to a tier the logging policy gave none, naming it."""
    mu = logged.logging_distribution()
    gap = (np.asarray(target) > 0) & (mu <= 0)
    if not gap.any():
        return
    rows = gap.any(axis=1)
    tiers = [int(j) for j in np.flatnonzero(gap.any(axis=0))]
    label = ", ".join(names[j] if names else str(j) for j in tiers)
    raise Unsupported(
        f"the log cannot support this estimate: on {int(rows.sum())} of {len(logged)} logged decisions the "
        f"policy picks a tier ({label}) the logging policy could not have chosen (zero propensity); "
        "log with exploration (TIERWISE_EXPLORATION_RATE > 0) to evaluate policies that differ from it"
    )


def weights(target: np.ndarray, logged: LoggedDecisions) -> np.ndarray:
    """Importance weights π(a|x) / μ(a|x) of the logged tiers."""
    rows = np.arange(len(logged))
    return np.asarray(np.asarray(target)[rows, logged.action] / logged.propensity, dtype=float)


@dataclass(frozen=True)
class _Terms:
    """Per decision: the importance weight, w·y (IPS), the DR term and the direct method's term."""

    w: np.ndarray
    wy: np.ndarray
    dr: np.ndarray
    dm: np.ndarray


def _terms(target: np.ndarray, logged: LoggedDecisions, y: np.ndarray, predicted: np.ndarray) -> _Terms:
    rows = np.arange(len(logged))
    w = weights(target, logged)
    dm = (np.asarray(target) * predicted).sum(axis=1)
    return _Terms(w, w * y, dm + w * (y - predicted[rows, logged.action]), dm)


def _resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How often each decision is drawn in each of `n_boot` bootstrap resamples, (n_boot, n)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def _ess(w: np.ndarray) -> float:
    sw = float(w.sum())
    return sw**2 / float((w**2).sum()) if sw > 0 else 0.0


def _summarise(sides: Sequence[tuple[float, _Terms]], counts: np.ndarray, confidence: float) -> Estimate:
    """The estimate of Σ sign·value over the sides (one side: a policy; two: a paired difference)."""
    n = len(sides[0][1].w)
    lo_q, hi_q = (1 - confidence) / 2, (1 + confidence) / 2

    def interval(point: float, draws: np.ndarray) -> Interval:
        draws = draws[np.isfinite(draws)]
        if not len(draws):
            return Interval(point, float("nan"), float("nan"))
        return Interval(point, float(np.quantile(draws, lo_q)), float(np.quantile(draws, hi_q)))

    ips = sum(sign * t.wy for sign, t in sides)
    dr = sum(sign * t.dr for sign, t in sides)
    dm = sum(sign * t.dm for sign, t in sides)
    with np.errstate(invalid="ignore", divide="ignore"):
        snips_point = sum(sign * t.wy.sum() / t.w.sum() for sign, t in sides)
        snips_draws = sum(sign * (counts @ t.wy) / (counts @ t.w) for sign, t in sides)
    return Estimate(
        ips=interval(float(np.mean(ips)), counts @ ips / n),
        snips=interval(float(snips_point), np.asarray(snips_draws)),
        dr=interval(float(np.mean(dr)), counts @ dr / n),
        dm=float(np.mean(dm)),
        ess=min(_ess(t.w) for _, t in sides),
        n=n,
        confidence=confidence,
    )


def estimate(
    name: str,
    target: np.ndarray,
    logged: LoggedDecisions,
    names: Sequence[str] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PolicyEstimate:
    """IPS, SNIPS and DR of the target's mean quality and mean cost, with bootstrap intervals and the ESS.

    `target` is (n, k): the probability the target policy gives each tier for each logged decision.
    Raises Unsupported when the log cannot support it, ValueError on an empty log.
    """
    target = np.asarray(target, dtype=float)
    if not len(logged):
        raise ValueError("no logged decisions with outcomes to estimate from")
    if target.shape != np.shape(logged.predicted_quality):
        raise ValueError(f"target must have shape {np.shape(logged.predicted_quality)}, not {target.shape}")
    check_support(target, logged, names)
    counts = _resample_counts(len(logged), n_boot, np.random.default_rng(seed))
    q = _summarise([(1.0, _terms(target, logged, logged.quality, logged.predicted_quality))], counts, confidence)
    c = _summarise([(1.0, _terms(target, logged, logged.cost, logged.predicted_cost))], counts, confidence)
    notes = []
    if q.ess < 0.1 * len(logged):
        notes.append(f"effective sample size {q.ess:.0f} of {len(logged)}: few logged decisions agree with it")
    return PolicyEstimate(name, q, c, notes)


def compare(
    target: np.ndarray,
    baseline: np.ndarray,
    logged: LoggedDecisions,
    names: Sequence[str] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[Estimate, Estimate]:
    """Quality and cost of `target` minus `baseline`, paired per decision (a tighter interval than two estimates)."""
    target, baseline = np.asarray(target, dtype=float), np.asarray(baseline, dtype=float)
    for policy in (target, baseline):
        check_support(policy, logged, names)
    counts = _resample_counts(len(logged), n_boot, np.random.default_rng(seed))
    quality, cost = (
        _summarise(
            [(1.0, _terms(target, logged, y, pred)), (-1.0, _terms(baseline, logged, y, pred))], counts, confidence
        )
        for y, pred in ((logged.quality, logged.predicted_quality), (logged.cost, logged.predicted_cost))
    )
    return quality, cost
