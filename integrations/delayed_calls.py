"""Calls run after a delay on one daemon thread per process, not one `threading.Timer` thread per call: a burst of
client disconnects at a LiteLLM proxy schedules as many releases, and they wait as entries of one heap."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class DelayedCalls:
    """`call_later(delay_s, fn, *args)` runs `fn(*args)` about `delay_s` seconds later, in the order they fall due, on
    one daemon thread started at the first call (and again in a forked child, where it does not exist). A call that
    raises is logged; the others still run. Calls still waiting when the process exits are not run."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._due: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._order = itertools.count()  # ties in time run in the order they were scheduled
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def call_later(self, delay_s: float, fn: Callable[..., Any], *args: Any) -> None:
        with self._cond:
            heapq.heappush(self._due, (time.monotonic() + max(0.0, delay_s), next(self._order), fn, args))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def pending(self) -> int:
        """How many calls wait to run."""
        with self._cond:
            return len(self._due)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._cond.wait(None if not self._due else self._due[0][0] - time.monotonic())
                _, _, fn, args = heapq.heappop(self._due)
            try:
                fn(*args)
            except Exception:  # one failed call must not stop the ones behind it
                logger.exception("%s: a delayed call failed", self.name)
