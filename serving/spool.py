"""A local append-only file for outcomes that arrived while the store was down.

Appends are fsynced before the caller answers, one record per line; a line torn by a crash is closed
before the next append, so it can never swallow an acknowledged record. `drain` moves the file aside
under the append lock (later appends start a fresh file, nothing appended during a drain is lost), then
hands its records to a writer in bounded batches and saves the byte offset after each one. An outage or a
crash resumes from that offset: a batch may be written twice (outcome ids make that harmless), none is
skipped. One drainer at a time across threads and workers; records the store refuses are quarantined in
`<spool>.rejected` with their reason.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

Record = dict[str, Any]
# Every record is written with its id first, so a record glued to a torn line can be found again.
RECORD_START = b'{"outcome_id": '


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_durably(path: Path, data: bytes) -> None:
    """Append `data` on a line of its own and fsync; on failure cut the file back to where it was."""
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # close a line torn by a crash or a full disk
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            with suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)


def _size(path: Path) -> int:
    """The file's size; 0 when it does not exist (another worker may remove it at any moment)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _count_lines(path: Path, start: int = 0) -> int:
    """Non-empty lines from byte `start` on, streamed."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            return sum(1 for line in fh if line.strip())
    except FileNotFoundError:
        return 0


def parse_line(line: bytes) -> tuple[list[Record], bytes | None]:
    """The records on one spool line, and the torn remains (None when there are none).

    A file written before appends closed torn lines may hold a torn record glued to a complete one:
    the complete one starts at a later `{"outcome_id": ` (inside a JSON string every quote is escaped).
    """
    text = line.strip()
    if not text:
        return [], None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting too deep for the parser, no record of ours
        record = None
    if isinstance(record, dict):
        return [record], None
    at = text.find(RECORD_START, 1)
    while at != -1:
        records, rest = parse_line(text[at:])
        if records and rest is None:
            return records, text[:at]
        at = text.find(RECORD_START, at + 1)
    return [], text


def _entry_of(line: bytes) -> Record | None:
    """A spool or quarantine line as parsed JSON; None for a torn line or one that is no object."""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth (a torn or foreign line)
        return None
    return entry if isinstance(entry, dict) else None


def _record_of(line: bytes) -> Record | None:
    """A spool or quarantine line's record (a quarantine entry's is under "record"); None for a torn line."""
    entry = _entry_of(line)
    inner = entry.get("record") if entry is not None else None
    return inner if isinstance(inner, dict) else entry


def _stamp(line: bytes) -> datetime | None:
    """When a spool or quarantine line's record came in (`spooled_at`; a quarantine entry of a record spooled before
    records were stamped: when it was set aside); None when the line says neither (a torn or an older line)."""
    entry = _entry_of(line)
    if entry is None:
        return None
    record = entry.get("record")
    stamp = record.get("spooled_at") if isinstance(record, dict) else None
    stamp = stamp or entry.get("spooled_at") or entry.get("rejected_at")
    try:
        at = datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
    except ValueError:
        return None
    return at if at is None or at.tzinfo is not None else at.replace(tzinfo=UTC)


def _rewrite_without(path: Path, drop: Callable[[bytes], bool], offset: int) -> tuple[int, int]:
    """Rewrite `path` (durably, by rename) without the lines `drop` picks: how many went, and where `offset` (a
    byte position at a line start) falls in the new file."""
    if _size(path) == 0:
        return 0, offset
    kept: list[bytes] = []
    removed, at, new_offset = 0, 0, offset
    with open(path, "rb") as fh:
        for line in fh:
            if drop(line):
                removed += 1
                if at < offset:
                    new_offset -= len(line)
            else:
                kept.append(line)
            at += len(line)
    if removed:
        tmp = path.with_name(path.name + ".rewrite")
        with open(tmp, "wb") as out:
            out.write(b"".join(kept))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    return removed, new_offset


class Spool:
    def __init__(self, path: Path, batch_size: int = 500):
        self.path = path
        self.batch_size = batch_size
        self.draining = path.with_name(path.name + ".draining")
        self.offset_path = path.with_name(path.name + ".draining.offset")
        self.rejected_path = path.with_name(path.name + ".rejected")
        self._append_lock = threading.Lock()
        self._drain_lock = threading.Lock()

    @contextmanager
    def _locked(self, name: str, thread_lock: threading.Lock, wait: bool = True) -> Iterator[bool]:
        """Hold `thread_lock` and an flock on `<spool>.<name>`; yield False, holding nothing, if busy and not `wait`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not thread_lock.acquire(blocking=wait):
            yield False
            return
        try:
            with open(self.path.with_name(f"{self.path.name}.{name}"), "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    yield False
                    return
                try:
                    yield True
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            thread_lock.release()

    def append(self, records: list[Record]) -> None:
        """Write records durably (fsync) before returning; raises OSError (leaving no partial record) if it can't.
        Each is stamped `spooled_at` (kept when it has one: a record put back keeps its age) for the retention
        purge."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        data = "".join(
            json.dumps({"outcome_id": r["outcome_id"], **r, "spooled_at": r.get("spooled_at") or now}) + "\n"
            for r in records
        ).encode()
        with self._locked("lock", self._append_lock):
            _append_durably(self.path, data)

    def has_pending(self) -> bool:
        """Whether anything waits (cheap: two stats)."""
        return _size(self.draining) > 0 or _size(self.path) > 0

    def pending(self) -> int:
        """Lines waiting to be replayed (a torn line counts until a replay quarantines it)."""
        return _count_lines(self.draining, self._offset()) + _count_lines(self.path)

    def reject(self, record: Record, reason: str) -> None:
        """Quarantine a record the store will never take, with its reason, durably."""
        entry = {
            "outcome_id": str(record.get("outcome_id")),
            "reason": reason,
            "rejected_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "record": record,
        }
        with self._locked("lock", self._append_lock):
            _append_durably(self.rejected_path, (json.dumps(entry) + "\n").encode())

    def rejected(self, last: int = 10) -> tuple[int, list[dict[str, str]]]:
        """How many records were quarantined, and the newest `last` as outcome_id, reason, rejected_at."""
        seen: set[tuple[str, str] | int] = set()
        newest = deque[dict[str, str]](maxlen=last)
        if self.rejected_path.exists():
            with open(self.rejected_path, "rb") as fh:
                for i, line in enumerate(fh):
                    try:
                        entry = {k: str(v) for k, v in json.loads(line).items() if k != "record"}
                    except (ValueError, AttributeError):
                        continue
                    # A replay stopped by an outage re-reads its batch: count a record rejected twice once.
                    oid = entry.get("outcome_id", "None")
                    key = (oid, entry.get("reason", "")) if oid != "None" else i
                    if key not in seen:
                        seen.add(key)
                        newest.append({k: entry.get(k, "") for k in ("outcome_id", "reason", "rejected_at")})
        return len(seen), list(newest)

    def drain(
        self,
        write: Callable[[list[Record]], None],
        quarantine: Callable[[Record, str], None],
        max_batches: int | None = None,
    ) -> int:
        """Pass spooled records to `write` in batches; return how many it took.

        `write` takes a whole batch (writing or quarantining each record) or raises, which stops the drain
        and keeps that batch for the next one. Returns 0 at once when another thread or worker is draining.
        """
        if not self.has_pending():
            return 0
        with self._locked("drain.lock", self._drain_lock, wait=False) as mine:
            if not mine:
                return 0
            done, batches = 0, max_batches
            for _ in range(2):  # a file left by a crash or an outage first, then the current spool
                if not self.draining.exists() and not self._move_aside():
                    break
                n, batches, finished = self._replay_draining(write, quarantine, batches)
                done += n
                if not finished:
                    break
            return done

    def remove(self, matches: Callable[[Record], bool]) -> int:
        """Delete, for good, every record `matches` picks from the spool, the draining file (replayed part
        included) and the quarantine; how many (a session's data deleted: its prompts must not stay here). Holds
        both locks: no append or replay runs meanwhile. A torn line is kept (it names no session)."""
        with self.quiet() as remove:
            return remove(matches)

    @contextmanager
    def quiet(self) -> Iterator[Callable[[Callable[[Record], bool]], int]]:
        """Hold the drain lock for the block, so no replay runs in it (a session deleted from the store and then from
        the spool: a replay mid-batch wrote a record back between the two); yields `remove` as above, to call inside
        the block. Appends go on meanwhile (the store may be slow to answer: a settlement spooled on the event loop
        would wait for it); `remove` takes the append lock for its rewrite only."""

        def remove(matches: Callable[[Record], bool]) -> int:
            with self._locked("lock", self._append_lock):
                return self._rewrite_all(lambda line: (record := _record_of(line)) is not None and matches(record))

        with self._locked("drain.lock", self._drain_lock):
            yield remove

    def remove_older_than(self, cutoff: datetime) -> int:
        """Delete, for good, every record that came in before `cutoff` (the retention period's), pending or
        quarantined, torn lines set aside included; how many. A line without a stamp (spooled by a version before
        records were stamped) is kept."""
        return self._remove_lines(lambda line: (at := _stamp(line)) is not None and at < cutoff)

    def _remove_lines(self, drop: Callable[[bytes], bool]) -> int:
        with self._locked("drain.lock", self._drain_lock), self._locked("lock", self._append_lock):
            return self._rewrite_all(drop)

    def _rewrite_all(self, drop: Callable[[bytes], bool]) -> int:
        """Every file without the lines `drop` picks; how many. The caller holds both locks."""
        removed = 0
        for path in (self.path, self.rejected_path):
            n, _ = _rewrite_without(path, drop, 0)
            removed += n
        if _size(self.draining) > 0:
            n, offset = _rewrite_without(self.draining, drop, self._offset())
            removed += n
            if n:
                self._save_offset(offset)  # the rewritten file's replayed part, without the removed lines
        if removed:
            _fsync_dir(self.path.parent)
        return removed

    def _move_aside(self) -> bool:
        """Rename the spool to the draining file (under the append lock); False when it is empty."""
        with self._locked("lock", self._append_lock):
            if _size(self.path) == 0:
                return False
            self.offset_path.unlink(missing_ok=True)
            os.replace(self.path, self.draining)
            _fsync_dir(self.path.parent)
        return True

    def _offset(self) -> int:
        """Bytes of the draining file already replayed (0 if the offset belongs to an older draining file)."""
        try:
            saved = json.loads(self.offset_path.read_text())
            if saved["inode"] == self.draining.stat().st_ino:
                return int(saved["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return 0

    def _save_offset(self, offset: int) -> None:
        tmp = self.offset_path.with_name(self.offset_path.name + ".tmp")
        with open(tmp, "w") as fh:
            json.dump({"inode": self.draining.stat().st_ino, "offset": offset}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.offset_path)

    def _read_batch(self, fh: IO[bytes]) -> tuple[list[Record], list[bytes]]:
        """Up to `batch_size` records from `fh`, and the torn lines met on the way."""
        batch: list[Record] = []
        torn: list[bytes] = []
        while len(batch) < self.batch_size:
            line = fh.readline()
            if not line:
                break
            records, rest = parse_line(line)
            batch.extend(records)
            if rest is not None:
                torn.append(rest)
        return batch, torn

    def _replay_draining(
        self,
        write: Callable[[list[Record]], None],
        quarantine: Callable[[Record, str], None],
        batches: int | None,
    ) -> tuple[int, int | None, bool]:
        """Replay the draining file from the saved offset: (records taken, batches left, whether it is done)."""
        done = 0
        with open(self.draining, "rb") as fh:
            fh.seek(self._offset())
            while True:
                if batches is not None and batches <= 0:
                    return done, batches, False
                batch, torn = self._read_batch(fh)
                if not batch and not torn:
                    break
                if batch:
                    write(batch)
                for piece in torn:
                    # Never acknowledged (its append did not finish), but kept, in case someone wants it.
                    logger.warning("quarantining a torn spool line of %d bytes", len(piece))
                    quarantine({"outcome_id": None, "torn_line": piece.decode(errors="replace")}, "torn spool line")
                done += len(batch)
                batches = None if batches is None else batches - 1
                self._save_offset(fh.tell())
        self.offset_path.unlink(missing_ok=True)  # first: a stale offset must never apply to the next file
        self.draining.unlink()
        _fsync_dir(self.path.parent)
        return done, batches, True
