"""Outcome lists naming the same decisions in other orders, written at once, never deadlock (PostgreSQL).

Found by a review: two requests, [D1 (session A), D2 (session B)] and [D2, D1], deadlocked in 19 of 20 pairs; the
one PostgreSQL aborted was spooled as an outage (202), and its settlement waited for the replay.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from infra.store import DecisionRow, OutcomeRow, Store
from tests.integration.conftest import CLIENT_KEY, bearer

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


HOLD_S = 8.0  # the blocker's longest hold: a request answering sooner did not wait for it


@contextmanager
def session_row_locked(url: str, session_id: str) -> Iterator[None]:
    """Another transaction holds the session's row (FOR UPDATE) until the block ends, or HOLD_S at most."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        engine = sa.create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("SELECT id FROM sessions WHERE id = :s FOR UPDATE"), {"s": session_id}).all()
                locked.set()
                release.wait(HOLD_S)
        finally:
            engine.dispose()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(30)
    try:
        yield
    finally:
        release.set()
        thread.join()


def test_a_lock_held_too_long_fails_as_an_outage_not_a_wait_without_end(
    pg_url: str, client_factory: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction holding a session's row made /route and /outcomes wait as long as it held it (75 s in the
    review); the decision was committed after its client had given up, its reservation never to be settled. Past
    LOCK_WAIT_S the request now fails as an outage: /route a 503, an outcome spooled (202), nothing lost."""
    import infra.store

    monkeypatch.setattr(infra.store, "LOCK_WAIT_S", 1)
    store = Store(pg_url)
    store.migrate()
    client = client_factory(store=store)
    key = bearer(CLIENT_KEY)
    try:
        assert client.put("/sessions/held", json={"cap_usd": 1.0}, headers=key).status_code == 200
        with session_row_locked(pg_url, "held"):
            r = client.post("/route", json={"prompt": "2+2?", "session_id": "held"}, headers=key)
            assert r.status_code == 503, r.text  # without the timeout: 200 once the blocker let go
        routed = client.post("/route", json={"prompt": "2+2?", "session_id": "held"}, headers=key)
        assert routed.status_code == 200, routed.text
        outcome = {"decision_id": routed.json()["decision_id"], "score": 1, "cost_usd": 0.001}
        with session_row_locked(pg_url, "held"):
            r = client.post("/outcomes", json=outcome, headers=key)
            assert r.status_code == 202 and r.json()["spooled"], r.text  # acknowledged, kept in the spool
        client.app.state.recorder.replay(client.app.state.runtime.tiers)
        session = store.get_session("held")
        assert session is not None and session.spent_usd == pytest.approx(0.001)
    finally:
        store.dispose()
