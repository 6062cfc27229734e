"""Logged traffic from the decision store, as off-policy evaluation's input (router.ope.LoggedDecisions).

A decision counts when it has an outcome (its latest, by decision_id) from the model of the tier it routed to, and
the evidence migration 0003 keeps: the logging distribution over tiers, the per-tier predictions and expected costs.
Decisions without them (logged before 0003), with a tier the current tiers config does not know, answered by another
model (a fallback: the outcome is not the routed tier's), without an outcome, or whose evidence is unusable (a
per-tier value that is not a number, a served tier with a propensity outside (0, 1]: the service writes neither) are
skipped and counted, so the report can say what the estimate stands on, naming a decision of each unusable kind.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import sqlalchemy as sa

from infra.prompt_policy import NOT_STORED
from infra.store import Store, decisions, outcomes, tier_values
from router.drift import fallback_tiers
from router.novelty import took_fallback
from router.ope import LoggedDecisions

INVALID_VALUES = "with a per-tier propensity, prediction or expected cost that is not a number"
INVALID_PROPENSITY = "whose logged propensities are outside [0, 1] or 0 for the tier served"


@dataclass(frozen=True)
class LoggedTraffic:
    """The usable logged decisions, their prompts (None where the store kept no text) and what was skipped."""

    logged: LoggedDecisions
    prompts: list[str | None]
    router_versions: list[str]
    names: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    # Per decision, the input tokens its caller counted and routing priced (None: estimated from the prompt).
    input_tokens: list[int | None] = field(default_factory=list)
    explored: int = 0  # decisions whose tier was drawn by exploration, not the policy's own choice
    # Per decision, the prompt's novelty as routed (NaN: not recorded), and the service's limit past which a prompt
    # gets the fallback's tier whatever the operating point (None: no fallback).
    novelty: np.ndarray = field(default_factory=lambda: np.zeros(0))
    novelty_limit: float | None = None
    fell_back: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # took the fallback when routed

    def fixed_tiers(self) -> np.ndarray:
        """Per decision, the tier no operating point changes (−1 where the operating point decides): the fallback's,
        for a prompt past today's novelty limit (router.drift.fallback_tiers)."""
        n = len(self.logged)
        if len(self.novelty) != n or len(self.fell_back) != n:
            return np.full(n, -1)
        logged = self.logged
        return fallback_tiers(self.novelty, self.novelty_limit, self.fell_back, logged.action, logged.predicted_cost)

    def describe(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in self.skipped.items() if n) or "none"
        versions = Counter(self.router_versions).most_common(3)
        uncertain = int((self.logged.propensity < 1).sum())
        return (
            f"{len(self.logged)} logged decisions with outcomes ({self.explored} explored, {uncertain} with "
            f"propensity < 1), router versions {', '.join(f'{v} ({n})' for v, n in versions)}; skipped: {skipped}"
        )


