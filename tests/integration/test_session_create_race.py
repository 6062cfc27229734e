"""Two clients creating the same session at once: one owns it, the other gets 403 (SQLite and PostgreSQL).

The owner used to be checked before the transaction that inserts or updates, so both got 200 and the
second overwrote the first's cap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from infra.store import Store
from serving.security import hash_key
from tests.integration.conftest import CLIENT_KEY, OTHER_KEY, bearer

TRIALS = 40


def test_concurrent_creates_have_one_owner(client_factory: Callable[..., TestClient], store: Store) -> None:
    client = client_factory(store=store)
    caps = {CLIENT_KEY: 1.0, OTHER_KEY: 2.0}

    def trial(i: int) -> None:
        sid = f"new-{i}"
        start = threading.Barrier(2)

        def put(key: str) -> tuple[str, int]:
            start.wait()
            r = client.put(f"/sessions/{sid}", json={"cap_usd": caps[key]}, headers=bearer(key))
            return key, r.status_code

        with ThreadPoolExecutor(2) as pool:
            results = dict(pool.map(put, caps))
        assert sorted(results.values()) == [200, 403], (sid, results)
        [winner] = [k for k, code in results.items() if code == 200]
        row = store.get_session(sid)
        assert row is not None and row.owner == hash_key(winner) and row.cap_usd == caps[winner], (sid, row)

    for i in range(TRIALS):
        trial(i)
