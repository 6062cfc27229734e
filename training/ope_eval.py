"""Off-policy evaluation on logged traffic: the logging policy, the logged model at other operating points and a
candidate model, with IPS, SNIPS and DR; and λ for a mean cost on real traffic.

The logged model's other operating points need no prompt text (its per-tier predictions and expected costs
are stored with each decision); a candidate model scores the stored prompt texts, so it is evaluated on the
decisions whose text the store kept (TIERWISE_PROMPT_STORAGE=text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from router.drift import estimated_costs
from router.ope import MIN_LOGGED, LoggedDecisions, PolicyEstimate, Unsupported, compare, estimate, one_hot
from router.policy import lambda_for_cost, lambda_grid, tradeoff
from router.routing import Router
from training.ope_data import LoggedTraffic

DEFAULT_SHARES = (0.25, 0.5, 0.75)
"""Operating points of the logged model evaluated by default: mean expected cost as a share of the top tier's."""


@dataclass(frozen=True)
class Refusal:
    name: str
    reason: str


Row = PolicyEstimate | Refusal


def lambda_for_share(logged: LoggedDecisions, share: float, fixed: np.ndarray | None = None) -> float:
    """λ whose mean expected cost on the logged decisions is `share` of always-top's (`fixed`: the decisions whose
    tier no λ changes, LoggedTraffic.fixed_tiers)."""
    top = int(np.argmax(logged.predicted_cost.mean(axis=0)))
    budget = share * float(logged.predicted_cost[:, top].mean())
    return lambda_for_cost(logged.predicted_quality, logged.predicted_cost, budget, fixed=fixed)


def choices_at(traffic: LoggedTraffic, lam: float) -> np.ndarray:
    """The tier the logged model picks for each logged decision at λ, as the service would: the fallback's tier where
    the prompt was past the novelty limit (LoggedTraffic.fixed_tiers), whatever λ."""
    logged, fixed = traffic.logged, traffic.fixed_tiers()
    return np.asarray(np.where(fixed >= 0, fixed, tradeoff(logged.predicted_quality, logged.predicted_cost, lam)))


def _try(name: str, target: np.ndarray, logged: LoggedDecisions, names: Sequence[str], n_boot: int, seed: int) -> Row:
    try:
        return estimate(name, target, logged, names, n_boot=n_boot, seed=seed)
    except Unsupported as exc:
        return Refusal(name, str(exc))


def candidate_policy(router: Router, traffic: LoggedTraffic, target: float) -> tuple[np.ndarray, LoggedDecisions]:
    """A candidate router's choices on the logged prompts with text, and those decisions with its predictions.

    Raises ValueError when the store kept no prompt text to score.
    """
    have = np.array([p is not None for p in traffic.prompts], dtype=bool)
    if not have.any():
        raise ValueError(
            "the store kept no prompt text (TIERWISE_PROMPT_STORAGE=hash or none): a candidate model cannot "
            "score the logged traffic; only the logged model's operating points can be evaluated"
        )
    counts = traffic.input_tokens or [None] * len(traffic.prompts)
    kept = [(p, n) for p, n in zip(traffic.prompts, counts, strict=True) if p is not None]
    prompts = [p for p, _ in kept]
    # Priced as the service priced each logged decision: at the input its caller counted, else the prompt's estimate.
    quality, cost, novelty = router.assess(prompts, tokens_in=[n for _, n in kept])
    t, lam = router.knob(None, None, target)  # the candidate's own default operating point, as the service uses it
    # As the service would serve them: a prompt past the novelty limit gets the fallback's tier.
    decided = router.decide(quality, cost, t, cost_weight=lam, novelty=novelty, novelty_limit=traffic.novelty_limit)
    choices = np.array([d.tier_index for d in decided])
    sub = traffic.logged.take(have).with_predictions(quality, cost)
    return one_hot(choices, len(traffic.names)), sub


def evaluate_traffic(
    traffic: LoggedTraffic,
    candidate: Router | None = None,
    target: float = 0.8,
    shares: Sequence[float] = DEFAULT_SHARES,
    lambdas: Sequence[float] = (),
    n_boot: int = 1000,
    seed: int = 0,
) -> list[Row]:
    """Estimates (or refusals) for the logging policy, the logged model at each operating point, and a candidate."""
    logged, names = traffic.logged, traffic.names
    rows: list[Row] = [
        estimate("logging policy (as served)", logged.logging_distribution(), logged, names, n_boot, seed=seed)
    ]
    top = int(np.argmax(logged.predicted_cost.mean(axis=0)))
    top_cost = float(logged.predicted_cost[:, top].mean())
    rows_idx = np.arange(len(logged))
    fixed = traffic.fixed_tiers()
    points = set(lambdas)
    for s in shares:
        try:
            points.add(lambda_for_share(logged, s, fixed))
        except ValueError as exc:  # the fallback's tiers alone cost more: that point is out of reach, not the table
            rows.append(Refusal(f"logged model at {s:.0%} of the top tier's expected cost", str(exc)))
    for lam in sorted(points):
        choice = choices_at(traffic, lam)
        share = float(logged.predicted_cost[rows_idx, choice].mean()) / top_cost
        name = f"logged model at λ={lam:.4g} (expected cost {share:.0%} of top tier's)"
        rows.append(_try(name, one_hot(choice, len(names)), logged, names, n_boot, seed))
    for j, tier in enumerate(names):
        rows.append(_try(f"always {tier}", one_hot(np.full(len(logged), j), len(names)), logged, names, n_boot, seed))
    if candidate is not None:
        try:
            probs, sub = candidate_policy(candidate, traffic, target)
        except ValueError as exc:
            rows.append(Refusal("candidate model", str(exc)))
        else:
            if len(sub) < MIN_LOGGED:  # a store partly written without text: refuse this row, not the whole table
                why = f"only {len(sub)} of {len(logged)} logged decisions kept prompt text; it needs {MIN_LOGGED}"
                rows.append(Refusal("candidate model", why))
            else:
                name = f"candidate model ({len(sub)} decisions with text)"
                rows.append(_try(name, probs, sub, names, n_boot, seed))
    return rows


