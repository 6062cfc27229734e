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


def test_knn_predictor_averages_neighbours():
    X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    Y = np.array([[1.0, 0.0], [1.0, np.nan], [0.0, 1.0]])
    pred = ev.knn_predictor(X, Y, k=2)(np.array([[1.0, 0.05]]))
    assert pred[0].tolist() == [1.0, 0.0]
