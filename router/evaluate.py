"""Cost–quality evaluation: splits, curves, AIQ, APGR, CPT, ECE. Plain functions on arrays.

`scores` and `costs` are realised outcomes, (n_prompts, n_tiers), tiers cheapest first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors

from router.policy import cheapest_sufficient, lambda_grid, tradeoff


def split_by_group(groups: Sequence[str], test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train/test masks such that no group (e.g. a normalised prompt text) is on both sides.

    Not GroupShuffleSplit: it draws other groups for the same seed, and the published numbers rest on this split.
    """
    if not 0 < test_size < 1:
        raise ValueError("test_size must be in (0, 1)")
    uniq = np.array(sorted(set(groups)))
    rng = np.random.default_rng(seed)
    test_groups = set(rng.choice(uniq, size=max(1, round(len(uniq) * test_size)), replace=False))
    test = np.array([g in test_groups for g in groups])
    return ~test, test


@dataclass(frozen=True)
class Curve:
    """Operating points of one method: mean realised cost and quality per knob setting."""

    cost: np.ndarray
    quality: np.ndarray


def realised(choice: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> tuple[float, float]:
    """Mean realised (cost, quality) when prompt i goes to tier choice[i]."""
    rows = np.arange(len(choice))
    return float(costs[rows, choice].mean()), float(scores[rows, choice].mean())


def sweep_targets(pred: np.ndarray, pred_cost: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> Curve:
    """The curve traced by cheapest_sufficient as the quality target moves over every distinct prediction."""
    targets = np.unique(np.concatenate([[-np.inf, np.inf], np.quantile(pred, np.linspace(0, 1, 201))]))
    pts = [realised(cheapest_sufficient(pred, pred_cost, t), scores, costs) for t in targets]
    c, q = zip(*pts, strict=True)
    return Curve(np.array(c), np.array(q))


def sweep_lambdas(pred: np.ndarray, pred_cost: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> Curve:
    """The curve traced by the cost–quality knob: maximise predicted quality - lam * expected cost.

    lam > 0 buys savings with predicted quality; lam < 0 pays for the pricier tier unless a cheaper
    one is predicted better by more than |lam| * cost difference, so the curve runs from all-cheapest
    (lam = inf) to all-top (lam = -inf).
    """
    lams = np.concatenate([[-np.inf], lambda_grid(pred_cost), [np.inf]])
    pts = []
    for lam in lams:
        if np.isinf(lam):
            choice = np.argmin(pred_cost, axis=1) if lam > 0 else np.argmax(pred_cost, axis=1)
        else:
            choice = tradeoff(pred, pred_cost, lam)
        pts.append(realised(choice, scores, costs))
    c, q = zip(*pts, strict=True)
    return Curve(np.array(c), np.array(q))


def point(scores_col: np.ndarray, costs_col: np.ndarray) -> Curve:
    """A single operating point, e.g. always one tier."""
    return Curve(np.array([costs_col.mean()]), np.array([scores_col.mean()]))


def oracle_choice(scores: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Per prompt, the cheapest tier that reaches the best realised score among the tiers."""
    best = scores.max(axis=1, keepdims=True)
    return np.asarray(np.argmin(np.where(scores >= best - 1e-12, costs, np.inf), axis=1))


def upper_hull(cost: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing concave hull of (cost, quality) points: every point on it is reachable.

    Mixing two operating points at random reaches any point on the segment between them, and
    spending more than needed never has to lower quality, so the hull is flat after its peak.
    """
    order = np.lexsort((-quality, cost))
    pts = [(float(cost[i]), float(quality[i])) for i in order]
    hull: list[tuple[float, float]] = []
    for p in pts:
        if hull and p[0] == hull[-1][0]:
            continue  # same cost, lower quality (sorted by quality desc within a cost)
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    peak = int(np.argmax([q for _, q in hull]))
    hull = hull[: peak + 1]
    return np.array([c for c, _ in hull]), np.array([q for _, q in hull])


def hull_quality_at(curve: Curve, budget: float) -> float:
    """Best quality reachable at mean cost <= budget (NaN when even the cheapest point costs more)."""
    hc, hq = upper_hull(curve.cost, curve.quality)
    if budget < hc[0]:
        return float("nan")
    return float(np.interp(budget, hc, hq))


def cost_to_reach(curve: Curve, quality: float) -> float:
    """Least mean cost at which the hull reaches `quality` (inf when it never does)."""
    hc, hq = upper_hull(curve.cost, curve.quality)
    if hq[-1] < quality - 1e-12:
        return float("inf")
    if hq[0] >= quality:
        return float(hc[0])
    k = int(np.argmax(hq >= quality - 1e-12))
    x0, x1, y0, y1 = hc[k - 1], hc[k], hq[k - 1], hq[k]
    return float(x0 + (quality - y0) * (x1 - x0) / (y1 - y0))


def aiq(curve: Curve, max_cost: float) -> float:
    """RouterBench's AIQ: area under the non-decreasing hull over [0, max_cost], divided by max_cost.

    The hull is 0 below its cheapest point and flat after its best one, so every method is
    integrated over the same cost range and a single point (c, q) scores q * (max_cost - c) / max_cost.
    """
    hc, hq = upper_hull(curve.cost, curve.quality)
    keep = hc <= max_cost
    if not keep.any():
        return 0.0
    xs = np.append(hc[keep], max_cost)
    ys = np.append(hq[keep], hull_quality_at(curve, max_cost))
    return float(np.trapezoid(ys, xs) / max_cost)


@dataclass(frozen=True)
class GapMetrics:
    """RouteLLM's gap metrics between a weak (cheapest) and a strong (top) reference."""

    apgr: float
    cpt50: float
    cpt80: float


def gap_metrics(curve: Curve, weak: tuple[float, float], strong: tuple[float, float]) -> GapMetrics:
    """APGR and CPT(50%)/CPT(80%), with cost (not call share) on the x axis.

    PGR(x) = (q(x) - q_weak) / (q_strong - q_weak), where x is the fraction of the way from the
    weak to the strong cost. APGR is the mean PGR over x in [0, 1]; CPT(p) is the least x, in % of
    the strong cost range, at which PGR reaches p. With two tiers and a fixed cost ratio this is
    RouteLLM's definition; with more tiers, cost is the honest axis.
    """
    (cw, qw), (cs, qs) = weak, strong
    if qs <= qw or cs <= cw:
        raise ValueError("the strong reference must cost more and score higher than the weak one")
    xs = np.linspace(0, 1, 1001)
    q = np.array([hull_quality_at(curve, cw + x * (cs - cw)) for x in xs])
    pgr = np.nan_to_num((q - qw) / (qs - qw), nan=0.0)
    apgr = float(np.trapezoid(pgr, xs))

    def cpt(p: float) -> float:
        c = cost_to_reach(curve, qw + p * (qs - qw))
        return float(max(c - cw, 0.0) / (cs - cw) * 100)

    return GapMetrics(apgr=apgr, cpt50=cpt(0.5), cpt80=cpt(0.8))


def expected_calibration_error(pred: np.ndarray, actual: np.ndarray, n_bins: int = 10) -> float:
    """ECE over equal-width bins: sum of |mean prediction - mean outcome| weighted by bin share.

    Binned by hand: sklearn's calibration_curve takes binary labels only, and scores here are fractions.
    """
    pred, actual = np.ravel(pred), np.ravel(actual)
    have = np.isfinite(actual)
    pred, actual = pred[have], actual[have]
    if pred.size == 0:
        return float("nan")
    bins = np.minimum((pred * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += sel.mean() * abs(pred[sel].mean() - actual[sel].mean())
    return float(total)


def knn_predictor(train_X: np.ndarray, train_Y: np.ndarray, k: int = 25) -> Callable[[np.ndarray], np.ndarray]:
    """A kNN baseline: a prompt's predicted score per tier is the mean over its k nearest neighbours.

    Neighbours by cosine distance; NaN scores are ignored (0.5 where all k are NaN).
    """
    nn = NearestNeighbors(n_neighbors=min(k, len(train_X)), metric="cosine", algorithm="brute").fit(train_X)
    filled = np.nan_to_num(train_Y)
    present = np.isfinite(train_Y).astype(float)

    def predict(X: np.ndarray) -> np.ndarray:
        idx = nn.kneighbors(X, return_distance=False)
        num = filled[idx].sum(axis=1)
        den = present[idx].sum(axis=1)
        return np.asarray(np.divide(num, den, out=np.full_like(num, 0.5), where=den > 0))

    return predict
