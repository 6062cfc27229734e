"""The outcome spool on its own: framing, bounded batches, resuming after outages and crashes, one drainer."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from serving.spool import Record, Spool, parse_line


def rec(i: int | str) -> Record:
    return {"outcome_id": f"X{i}", "prompt": f"prompt {i}", "model": "small", "score": 1.0, "cost_usd": 0.0}


class Sink:
    """A writer that keeps what it was given, and the quarantined records with their reasons."""

    def __init__(self) -> None:
        self.batches: list[list[Record]] = []
        self.rejected: list[tuple[Record, str]] = []

    def write(self, batch: list[Record]) -> None:
        self.batches.append(batch)

    def quarantine(self, record: Record, reason: str) -> None:
        self.rejected.append((record, reason))

    @property
    def ids(self) -> list[str]:
        return [r["outcome_id"] for b in self.batches for r in b]


def test_a_torn_line_never_swallows_the_next_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append([rec(1)])
    with open(spool.path, "a") as fh:  # a crash (or a full disk) in the middle of an append
        fh.write('{"outcome_id": "X0", "prompt": "half')
    spool.append([rec(2)])
    spool.append([rec(3)])
    lines = spool.path.read_bytes().splitlines()
    assert lines[1] == b'{"outcome_id": "X0", "prompt": "half' and json.loads(lines[2]).items() >= rec(2).items()
    sink = Sink()
    assert spool.drain(sink.write, sink.quarantine) == 3
    assert sink.ids == ["X1", "X2", "X3"]
    [(torn, reason)] = sink.rejected
    assert reason == "torn spool line" and torn["torn_line"].startswith('{"outcome_id": "X0"')
    assert spool.pending() == 0 and not spool.has_pending()


def test_a_record_glued_to_a_torn_line_by_an_older_version_is_recovered() -> None:
    whole = json.dumps(rec(2)).encode()
    records, torn = parse_line(b'{"outcome_id": "X0", "prompt": "half' + whole + b"\n")
    assert records == [rec(2)] and torn == b'{"outcome_id": "X0", "prompt": "half'
    # A prompt quoting a record is escaped inside its JSON string, so it is never taken for one.
    inner = {**rec(1), "prompt": 'x {"outcome_id": "evil"}'}
    assert parse_line(json.dumps(inner).encode()) == ([inner], None)
    assert parse_line(b'{"outcome_id": "X0", "pro') == ([], b'{"outcome_id": "X0", "pro')


def test_a_failed_append_leaves_no_partial_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append([rec(1)])
    size = spool.path.stat().st_size

    def full_disk(_: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        spool.append([rec(2)])
    monkeypatch.undo()
    assert spool.path.stat().st_size == size
    assert spool.pending() == 1


def test_drain_streams_in_bounded_batches(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl", batch_size=50)
    spool.append([rec(i) for i in range(1, 231)])
    assert spool.pending() == 230
    sink = Sink()
    assert spool.drain(sink.write, sink.quarantine) == 230
    assert [len(b) for b in sink.batches] == [50, 50, 50, 50, 30]
    assert sink.ids == [f"X{i}" for i in range(1, 231)]


def test_max_batches_leaves_the_rest_for_later(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl", batch_size=10)
    spool.append([rec(i) for i in range(25)])
    sink = Sink()
    assert spool.drain(sink.write, sink.quarantine, max_batches=2) == 20
    assert spool.pending() == 5
    assert spool.drain(sink.write, sink.quarantine) == 5
    assert sorted(sink.ids) == sorted(f"X{i}" for i in range(25))


def test_records_appended_during_a_drain_are_not_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl", batch_size=2)
    other_worker = Spool(spool.path)
    spool.append([rec(i) for i in range(4)])
    sink = Sink()

    def write(batch: list[Record]) -> None:
        if not batch[0]["outcome_id"].startswith("Xlate"):
            other_worker.append([rec(f"late-{batch[0]['outcome_id']}")])
        sink.write(batch)

    spool.drain(write, sink.quarantine)
    spool.drain(sink.write, sink.quarantine)
    assert sorted(sink.ids) == ["X0", "X1", "X2", "X3", "Xlate-X0", "Xlate-X2"]
    assert spool.pending() == 0


class Outage(Exception):
    pass


class Crash(BaseException):
    """The process dying mid-replay: nothing after it runs."""


@pytest.mark.parametrize("failure", [Outage, Crash])
def test_an_outage_or_crash_mid_drain_loses_nothing_and_keeps_what_was_written(
    tmp_path: Path, failure: type[BaseException]
) -> None:
    spool = Spool(tmp_path / "spool.jsonl", batch_size=3)
    spool.append([rec(i) for i in range(10)])
    written: list[str] = []
    calls = 0

    def flaky(batch: list[Record]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise failure("store gone")
        written.extend(r["outcome_id"] for r in batch)

    with pytest.raises(failure):
        spool.drain(flaky, Sink().quarantine)
    assert written == ["X0", "X1", "X2"]
    assert spool.pending() == 7
    spool.append([rec("new")])  # arrives while the drain is stopped
    restarted = Spool(spool.path, batch_size=3)  # e.g. the next worker, after a restart
    assert restarted.drain(lambda b: written.extend(r["outcome_id"] for r in b), Sink().quarantine) == 8
    assert written == [f"X{i}" for i in range(10)] + ["Xnew"]
    assert restarted.pending() == 0 and not restarted.draining.exists() and not restarted.offset_path.exists()


def test_a_stale_offset_never_skips_records_of_a_new_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append([rec(1), rec(2)])
    os.replace(spool.path, spool.draining)  # a crash right after the move, with an old offset file about
    spool.offset_path.write_text(json.dumps({"inode": -1, "offset": 10_000}))
    sink = Sink()
    assert spool.drain(sink.write, sink.quarantine) == 2


def test_one_drainer_at_a_time_across_workers(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    Spool(path).append([rec(i) for i in range(300)])
    seen: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(4)

    def write(batch: list[Record]) -> None:
        with lock:
            seen.extend(r["outcome_id"] for r in batch)

    errors: list[BaseException] = []

    def worker() -> None:
        spool = Spool(path, batch_size=7)
        go.wait()
        try:
            while spool.has_pending():
                spool.drain(write, Sink().quarantine)
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(seen) == sorted(f"X{i}" for i in range(300))  # each once: none lost, none twice


def test_rejections_are_counted_once_and_listed_without_the_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    spool.reject({**rec(1), "prompt": "secret prompt"}, "unknown decision_id d1")
    spool.reject({**rec(1), "prompt": "secret prompt"}, "unknown decision_id d1")  # re-read after an outage
    spool.reject(rec(2), "model 'gpt-99' is not in the tiers config")
    count, newest = spool.rejected(last=1)
    assert count == 2
    assert [e["outcome_id"] for e in newest] == ["X2"] and "secret" not in json.dumps(newest)
    assert "secret prompt" in spool.rejected_path.read_text()  # the record itself is kept, for an operator


def test_a_torn_line_is_quarantined_once_even_when_its_batch_is_retried(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append([rec(1)])
    with open(spool.path, "a") as fh:
        fh.write('{"outcome_id": "X0", "prompt": "half')
    spool.append([rec(2)])
    sink = Sink()

    def down(_: list[Record]) -> None:
        raise Outage("store gone")

    for _ in range(3):
        with pytest.raises(Outage):
            spool.drain(down, sink.quarantine)
    assert sink.rejected == []
    assert spool.drain(sink.write, sink.quarantine) == 2
    assert len(sink.rejected) == 1 and sink.ids == ["X1", "X2"]


def test_a_line_nested_past_the_parsers_depth_is_a_torn_line() -> None:
    """json.loads raises RecursionError, not ValueError, on a line nested ~200,000 deep: it stopped every replay."""
    records, torn = parse_line(b"[" * 200_000 + b"]" * 200_000)
    assert records == [] and torn is not None


def test_remove_deletes_a_sessions_records_everywhere_and_the_rest_replays_as_before(tmp_path: Path) -> None:
    """Deleting a session left its spooled outcomes (prompts included) to be written back by the next replay, or
    kept in the quarantine, where the delete never looked (review finding)."""

    def secret(i: int, **more: str) -> Record:
        return {**rec(f"S{i}"), "prompt": f"SECRET {i}", **more}

    spool = Spool(tmp_path / "spool.jsonl", batch_size=1)
    spool.append([rec(1), secret(1, session_id="s"), rec(2), secret(2, decision_id="d9")])
    first = Sink()
    assert spool.drain(first.write, first.quarantine, max_batches=2) == 2  # X1 and S1 replayed, offset past them
    spool.append([secret(3, session_id="s"), rec(3)])  # the spool again, beside the draining file
    spool.reject(secret(4, decision_id="d9"), "unknown decision_id d9")
    spool.reject(rec(4), "score out of range")
    gone = spool.remove(lambda r: r.get("session_id") == "s" or r.get("decision_id") == "d9")
    assert gone == 4  # S1 (in the replayed part of the draining file), S2 (after it), S3 and the quarantined S4
    for path in tmp_path.iterdir():
        assert b"SECRET" not in path.read_bytes(), path.name
    rest = Sink()
    spool.drain(rest.write, rest.quarantine)
    assert rest.ids == ["X2", "X3"] and rest.rejected == []  # nothing replayed twice, nothing skipped
    assert spool.rejected()[0] == 1 and spool.remove(lambda r: True) == 1 and spool.rejected()[0] == 0


def test_the_retention_purge_deletes_records_older_than_its_cutoff_everywhere(tmp_path: Path) -> None:
    """The retention purge looked only into the store: outcomes spooled in an outage, and the quarantine, kept their
    prompts past the retention period (review finding). Age is when a record came in: `spooled_at`, kept when it is
    put back or set aside; a quarantine entry of an unstamped record by when it was set aside."""
    old, now = "2026-01-01T00:00:00+00:00", datetime.now(UTC)
    spool = Spool(tmp_path / "spool.jsonl", batch_size=1)
    spool.append([{**rec("O1"), "prompt": "OLD 1", "spooled_at": old}, rec(1), {**rec("O2"), "prompt": "OLD 2",
                  "spooled_at": old}, rec(2)])  # fmt: skip
    assert all(isinstance(json.loads(line)["spooled_at"], str) for line in spool.path.read_bytes().splitlines())
    first = Sink()
    assert spool.drain(first.write, first.quarantine, max_batches=2) == 2  # XO1 and X1 replayed
    spool.append([{**rec("O3"), "prompt": "OLD 3", "spooled_at": old}, rec(3)])
    spool.reject({**rec("O4"), "prompt": "OLD 4", "spooled_at": old}, "score out of range")
    spool.reject(rec(4), "score out of range")  # stamped by when it was set aside: now
    with open(spool.rejected_path, "a") as fh:  # an entry of an older version: no stamp on its record
        fh.write(json.dumps({"outcome_id": "XO5", "reason": "r", "rejected_at": old, "record": {"prompt": "OLD 5"}}))
        fh.write("\n" + json.dumps({"outcome_id": "X5", "reason": "r", "record": rec(5)}) + "\n")  # no stamp: kept
    assert spool.remove_older_than(now - timedelta(days=7)) == 5
    for path in tmp_path.iterdir():
        assert b"OLD" not in path.read_bytes(), path.name
    rest = Sink()
    spool.drain(rest.write, rest.quarantine)
    assert rest.ids == ["X2", "X3"] and rest.rejected == []  # nothing replayed twice, nothing young lost
    assert spool.rejected()[0] == 2
    assert spool.remove_older_than(now + timedelta(days=1)) == 1  # X4 (X5 has no stamp: kept)


def test_a_revalidated_record_keeps_its_age() -> None:
    """A replayed record that is put back (its door decision not settled yet) or set aside keeps `spooled_at`,
    or it would look young again to the retention purge."""
    from serving.outcomes import _revalidate

    record = {**rec(1), "decision_id": None, "owner": None, "admin": False, "spooled_at": "2026-01-01T00:00:00+00:00"}
    checked, reason = _revalidate(record)
    assert reason == "" and checked is not None and checked["spooled_at"] == record["spooled_at"]
    checked, _ = _revalidate({**record, "spooled_at": 5})
    assert checked is not None and "spooled_at" not in checked


def test_removal_keeps_a_line_nested_past_the_parsers_depth(tmp_path: Path) -> None:
    """Such a line (torn, or foreign) raised RecursionError out of a session's deletion and the retention purge."""
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append([rec(1)])
    with open(spool.path, "ab") as fh:
        fh.write(b"[" * 100_000 + b"\n")
    spool.reject({"outcome_id": None, "torn_line": "x"}, "torn spool line")
    with open(spool.rejected_path, "ab") as fh:
        fh.write(b'{"record": ' + b"[" * 100_000 + b"\n")
    assert spool.remove(lambda r: r.get("outcome_id") == "X1") == 1
    assert spool.remove_older_than(datetime.now(UTC) + timedelta(days=1)) == 1  # the stamped torn-line entry
    assert spool.pending() == 1
