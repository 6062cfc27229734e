"""Cost–quality evaluation: splits, curves, AIQ, APGR, CPT, ECE, baselines, bootstrap CIs. Plain functions on arrays.

`scores` and `costs` are realised outcomes, (n_prompts, n_tiers), tiers cheapest first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from router.policy import cheapest_sufficient, lambda_grid, tradeoff
from router.task_hint import TaskPrior

# How a log is split. "hash": a group's side is fixed by a hash of the seed and the group alone, so a grown log keeps
# every old prompt on its side (retrains compare with the champion on all its held-out prompts; a model is never
# scored on a prompt it trained on, whatever prompts were added). "draw": the seeded draw of a share of the log's
# groups that models trained before the hash recorded no rule for (another log, another draw).
SPLIT_RULES = ("hash", "draw")


def split_by_group(
    groups: Sequence[str], test_size: float, seed: int, rule: str = "hash"
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train/test masks such that no group (e.g. a normalised prompt text) is on both sides (`SPLIT_RULES`).

    With "hash", about `test_size` of the groups are held out (at least one): those whose hash falls below it.
    """
    if not 0 < test_size < 1:
        raise ValueError("test_size must be in (0, 1)")
    if rule not in SPLIT_RULES:
        raise ValueError(f"unknown split rule {rule!r}: one of {', '.join(SPLIT_RULES)}")
    uniq = sorted(set(groups))
    if rule == "draw":
        rng = np.random.default_rng(seed)
        test_groups = set(rng.choice(np.array(uniq), size=max(1, round(len(uniq) * test_size)), replace=False))
    else:
        unit = {g: _unit_hash(seed, g) for g in uniq}
        test_groups = {g for g, u in unit.items() if u < test_size}
        if not test_groups and uniq:
            test_groups = {min(unit, key=unit.__getitem__)}
    test = np.array([g in test_groups for g in groups], dtype=bool)
    return ~test, test


