"""A local append-only file for outcomes that arrived while the store was down.

Appends are fsynced before the caller answers; `drain` hands every spooled record to a writer
and empties the file only when the writer succeeded. A file lock keeps workers apart.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class Spool:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write records durably (fsync) before returning."""
        data = "".join(json.dumps(r) + "\n" for r in records)
        with self._locked(), open(self.path, "a") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def pending(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path) as fh:
            return sum(1 for line in fh if line.strip())

    def drain(self, write: Callable[[list[dict[str, Any]]], None]) -> int:
        """Pass every spooled record to `write`; truncate the file once it returns. Returns the count."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0
        with self._locked():
            records = []
            with open(self.path) as fh:
                for line in fh:
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        # A line torn by a crash mid-append was never acknowledged to its client.
                        logger.error("skipping a torn spool line: %r", line[:200])
            if records:
                write(records)
            with open(self.path, "w") as fh:
                fh.flush()
                os.fsync(fh.fileno())
        return len(records)
