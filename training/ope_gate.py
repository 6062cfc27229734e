"""The champion gate's off-policy check: is a candidate not worse than the served policy on real traffic?

On the service's logged decisions with outcomes, the candidate's mean quality minus the logging policy's is
estimated by doubly robust off-policy evaluation (router/ope.py), paired per decision, with a bootstrap
interval. The check passes when the interval's lower bound is at least −max_loss; with fewer than
`min_decisions` usable decisions, or a log that cannot support the candidate (no exploration where it
disagrees), it abstains and says why: the offline checks decide alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from router.routing import Router
from training.gate import Check, CheckResult, GateEvidence
from training.ope_data import LoggedTraffic
from training.ope_eval import gate_difference

logger = logging.getLogger(__name__)

NAME = "off_policy_dr"


@dataclass(frozen=True)
class OpeCheck:
    """The check's verdict (None = abstained), in one sentence, with the numbers for MLflow."""

    passed: bool | None
    detail: str
    metrics: dict[str, float] = field(default_factory=dict)
    name: str = NAME


def ope_check(
    candidate: Router,
    traffic: LoggedTraffic | None,
    target: float,
    min_decisions: int,
    max_loss: float,
    n_boot: int = 1000,
    seed: int = 0,
) -> OpeCheck:
    """Judge the candidate on logged traffic, or abstain when there is too little of it to tell."""
    n = 0 if traffic is None else sum(p is not None for p in traffic.prompts)
    if traffic is None or n < min_decisions:
        return OpeCheck(
            None, f"abstained: {n} logged decisions with outcomes and prompt text, fewer than {min_decisions}"
        )
    try:
        diff, low, high, n = gate_difference(candidate, traffic, target, n_boot=n_boot, seed=seed)
    except ValueError as exc:  # Unsupported, or fewer logged decisions than any estimate needs (router.ope)
        return OpeCheck(None, f"abstained: {exc}")
    metrics = {"ope_dr_quality_diff": diff, "ope_dr_quality_diff_low": low, "ope_dr_quality_diff_high": high}
    metrics["ope_decisions"] = float(n)
    verdict = low >= -max_loss
    detail = (
        f"{'passed' if verdict else 'failed'}: on {n} logged decisions, candidate minus served quality (DR) "
        f"{diff:+.4f}, 95% CI [{low:+.4f}, {high:+.4f}]; the lower bound must be at least {-max_loss:+.4f}"
    )
    return OpeCheck(verdict, detail, metrics)


def off_policy_gate_check(
    candidate: Router, traffic: LoggedTraffic | None, target: float, min_decisions: int, max_loss: float, seed: int = 0
) -> Check:
    """The champion gate's check (training/gate.py): None (does not apply) when it abstains, with the reason logged."""

    def off_policy_dr(_: GateEvidence) -> CheckResult | None:
        check = ope_check(candidate, traffic, target, min_decisions, max_loss, seed=seed)
        if check.passed is None:
            logger.info("gate: the off-policy check %s", check.detail)
            return None
        return CheckResult("off_policy_dr", check.passed, check.detail)

    return off_policy_dr
