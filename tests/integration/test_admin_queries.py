"""infra/admin_queries.py on SQLite and PostgreSQL: windows, shares, spend, savings inputs, session pages."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from infra import admin_queries as q
from infra.store import DecisionRow, OutcomeRow, Store, sessions
from router.artifact import RouterArtifact
from router.routing import Router
from serving.runtime import Runtime
from serving.ui.view import savings

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def decision(
    i: int,
    age: timedelta,
    tier: str = "main",
    expected: float = 1.0,
    cost: float | None = None,
    prompt: str = "a prompt",
    session: str | None = None,
) -> DecisionRow:
    return DecisionRow(
        id=f"d{i:04d}",
        prompt=prompt,
        tier=tier,
        model=f"model-{tier}",
        expected_cost_usd=expected,
        router_version="v1",
        reason=f"reason {i}",
        session_id=session,
        created_at=NOW - age,
        cost_usd=cost,
        settled=cost is not None,
    )


@pytest.fixture
def filled(store: Store) -> Store:
    store.migrate()
    store.record_decisions(
        [
            decision(1, timedelta(minutes=5), "main", expected=0.1),
            decision(2, timedelta(minutes=10), "main", expected=0.1, cost=0.05),  # settled: its real cost counts
            decision(3, timedelta(minutes=30), "brain", expected=2.0),
            decision(4, timedelta(hours=3), "mid", expected=0.5),  # in the day, not the hour
            decision(5, timedelta(days=2), "brain", expected=9.0),  # in neither
        ]
    )
    return store


def test_tier_usage_counts_and_spends_per_window(filled: Store) -> None:
    hour = {u.tier: u for u in q.tier_usage(filled.engine, NOW - timedelta(hours=1))}
    assert {t: (u.decisions, round(u.spend_usd, 9), u.settled) for t, u in hour.items()} == {
        "main": (2, 0.15, 1),
        "brain": (1, 2.0, 0),
    }
    day = q.tier_usage(filled.engine, NOW - timedelta(days=1))
    assert [u.tier for u in day] == ["main", "brain", "mid"]  # most used first, then by name
    assert sum(u.decisions for u in day) == 4
    assert q.tier_usage(filled.engine, NOW + timedelta(seconds=1)) == []


def test_an_outcome_that_settles_a_decision_gives_it_its_cost(filled: Store) -> None:
    """POST /outcomes books its cost on the session, not on the decision: the page takes it from the outcome."""
    outcome = OutcomeRow(id="o1", decision_id="d0003", prompt="a prompt", model="model-brain", score=1, cost_usd=0.7)
    assert filled.record_outcomes([outcome]) == 1
    again = OutcomeRow(id="o2", decision_id="d0003", prompt="a prompt", model="model-brain", score=0, cost_usd=9.0)
    assert filled.record_outcomes([again]) == 1  # a second outcome settles nothing: the first one's cost stands
    hour = {u.tier: u for u in q.tier_usage(filled.engine, NOW - timedelta(hours=1))}
    assert (hour["brain"].spend_usd, hour["brain"].settled) == (pytest.approx(0.7), 1)
    (brain,) = [r for r in q.recent_decisions(filled.engine) if r.decision.id == "d0003"]
    assert brain.settled_cost_usd == pytest.approx(0.7)
    sample = [s.cost_usd for s in q.cost_sample(filled.engine, NOW - timedelta(hours=1), 10) if s.tier == "brain"]
    assert sample == [pytest.approx(0.7)]


def test_cost_sample_is_the_newest_decisions_with_their_cost(filled: Store) -> None:
    got = q.cost_sample(filled.engine, NOW - timedelta(days=1), limit=3)
    assert [(s.tier, s.cost_usd) for s in got] == [("main", 0.1), ("main", 0.05), ("brain", 2.0)]
    assert len(q.cost_sample(filled.engine, NOW - timedelta(days=1), limit=100)) == 4


def test_recent_decisions_are_newest_first_and_bounded(filled: Store) -> None:
    got = q.recent_decisions(filled.engine, limit=2)
    assert [r.decision.id for r in got] == ["d0001", "d0002"]
    assert got[0].decision.reason == "reason 1"
    assert [r.settled_cost_usd for r in got] == [None, 0.05]
    assert len(q.recent_decisions(filled.engine, limit=10**9)) == 5  # the limit is clamped, not trusted


def test_sessions_page_filters_pages_and_counts(store: Store) -> None:
    store.migrate()
    for i in range(7):
        with store.lock_session(f"s{i}", None) as locked:
            locked.set_cap(1.0 + i)
            if i % 3 == 0:
                locked.freeze()
    frozen = q.list_sessions(store.engine, status="frozen")
    assert frozen.total == 3 and {r.id for r in frozen.rows} == {"s0", "s3", "s6"}
    assert all(r.status == "frozen" for r in frozen.rows)
    first = q.list_sessions(store.engine, limit=4)
    second = q.list_sessions(store.engine, offset=4, limit=4)
    assert (first.total, len(first.rows), len(second.rows)) == (7, 4, 3)
    assert {r.id for r in first.rows + second.rows} == {f"s{i}" for i in range(7)}  # pages do not overlap
    assert q.list_sessions(store.engine, offset=100).rows == []
    assert q.list_sessions(store.engine, limit=10**6).limit == q.MAX_PAGE


def test_the_page_queries_seek_by_index_never_scan_decisions(tmp_path: Path) -> None:
    """With 1M decisions the page must not scan the table: the windowed and newest-first queries seek on
    ix_decisions_created_at, and a settled decision finds its outcome through ix_outcomes_decision_id."""
    store = Store(f"sqlite:///{tmp_path / 'plan.db'}")
    store.migrate()
    statements: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "decisions" in statement:
            statements.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", grab)
    since = NOW - timedelta(hours=1)
    q.tier_usage(store.engine, since)
    q.cost_sample(store.engine, since, 100)
    q.recent_decisions(store.engine, 50)
    sa.event.remove(store.engine, "before_cursor_execute", grab)
    assert len(statements) == 3
    with store.engine.connect() as conn:
        for statement, parameters in statements:
            plan = " | ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters))
            assert "ix_decisions_created_at" in plan, plan
            assert not re.search(r"SCAN (decisions|outcomes)(?! USING)", plan), plan
            assert "ix_outcomes_decision_id" in plan, plan
    store.dispose()


def test_savings_compare_with_the_top_tier_for_the_same_prompts(artifact_dir: Path) -> None:
    artifact = RouterArtifact.load(artifact_dir)
    runtime = Runtime(Router(artifact), "v1")
    prompts = ["short one", "a much longer prompt " * 40]
    top = artifact.expected_cost(prompts)[:, -1]
    samples = [q.CostSample("main", 0.001, prompts[0]), q.CostSample("main", 0.002, prompts[1])]
    recorded = q.CostSample("mid", 0.004, "", {"main": 0.001, "mid": 0.004, "brain": 0.5})
    nothing = q.CostSample("brain", 5.0, "")
    got = savings(runtime, [*samples, recorded, nothing], window_total=10)
    assert got is not None
    assert (got.decisions, got.sampled, got.window_total, got.from_recorded, got.left_out) == (3, 4, 10, 1, 1)
    assert got.top_cost_usd == pytest.approx(float(top.sum()) + 0.5)  # today's prices, or the recorded top cost
    assert got.cost_usd == pytest.approx(0.007)  # the left-out decision's cost is not counted either
    assert got.saved_usd == pytest.approx(got.top_cost_usd - 0.007)
    assert got.saved_share == pytest.approx(got.saved_usd / got.top_cost_usd)
    assert savings(runtime, [q.CostSample("main", 1.0, ""), q.CostSample("main", 1.0, "  ", {"mid": 1.0})], 2) is None
    # A decision whose caller counted its input (a door conversation) is priced at that count, as it was routed.
    counted = savings(runtime, [q.CostSample("main", 0.001, prompts[0], None, 50_000)], window_total=1)
    assert counted is not None
    assert counted.top_cost_usd == pytest.approx(float(artifact.expected_cost(prompts[:1], tokens_in=[50_000])[0, -1]))
    assert counted.top_cost_usd > 100 * top[0]


def test_sessions_table_is_what_the_page_reads(store: Store) -> None:
    """The page lists spent / reserved / cap / status as the store keeps them (no second bookkeeping)."""
    store.migrate()
    with store.lock_session("x", None) as locked:
        locked.set_cap(2.0)
    with store.engine.begin() as conn:
        conn.execute(sessions.update().values(spent_usd=1.25, reserved_usd=0.5))
    (row,) = q.list_sessions(store.engine).rows
    assert (row.spent_usd, row.reserved_usd, row.cap_usd, row.status) == (1.25, 0.5, 2.0, "open")
