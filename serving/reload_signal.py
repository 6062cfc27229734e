"""The reload generation the workers of one service share: a number in a small file.

POST /admin/reload, answered by one worker, bumps it; every worker reads it every
`reload_check_interval_s` (one small file read, never on the request path) and reloads when it moved.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


class ReloadSignal:
    """A generation counter in `path`; replaced atomically, so a reader never sees half a number."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> int:
        """The current generation; 0 when nothing was bumped yet (or the file is unreadable)."""
        try:
            return int(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def bump(self) -> int:
        """Add one to the generation and return the new value; a file lock keeps concurrent bumps apart."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                generation = self.read() + 1
                tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                tmp.write_text(f"{generation}\n")
                os.replace(tmp, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return generation