def format_rows(rows: Sequence[Row]) -> str:
    """A plain table: per policy, quality and cost by DR (95% interval), SNIPS and IPS, and the ESS."""
    lines = [
        f"{'policy':<58} {'quality DR [95% CI]':>26} {'SNIPS':>7} {'IPS':>7} {'model':>7} "
        f"{'cost DR (USD)':>13} {'ESS':>7}"
    ]
    for r in rows:
        if isinstance(r, Refusal):
            lines.append(f"{r.name:<58} refused: {r.reason}")
            continue
        q, c = r.quality, r.cost
        ci = f"{q.dr.value:.4f} [{q.dr.low:.4f}, {q.dr.high:.4f}]"
        lines.append(
            f"{r.name:<58} {ci:>26} {q.snips.value:>7.4f} {q.ips.value:>7.4f} {q.dm:>7.4f} "
            f"{c.dr.value:>13.6g} {q.ess:>7.0f}"
        )
        lines += [f"    note: {n}" for n in r.notes]
    return "\n".join(lines)


def calibrate_traffic(traffic: LoggedTraffic, mean_cost_usd: float, n_boot: int = 1000, seed: int = 0) -> str:
    """λ whose estimated realised mean cost on the logged traffic is at most `mean_cost_usd`, with its quality.

    Each λ's choices are the service's: a prompt past the novelty limit keeps the fallback's tier (`choices_at`).
    Realised cost is estimated by DR for each λ the log's exploration supports, and for the others as the service's
    recalibration estimates it (router.drift.estimated_costs, what `GET /admin/drift` uses): expected costs scaled
    by the realised / expected cost ratio of each tier served, novel and familiar prompts apart.
    """
    logged, names = traffic.logged, traffic.names
    fixed = traffic.fixed_tiers()
    # Where DR cannot judge a λ (the log never explored a tier it picks): each tier's expected cost scaled by its
    # realised / expected ratio, novel and familiar prompts apart, as GET /admin/drift estimates it.
    paid = estimated_costs(logged.predicted_cost, logged.action, logged.cost, fixed >= 0)
    ratio = "estimated from the realised / expected cost ratio of each tier served (no exploration supports DR here)"

    def spend(lam: float) -> tuple[float, str]:
        choice = choices_at(traffic, lam)
        try:
            est = estimate("λ", one_hot(choice, len(names)), logged, names, n_boot=2, seed=seed)
        except Unsupported:
            return float(paid[np.arange(len(logged)), choice].mean()), ratio
        return est.cost.dr.value, "DR estimate of realised cost"

    # The first λ of the grid within the budget, then bisection between it and the one before (the grid's steps
    # are 12% apart: its own point can spend well under the budget).
    grid = [float(x) for x in lambda_grid(logged.predicted_cost) if x >= 0]
    hi = next((k for k, lam in enumerate(grid) if spend(lam)[0] <= mean_cost_usd), None)
    if hi is None:
        raise ValueError(f"no λ reaches a mean cost of ${mean_cost_usd:.6g} on the logged traffic")
    lo_lam, hi_lam = (grid[hi - 1], grid[hi]) if hi > 0 else (0.0, 0.0)
    for _ in range(30 if hi > 0 else 0):
        mid = (lo_lam + hi_lam) / 2 if lo_lam == 0 else float(np.sqrt(lo_lam * hi_lam))
        lo_lam, hi_lam = (lo_lam, mid) if spend(mid)[0] <= mean_cost_usd else (mid, hi_lam)
    lam = hi_lam
    cost, how = spend(lam)
    choice = choices_at(traffic, lam)
    probs = one_hot(choice, len(names))
    shares = ", ".join(f"{n} {(choice == j).mean():.1%}" for j, n in enumerate(names))
    lines = [f'"cost_weight_per_usd": {lam:.10g} in /route', f"on {traffic.describe()}"]
    try:
        est = estimate("λ", probs, logged, names, n_boot=n_boot, seed=seed)
        q, c = est.quality.dr, est.cost.dr
        lines.append(
            f"estimated (DR, 95% CI): quality {q.value:.4f} [{q.low:.4f}, {q.high:.4f}], "
            f"mean cost ${c.value:.6g} [${c.low:.6g}, ${c.high:.6g}]; ESS {est.quality.ess:.0f}; {shares}"
        )
    except Unsupported as exc:
        lines.append(f"mean cost ${cost:.6g} ({how}); {shares}")
        lines.append(f"no estimate of realised quality or cost: {exc}")
    return "\n".join(lines)


def gate_difference(
    candidate: Router, traffic: LoggedTraffic, target: float, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float, int]:
    """The candidate's quality minus the logging policy's, paired on logged traffic: DR value, low, high and n."""
    probs, sub = candidate_policy(candidate, traffic, target)
    mu = sub.logging_distribution()
    quality, _ = compare(probs, mu, sub, traffic.names, n_boot=n_boot, seed=seed)
    return quality.dr.value, quality.dr.low, quality.dr.high, len(sub)
