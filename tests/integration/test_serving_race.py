"""Many parallel /route calls on one capped session never reserve past the cap (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from infra.store import Store
from tests.integration.conftest import CLIENT_KEY, bearer

CAP_USD = 0.01
N_REQUESTS = 50


def test_parallel_routes_hold_the_cap(client_factory: Callable[..., TestClient], store: Store) -> None:
    client = client_factory(store=store)
    headers = bearer(CLIENT_KEY)
    assert client.put("/sessions/race", json={"cap_usd": CAP_USD}, headers=headers).status_code == 200
    prompt = "hard question 7: omega sigma alpha beta gamma"

    def fire(_: int) -> int:
        return client.post("/route", json={"prompt": prompt, "session_id": "race"}, headers=headers).status_code

    with ThreadPoolExecutor(max_workers=N_REQUESTS) as pool:
        codes = Counter(pool.map(fire, range(N_REQUESTS)))
    assert set(codes) <= {200, 402} and codes[402] > 0, codes
    row = store.get_session("race")
    assert row is not None and row.status == "frozen"
    decisions = store.recent_decisions("race", limit=1000)
    assert len(decisions) == codes[200]
    reserved = sum(d.reserved_usd for d in decisions)
    assert row.spent_usd + row.reserved_usd <= CAP_USD + 1e-12
    assert row.reserved_usd == pytest.approx(reserved)
