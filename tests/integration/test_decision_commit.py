"""decision_commit="async": sessionless decisions commit without waiting for the disk, yet every worker sees them."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from infra.store import DecisionRow, Store


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
    """What each decision commit ran under: SQLite's PRAGMA synchronous, or PostgreSQL's synchronous_commit."""
    seen: list[str] = []

    def after(conn: sa.Connection, *_: object) -> None:
        if conn.dialect.name == "sqlite":
            seen.append(str(conn.exec_driver_sql("PRAGMA synchronous").scalar()))
        else:
            seen.append(str(conn.exec_driver_sql("SHOW synchronous_commit").scalar()))

    for engine in {store.engine, store._decision_engine()}:
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