def load_traffic(
    store: Store,
    names: list[str],
    since: datetime | None = None,
    limit: int = 200_000,
    novelty_limit: float | None = None,
) -> LoggedTraffic:
    """The newest `limit` decisions with an outcome (since `since`), as arrays in the order of tier `names`;
    `novelty_limit`: the service's (LoggedTraffic.fixed_tiers)."""
    latest = (
        sa.select(outcomes.c.decision_id, sa.func.max(outcomes.c.created_at).label("at"))
        .where(outcomes.c.decision_id.is_not(None))
        .group_by(outcomes.c.decision_id)
        .subquery()
    )
    query = (
        sa.select(
            decisions.c.id,
            decisions.c.tier,
            decisions.c.prompt,
            decisions.c.router_version,
            decisions.c.propensities,
            decisions.c.predicted_quality,
            decisions.c.expected_costs,
            decisions.c.input_tokens,
            decisions.c.explored,
            decisions.c.novelty,
            decisions.c.reason,
            decisions.c.model.label("routed_model"),
            outcomes.c.model.label("answered_model"),
            outcomes.c.score,
            outcomes.c.cost_usd,
        )
        .join(latest, latest.c.decision_id == decisions.c.id)
        .join(outcomes, (outcomes.c.decision_id == latest.c.decision_id) & (outcomes.c.created_at == latest.c.at))
        .order_by(decisions.c.created_at.desc())
        .limit(limit)
    )
    unanswered = (
        sa.select(sa.func.count())
        .select_from(decisions)
        .where(~sa.exists().where(outcomes.c.decision_id == decisions.c.id))
    )
    if since is not None:
        query = query.where(decisions.c.created_at >= since)
        unanswered = unanswered.where(decisions.c.created_at >= since)
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
        without_outcome = int(conn.execute(unanswered).scalar_one())
    index = {n: j for j, n in enumerate(names)}
    skipped: Counter[str] = Counter()
    if without_outcome:
        # Left out by the join: what the estimates assume of them (outcomes missing at random) is the caller's to judge.
        skipped["without an outcome yet"] = without_outcome
    explored = 0
    keep: list[tuple[int, list[float], list[float], list[float], float, float]] = []
    unusable: dict[str, str] = {}  # reason -> the first decision skipped for it, named in the report
    prompts: list[str | None] = []
    versions: list[str] = []
    counted: list[int | None] = []
    novelty: list[float] = []
    fell_back: list[bool] = []
    for r in rows:
        if r.propensities is None or r.predicted_quality is None or r.expected_costs is None:
            skipped["without propensities (logged before migration 0003)"] += 1
            continue
        if r.tier not in index or set(r.propensities) != set(names) or set(r.expected_costs) != set(names):
            skipped["with other tiers than the current config"] += 1
            continue
        if r.answered_model != r.routed_model:
            skipped["answered by another model than the routed tier's (a fallback)"] += 1
            continue
        mu, pq, ec = (tier_values(v, names) for v in (r.propensities, r.predicted_quality, r.expected_costs))
        if mu is None or pq is None or ec is None:
            unusable.setdefault(INVALID_VALUES, r.id)
            skipped[INVALID_VALUES] += 1
            continue
        if not 0 < mu[index[r.tier]] <= 1 or not all(0 <= m <= 1 for m in mu):
            unusable.setdefault(INVALID_PROPENSITY, r.id)
            skipped[INVALID_PROPENSITY] += 1
            continue
        explored += bool(r.explored)
        keep.append((index[r.tier], mu, pq, ec, float(r.score), float(r.cost_usd)))
        prompts.append(None if r.prompt is None or r.prompt == NOT_STORED else r.prompt)
        versions.append(r.router_version)
        counted.append(r.input_tokens)
        novelty.append(float(r.novelty) if r.novelty is not None else math.nan)
        fell_back.append(took_fallback(r.reason))
    k = len(names)
    action = np.array([x[0] for x in keep], dtype=int)
    mu_arr = np.array([x[1] for x in keep], dtype=float).reshape(-1, k)
    logged = LoggedDecisions(
        action=action,
        propensity=mu_arr[np.arange(len(keep)), action] if keep else np.zeros(0),
        quality=np.array([x[4] for x in keep], dtype=float),
        cost=np.array([x[5] for x in keep], dtype=float),
        predicted_quality=np.array([x[2] for x in keep], dtype=float).reshape(-1, k),
        predicted_cost=np.array([x[3] for x in keep], dtype=float).reshape(-1, k),
        logging_probs=mu_arr,
    )
    named = {f"{why} (e.g. decision {unusable[why]})" if why in unusable else why: n for why, n in skipped.items()}
    return LoggedTraffic(
        logged,
        prompts,
        versions,
        names,
        named,
        counted,
        explored,
        np.array(novelty, dtype=float),
        novelty_limit,
        np.array(fell_back, dtype=bool),
    )
