"""The quality guarantee on generated outcomes: its risk bound holds over many calibration draws, at its level."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from router.guarantee import (
    QualityGuarantee,
    binomial_cdf,
    calibrate,
    choices_at,
    hb_p_value,
    point_estimate,
    quality_loss,
    top_tier,
)


def population(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompts with a latent difficulty: tier j succeeds with σ(a_j − 6 d); predictions are noisy truths."""
    rng = np.random.default_rng(seed)
    d = rng.random(n)
    p = 1 / (1 + np.exp(-(np.array([1.0, 2.5, 4.5])[None, :] - 6 * d[:, None])))
    scores = (rng.random(p.shape) < p).astype(float)
    pred = np.clip(p + 0.1 * rng.standard_normal(p.shape), 0, 1)
    cost = np.array([1.0, 3.0, 20.0])[None, :] * (1 + 0.2 * rng.random((n, 1))) * 1e-4
    return pred, cost, scores


def true_loss(lam: float | None, pop: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
    pred, cost, scores = pop
    return float(quality_loss(choices_at(pred, cost, lam), scores, top_tier(cost)).mean())


@pytest.mark.parametrize(("k", "n", "p"), [(0, 10, 0.1), (3, 10, 0.5), (40, 1000, 0.05), (999, 1000, 0.5), (5, 5, 0.3)])
def test_binomial_cdf_matches_scipy(k: int, n: int, p: float) -> None:
    assert binomial_cdf(k, n, p) == pytest.approx(float(binom.cdf(k, n, p)), rel=1e-9, abs=1e-300)


def test_hb_p_value_is_valid_at_the_boundary() -> None:
    """Losses with mean exactly ε: P(p <= δ) <= δ (checked on 4,000 draws with a binomial tolerance)."""
    rng = np.random.default_rng(0)
    eps, delta, n, reps = 0.1, 0.1, 300, 4000
    p = np.array([hb_p_value(float((rng.random(n) < eps).mean()), n, eps) for _ in range(reps)])
    assert (p <= delta).mean() <= delta + 4 * math.sqrt(delta * (1 - delta) / reps)
    assert hb_p_value(0.0, 2000, 0.05) < 1e-6  # zero loss on many prompts rejects "loss > 5%"
    assert hb_p_value(0.08, 2000, 0.05) == 1.0 or hb_p_value(0.08, 2000, 0.05) > 0.5


@pytest.mark.parametrize(("epsilon", "delta"), [(0.05, 0.1), (0.1, 0.2)])
def test_risk_bound_holds_over_many_calibration_sets(epsilon: float, delta: float) -> None:
    """Over 200 calibration draws the certified point loses more than ε on the population in at most δ of them
    (plus a 3-sd binomial tolerance), while the naive point estimate breaks that rate: the test can fail."""
    pop = population(30_000, seed=1)
    rng = np.random.default_rng(2)
    reps, n_cal = 200, 400
    bad, naive_bad, spends = 0, 0, []
    for _ in range(reps):
        idx = rng.choice(len(pop[0]), n_cal, replace=False)
        cal = tuple(a[idx] for a in pop)
        point = calibrate(*cal, epsilon=epsilon, delta=delta)
        bad += true_loss(point.cost_weight_per_usd, pop) > epsilon
        naive_bad += true_loss(point_estimate(*cal, epsilon=epsilon), pop) > epsilon
        spends.append(point.calibration_cost_share)
    assert bad / reps <= delta + 3 * math.sqrt(delta * (1 - delta) / reps)
    assert naive_bad / reps > delta  # without confidence the bound fails often
    assert np.mean(spends) < 0.9  # and the guarantee still saves money against always-top


def test_always_top_when_nothing_can_be_certified() -> None:
    pred, cost, scores = population(30, seed=3)
    point = calibrate(pred, cost, scores, epsilon=0.01, delta=0.01)
    assert point.cost_weight_per_usd is None and point.calibration_loss == 0.0
    assert (choices_at(pred, cost, None) == 2).all()


def test_select_is_decided_by_the_request_only() -> None:
    g = QualityGuarantee.fit(*population(500, seed=4))
    chosen = g.select(0.07, 0.15)
    assert chosen is not None and (chosen.epsilon, chosen.delta) == (0.05, 0.1)
    assert g.select(0.005, 0.1) is None
    assert QualityGuarantee.from_dict(g.to_dict()) == g
    with pytest.raises(ValueError):
        calibrate(*population(50, seed=5), epsilon=0.0, delta=0.1)
