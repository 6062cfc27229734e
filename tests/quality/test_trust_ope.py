"""Off-policy evaluation on the shared RouterBench data: the replay of bench/trust_ope.py, one split, 10 logs.

Bounds come from the full replay (bench/results/trust_ope.json, 6 seeds x 20 logs): at ε = 0.05 one log's
|DR − truth| for the router's operating points had p90 0.043 and DR's bias was within 0.004, while the naive
replay misjudged "always brain" by 0.06 on average. SWITCH (6 seeds x 12 logs) missed router@25% / @60% and the
25% -> 60% budget question by 0.0026-0.0038 on average, p90 at most 0.0089 (an Intel Xeon); on an AVX2 EPYC, 6
seeds x 10 logs, one split's mean miss reached 0.016 (see the last test).
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.trust_ope import Design, World, build_world, log_production, naive, target_policies, truth_of
from router.embedders.factory import make_embedder
from router.embedding_cache import EmbeddingCache
from router.ope import Unsupported, compare, estimate
from router.schema import load_outcomes, load_tiers
from tests.quality.conftest import CACHE, OUTCOMES, TIERS

pytestmark = pytest.mark.quality
REPS = 10


@pytest.fixture(scope="module")
def world() -> World:
    if not OUTCOMES.is_file():
        pytest.skip(f"{OUTCOMES} is missing: run `make data`")
    embedder = make_embedder("onnx-int8", onnx_dir=CACHE / "onnx")
    return build_world(
        load_outcomes(OUTCOMES), load_tiers(TIERS), 0, embedder, EmbeddingCache(CACHE / "embeddings.sqlite")
    )


def test_without_exploration_only_the_served_policy_is_estimated(world: World) -> None:
    logged = log_production(world, Design(0.0), np.random.default_rng(0))
    policies = target_policies(world)
    with pytest.raises(Unsupported):
        estimate("router@25%", policies["router@25%"], logged, world.names)
    served = estimate("router@40%", policies["router@40%"], logged, world.names, n_boot=50)
    assert served.quality.dr.value == pytest.approx(truth_of(policies["router@40%"], world)[0])


def test_dr_recovers_the_truth_where_naive_replay_does_not(world: World) -> None:
    policies = target_policies(world)
    names = ["router@25%", "router@60%", "always brain", "random mix"]
    dr: dict[str, list[float]] = {n: [] for n in names}
    naive_brain = []
    for rep in range(REPS):
        logged = log_production(world, Design(0.05), np.random.default_rng(rep))
        for n in names:
            dr[n].append(estimate(n, policies[n], logged, world.names, n_boot=2).quality.dr.value)
        naive_brain.append(naive(policies["always brain"], logged, logged.quality))
    for n in names:
        truth = truth_of(policies[n], world)[0]
        errs = np.array(dr[n]) - truth
        assert np.abs(errs).mean() <= 0.05, n  # one log's error: p90 0.043 in the full replay
        # Unbiased: the mean over logs is within 4 standard errors (measured here) plus the split's own 0.005.
        assert abs(errs.mean()) <= 4 * errs.std(ddof=1) / np.sqrt(REPS) + 0.005, n
    brain_truth = truth_of(policies["always brain"], world)[0]
    assert np.mean(np.abs(np.array(naive_brain) - brain_truth)) >= 0.03  # the bias OPE exists to remove


def test_switch_trades_dr_variance_for_a_small_bias(world: World) -> None:
    """At ε = 0.05 one log's DR misses router@25% / @60% and the 25% -> 60% budget question by ~0.02, from variance;
    SWITCH on the recalibrated reward model (router/ope.py) trades that for the reward model's bias, which depends on
    the split (and so on the CPU's int8 rounding, which changes the router like a reseed does).

    Bounds from 6 world seeds x 10 logs on an AVX2 EPYC (2026-11-26; this test's seed 0 on that CPU failed the
    earlier bound "SWITCH below DR on each question": router@60% 0.0095 vs DR 0.0068): SWITCH's spread over logs
    was 3x to 32x below DR's on every (seed, question); its mean |error| over the three questions 0.0019-0.0106
    against DR's 0.0169-0.0237 (at least 2.2x below); one question's at most 0.0160 (2 of 18 above the issue's 0.01).
    """
    policies = target_policies(world)
    names = ["router@25%", "router@60%"]
    hi, lo = policies["router@60%"], policies["router@25%"]
    truth = {n: truth_of(policies[n], world)[0] for n in names}
    truth["budget"] = truth["router@60%"] - truth["router@25%"]
    err: dict[str, dict[str, list[float]]] = {e: {n: [] for n in truth} for e in ("dr", "switch")}
    for rep in range(REPS):
        logged = log_production(world, Design(0.05), np.random.default_rng(rep))
        for n in names:
            q = estimate(n, policies[n], logged, world.names, n_boot=2, seed=rep).quality
            for e in err:
                err[e][n].append(getattr(q, e).value - truth[n])
        diff, _ = compare(hi, lo, logged, world.names, n_boot=2, seed=rep)
        for e in err:
            err[e]["budget"].append(getattr(diff, e).value - truth["budget"])
    switch = {n: np.array(v) for n, v in err["switch"].items()}
    dr = {n: np.array(v) for n, v in err["dr"].items()}
    for n in truth:
        assert switch[n].std(ddof=1) < dr[n].std(ddof=1) / 2, n  # measured: at least 3x smaller
        assert np.abs(switch[n]).mean() <= 0.025, n  # measured: at most 0.016
    switch_mean = np.mean([np.abs(v).mean() for v in switch.values()])
    dr_mean = np.mean([np.abs(v).mean() for v in dr.values()])
    assert switch_mean < dr_mean / 1.5, (switch_mean, dr_mean)  # measured: at least 2.2x smaller


def test_exploration_aimed_at_the_compared_operating_points_cuts_drs_error(world: World) -> None:
    """The same share explored (5%), aimed at the two budgets compared (TIERWISE_EXPLORATION_BOUNDARY_COST_WEIGHTS)
    instead of spread evenly: DR's mean |error| for router@25% / @60% and the budget question in the full replay
    fell 2.5-3.5x on both datasets (0.0046-0.0110, against 0.0144-0.0303), the operating points within the issue's
    0.01. Here (routerbench, 10 logs per world seed, seeds 0-5 on a Zen 5, as another CPU's int8 rounding reseeds
    the router): the three questions' mean |error| 0.0064-0.0120 aimed against 0.0155-0.0300 uniform, 1.47-3.27x
    lower. Bounds: aimed below uniform, at most 0.02, and DR unbiased."""
    policies = target_policies(world)
    hi, lo = policies["router@60%"], policies["router@25%"]
    truth = {n: truth_of(policies[n], world)[0] for n in ("router@25%", "router@60%")}
    truth["budget"] = truth["router@60%"] - truth["router@25%"]
    designs = {"uniform": Design(0.05), "aimed": Design(0.01, aimed_at=(0.25, 0.60))}
    err: dict[str, dict[str, list[float]]] = {d: {n: [] for n in truth} for d in designs}
    for name, design in designs.items():
        for rep in range(REPS):
            logged = log_production(world, design, np.random.default_rng(rep))
            served_other = policies["router@40%"][np.arange(len(logged)), logged.action] == 0
            assert 0.02 <= float(served_other.mean()) <= 0.08  # explored: 3.3% (uniform) and 5% (aimed) expected
            for n in ("router@25%", "router@60%"):
                q = estimate(n, policies[n], logged, world.names, n_boot=2, seed=rep).quality
                err[name][n].append(q.dr.value - truth[n])
            diff, _ = compare(hi, lo, logged, world.names, n_boot=2, seed=rep)
            err[name]["budget"].append(diff.dr.value - truth["budget"])
    mean_abs = {d: float(np.mean([np.abs(v).mean() for v in e.values()])) for d, e in err.items()}
    assert mean_abs["aimed"] < mean_abs["uniform"] and mean_abs["aimed"] <= 0.02, mean_abs
    for n, v in err["aimed"].items():
        errs = np.array(v)
        assert abs(errs.mean()) <= 4 * errs.std(ddof=1) / np.sqrt(REPS) + 0.005, n
