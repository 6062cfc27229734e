"""NoveltyReference and the window rank test on generated embeddings: calibrated without shift, decisive with it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from router.boosting import NotFittedError
from router.drift import cost_check, fallback_tiers, novelty_check, quality_check, recalibrate
from router.novelty import NoveltyReference, window_shift_z
from router.policy import tradeoff

DIM = 32


def cloud(n: int, centres: np.ndarray, seed: int, spread: float = 0.1) -> np.ndarray:
    """Unit vectors scattered around randomly chosen centres."""
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(len(centres), size=n)] + spread * rng.standard_normal((n, centres.shape[1]))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def centres() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    c = rng.standard_normal((8, DIM))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return c[:5], c[5:]  # training topics, unseen topics


@pytest.fixture(scope="module")
def reference(centres: tuple[np.ndarray, np.ndarray]) -> NoveltyReference:
    return NoveltyReference(n_reference=600, max_calibration=800).fit(cloud(1500, centres[0], seed=1))


def binomial_upper(p: float, n: int, sd: float = 4.0) -> float:
    return p + sd * math.sqrt(p * (1 - p) / n)


def test_unshifted_prompts_rank_uniformly(reference: NoveltyReference, centres: tuple[np.ndarray, np.ndarray]) -> None:
    u = reference.score(cloud(4000, centres[0], seed=2))
    # Uniform on [0, 1]: mean 1/2 within the Mann–Whitney spread (calibration luck included), 1% beyond 0.99.
    sd = math.sqrt((len(u) + reference.n_calibration + 1) / (12 * len(u) * reference.n_calibration))
    assert abs(u.mean() - 0.5) < 4 * sd
    assert (u >= 0.99).mean() < binomial_upper(0.01, len(u)) + 1 / reference.n_calibration


def test_shifted_prompts_are_novel(reference: NoveltyReference, centres: tuple[np.ndarray, np.ndarray]) -> None:
    u = reference.score(cloud(500, centres[1], seed=3))
    assert (u >= 0.99).mean() > 0.95


def test_window_test_false_alarm_rate_matches_its_level(
    reference: NoveltyReference, centres: tuple[np.ndarray, np.ndarray]
) -> None:
    """Over many unshifted windows the one-sided z >= 2 rate is near 1 − Φ(2) = 2.3%, never far above it."""
    u = reference.score(cloud(200 * 300, centres[0], seed=4)).reshape(300, 200)
    rate = float(np.mean([window_shift_z(w, reference.n_calibration) >= 2.0 for w in u]))
    assert rate <= binomial_upper(0.0228, 300)
    shifted = reference.score(cloud(50, centres[1], seed=5))
    mixed = np.concatenate([u[0, :150], shifted])  # a quarter of the window from unseen topics
    assert novelty_check(mixed, reference.n_calibration, 4.0).alert
    assert not novelty_check(u[0], reference.n_calibration, 4.0).alert


def test_save_load_round_trip(
    reference: NoveltyReference, centres: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    reference.save(tmp_path / "novelty")
    back = NoveltyReference.load(tmp_path / "novelty")
    assert back is not None and back.n_calibration == reference.n_calibration
    x = cloud(300, centres[0], seed=6)
    assert np.abs(back.score(x) - reference.score(x)).max() <= 0.02  # float16 reference: a rank or two
    assert NoveltyReference.load(tmp_path / "none") is None


def test_unfitted_and_too_small() -> None:
    with pytest.raises(NotFittedError):
        NoveltyReference().score(np.zeros((1, DIM)))
    with pytest.raises(ValueError, match="at least"):
        NoveltyReference().fit(np.ones((5, DIM)))


def test_quality_and_cost_checks() -> None:
    rng = np.random.default_rng(0)
    pred = np.full(200, 0.8)
    assert not quality_check("mid", pred, rng.random(200) < 0.8, 0.1, 30).alert
    assert quality_check("mid", pred, rng.random(200) < 0.5, 0.1, 30).alert
    assert not quality_check("mid", pred[:10], np.zeros(10), 0.1, 30).alert  # too few outcomes to judge
    empty = quality_check("mid", pred[:0], np.zeros(0), 0.1, 30)  # a tier nothing was routed to yet
    assert not empty.alert and "not measured: 0 outcomes" in empty.detail and "nan" not in empty.detail
    assert not cost_check(np.full(100, 1.1), np.ones(100), 0.25, 30).alert
    assert cost_check(np.full(100, 2.0), np.ones(100), 0.25, 30).alert
    assert cost_check(np.full(100, 0.5), np.ones(100), 0.25, 30).alert


def test_recalibrated_lambda_meets_a_mean_cost_when_novel_prompts_cost_more() -> None:
    """Novel prompts answer 5x longer than expected on every tier; familiar ones as expected. Served at a λ that
    sends the novel ones cheap, one ratio per tier misprices both kinds; ratios per kind meet the target."""
    rng = np.random.default_rng(0)
    n = 4000
    novel = rng.random(n) < 0.5
    base = rng.random(n)
    pred = np.stack([base, np.clip(base + 0.3 * rng.random(n), 0, 1)], axis=1)
    expected = np.stack([np.full(n, 1.0), np.full(n, 10.0)], axis=1) * 1e-4
    realised = expected * np.where(novel, 5.0, 1.0)[:, None]
    served = np.where(novel, 0, 1)  # the policy that logged them: novel prompts on the cheap tier
    paid = realised[np.arange(n), served]
    target = 6e-4

    def spend(lam: float) -> float:
        choice = tradeoff(pred, expected, lam)
        return float(realised[np.arange(n), choice].mean())

    grouped = spend(recalibrate(pred, expected, served, paid, target, novel).cost_weight)
    pooled = spend(recalibrate(pred, expected, served, paid, target).cost_weight)
    assert abs(grouped / target - 1) < 0.02
    assert abs(pooled / target - 1) > 0.1


def test_recalibration_counts_the_fallbacks_tier_whatever_lambda_and_reports_its_spend() -> None:
    """A fifth of the prompts were past the novelty limit: the service serves them the dear tier whatever λ is. A λ
    fitted as if λ chose for them too spent 1.2x the target on the service here (1.5x in a review's run)."""
    rng = np.random.default_rng(1)
    n = 3000
    base = rng.random(n)
    pred = np.stack([base, np.clip(base + 0.3 * rng.random(n), 0, 1)], axis=1)
    expected = np.stack([np.full(n, 1.0), np.full(n, 10.0)], axis=1) * 1e-4
    novel = rng.random(n) < 0.2
    served = np.where(novel, 1, tradeoff(pred, expected, 500.0))
    paid = expected[np.arange(n), served]
    fixed = np.where(novel, 1, -1)
    target = 5e-4

    def served_spend(lam: float) -> float:  # as the service routes: the fallback's tier for the novel prompts
        return float(expected[np.arange(n), np.where(novel, 1, tradeoff(pred, expected, lam))].mean())

    found = recalibrate(pred, expected, served, paid, target, novel, fixed)
    assert abs(served_spend(found.cost_weight) / target - 1) < 0.02
    assert found.mean_cost == pytest.approx(served_spend(found.cost_weight))
    assert served_spend(recalibrate(pred, expected, served, paid, target, novel).cost_weight) > 1.1 * target
    # A target above what λ = 0 spends: λ = 0, and the spend reported is its own, not the target.
    rich = recalibrate(pred, expected, served, paid, 1.0, novel, fixed)
    assert rich.cost_weight == 0.0 and rich.mean_cost == pytest.approx(served_spend(0.0))


def test_recalibrated_lambda_spends_the_realised_cost_where_lambda_keeps_the_served_tier() -> None:
    """Every prompt was served the dear tier; those with a large predicted gain from it answer 3x longer than
    expected, the others 0.2x. One ratio for the tier misprices both kinds; the realised costs of the prompts λ
    keeps on it do not."""
    rng = np.random.default_rng(1)
    n = 4000
    pred0 = rng.random(n) * 0.5
    gain = rng.random(n) * 0.4
    pred = np.stack([pred0, pred0 + gain], axis=1)
    expected = np.tile([1e-4, 1e-3], (n, 1))
    realised = expected * np.stack([np.ones(n), np.where(gain > 0.2, 3.0, 0.2)], axis=1)
    served = np.ones(n, dtype=int)
    target = 1.5e-3
    lam = recalibrate(pred, expected, served, realised[:, 1], target).cost_weight
    spend = float(realised[np.arange(n), tradeoff(pred, expected, lam)].mean())
    # Off only by the cheap tier, priced at the dear tier's ratio (about 1.6): about 2% here.
    assert abs(spend / target - 1) < 0.05


def test_recalibrated_lambda_learns_its_cost_ratios_from_the_outcomes_that_came_back() -> None:
    """Every tier answers at twice its expected cost and only 30% of decisions have an outcome yet: the ratios come
    from those, so λ meets the target as with every outcome back. Decisions without one entered at their expected
    cost pulled each ratio toward 1, and the λ overspent by a third (a review's find)."""
    rng = np.random.default_rng(1)
    n = 2000
    base = rng.random(n)
    pred = np.stack([base, np.clip(base + 0.3 * rng.random(n), 0, 1)], axis=1)
    expected = np.stack([np.full(n, 1.0), np.full(n, 10.0)], axis=1) * 1e-4
    realised = 2 * expected
    served = tradeoff(pred, expected, 150.0)
    paid = realised[np.arange(n), served]
    target = 1e-3

    def spend(lam: float) -> float:
        return float(realised[np.arange(n), tradeoff(pred, expected, lam)].mean())

    partial = np.where(rng.random(n) < 0.3, paid, np.nan)
    assert {0, 1} <= set(served[np.isfinite(partial)])
    full_lam = recalibrate(pred, expected, served, paid, target).cost_weight
    assert abs(spend(full_lam) / target - 1) < 0.02
    assert recalibrate(pred, expected, served, partial, target).cost_weight == pytest.approx(full_lam)
    at_expected = np.where(np.isfinite(partial), partial, expected[np.arange(n), served])  # what serving passed
    assert spend(recalibrate(pred, expected, served, at_expected, target).cost_weight) > 1.1 * target


def test_fallback_tiers_follow_todays_limit() -> None:
    """Decisions logged under another novelty limit: one that took the fallback keeps the tier it was served (the
    fallback's within its request's limits); one now past the limit that λ (or exploration) routed then gets the
    dearest tier, as the service would now serve it; one below today's limit is λ's (review finding: a lowered
    limit pinned them at the cheap tier they had been served)."""
    expected = np.array([[1.0, 2.0, 9.0]] * 5)
    served = np.array([0, 0, 1, 2, 0])
    novelty = np.array([0.95, 0.95, 0.995, 0.5, np.nan])
    fell_back = np.array([False, False, True, False, False])
    np.testing.assert_array_equal(fallback_tiers(novelty, 0.9, fell_back, served, expected), [2, 2, 1, -1, -1])
    np.testing.assert_array_equal(fallback_tiers(novelty, 0.99, fell_back, served, expected), [-1, -1, 1, -1, -1])
    np.testing.assert_array_equal(fallback_tiers(novelty, None, fell_back, served, expected), [-1] * 5)
