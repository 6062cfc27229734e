"""The store on a PostgreSQL database created with ENCODING 'SQL_ASCII' (an old cluster initialised in the C locale):
text goes in and comes back as the same str. Without a UTF-8 client encoding, psycopg got bytes there and the engine's
first query failed with "cannot use a string pattern on a bytes-like object"."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from infra.store import DecisionRow, Store
from tests.integration.conftest import PG_URL, pg_available

pytestmark = pytest.mark.postgres


@pytest.fixture
def sql_ascii_url() -> Iterator[str]:
    if not pg_available():
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL}")
    db = f"tw_ascii_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            sa.text(f"CREATE DATABASE {db} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
        )
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{db}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        admin.dispose()


def test_text_round_trips_on_a_sql_ascii_database(sql_ascii_url: str) -> None:
    store = Store(sql_ascii_url)
    try:
        store.migrate()
        with store.lock_session("café-☕", None):
            pass
        session = store.get_session("café-☕")
        assert session is not None and session.id == "café-☕"
        prompt = "Résumé de « Der Zauberberg » — 日本語で"
        store.record_decisions(
            [
                DecisionRow(
                    id="d-ascii",
                    prompt=prompt,
                    tier="main",
                    model="small",
                    expected_cost_usd=0.0,
                    router_version="v",
                    reason="naïve",
                )
            ]
        )
        row = store.get_decisions(["d-ascii"])["d-ascii"]
        assert (row.prompt, row.reason) == (prompt, "naïve")
    finally:
        store.dispose()
