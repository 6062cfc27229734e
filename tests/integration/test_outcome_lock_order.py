"""Outcome lists naming the same decisions in other orders, written at once, never deadlock (PostgreSQL).

Found by a review: two requests, [D1 (session A), D2 (session B)] and [D2, D1], deadlocked in 19 of 20 pairs; the
one PostgreSQL aborted was spooled as an outage (202), and its settlement waited for the replay.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from infra.store import DecisionRow, OutcomeRow, Store

PAIRS = 10


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[Store]:
    store = Store(pg_url)
    store.migrate()
    yield store
    store.dispose()


def decision(name: str, session: str) -> DecisionRow:
    return DecisionRow(id=name, prompt=f"question {name}", tier="main", model="small", expected_cost_usd=0.01,
                       router_version="1", reason="routed", session_id=session, reserved_usd=0.01)  # fmt: skip


def outcome(judge: str, decision_id: str) -> OutcomeRow:
    return OutcomeRow(id=f"{judge}-{decision_id}", decision_id=decision_id, prompt=f"question {decision_id}",
                      model="small", score=1.0, cost_usd=0.01)  # fmt: skip


def test_outcome_lists_in_opposite_orders_do_not_deadlock(pg_store: Store) -> None:
    pairs = []
    for i in range(PAIRS):
        for name, session in ((f"a{i}", "A"), (f"b{i}", "B")):
            with pg_store.lock_session(session, owner=None) as locked:
                locked.reserve([decision(name, session)])
        pairs.append((f"a{i}", f"b{i}"))
    errors: list[BaseException] = []

    def write(rows: list[OutcomeRow], start: threading.Barrier) -> None:
        start.wait()
        try:
            pg_store.record_outcomes(rows)
        except BaseException as exc:  # a deadlock is OperationalError
            errors.append(exc)

    for a, b in pairs:
        start = threading.Barrier(2)
        threads = [
            threading.Thread(target=write, args=([outcome("j1", a), outcome("j1", b)], start)),
            threading.Thread(target=write, args=([outcome("j2", b), outcome("j2", a)], start)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [], [type(e).__name__ for e in errors]
    for session in ("A", "B"):
        row = pg_store.get_session(session)
        assert row is not None and row.reserved_usd == pytest.approx(0) and row.spent_usd == pytest.approx(0.01 * PAIRS)
