"""Behaviour on everyday prompts (issue 10, item 6): easy chores look easier than proofs and hard designs.

The prompts (tests/quality/behaviour_prompts.py) were written before any model scored them. Margins are
statistical, not tuned: a difference must exceed twice its standard error over the prompts (Welch), so
a model that orders the two sets by chance fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from infra.settings import Settings
from router.routing import Router
from tests.quality.behaviour_prompts import EASY, HARD

pytestmark = pytest.mark.quality

OUT_OF_REACH = pytest.mark.xfail(
    strict=True,
    reason=(
        "measured 2026-11-25 (report-quality-learn): no outcome log here holds everyday prompts, and prompt "
        "difficulty learned on two logs ranks the third's prompts at Spearman 0.12-0.27 only; the pooled default "
        "gives mid 0.548 (easy) vs 0.481 (hard), gap < 2 SE, and at the stored operating point 29 of 30 prompts "
        "go to brain (the other, a hard one, to mid). "
        "strict: when a model passes, this marker must go."
    ),
)


def _gap(easy: np.ndarray, hard: np.ndarray) -> tuple[float, float]:
    """Mean of easy minus mean of hard, and twice the Welch standard error of that difference."""
    diff = float(easy.mean() - hard.mean())
    se = float(np.sqrt(easy.var(ddof=1) / len(easy) + hard.var(ddof=1) / len(hard)))
    return diff, 2 * se


@pytest.fixture(scope="module")
def scored(trained_default, embedder_int8):
    router = Router(trained_default.artifact, embedder=embedder_int8)
    return router, router.score(list(EASY)), router.score(list(HARD))


@OUT_OF_REACH
def test_every_tier_predicts_easy_prompts_above_hard_ones(scored):
    router, (q_easy, _), (q_hard, _) = scored
    gaps = {name: _gap(q_easy[:, j], q_hard[:, j]) for j, name in enumerate(router.names)}
    summary = ", ".join(
        f"{name}: easy {q_easy[:, j].mean():.3f} vs hard {q_hard[:, j].mean():.3f} (gap {gaps[name][0]:+.3f}, "
        f"needs > {gaps[name][1]:.3f})"
        for j, name in enumerate(router.names)
    )
    assert all(diff > margin for diff, margin in gaps.values()), summary


@OUT_OF_REACH
def test_default_policy_sends_easy_prompts_to_cheaper_tiers(scored):
    router, (q_easy, c_easy), (q_hard, c_hard) = scored
    # the service's default: the operating point stored with the model (else the quality target); novelty's
    # conservative fallback is left out, it would send every out-of-distribution prompt to the top tier
    target, lam = router.knob(None, None, Settings().quality_target)
    assert lam is not None, "the model carries no operating point"
    easy = np.array([d.tier_index for d in router.decide(q_easy, c_easy, target, cost_weight=lam)], dtype=float)
    hard = np.array([d.tier_index for d in router.decide(q_hard, c_hard, target, cost_weight=lam)], dtype=float)
    diff, margin = _gap(hard, easy)
    assert diff > margin, f"mean tier index: easy {easy.mean():.2f}, hard {hard.mean():.2f} (need a gap > {margin:.2f})"
    assert (easy < len(router.names) - 1).any(), "no easy prompt goes below the top tier"