def _unit_hash(seed: int, group: str) -> float:
    """A group's place in [0, 1) for a seed: the same on every machine and in every log."""
    digest = hashlib.blake2b(f"{seed}\x00{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Curve:
    """Operating points of one method: mean realised cost and quality per knob setting."""

    cost: np.ndarray
    quality: np.ndarray


def realised(choice: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> tuple[float, float]:
    """Mean realised (cost, quality) when prompt i goes to tier choice[i]."""
    rows = np.arange(len(choice))
    return float(costs[rows, choice].mean()), float(scores[rows, choice].mean())


def target_choices(pred: np.ndarray, pred_cost: np.ndarray) -> np.ndarray:
    """The decisions of the quality-target policy, (n_targets, n), over every distinct level of the predictions."""
    targets = np.unique(np.concatenate([[-np.inf, np.inf], np.quantile(pred, np.linspace(0, 1, 201))]))
    return np.stack([cheapest_sufficient(pred, pred_cost, t) for t in targets])


def sweep_targets(pred: np.ndarray, pred_cost: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> Curve:
    """The curve traced by cheapest_sufficient as the quality target moves over every distinct prediction."""
    return curve_of(target_choices(pred, pred_cost), scores, costs)


def lambda_choices(pred: np.ndarray, pred_cost: np.ndarray) -> np.ndarray:
    """The decisions of the cost–quality knob, (n_lambdas, n): maximise predicted quality - lam * expected cost.

    lam > 0 buys savings with predicted quality; lam < 0 pays for the pricier tier unless a cheaper
    one is predicted better by more than |lam| * cost difference, so the rows run from all-top
    (lam = -inf) to all-cheapest (lam = inf).
    """
    rows = [np.argmax(pred_cost, axis=1)]
    rows += [tradeoff(pred, pred_cost, float(lam)) for lam in lambda_grid(pred_cost)]
    rows.append(np.argmin(pred_cost, axis=1))
    return np.stack(rows)


def curve_of(choices: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> Curve:
    """The mean realised (cost, quality) of each row of a decision matrix (n_settings, n)."""
    rows = np.arange(scores.shape[0])
    return Curve(costs[rows, choices].mean(axis=1), scores[rows, choices].mean(axis=1))


def sweep_lambdas(pred: np.ndarray, pred_cost: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> Curve:
    """The curve traced by the cost–quality knob (lambda_choices) on the realised outcomes."""
    return curve_of(lambda_choices(pred, pred_cost), scores, costs)


def oracle_curve(scores: np.ndarray, costs: np.ndarray) -> Curve:
    """The oracle as a curve: the λ sweep on the true scores and costs (perfect knowledge at every budget).

    A single oracle point (best score, cheapest) sits at one budget only; below it, a router may look
    better than "perfect knowledge" unless the oracle is traced at every budget too.
    """
    return sweep_lambdas(scores, costs, scores, costs)


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


def _hull_area(curve: Curve, lo: float, hi: float) -> float:
    """Integral of the hull's quality over [lo, hi]: 0 below its cheapest point, flat after its best one."""
    hc, hq = upper_hull(curve.cost, curve.quality)
    start = max(lo, float(hc[0]))
    if start >= hi:
        return 0.0
    xs = np.unique(np.concatenate([[start, hi], hc[(hc > start) & (hc < hi)]]))
    return float(np.trapezoid(np.interp(xs, hc, hq), xs))


def aiq(curve: Curve, max_cost: float) -> float:
    """AIQ over [0, max_cost]: area under the non-decreasing hull divided by max_cost (tierwise's headline).

    The hull is 0 below its cheapest point and flat after its best one, so every method is
    integrated over the same cost range and a single point (c, q) scores q * (max_cost - c) / max_cost.
    """
    return _hull_area(curve, 0.0, max_cost) / max_cost


def aiq_range(curve: Curve, min_cost: float, max_cost: float) -> float:
    """AIQ as RouterBench defines it: the hull's mean quality over [cheapest model's cost, priciest's cost].

    Same hull and conventions as `aiq`, normalised by the range: a router's all-cheapest point sits at
    min_cost, so the range drops the [0, min_cost] stretch where every method scores 0.
    """
    if max_cost <= min_cost:
        raise ValueError("max_cost must exceed min_cost")
    return _hull_area(curve, min_cost, max_cost) / (max_cost - min_cost)


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
    All three are undefined (NaN) when the strong reference does not cost more and score higher than the weak
    one (e.g. a log where every tier scores the same): there is no gap to recover.
    """
    (cw, qw), (cs, qs) = weak, strong
    if not (qs > qw and cs > cw):
        return GapMetrics(apgr=float("nan"), cpt50=float("nan"), cpt80=float("nan"))
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
    from sklearn.neighbors import NearestNeighbors  # evaluation only: routing never imports scikit-learn

    nn = NearestNeighbors(n_neighbors=min(k, len(train_X)), metric="cosine", algorithm="brute").fit(train_X)
    filled = np.nan_to_num(train_Y)
    present = np.isfinite(train_Y).astype(float)

    def predict(X: np.ndarray) -> np.ndarray:
        idx = nn.kneighbors(X, return_distance=False)
        num = filled[idx].sum(axis=1)
        den = present[idx].sum(axis=1)
        return np.asarray(np.divide(num, den, out=np.full_like(num, 0.5), where=den > 0))

    return predict


def task_prior(categories: np.ndarray, scores: np.ndarray, train: np.ndarray) -> np.ndarray:
    """The task-label prior, (n, k): each tier's mean train score in the prompt's category.

    A router that only learned the topic does no better than this; unseen categories get the train mean.
    """
    cats = np.asarray(categories).astype(str)
    glob = np.nanmean(scores[train], axis=0)
    out = np.tile(glob, (len(cats), 1))
    names = [str(j) for j in range(scores.shape[1])]
    prior = TaskPrior.fit(cats[train], scores[train], names, min_prompts=1)
    for cat, means in (prior.means if prior is not None else {}).items():
        out[cats == cat] = means
    return np.where(np.isfinite(out), out, glob)


# ----------------------------------------------------------------------------- bootstrap over prompts


def bootstrap_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(1 + n_boot, n) weights over prompts, each row summing to 1: row 0 is the test set as it is (the point
    estimate), row b the b-th resample with replacement (percentile bootstrap over prompts).

    Methods evaluated with the same weights are paired: their difference per row is a difference on the same draw.
    """
    draws = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    W = np.zeros((n_boot, n))
    np.add.at(W, (np.arange(n_boot)[:, None], draws), 1.0)
    return np.vstack([np.ones(n), W]) / n


def _aiqs(K: np.ndarray, Q: np.ndarray, tier_cost: np.ndarray) -> dict[str, np.ndarray]:
    """AIQ and RouterBench's range AIQ per row of (cost, quality) points, the range from each row's tier costs."""
    top = int(np.argmax(tier_cost[0]))
    rows = [(Curve(K[b], Q[b]), tier_cost[b]) for b in range(len(K))]
    return {
        "AIQ": np.array([aiq(c, float(tc[top])) for c, tc in rows]),
        "AIQ_range": np.array([aiq_range(c, float(tc.min()), float(tc.max())) for c, tc in rows]),
    }


def aiq_draws(choices: np.ndarray, scores: np.ndarray, costs: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """AIQ and range AIQ of a decision matrix (n_settings, n), per row of the bootstrap weights W."""
    rows = np.arange(scores.shape[0])
    return _aiqs(W @ costs[rows, choices].T, W @ scores[rows, choices].T, W @ costs)


SHUFFLED = "router, decisions shuffled"
SHUFFLES = 8


def shuffled_draws(
    choices: np.ndarray, scores: np.ndarray, costs: np.ndarray, W: np.ndarray, seed: int, n_perm: int = SHUFFLES
) -> dict[str, np.ndarray]:
    """`aiq_draws` of a decision matrix's decisions dealt to the prompts at random (each setting keeps its share of
    every tier, without the signal), averaged over `n_perm` shuffles: the no-signal null with the router's own
    hull optimism. The upper hull of many settings' realised points picks their noise, so a router with no signal
    at all beat the zero router's few points "beyond the CI" on every generated no-signal log tried (16 of 16,
    tests/unit/test_gate.py), and this null on none."""
    rng = np.random.default_rng(seed)
    runs = [aiq_draws(choices[:, rng.permutation(choices.shape[1])], scores, costs, W) for _ in range(n_perm)]
    return {k: np.mean([r[k] for r in runs], axis=0) for k in runs[0]}


def zero_router_draws(scores: np.ndarray, costs: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """AIQ and range AIQ of the zero router (RouterBench): the hull of the single tiers, i.e. their random mix."""
    return _aiqs(W @ costs, W @ scores, W @ costs)


def single_tier_draws(scores: np.ndarray, costs: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """Per tier j, the AIQ of always routing to j ("AIQ:<j>"), per row of W; with the best of them ("AIQ")."""
    K, Q = W @ costs, W @ scores
    top = int(np.argmax(K[0]))
    per = np.stack([Q[:, j] * np.clip(K[:, top] - K[:, j], 0, None) / K[:, top] for j in range(scores.shape[1])])
    best = int(np.argmax(per[:, 0]))
    return {"AIQ": per[best], **{f"AIQ:{j}": per[j] for j in range(len(per))}}


SHARE_GRID = np.linspace(0, 1, 101)


def share_choices(gain: np.ndarray, seed: int, grid: np.ndarray = SHARE_GRID) -> np.ndarray:
    """For each share x of the grid, 1 for the round(x n) prompts with the largest predicted gain (ties at random)."""
    n = len(gain)
    order = np.lexsort((np.random.default_rng(seed).random(n), -np.asarray(gain)))
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(n)
    return np.stack([(rank < round(x * n)).astype(int) for x in grid])


def share_gap_draws(gain: np.ndarray, scores: np.ndarray, W: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """RouteLLM's APGR and CPT(50%) / CPT(80%) on the share-of-strong-calls axis, no hull, per row of W.

    Two tiers, column 1 the strong one. The x axis is the share of prompts sent to the strong model, most
    predicted gain first; PGR(x) = (q(x) - q_weak) / (q_strong - q_weak); APGR is its mean over x in [0, 1]
    (a random router scores 0.5); CPT(p) is the least share, in %, at which PGR reaches p (inf when never).
    These compare with RouteLLM's published numbers; the cost axis (`gap_metrics`) is the honest one for k > 2.
    """
    if scores.shape[1] != 2:
        raise ValueError("the share-of-strong-calls metrics need exactly two tiers")
    ch = share_choices(gain, seed)
    rows = np.arange(scores.shape[0])
    Q = W @ scores[rows, ch].T  # (1 + B, grid)
    qw, qs = W @ scores[:, 0], W @ scores[:, 1]
    gap = np.where(np.abs(qs - qw) > 1e-12, qs - qw, np.nan)
    pgr = (Q - qw[:, None]) / gap[:, None]

    def cpt(p: float) -> np.ndarray:
        reached = pgr >= p - 1e-12
        return np.where(reached.any(axis=1), SHARE_GRID[np.argmax(reached, axis=1)] * 100, np.inf)

    return {"APGR_share": np.trapezoid(pgr, SHARE_GRID, axis=1), "CPT50_share": cpt(0.5), "CPT80_share": cpt(0.8)}


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% percentile-bootstrap interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


def ci95(draws: np.ndarray) -> Interval:
    """Row 0 of a bootstrap array (the point estimate) and the 2.5 / 97.5 percentiles of the other rows."""
    draws = np.asarray(draws, dtype=float)
    rest = draws[1:][np.isfinite(draws[1:])]
    if rest.size == 0:
        return Interval(float(draws[0]), float("nan"), float("nan"))
    low, high = np.percentile(rest, [2.5, 97.5])
    return Interval(float(draws[0]), float(low), float(high))
