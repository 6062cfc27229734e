"""The champion gate: a newly trained model becomes champion only if every named check passes.

A check reads the run's evidence (the held-out evaluation with its paired bootstrap draws, the current
champion's AIQ on the same split) and returns a CheckResult, or None when it does not apply. The gate is
the list CHECKS; a new check (e.g. an off-policy lower bound from logged traffic) is one more callable
appended to the list given to `run_gate`. A model that fails any check is registered as `challenger`, and
the verdict's message says which checks failed and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from router import evaluate as ev
from training.evaluation import EvalResult

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
MIN_TEST_PROMPTS = 50
"""Below this many held-out prompts a percentile bootstrap under-covers (its CIs are too narrow): no verdict."""
WARN_TEST_PROMPTS = 200
"""Below this many held-out prompts, the CIs of AIQ differences are typically wider than the differences."""


@dataclass(frozen=True)
class ChampionComparison:
    """The new model and the current champion, each scored the same way on the same held-out prompts: this run's
    test prompts that the champion's run held out too (`n_prompts`; none of them trained either model), or, when
    the champion's run did not record its held-out prompts, all of this run's (`shared_known` False: the champion
    may have trained on some of them)."""

    new_aiq: float
    champion_aiq: float
    n_prompts: int
    shared_known: bool = True
    unservable: str = ""  # why the champion can't be served (its files, its embedder): nothing to compare with


def unservable_champion(reason: str) -> ChampionComparison:
    """The comparison with a champion that cannot be served, so the new model may replace it without one."""
    return ChampionComparison(float("nan"), float("nan"), 0, False, unservable=reason)


@dataclass(frozen=True)
class GateEvidence:
    """What the checks read: the held-out evaluation and the comparison with the current champion."""

    evaluation: EvalResult
    champion: ChampionComparison | None = None
    n_prompts: int | None = None  # prompts in the whole log, for messages
    tiers: tuple[str, ...] | None = None  # the tiers this model routes
    champion_tiers: tuple[str, ...] | None = None  # the tiers the current champion routes (None: no champion)

    @property
    def n_test(self) -> int:
        return int(self.evaluation.metrics["n_test_prompts"])

    def aiq_draws(self, method: str) -> np.ndarray:
        return self.evaluation.draws[method]["AIQ"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str


Check = Callable[[GateEvidence], CheckResult | None]


def _beats(evidence: GateEvidence, method: str, name: str, what: str) -> CheckResult:
    """The router's AIQ minus `method`'s: passes when the bootstrap 95% lower bound of the difference is above 0."""
    diff = ev.ci95(evidence.aiq_draws("router") - evidence.aiq_draws(method))
    passed = bool(np.isfinite(diff.low) and diff.low > 0)
    verdict = "beats" if passed else "does not beat"
    return CheckResult(
        name,
        passed,
        f"router {verdict} {what} beyond the CI: AIQ difference {diff.value:+.4f}, 95% CI [{diff.low:+.4f}, "
        f"{diff.high:+.4f}] on {evidence.n_test} held-out prompts",
    )


def enough_test_prompts(evidence: GateEvidence) -> CheckResult:
    """At least MIN_TEST_PROMPTS held-out prompts: fewer, and no confidence interval can be trusted."""
    n = evidence.n_test
    ok = n >= MIN_TEST_PROMPTS
    return CheckResult(
        "enough_test_prompts",
        ok,
        f"{n} held-out prompts" + ("" if ok else f", fewer than the {MIN_TEST_PROMPTS} a bootstrap CI needs"),
    )


def beats_zero_router(evidence: GateEvidence) -> CheckResult:
    """Beats RouterBench's zero router: the random mix of the single tiers (their hull)."""
    return _beats(evidence, "random mix", "beats_zero_router", "the zero router (random mix of tiers)")


def beats_its_decisions_shuffled(evidence: GateEvidence) -> CheckResult | None:
    """Beats its own decisions dealt to the prompts at random (every knob setting keeps its share of each tier):
    a router without signal ties it, though its hull, the best of many noisy points, beats the zero router's few
    (None for an evaluation from before this null was drawn)."""
    if ev.SHUFFLED not in evidence.evaluation.draws:
        return None
    return _beats(evidence, ev.SHUFFLED, "beats_its_decisions_shuffled", "its own decisions shuffled across prompts")


def beats_best_single_tier(evidence: GateEvidence) -> CheckResult:
    """Beats always sending every prompt to the tier with the best AIQ on its own."""
    best = next(m for m in evidence.evaluation.draws if m.startswith("tier:"))
    return _beats(evidence, best, "beats_best_single_tier", f"the best single tier ({best.removeprefix('tier:')})")


