"""Read-only aggregates over the decision store for the admin page: shares, spend, sessions, recent decisions.

Every query is bounded: aggregates run in SQL (the window's rows never come to Python), listings take a limit,
and windows filter on the indexed `decisions.created_at`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from infra.store import DecisionRow, SessionRow, _decision, _session, decisions, outcomes, sessions

MAX_PAGE = 500


def settled_cost_usd() -> sa.ColumnElement[float]:
    """What a settled decision really cost: the cost the OpenAI-compatible door wrote on it, else the cost of the
    outcome that settled it (the first stored; POST /outcomes books it on the session but not on the decision)."""
    first_outcome = (
        sa.select(outcomes.c.cost_usd)
        .where(outcomes.c.decision_id == decisions.c.id)
        .order_by(outcomes.c.created_at, outcomes.c.id)
        .limit(1)
        .scalar_subquery()
    )
    return sa.func.coalesce(decisions.c.cost_usd, sa.case((decisions.c.settled == sa.true(), first_outcome)))


def decision_cost_usd() -> sa.ColumnElement[float]:
    """What a decision cost: its settled cost when settled, else its expected cost."""
    return sa.func.coalesce(settled_cost_usd(), decisions.c.expected_cost_usd)


@dataclass(frozen=True)
class TierUsage:
    """Decisions routed to one tier in a window, and what they cost."""

    tier: str
    decisions: int
    spend_usd: float
    settled: int


@dataclass(frozen=True)
class CostSample:
    """One recent decision's tier and cost, its prompt ('' where prompts are not stored), the expected cost per
    tier recorded when it was decided (None on decisions older than migration 0003), and the input tokens its
    caller counted (None: estimated from the prompt, or older than migration 0006)."""

    tier: str
    cost_usd: float
    prompt: str
    expected_costs: dict[str, float] | None = None
    input_tokens: int | None = None


@dataclass(frozen=True)
class SessionPage:
    rows: list[SessionRow]
    total: int
    offset: int
    limit: int


def _limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_PAGE))


def tier_usage(engine: Engine, since: datetime) -> list[TierUsage]:
    """Per tier, the decisions made at or after `since` and their spend, most used first."""
    q = (
        sa.select(
            decisions.c.tier,
            sa.func.count().label("n"),
            sa.func.coalesce(sa.func.sum(decision_cost_usd()), 0.0).label("spend"),
            sa.func.sum(sa.case((decisions.c.settled == sa.true(), 1), else_=0)).label("settled"),
        )
        .where(decisions.c.created_at >= since)
        .group_by(decisions.c.tier)
        .order_by(sa.desc("n"), decisions.c.tier)
    )
    with engine.connect() as conn:
        return [TierUsage(r.tier, int(r.n), float(r.spend), int(r.settled or 0)) for r in conn.execute(q)]


def cost_sample(engine: Engine, since: datetime, limit: int) -> list[CostSample]:
    """The `limit` most recent decisions at or after `since`: tier, cost, prompt and recorded expected costs."""
    q = (
        sa.select(
            decisions.c.tier,
            decision_cost_usd().label("cost"),
            decisions.c.prompt,
            decisions.c.expected_costs,
            decisions.c.input_tokens,
        )
        .where(decisions.c.created_at >= since)
        .order_by(decisions.c.created_at.desc())
        .limit(max(1, int(limit)))
    )
    with engine.connect() as conn:
        return [
            CostSample(r.tier, float(r.cost), r.prompt or "", r.expected_costs, r.input_tokens) for r in conn.execute(q)
        ]


@dataclass(frozen=True)
class RecentDecision:
    decision: DecisionRow
    settled_cost_usd: float | None  # None until settled


def recent_decisions(engine: Engine, limit: int = 50) -> list[RecentDecision]:
    """The newest decisions of every session, newest first, with what each cost once settled."""
    q = (
        sa.select(decisions, settled_cost_usd().label("settled_cost"))
        .order_by(decisions.c.created_at.desc())
        .limit(_limit(limit))
    )
    with engine.connect() as conn:
        return [RecentDecision(_decision(r), r.settled_cost) for r in conn.execute(q)]


def list_sessions(engine: Engine, status: str | None = None, offset: int = 0, limit: int = 50) -> SessionPage:
    """One page of sessions (optionally of one status), most recently changed first, and how many there are."""
    where: Sequence[sa.ColumnElement[bool]] = [sessions.c.status == status] if status else []
    limit = _limit(limit)
    offset = max(0, int(offset))
    page = (
        sessions.select()
        .where(*where)
        .order_by(sessions.c.updated_at.desc(), sessions.c.id)
        .offset(offset)
        .limit(limit)
    )
    count = sa.select(sa.func.count()).select_from(sessions).where(*where)
    with engine.connect() as conn:
        rows = [_session(r) for r in conn.execute(page)]
        total = int(conn.execute(count).scalar_one())
    return SessionPage(rows, total, offset, limit)
