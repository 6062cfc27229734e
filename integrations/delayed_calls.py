"""Calls run after a delay: one scheduler thread per process and a few workers, not one `threading.Timer` thread per
call. A burst of client disconnects at a LiteLLM proxy schedules as many releases; they wait as entries of one heap,
and a release blocked on an unreachable tierwise holds up only its own worker, not the others."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class DelayedCalls:
    """`call_later(delay_s, fn, *args)` runs `fn(*args)` about `delay_s` seconds later, in the order they fall due,
    on one of `workers` threads; one scheduler thread waits for the next due time. Threads start at the first call.
    A call that raises is logged; the others still run. All threads are daemons: calls not yet run when the process
    exits are dropped, never waited for; a forked child starts empty (its parent runs what it scheduled)."""

    def __init__(self, name: str, workers: int = 4) -> None:
        self.name = name
        self.workers = workers
        self._reset()
        me = weakref.ref(self)

        def reset_in_child() -> None:
            calls = me()
            if calls is not None:
                calls._reset()

        os.register_at_fork(after_in_child=reset_in_child)

    def _reset(self) -> None:
        """Empty, with no threads (also a forked child's state: the parent's lock may have been held at the fork)."""
        self._due: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._order = itertools.count()  # ties in time run in the order they were scheduled
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._ready: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []

    def call_later(self, delay_s: float, fn: Callable[..., Any], *args: Any) -> None:
        delay = min(max(0.0, delay_s), threading.TIMEOUT_MAX / 2)  # an endless delay must not kill the scheduler
        with self._cond:
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._order), fn, args))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._schedule, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def pending(self) -> int:
        """How many calls wait for their time."""
        with self._cond:
            return len(self._due)

    def _schedule(self) -> None:
        while True:
            with self._cond:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._cond.wait(None if not self._due else self._due[0][0] - time.monotonic())
                _, _, fn, args = heapq.heappop(self._due)
                if len(self._workers) < self.workers:  # daemon threads: what is queued never holds up the exit
                    worker = threading.Thread(target=self._work, name=f"{self.name}-worker", daemon=True)
                    worker.start()
                    self._workers.append(worker)
                self._ready.put((fn, args))

    def _work(self) -> None:
        while True:
            fn, args = self._ready.get()
            try:
                fn(*args)
            except BaseException:  # one failed call must not stop the ones behind it
                logger.exception("%s: a delayed call failed", self.name)
