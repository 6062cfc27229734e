"""Off-policy evaluation: what another policy would have earned and spent on logged traffic.

The log holds, per decision, the tier the logging policy chose, the probability it chose it with (its
propensity, and when known its whole distribution over tiers), the realised outcome of that tier only, and
the model's predictions for every tier. A target policy is a distribution over tiers per decision (one-hot
for a deterministic router). Estimators (Dudík, Langford & Li 2011, "Doubly Robust Policy Evaluation and
Learning"; Swaminathan & Joachims 2015 for SNIPS):

- IPS: mean of w·y, w = π(a|x) / μ(a|x) for the logged tier a; unbiased, high variance.
- SNIPS: Σ w·y / Σ w; a little biased, much lower variance.
- DR: the direct method (a reward model's predictions under π) plus the IPS-weighted residual of the logged
  tier; unbiased when the propensities are right, low variance when the predictions are good.
- SWITCH: DR on the (decision, tier) pairs whose weight is at most τ, the direct method on the rest (Wang,
  Agarwal & Dudík 2017, "Optimal and Adaptive Off-policy Evaluation in Contextual Bandits"). τ is picked per
  estimate by SLOPE, Lepski's method over the candidates ordered from DR (τ = ∞) down (Su, Srinath &
  Krishnamurthy 2020, "Adaptive Estimator Selection for Off-Policy Evaluation"): the smallest τ whose interval
  still meets every larger τ's, so the direct method takes over only where the log shows no bias against it.
  Its bootstrap interval ignores that selection and any bias left in the direct method: use DR's for decisions.

The reward model is the router's predictions recalibrated per tier on the logged outcomes (a logit shift of the
predicted quality, the realised / expected ratio of the cost), cross-fitted: each decision's prediction comes
from a fit on the other folds, so its own outcome never enters its residual (Chernozhukov et al. 2018,
"Double/debiased machine learning"). The raw predictions are optimistic by 0.03–0.05 on our logs; recalibrated,
the direct method's share of SWITCH is far less biased, and DR stays unbiased either way.

Every estimate carries a percentile-bootstrap interval over decisions and the effective sample size
(Σw)² / Σw². A target that puts probability on a tier the logging policy could not have chosen for some
decision has no unbiased estimate from this log: `estimate` refuses it and says which tiers and how many
decisions, rather than returning a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.special import expit, logit
from scipy.stats import norm

ESTIMATORS = ("ips", "snips", "dr", "switch")
FOLDS = 5  # cross-fitting folds of the reward model
MIN_CALIBRATION_ROWS = 30  # a tier with fewer served outcomes in the other folds keeps its raw prediction
MIN_LOGGED = 30  # fewer logged decisions with outcomes than this: no estimate (the bootstrap cannot say how wrong)
# SLOPE's intervals: value ± SLOPE_WIDTH × z × standard error. The paper's bound uses 2; 1 keeps DR more often
# when the direct method looks biased (a biased reward model is the risk SWITCH takes).
SLOPE_WIDTH = 1.0
MAX_SWITCH_CANDIDATES = 12


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
    """IPS, SNIPS, DR, SWITCH (and the model-only direct method) of one quantity under one target policy."""

    ips: Interval
    snips: Interval
    dr: Interval
    switch: Interval
    switch_tau: float  # SWITCH's weight threshold (inf: it is DR)
    dm: float  # the model's own prediction: no outcome enters it, so it is no evidence, only a comparison
    ess: float  # effective sample size of the importance weights
    n: int
    confidence: float

    def as_dict(self) -> dict[str, object]:
        return {
            **{name: getattr(self, name).as_dict() for name in ESTIMATORS},
            "switch_tau": self.switch_tau,
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


def check_evidence(target: np.ndarray, logged: LoggedDecisions) -> None:
    """Raise Unsupported when no logged decision was served a tier the target picks for it (an effective sample
    size of 0): every estimate would be the reward model's predictions alone, with an interval from resampling
    them, which reads as evidence and is none."""
    if not (np.asarray(target)[np.arange(len(logged)), logged.action] > 0).any():
        raise Unsupported(
            f"none of the {len(logged)} logged decisions with an outcome was served a tier this policy picks for "
            "it (effective sample size 0): the log holds no evidence about it"
        )


def weights(target: np.ndarray, logged: LoggedDecisions) -> np.ndarray:
    """Importance weights π(a|x) / μ(a|x) of the logged tiers."""
    rows = np.arange(len(logged))
    return np.asarray(np.asarray(target)[rows, logged.action] / logged.propensity, dtype=float)


def _logit_shift(pred: np.ndarray, y: np.ndarray, iters: int = 50) -> float:
    """The shift b in logit space with mean(expit(logit(pred) + b)) = mean(y): Platt scaling with its slope at 1."""
    z = logit(np.clip(pred, 0.01, 0.99))
    target = float(np.clip(y.mean(), 0.005, 0.995))
    b = 0.0
    for _ in range(iters):
        p = expit(z + b)
        step = (float(p.mean()) - target) / max(float((p * (1 - p)).mean()), 1e-6)
        b -= step
        if abs(step) < 1e-10:
            break
    return b


def recalibrated(logged: LoggedDecisions, folds: int = FOLDS, seed: int = 0) -> LoggedDecisions:
    """The log with its predictions recalibrated per tier on the served tiers' outcomes, cross-fitted over folds.

    Quality: each tier's predictions shifted in logit space so that, on the decisions that served it, they average
    its realised score; cost: scaled by each tier's realised / expected ratio. Only the level is refitted, not the
    ranking: the router learned how prompts differ from full-information outcomes, while the log has one outcome
    per prompt on a selected set of prompts, so slopes refitted on it extrapolate worse (measured: a logistic
    refit on every tier's prediction underestimated the 25% -> 60% budget question by 0.011-0.013, commit
    history of bench/results/trust_ope.json). A tier with fewer than MIN_CALIBRATION_ROWS served outcomes in the
    other folds keeps its raw prediction there.
    """
    n, k = len(logged), logged.n_tiers
    quality = np.array(logged.predicted_quality, dtype=float)
    cost = np.array(logged.predicted_cost, dtype=float)
    fold = np.random.default_rng(seed).permutation(n) % max(2, folds)
    for f in np.unique(fold):
        held, fit = fold == f, fold != f
        for j in range(k):
            on = fit & (logged.action == j)
            if on.sum() < MIN_CALIBRATION_ROWS:
                continue
            shift = _logit_shift(logged.predicted_quality[on, j], np.clip(logged.quality[on], 0.0, 1.0))
            quality[held, j] = expit(logit(np.clip(logged.predicted_quality[held, j], 0.01, 0.99)) + shift)
            expected = float(logged.predicted_cost[on, j].sum())
            if expected > 0:
                cost[held, j] *= float(logged.cost[on].sum()) / expected
    return logged.with_predictions(quality, cost)


@dataclass(frozen=True)
class _Terms:
    """Per decision: the importance weight, w·y (IPS), the DR term, the direct method's term, SWITCH's candidates."""

    w: np.ndarray
    wy: np.ndarray
    dr: np.ndarray
    dm: np.ndarray
    switch: list[tuple[float, np.ndarray]]  # (τ, per-decision SWITCH term), τ from ∞ (DR) down


def _switch_taus(target: np.ndarray, mu: np.ndarray) -> list[float]:
    """Candidate thresholds: ∞, then quantiles of the weights the target gives, largest first."""
    used = target > 0
    ratio = np.divide(target, mu, out=np.full_like(target, np.inf), where=mu > 0)[used]
    distinct = np.unique(ratio[np.isfinite(ratio)])
    if len(distinct) > MAX_SWITCH_CANDIDATES:
        distinct = np.unique(np.quantile(distinct, np.linspace(0, 1, MAX_SWITCH_CANDIDATES)))
    return [float("inf"), *sorted((float(t) for t in distinct[:-1]), reverse=True)]


def _terms(
    target: np.ndarray, logged: LoggedDecisions, y: np.ndarray, predicted: np.ndarray, taus: Sequence[float]
) -> _Terms:
    rows = np.arange(len(logged))
    w = weights(target, logged)
    dm = (np.asarray(target) * predicted).sum(axis=1)
    residual = w * (y - predicted[rows, logged.action])
    switch = []
    if taus:
        mu = logged.logging_distribution()
        ratio = np.divide(target, mu, out=np.full_like(target, np.inf), where=mu > 0)
        for tau in taus:
            small = ratio <= tau
            switch.append((tau, dm + np.where(small[rows, logged.action], residual, 0.0)))
    return _Terms(w, w * y, dm + residual, dm, switch)


def _slope(candidates: Sequence[np.ndarray], confidence: float) -> int:
    """SLOPE (Su et al. 2020): the last candidate whose interval meets all earlier ones' (ordered by variance)."""
    z = float(norm.ppf((1 + confidence) / 2))
    low, high = -np.inf, np.inf
    chosen = 0
    for i, terms in enumerate(candidates):
        se = float(terms.std(ddof=1)) / np.sqrt(len(terms)) if len(terms) > 1 else float("inf")
        value, width = float(terms.mean()), SLOPE_WIDTH * z * se
        low, high = max(low, value - width), min(high, value + width)
        if low > high:
            break
        chosen = i
    return chosen


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
    taus = [tau for tau, _ in sides[0][1].switch]
    switch = [np.asarray(sum(sign * t.switch[i][1] for sign, t in sides), dtype=float) for i in range(len(taus))]
    pick = _slope(switch, confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        snips_point = sum(sign * t.wy.sum() / t.w.sum() for sign, t in sides)
        snips_draws = sum(sign * (counts @ t.wy) / (counts @ t.w) for sign, t in sides)
    return Estimate(
        ips=interval(float(np.mean(ips)), counts @ ips / n),
        snips=interval(float(snips_point), np.asarray(snips_draws)),
        dr=interval(float(np.mean(dr)), counts @ dr / n),
        switch=interval(float(np.mean(switch[pick])), counts @ switch[pick] / n),
        switch_tau=taus[pick],
        dm=float(np.mean(dm)),
        ess=min(_ess(t.w) for _, t in sides),
        n=n,
        confidence=confidence,
    )


def _prepare(
    policies: Sequence[np.ndarray], logged: LoggedDecisions, names: Sequence[str] | None, recalibrate: bool, seed: int
) -> tuple[LoggedDecisions, list[float]]:
    """Check support, recalibrate the reward model, and the SWITCH thresholds the policies' weights suggest."""
    if len(logged) < MIN_LOGGED:
        raise ValueError(
            f"{len(logged)} logged decisions with outcomes: off-policy estimates need at least {MIN_LOGGED}"
        )
    for policy in policies:
        if policy.shape != np.shape(logged.predicted_quality):
            raise ValueError(f"target must have shape {np.shape(logged.predicted_quality)}, not {policy.shape}")
        check_support(policy, logged, names)
        check_evidence(policy, logged)
    mu = logged.logging_distribution()
    taus = sorted({t for policy in policies for t in _switch_taus(policy, mu)}, reverse=True)
    if len(taus) > MAX_SWITCH_CANDIDATES + 1:
        finite = np.array(taus[1:])
        taus = [float("inf"), *sorted(np.unique(np.quantile(finite, np.linspace(0, 1, MAX_SWITCH_CANDIDATES))))[::-1]]
    return (recalibrated(logged, seed=seed) if recalibrate else logged), [float(t) for t in taus]


def estimate(
    name: str,
    target: np.ndarray,
    logged: LoggedDecisions,
    names: Sequence[str] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    recalibrate: bool = True,
) -> PolicyEstimate:
    """IPS, SNIPS, DR and SWITCH of the target's mean quality and mean cost, with bootstrap intervals and the ESS.

    `target` is (n, k): the probability the target policy gives each tier for each logged decision. With
    `recalibrate`, DR and SWITCH use the cross-fitted recalibrated reward model (`recalibrated`), else the raw
    predictions. Raises Unsupported when the log cannot support it, ValueError on an empty log.
    """
    target = np.asarray(target, dtype=float)
    model, taus = _prepare([target], logged, names, recalibrate, seed)
    counts = _resample_counts(len(logged), n_boot, np.random.default_rng(seed))
    q = _summarise([(1.0, _terms(target, model, model.quality, model.predicted_quality, taus))], counts, confidence)
    c = _summarise([(1.0, _terms(target, model, model.cost, model.predicted_cost, taus))], counts, confidence)
    raw = float((target * logged.predicted_quality).sum(axis=1).mean())
    notes = []
    if q.ess < 0.1 * len(logged):
        notes.append(f"effective sample size {q.ess:.0f} of {len(logged)}: few logged decisions agree with it")
    if not 0 <= q.dr.value <= 1:
        notes.append(f"DR quality {q.dr.value:.4f} is outside [0, 1]: too few logged decisions agree with it to tell")
    return PolicyEstimate(name, replace(q, dm=raw), c, notes)


def compare(
    target: np.ndarray,
    baseline: np.ndarray,
    logged: LoggedDecisions,
    names: Sequence[str] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    recalibrate: bool = True,
) -> tuple[Estimate, Estimate]:
    """Quality and cost of `target` minus `baseline`, paired per decision (a tighter interval than two estimates).

    Both sides use the same decisions, reward model and SWITCH threshold, so their shared errors cancel.
    """
    target, baseline = np.asarray(target, dtype=float), np.asarray(baseline, dtype=float)
    model, taus = _prepare([target, baseline], logged, names, recalibrate, seed)
    counts = _resample_counts(len(logged), n_boot, np.random.default_rng(seed))
    quality, cost = (
        _summarise(
            [(1.0, _terms(target, model, y, pred, taus)), (-1.0, _terms(baseline, model, y, pred, taus))],
            counts,
            confidence,
        )
        for y, pred in ((model.quality, model.predicted_quality), (model.cost, model.predicted_cost))
    )
    raw = float(((target - baseline) * logged.predicted_quality).sum(axis=1).mean())
    return replace(quality, dm=raw), cost
