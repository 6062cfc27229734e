"""decision_commit="async": sessionless decisions commit without waiting for the disk, yet every worker sees them."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from infra.prompt_policy import PromptStorage, prompt_policy
from infra.store import DecisionRow, Store, _insert_decisions


def _row() -> DecisionRow:
    return DecisionRow(
        id=uuid.uuid4().hex,
        prompt="What is 2 + 2?",
        tier="small",
        model="small-model",
        expected_cost_usd=1e-5,
        router_version="v1",
        reason="cheapest tier that clears the target",
    )


@pytest.mark.parametrize("mode", ["durable", "async"])
def test_a_decision_is_visible_to_another_worker_at_once(store: Store, mode: str) -> None:
    store.migrate()
    store.decision_commit = mode
    row = _row()
    store.record_decisions([row])
    other = Store(store.url)  # another worker's store
    try:
        assert other.get_decisions([row.id])[row.id].reason == row.reason
    finally:
        other.dispose()


def _synchronous_settings(store: Store) -> list[str]:
    """What each decision commit ran under: the PRAGMA synchronous of the SQLite connection it took from its engine
    (the local commits hold theirs), or PostgreSQL's synchronous_commit in its transaction."""
    seen: list[str] = []

    def checkout(dbapi_connection: Any, *_: object) -> None:
        cursor = dbapi_connection.cursor()
        seen.append(str(cursor.execute("PRAGMA synchronous").fetchone()[0]))
        cursor.close()

    def after(conn: sa.Connection, *_: object) -> None:
        seen.append(str(conn.exec_driver_sql("SHOW synchronous_commit").scalar()))

    for engine in {store.engine, store._decision_engine()}:
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "checkout", checkout)
        else:
            sa.event.listen(engine, "after_execute", after)
    store.record_decisions([_row()])
    return seen


@pytest.mark.parametrize(("mode", "sqlite", "postgresql"), [("durable", "2", "on"), ("async", "1", "off")])
def test_the_decision_commit_mode_reaches_the_database(store: Store, mode: str, sqlite: str, postgresql: str) -> None:
    store.migrate()
    store.decision_commit = mode
    expected = sqlite if store.engine.dialect.name == "sqlite" else postgresql
    assert _synchronous_settings(store)[-1] == expected
    # Everything else the store writes keeps its durable commit.
    with store.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
        else:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"


def _full_row() -> DecisionRow:
    names = ["small", "large"]
    return replace(
        _row(),
        prompt="What is 2 + 2? ünïcode ✓",
        reason="explored: served small",
        owner="k" * 64,
        metadata={"team": "a", "n": [1, 2.5, None]},
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        propensity=0.25,
        explored=True,
        predicted_quality=dict(zip(names, [0.1, 0.9], strict=True)),
        propensities=dict(zip(names, [0.25, 0.75], strict=True)),
        expected_costs=dict(zip(names, [1e-5, 3e-4], strict=True)),
        novelty=0.5,
        task="math",
    )


@pytest.mark.parametrize("prompts", ["text", "hash", "none"])
def test_a_held_connection_commit_stores_what_sqlalchemy_stores(tmp_path: Path, prompts: PromptStorage) -> None:
    """On a SQLite file sessionless decisions (durable or async) insert on a held connection, not through
    SQLAlchemy's execute: the same columns, byte for byte, as SQLAlchemy's insert writes (a None metadata
    included), which a session's decisions and PostgreSQL still use."""
    stored: dict[str, dict[str, Any]] = {}
    for mode in ("sqlalchemy", "durable", "async"):
        url = f"sqlite:///{tmp_path / mode}.db"
        store = Store(url, prompt_policy(prompts, SecretStr("secret-key-of-32-characters-long!")))
        store.migrate()
        full, bare = _full_row(), replace(_row(), created_at=datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC))
        batches = [[full], [bare, replace(full, id=uuid.uuid4().hex, metadata=None)]]  # the second: executemany
        if mode == "sqlalchemy":
            for batch in batches:
                with store.engine.begin() as conn:
                    _insert_decisions(conn.execute, batch, store.prompts)
        else:
            store.decision_commit = mode
            for batch in batches:
                store.record_decisions(batch)
            assert store.decision_commit_is_local == (mode == "async")
        store.dispose()
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT * FROM decisions ORDER BY rowid").mappings().all()
        engine.dispose()
        stored[mode] = {str(i): {k: v for k, v in r.items() if k != "id"} for i, r in enumerate(rows)}
    assert len(stored["sqlalchemy"]) == 3
    assert stored["durable"] == stored["sqlalchemy"]
    assert stored["async"] == stored["sqlalchemy"]


@pytest.mark.parametrize("mode", ["durable", "async"])
def test_a_settlement_books_once_in_either_commit_mode(store: Store, mode: str) -> None:
    """The proxy's settlement (a held connection on SQLite, SQLAlchemy on PostgreSQL): the served usage is written,
    a session's reservation released and the cost booked once; a sessionless decision books on no session."""
    store.migrate()
    store.decision_commit = mode
    sessionless = _row()
    store.record_decisions([sessionless])
    booked = replace(_row(), session_id="s-settle", reserved_usd=0.5)
    with store.lock_session("s-settle", None) as locked:
        locked.reserve([booked])
    for decision, cost in ((sessionless, 0.2), (booked, 0.3), (booked, 7.0)):  # the last: a second settlement
        store.settle_decision(
            decision.id,
            cost_usd=cost,
            tokens_in=12,
            tokens_out=3,
            latency_ms=20.5,
            served_model="small-model",
            reason=None if decision is sessionless else "routed; served",
            sessionless=decision.session_id is None,
        )
    other = Store(store.url)  # another worker sees it at once
    try:
        got = other.get_decisions([sessionless.id, booked.id])
        session = other.get_session("s-settle")
    finally:
        other.dispose()
    assert got[sessionless.id].settled and got[sessionless.id].cost_usd == pytest.approx(0.2)
    assert got[sessionless.id].reason == sessionless.reason  # None keeps the decision's reason
    assert (got[booked.id].tokens_in, got[booked.id].tokens_out, got[booked.id].served_model) == (12, 3, "small-model")
    assert got[booked.id].reason == "routed; served"
    assert session is not None
    assert session.spent_usd == pytest.approx(0.3) and session.reserved_usd == pytest.approx(0.0)  # booked once


def test_a_refused_local_commit_raises_the_stores_error_and_the_next_one_commits(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'local.db'}")
    store.migrate()
    store.decision_commit = "async"
    first = _row()
    store.record_decisions([first])
    with pytest.raises(sa.exc.IntegrityError):
        store.record_decisions([_row(), first])  # a repeated id: nothing of the batch is stored
    after = _row()
    store.record_decisions([after])
    store.dispose()
    assert set(Store(store.url).get_decisions([first.id, after.id])) == {first.id, after.id}
    assert len(Store(store.url).get_decisions([first.id, after.id, "x" * 32])) == 2
