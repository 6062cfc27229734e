"""The group committer: every request's decisions are stored before it returns; concurrent ones share a commit."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from infra.store import DecisionRow, Store, StoreBusy
from serving.decision_writer import DecisionWriter
from serving.routing import INLINE_CHARS, INLINE_PROMPTS
from tests.integration.conftest import CLIENT_KEY, bearer
from tests.integration.test_decision_commit import _row as decision_row


def _row(prompt: str = "What is 2 + 2?") -> DecisionRow:
    return replace(decision_row(), prompt=prompt)


def test_concurrent_writes_share_one_commit_and_are_stored_when_they_return(store: Store) -> None:
    store.migrate()
    commits: list[int] = []
    first_started, release = threading.Event(), threading.Event()
    record = store.record_decisions

    def slow_record(rows: Sequence[DecisionRow]) -> None:
        commits.append(len(rows))
        if len(commits) == 1:  # hold the first commit until every other request has queued its rows
            first_started.set()
            release.wait(10)
        record(rows)

    store.record_decisions = slow_record  # type: ignore[method-assign]
    writer = DecisionWriter(store)
    batches = [[_row()], *[[_row(), _row()] for _ in range(20)]]

    async def main() -> None:
        first = asyncio.create_task(writer.write(batches[0]))
        await asyncio.to_thread(first_started.wait, 10)
        rest = [asyncio.create_task(writer.write(b)) for b in batches[1:]]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in rest)  # nobody is answered before its commit
        release.set()
        for task, batch in zip([first, *rest], batches, strict=True):
            await task
            ids = [r.id for r in batch]
            assert set(store.get_decisions(ids)) == set(ids)

    try:
        asyncio.run(main())
    finally:
        writer.close()
    assert commits == [1, 40]


def test_a_refused_request_fails_alone(store: Store) -> None:
    store.migrate()
    record = store.record_decisions
    gate = threading.Event()

    def picky_record(rows: Sequence[DecisionRow], wait: bool = True) -> None:
        gate.wait(10)
        if any(r.prompt == "refused" for r in rows):
            raise ValueError("refused value")
        record(rows, wait)

    store.record_decisions = picky_record  # type: ignore[method-assign]
    writer = DecisionWriter(store)
    good, bad = [_row() for _ in range(5)], _row("refused")

    async def main() -> list[BaseException | None]:
        tasks = [asyncio.create_task(writer.write([r])) for r in [good[0], bad, *good[1:]]]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = asyncio.run(main())
    finally:
        writer.close()
    assert [type(r) for r in results] == [type(None), ValueError, *[type(None)] * 4]
    assert set(store.get_decisions([r.id for r in [*good, bad]])) == {r.id for r in good}


def test_close_writes_what_is_queued_and_a_closed_writer_starts_again(store: Store) -> None:
    store.migrate()
    writer = DecisionWriter(store)
    rows = [_row() for _ in range(3)]

    async def main() -> None:
        await asyncio.gather(*(writer.write([r]) for r in rows))

    asyncio.run(main())
    writer.close()
    writer.close()  # idempotent
    later = _row()
    asyncio.run(writer.write([later]))
    writer.close()
    assert set(store.get_decisions([r.id for r in [*rows, later]])) == {r.id for r in [*rows, later]}


@pytest.mark.parametrize("mode", ["async", "durable"])
def test_a_commit_that_waits_for_nothing_is_made_on_the_loop(tmp_path: Path, mode: str) -> None:
    store = Store(f"sqlite:///{tmp_path / 'local.db'}")
    store.migrate()
    store.decision_commit = mode
    writer = DecisionWriter(store)
    rows, refused = [_row(), _row()], [_row()]
    record = store.record_decisions

    def picky_record(batch: Sequence[DecisionRow], wait: bool = True) -> None:
        if batch[0].id == refused[0].id:
            raise ValueError("refused value")
        record(batch, wait)

    store.record_decisions = picky_record  # type: ignore[method-assign]

    async def main() -> bool:
        await writer.write(rows)
        with pytest.raises(ValueError, match="refused value"):
            await writer.write(refused)
        return writer._thread is not None

    try:
        threaded = asyncio.run(main())
    finally:
        writer.close()
        store.dispose()
    assert store.decision_commit_is_local == (mode == "async")
    assert threaded == (mode == "durable")  # no thread hop where the commit waits for nothing
    stored = Store(store.url).get_decisions([r.id for r in [*rows, *refused]])
    assert set(stored) == {r.id for r in rows}


@pytest.mark.parametrize("mode", ["async", "durable"])
def test_local_commits_leave_the_wal_checkpoint_to_the_writers_thread(tmp_path: Path, mode: str) -> None:
    store = Store(f"sqlite:///{tmp_path / 'local.db'}")
    store.migrate()
    store.decision_commit = mode
    writer = DecisionWriter(store, checkpoint_interval_s=3600, autocheckpoint=5000)
    checkpoints: list[str | None] = []
    checkpoint = store.checkpoint_decisions

    def counted() -> None:
        checkpoints.append(threading.current_thread().name)
        checkpoint()

    store.checkpoint_decisions = counted  # type: ignore[method-assign]
    rows = [_row() for _ in range(20)]

    async def main() -> None:
        for r in rows:
            await writer.write([r])

    try:
        asyncio.run(main())
        with store._decision_engine().connect() as conn:
            autocheckpoint = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        assert checkpoints == []  # not in any commit: the interval has not passed
    finally:
        writer.close()  # the last checkpoint, on the checkpointer's thread
        store.dispose()
    if mode == "async":
        assert autocheckpoint == 5000  # commits checkpoint (SQLite's default: 1000 pages) only past 5000 pages
        assert checkpoints == ["decision-checkpoint"]
    else:  # each commit waits for the disk anyway: SQLite's own checkpoints, no thread
        assert autocheckpoint == 1000
        assert checkpoints == []
    assert set(Store(store.url).get_decisions([r.id for r in rows])) == {r.id for r in rows}


def test_nothing_to_write_returns_at_once(store: Store) -> None:
    writer = DecisionWriter(store)
    asyncio.run(writer.write([]))
    assert writer._thread is None  # no thread was started for nothing


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/route", {"prompt": "easy question 2: alpha beta"}),  # on the event loop with a cheap embedder
        ("/route", {"prompt": "easy question 2: " + "alpha " * (INLINE_CHARS // 6 + 1)}),  # too long: threadpool
        ("/route/batch", {"prompts": ["easy question 2: alpha beta"] * INLINE_PROMPTS}),
        ("/route/batch", {"prompts": ["easy question 2: alpha beta"] * (INLINE_PROMPTS + 1)}),
        ("/route", {"prompt": "easy question 2: alpha beta", "session_id": "s1"}),  # a reservation: threadpool
    ],
)
@pytest.mark.parametrize("inline_scoring", [True, False], ids=["cheap-embedder", "transformer-embedder"])
def test_every_path_stores_its_decisions_before_answering(
    client_factory: Callable[..., TestClient], store: Store, path: str, body: dict[str, Any], inline_scoring: bool
) -> None:
    client = client_factory(store=store)
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert runtime is not None, "the test app has no model loaded"
    client.app.state.runtime = dataclasses.replace(runtime, inline_scoring=inline_scoring)  # type: ignore[attr-defined]
    r = client.post(path, json=body, headers=bearer(CLIENT_KEY))
    assert r.status_code == 200, r.text
    ids = [d["decision_id"] for d in r.json().get("decisions", [r.json()])]
    assert set(store.get_decisions(ids)) == set(ids)


def test_a_local_commit_waits_for_another_writers_lock_in_the_thread_not_on_the_loop(tmp_path: Path) -> None:
    """On the loop it waited out SQLite's busy timeout: another worker or a purge holding the file's write lock
    stalled every request of this worker, open streams included (review finding: /ping took 5 s)."""
    import sqlite3

    path = tmp_path / "local.db"
    store = Store(f"sqlite:///{path}")
    store.migrate()
    store.decision_commit = "async"
    writer = DecisionWriter(store)
    earlier = _row()
    asyncio.run(writer.write([earlier]))  # the held connection is open, as in a running service
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock, as another worker's long transaction holds it
    row = _row()

    async def main() -> int:
        ticks = 0
        task = asyncio.create_task(writer.write([row]))
        while ticks < 20:  # the loop runs on while the write waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert not task.done()  # the lock is still held: not committed, not answered
        with pytest.raises(StoreBusy):  # the door's settlement on the loop does not wait either
            store.settle_decision(earlier.id, cost_usd=0.01, tokens_in=1, tokens_out=1, latency_ms=1.0,
                                  served_model="m", sessionless=True, wait=False)  # fmt: skip
        other.execute("COMMIT")
        await asyncio.wait_for(task, 30)
        return ticks

    try:
        assert asyncio.run(main()) == 20
    finally:
        writer.close()
        other.close()
    assert set(store.get_decisions([row.id])) == {row.id}
    settled = store.settle_decision(row.id, cost_usd=0.01, tokens_in=1, tokens_out=1, latency_ms=1.0,
                                    served_model="m", sessionless=True, wait=False)  # fmt: skip
    assert settled  # the held connection is back at its busy timeout, and usable without waiting when free
