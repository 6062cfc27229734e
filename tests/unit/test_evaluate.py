"""Metric functions against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from router import evaluate as ev


def test_upper_hull_drops_dominated_points_and_is_flat_after_peak():
    c = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    q = np.array([0.2, 0.3, 0.7, 0.6, 0.5])
    hc, hq = ev.upper_hull(c, q)
    # (2, 0.3) lies under the segment (1, 0.2)-(3, 0.7); points after the peak (3, 0.7) are cut.
    assert hc.tolist() == [1.0, 3.0] and hq.tolist() == [0.2, 0.7]


def test_aiq_by_hand():
    # Hull (1, 0.2) -> (3, 0.7), then flat to max cost 5. Area = 0 on [0,1],
    # (0.2+0.7)/2*2 = 0.9 on [1,3], 0.7*2 = 1.4 on [3,5]; AIQ = 2.3 / 5 = 0.46.
    curve = ev.Curve(np.array([1.0, 2.0, 3.0]), np.array([0.2, 0.3, 0.7]))
    assert ev.aiq(curve, 5.0) == pytest.approx(0.46)
    # A single point (c, q) scores q * (C - c) / C.
    assert ev.aiq(ev.Curve(np.array([2.0]), np.array([0.5])), 4.0) == pytest.approx(0.25)


def test_quality_at_and_cost_to_reach():
    curve = ev.Curve(np.array([1.0, 3.0]), np.array([0.2, 0.6]))
    assert ev.hull_quality_at(curve, 2.0) == pytest.approx(0.4)
    assert np.isnan(ev.hull_quality_at(curve, 0.5))
    assert ev.cost_to_reach(curve, 0.5) == pytest.approx(2.5)
    assert ev.cost_to_reach(curve, 0.7) == np.inf
    assert ev.cost_to_reach(curve, 0.1) == pytest.approx(1.0)


def test_gap_metrics_by_hand():
    # Weak (0, 0.5), strong (10, 0.9). A router at (2, 0.8) then flat: PGR rises linearly
    # from 0 at x=0 to 0.75 at x=0.2, then 0.75 flat (never reaches the strong quality).
    curve = ev.Curve(np.array([0.0, 2.0]), np.array([0.5, 0.8]))
    gm = ev.gap_metrics(curve, (0.0, 0.5), (10.0, 0.9))
    assert gm.apgr == pytest.approx(0.2 * 0.75 / 2 + 0.8 * 0.75, abs=1e-3)
    assert gm.cpt50 == pytest.approx(2.0 * (0.5 / 0.75) / 10 * 100, abs=1e-6)
    assert gm.cpt80 == np.inf
    # The straight line weak->strong (random mix) has APGR 0.5 and CPT(50%) 50%.
    line = ev.Curve(np.array([0.0, 10.0]), np.array([0.5, 0.9]))
    gm = ev.gap_metrics(line, (0.0, 0.5), (10.0, 0.9))
    assert gm.apgr == pytest.approx(0.5, abs=1e-3) and gm.cpt50 == pytest.approx(50.0)


def test_gap_metrics_are_undefined_without_a_gap():
    # every tier scores the same (a log of all 1.0): nothing to recover, so NaN rather than an error
    flat = ev.Curve(np.array([0.0, 10.0]), np.array([1.0, 1.0]))
    gm = ev.gap_metrics(flat, (0.0, 1.0), (10.0, 1.0))
    assert np.isnan([gm.apgr, gm.cpt50, gm.cpt80]).all()


def test_ece_by_hand():
    pred = np.array([0.1, 0.1, 0.9, 0.9])
    actual = np.array([0.0, 1.0, 1.0, 1.0])
    # bin 1: |0.1 - 0.5| = 0.4, weight 0.5; bin 9: |0.9 - 1| = 0.1, weight 0.5 -> 0.25
    assert ev.expected_calibration_error(pred, actual) == pytest.approx(0.25)


def test_oracle_and_realised():
    s = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 0]], dtype=float)
    c = np.array([[1, 2, 10]] * 3, dtype=float)
    choice = ev.oracle_choice(s, c)
    assert choice.tolist() == [0, 1, 0]
    assert ev.realised(choice, s, c) == pytest.approx((4 / 3, 2 / 3))


def test_split_by_group_keeps_groups_together():
    groups = [f"g{i % 37}" for i in range(500)]
    train, test = ev.split_by_group(groups, 0.3, seed=5)
    assert not (set(np.array(groups)[train]) & set(np.array(groups)[test]))
    assert 0.2 < test.mean() < 0.4
    again = ev.split_by_group(groups, 0.3, seed=5)[1]
    assert (again == test).all()
    drawn = ev.split_by_group(groups, 0.3, seed=5, rule="draw")[1]
    assert len(set(np.array(groups)[drawn])) == round(0.3 * 37)  # the draw takes exactly its share of groups


def test_hash_split_keeps_every_prompt_on_its_side_when_the_log_grows():
    """A retrain on a grown log must hold out every prompt the last model held out (and train on none of them):
    the seeded draw redrew the split, so a retrain and its champion shared ~9% of the held-out prompts."""
    old = [f"prompt {i}" for i in range(2000)]
    grown = old + [f"new prompt {i}" for i in range(1000)]
    _, test_old = ev.split_by_group(old, 0.3, seed=3)
    _, test_grown = ev.split_by_group(grown, 0.3, seed=3)
    assert (test_grown[: len(old)] == test_old).all()
    assert abs(test_grown.mean() - 0.3) < 0.03
    assert (ev.split_by_group(list(reversed(old)), 0.3, seed=3)[1][::-1] == test_old).all()  # order-free
    assert 0.2 < (ev.split_by_group(old, 0.3, seed=4)[1] & test_old).mean() / 0.3 < 0.4  # another seed, another split
    _, drawn_grown = ev.split_by_group(grown, 0.3, seed=3, rule="draw")
    assert not (drawn_grown[: len(old)] == ev.split_by_group(old, 0.3, seed=3, rule="draw")[1]).all()
    assert ev.split_by_group(["only"], 0.3, seed=0)[1].tolist() == [True]  # at least one held out
    with pytest.raises(ValueError, match="unknown split rule"):
        ev.split_by_group(old, 0.3, seed=0, rule="random")


def test_knn_predictor_averages_neighbours():
    X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    Y = np.array([[1.0, 0.0], [1.0, np.nan], [0.0, 1.0]])
    pred = ev.knn_predictor(X, Y, k=2)(np.array([[1.0, 0.05]]))
    assert pred[0].tolist() == [1.0, 0.0]


def test_aiq_range_is_routerbench_normalisation_by_hand():
    # Hull (1, 0.2) -> (3, 0.7), flat to 5. Over [1, 5]: 0.9 on [1, 3] + 1.4 on [3, 5] = 2.3; / 4 = 0.575.
    curve = ev.Curve(np.array([1.0, 2.0, 3.0]), np.array([0.2, 0.3, 0.7]))
    assert ev.aiq_range(curve, 1.0, 5.0) == pytest.approx(0.575)
    # The cheapest tier alone scores its quality over the whole range; the priciest tier alone scores 0.
    assert ev.aiq_range(ev.Curve(np.array([1.0]), np.array([0.5])), 1.0, 5.0) == pytest.approx(0.5)
    assert ev.aiq_range(ev.Curve(np.array([5.0]), np.array([0.9])), 1.0, 5.0) == 0.0


def test_oracle_is_a_curve_that_dominates_its_single_point():
    # Prompt 0 only the cheap tier gets right, prompt 1 only the top tier, prompt 2 both.
    s = np.array([[1, 0], [0, 1], [1, 1]], dtype=float)
    c = np.array([[1, 10]] * 3, dtype=float)
    curve = ev.oracle_curve(s, c)
    points = set(zip(curve.cost.round(6), curve.quality.round(6), strict=True))
    assert (1.0, round(2 / 3, 6)) in points and (4.0, 1.0) in points
    # Hull (1, 2/3) -> (4, 1), flat to 10: area (2/3 + 1) / 2 * 3 + 6 = 8.5 -> AIQ 0.85 over [0, 10],
    # where the single oracle point (4, 1) alone scored 0.6.
    assert ev.aiq(curve, 10.0) == pytest.approx(0.85)
    assert ev.aiq(ev.Curve(np.array([4.0]), np.array([1.0])), 10.0) == pytest.approx(0.6)


def test_zero_router_and_single_tiers_by_hand():
    s = np.array([[0.5, 0.9]] * 4)
    c = np.array([[1.0, 3.0]] * 4)
    W = ev.bootstrap_weights(4, 5, seed=0)
    zero = ev.zero_router_draws(s, c, W)
    # Hull (1, 0.5) -> (3, 0.9): area 1.4; AIQ 1.4 / 3, range AIQ 1.4 / 2. Constant rows: every draw agrees.
    np.testing.assert_allclose(zero["AIQ"], 1.4 / 3)
    np.testing.assert_allclose(zero["AIQ_range"], 0.7)
    single = ev.single_tier_draws(s, c, W)
    # Cheap tier alone: 0.5 * (3 - 1) / 3; the top tier alone: 0.
    np.testing.assert_allclose(single["AIQ:0"], 1 / 3)
    np.testing.assert_allclose(single["AIQ:1"], 0.0)
    np.testing.assert_allclose(single["AIQ"], 1 / 3)


def test_task_prior_is_the_per_category_train_mean():
    cats = np.array(["a", "a", "b", "b", "c"])
    s = np.array([[1, 1], [0, 1], [0, 0], [0, 1], [1, 1]], dtype=float)
    train = np.array([True, True, True, True, False])
    prior = ev.task_prior(cats, s, train)
    np.testing.assert_allclose(prior[0], [0.5, 1.0])
    np.testing.assert_allclose(prior[2], [0.0, 0.5])
    np.testing.assert_allclose(prior[4], [0.25, 0.75])  # unseen category: the train mean


def _half_weak_half_both(n: int = 100) -> np.ndarray:
    weak = np.array([1.0] * (n // 2) + [0.0] * (n // 2))
    return np.stack([weak, np.ones(n)], axis=1)


def test_apgr_and_cpt_on_the_share_axis_by_hand():
    s = _half_weak_half_both()
    W = ev.bootstrap_weights(len(s), 0, seed=0)
    # Perfect ranking: PGR(x) = min(2x, 1): APGR 0.25 + 0.5 = 0.75, PGR 0.5 at 25% of calls, 0.8 at 40%.
    perfect = ev.share_gap_draws(s[:, 1] - s[:, 0], s, W, seed=0)
    assert perfect["APGR_share"][0] == pytest.approx(0.75)
    assert perfect["CPT50_share"][0] == pytest.approx(25.0) and perfect["CPT80_share"][0] == pytest.approx(40.0)
    # Inverted ranking: PGR(x) = max(0, 2x - 1): APGR 0.25, CPT(50%) 75%.
    worst = ev.share_gap_draws(s[:, 0] - s[:, 1], s, W, seed=0)
    assert worst["APGR_share"][0] == pytest.approx(0.25) and worst["CPT50_share"][0] == pytest.approx(75.0)
    # No information (ties broken at random): about 0.5, RouteLLM's random router.
    flat = [ev.share_gap_draws(np.zeros(len(s)), s, W, seed=k)["APGR_share"][0] for k in range(50)]
    assert np.mean(flat) == pytest.approx(0.5, abs=0.02)


def test_bootstrap_ci_covers_the_truth_at_about_its_nominal_rate():
    """The AIQ of a fixed policy on 300 sampled prompts: its 95% CI should contain the population AIQ ~95% of
    the time. 200 repetitions: the binomial sd of the coverage is 1.5 points, so [0.89, 0.99] is a 4-sd band."""
    rng = np.random.default_rng(0)
    p_cheap, p_top, cost = 0.55, 0.85, np.array([1.0, 4.0])

    # Prompt "difficulty" d: the policy sends the hardest 40% to the top tier (a fixed decision matrix).
    def sample(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = rng.random(n)
        s = np.stack([rng.random(n) < p_cheap + 0.3 - 0.6 * d, rng.random(n) < p_top], axis=1).astype(float)
        choices = np.stack([np.zeros(n, int), (d > 0.6).astype(int), np.ones(n, int)])
        return s, np.tile(cost, (n, 1)), choices

    s, c, ch = sample(400_000)
    truth = ev.aiq_draws(ch, s, c, ev.bootstrap_weights(len(s), 0, seed=0))["AIQ"][0]
    hits = 0
    for rep in range(200):
        s, c, ch = sample(300)
        ci = ev.ci95(ev.aiq_draws(ch, s, c, ev.bootstrap_weights(300, 200, seed=rep))["AIQ"])
        hits += ci.low <= truth <= ci.high
    assert 0.89 <= hits / 200 <= 0.99
