"""Group commit for sessionless decisions: one thread per worker writes what concurrent requests decided in one
transaction, and each request is answered only once the transaction holding its decisions has committed.

Nothing is acknowledged earlier than before (a decision is in the store, visible to every worker, when /route
answers; durable or not as `decision_commit` says), but under load one commit (one fsync in the durable mode)
and one statement carry many decisions, and the event loop never waits for the disk. A batch the store refuses
is retried request by request, so one request's refused value fails that request alone.

Where a commit waits for neither the disk nor the network (`Store.decision_commit_is_local`: SQLite with
decision_commit=async, about 0.1 ms), the write commits on the event loop instead: the two thread hops cost
more than such a commit, and grouping saves little where a commit does not wait. Unless another writer holds the
file (another worker, a purge): then the commit is the thread's, and the loop does not wait out the lock. The
stores whose commit waits (durable SQLite's fsync, PostgreSQL's round trip) keep the thread and the grouping.

SQLite checkpoints the WAL inside the commit that passes 1000 pages (about one /route in 200): 1-15 ms on that
request, the p99 of /route. For the local commits a thread of the writer checkpoints every `checkpoint_interval_s`
while decisions are written instead, and a commit checkpoints only past `autocheckpoint` pages (SQLite still
needs one such commit to restart the WAL from its start), then only the little that thread has not copied yet.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from infra.store import DecisionRow, Store, StoreBusy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Pending:
    rows: Sequence[DecisionRow]
    done: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


class DecisionWriter:
    """Writes batches of decisions on its own thread; `write` waits until its rows are committed."""

    def __init__(
        self, store: Store, max_batch_rows: int = 512, checkpoint_interval_s: float = 0.05, autocheckpoint: int = 10_000
    ):
        self.store = store
        self.max_batch_rows = max_batch_rows
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._checkpoints = Checkpointer(store, checkpoint_interval_s)
        if store.decision_commit_is_local:
            store.decision_autocheckpoint = autocheckpoint

    async def write(self, rows: Sequence[DecisionRow], after: asyncio.Event | None = None) -> None:
        """Return once `rows` are committed; raise what the store raised for them. With `after`, the rows are
        committed only once it is set (the proxy: once its upstream request is on the wire)."""
        if not rows:
            return
        if after is not None:
            await after.wait()
        if self.store.decision_commit_is_local:
            try:
                self.store.record_decisions(rows, wait=False)
            except StoreBusy:  # another writer (a worker, a purge) holds the file: wait in the thread, not here
                logger.debug("decision commit would wait for another writer: committed by the writer thread")
            else:
                self._checkpoints.due()
                return
        loop = asyncio.get_running_loop()
        pending = _Pending(rows, loop.create_future(), loop)
        self._start()
        self._queue.put(pending)
        await pending.done

    def close(self) -> None:
        """Write what is queued, then stop the threads (the checkpointer after a last checkpoint)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()
        self._checkpoints.close()

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="decision-writer", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, size, stop = [first], len(first.rows), False
            while size < self.max_batch_rows:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
                size += len(more.rows)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            self.store.record_decisions([r for p in batch for r in p.rows])
        except Exception as exc:
            if len(batch) == 1:
                _resolve(batch[0], exc)
                return
            for p in batch:  # one request's refused value must not fail the others
                self._commit([p])
            return
        for p in batch:
            _resolve(p, None)


def _resolve(pending: _Pending, exc: BaseException | None) -> None:
    def settle() -> None:
        if pending.done.cancelled():
            return
        if exc is None:
            pending.done.set_result(None)
        else:
            pending.done.set_exception(exc)

    try:
        pending.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody waits for the answer any more
        logger.debug("decision batch finished after its event loop closed")


class Checkpointer:
    """Checkpoints the WAL of the store's local decision commits on its own thread (`Store.checkpoint_decisions`),
    once every `interval_s` in which `due` was called; started by the first `due`, stopped by `close`.

    SQLite's PASSIVE checkpoint waits for no reader or writer, and the sqlite3 module releases the GIL while
    it copies and syncs, so the event loop's commits go on meanwhile.
    """

    def __init__(self, store: Store, interval_s: float):
        self.store = store
        self.interval_s = interval_s
        self._dirty = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def due(self) -> None:
        """Decisions were committed: checkpoint them within `interval_s`."""
        self._dirty = True
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._stop.clear()
                    self._thread = threading.Thread(target=self._run, name="decision-checkpoint", daemon=True)
                    self._thread.start()

    def close(self) -> None:
        """Checkpoint what is left, then stop the thread; a later `due` starts it again."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._checkpoint()
        self._checkpoint()

    def _checkpoint(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        try:
            self.store.checkpoint_decisions()
        except Exception:  # the next one copies what this one could not; the WAL stays correct meanwhile
            logger.warning("checkpointing the decisions' WAL failed", exc_info=True)