def not_worse_than_champion(evidence: GateEvidence) -> CheckResult | None:
    """At least the current champion's AIQ on prompts neither trained on (None without a champion to compare).

    The champion is scored on this run's held-out prompts that its own run held out too: re-scoring it on prompts
    it trained on (a grown log draws another split) flattered it and kept better retrains out. Fewer than
    MIN_TEST_PROMPTS such prompts cannot show the new model is not worse: it stays a challenger."""
    c = evidence.champion
    if c is None:
        return None
    name = "not_worse_than_champion"
    if c.unservable:
        return CheckResult(name, True, f"the champion cannot be served ({c.unservable}): nothing to compare with")
    if c.n_prompts < MIN_TEST_PROMPTS:
        return CheckResult(
            name,
            False,
            f"only {c.n_prompts} of this run's held-out prompts were held out from the champion too (needs "
            f"{MIN_TEST_PROMPTS} to compare without the champion's training prompts); `tierwise promote` it if you "
            "know it is better",
        )
    ok = c.new_aiq >= c.champion_aiq
    where = (
        f"on the {c.n_prompts} held-out prompts neither model trained on"
        if c.shared_known
        else f"on this test split ({c.n_prompts} prompts; the champion's run did not record its held-out prompts, "
        "so it may have trained on some)"
    )
    sign = ">=" if ok else "<"
    return CheckResult(name, ok, f"AIQ {c.new_aiq:.4f} {sign} the champion's {c.champion_aiq:.4f} {where}")


def same_tiers_as_champion(evidence: GateEvidence) -> CheckResult | None:
    """Routes the champion's tiers (None without a champion or without the tier names to compare).

    A model for other tiers cannot be compared with the champion, and a service set up for the champion's tiers
    would refuse it: it is not promoted behind the service's back. `tierwise promote VERSION` moves the alias once
    the service's tiers file names the new tiers.
    """
    if evidence.champion_tiers is None or evidence.tiers is None:
        return None
    ok = evidence.champion_tiers == evidence.tiers
    detail = f"routes the champion's tiers {list(evidence.tiers)}"
    if not ok:
        detail = (
            f"the champion routes tiers {list(evidence.champion_tiers)}, this model {list(evidence.tiers)}: they "
            "cannot be compared, and a service set up for the champion's tiers would refuse this model; once the "
            "service's tiers file names these tiers, promote it with `tierwise promote VERSION`"
        )
    return CheckResult("same_tiers_as_champion", ok, detail)


CHECKS: tuple[Check, ...] = (
    enough_test_prompts,
    beats_zero_router,
    beats_its_decisions_shuffled,
    beats_best_single_tier,
    same_tiers_as_champion,
    not_worse_than_champion,
)


@dataclass(frozen=True)
class Verdict:
    alias: str
    checks: list[CheckResult]
    warnings: list[str]

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    @property
    def message(self) -> str:
        lines = [f"warning: {w}" for w in self.warnings]
        if self.alias == CHALLENGER:
            lines.append(f"kept as {CHALLENGER}: failed {', '.join(c.name for c in self.failed)}")
        else:
            lines.append(f"promoted to {self.alias}: passed {', '.join(c.name for c in self.checks)}")
        lines += [f"  {'pass' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def size_warnings(evidence: GateEvidence) -> list[str]:
    """A warning naming the log's size when it is too small to tell routers apart."""
    n = evidence.n_test
    if n >= WARN_TEST_PROMPTS:
        return []
    n_tiers = evidence.evaluation.test_scores.shape[1] if evidence.evaluation.test_scores is not None else "?"
    whole = f"the log has {evidence.n_prompts} prompts" if evidence.n_prompts is not None else "the log"
    return [
        f"{whole} ({n} held out with an outcome of every tier, the prompts the checks compare on) over {n_tiers} "
        "tiers: too small to tell a router from the random mix "
        f"(under {WARN_TEST_PROMPTS} held-out prompts the CIs are wider than typical differences); "
        "log more outcomes before trusting this model"
    ]


def run_gate(evidence: GateEvidence, champion_alias: str = CHAMPION, checks: Sequence[Check] = CHECKS) -> Verdict:
    """Run every check; `champion_alias` when all that apply pass, else `challenger`."""
    results = [r for r in (check(evidence) for check in checks) if r is not None]
    alias = champion_alias if all(r.passed for r in results) else CHALLENGER
    verdict = Verdict(alias, results, size_warnings(evidence))
    for w in verdict.warnings:
        logger.warning(w)
    return verdict
