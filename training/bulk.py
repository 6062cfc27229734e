"""Bulk routing for `tierwise route --batch`: stream prompts in (JSONL or Parquet), decisions out, chunk by chunk.

Memory stays bounded by the chunk size whatever the input's length: a chunk of prompts is read, scored in one
vectorised call (embedding, text features, boosters), decided and written before the next is read.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from router.policy import Decision
from router.routing import Router
from router.schema import OutcomeLogError, is_unicode_text, iter_jsonl_objects
from router.task_hint import MAX_TASK_CHARS
from training.output_file import replace_with, temporary_beside, written_in_place

Row = dict[str, Any]  # {"prompt_id": str | None, "prompt": str, "task": str | None, "row": int (1-based)}
Record = dict[str, Any]
PARQUET_SUFFIXES = (".parquet", ".pq")


def decisions_json(
    router: Router,
    rows: list[Row],
    target: float,
    chunk: int,
    cost_weight: float | None = None,
    novelty_limit: float | None = None,
) -> list[Record]:
    """Decide a tier for each {"prompt_id", "prompt", "task"} row, embedding in length-sorted chunks; a row's task
    is its task hint (router/task_hint.py) and, with `novelty_limit`, a prompt unlike the training prompts gets the
    conservative tier, as on `/route`."""
    tasks = [r.get("task") for r in rows]
    hinted = tasks if any(t is not None for t in tasks) else None
    prompts = [r["prompt"] for r in rows]
    quality, cost, decisions, novelty = router.route(prompts, target, chunk, cost_weight, hinted, novelty_limit)
    return decision_records(router, rows, quality, cost, decisions, novelty)


def decision_records(
    router: Router,
    rows: list[Row],
    quality: np.ndarray,
    cost: np.ndarray,
    decisions: list[Decision],
    novelty: np.ndarray | None = None,
) -> list[Record]:
    """The JSON record of each row's decision: its tier, model, every tier's predicted quality, cost, the prompt's
    novelty (null without the check: a model without a reference, or routed on the predictions alone) and reason."""
    names = router.tiers.tiers
    notes: dict[str | None, str] = {}
    out = []
    for i, (row, d) in enumerate(zip(rows, decisions, strict=True)):
        tier = names[d.tier_index]
        task = row.get("task")
        note = notes.get(task)
        if note is None:
            note = notes[task] = router.task_hint_note(task)
        out.append(
            {
                "prompt_id": row["prompt_id"],
                "tier": tier.name,
                "model": tier.model,
                "predicted_quality": {n: round(q, 4) for n, q in zip(router.names, quality[i].tolist(), strict=True)},
                "expected_cost_usd": float(cost[i, d.tier_index]),
                "novelty": None if novelty is None else round(float(novelty[i]), 4),
                "reason": d.reason + note,
            }
        )
    return out


def _row(path: Path, rec: dict[str, Any], row: int) -> Row:
    """One input record as a Row (its prompt_id as given, None without; PromptIds fills it in); a bad one raises
    naming the file and row."""
    prompt = rec.get("prompt")
    if "prompt" not in rec:
        keys = ", ".join(sorted(map(str, rec))[:8]) or "none"
        raise OutcomeLogError(path, f"no prompt (the row's keys: {keys})", row=row, column="prompt")
    if prompt is None:
        raise OutcomeLogError(path, "the prompt is null: give each row a prompt", row=row, column="prompt")
    if not isinstance(prompt, str):
        raise OutcomeLogError(path, f"the prompt is {type(prompt).__name__}, not text", row=row, column="prompt")
    if not prompt.strip():
        raise OutcomeLogError(path, "expected a non-empty prompt", row=row, column="prompt")
    if not is_unicode_text(prompt):
        raise OutcomeLogError(path, "the prompt is not valid Unicode (a lone surrogate)", row=row, column="prompt")
    task = rec.get("task")
    if task is not None and (not isinstance(task, str) or len(task) > MAX_TASK_CHARS):
        raise OutcomeLogError(
            path, f"expected the task hint as a string of at most {MAX_TASK_CHARS} characters", row=row, column="task"
        )
    if isinstance(task, str) and not is_unicode_text(task):
        raise OutcomeLogError(path, "the task hint is not valid Unicode (a lone surrogate)", row=row, column="task")
    prompt_id = rec.get("prompt_id")
    if prompt_id is not None and (isinstance(prompt_id, bool) or not isinstance(prompt_id, (str, int))):
        raise OutcomeLogError(path, "expected the prompt_id as a string or an integer", row=row, column="prompt_id")
    if isinstance(prompt_id, str) and not prompt_id.strip():  # as the outcome log refuses a blank id
        raise OutcomeLogError(
            path, "the prompt_id is blank: give an id, or no prompt_id at all", row=row, column="prompt_id"
        )
    if isinstance(prompt_id, str) and not is_unicode_text(prompt_id):
        raise OutcomeLogError(
            path, "the prompt_id is not valid Unicode (a lone surrogate)", row=row, column="prompt_id"
        )
    given = None if prompt_id is None else str(prompt_id)
    return {"prompt_id": given, "prompt": prompt, "task": task or None, "row": row}


class PromptIds:
    """The prompt ids of one batch: every row gives one or none does (each decision's prompt_id is then its row
    number, which an explicit id could otherwise repeat), and how many rows repeat an earlier row's id (counted
    from an 8-byte digest a row: 80 MB for 10 million prompts, 160 MB for a moment while counting)."""

    def __init__(self, path: Path):
        self.path = path
        self._first: tuple[bool, int] | None = None  # (gives an id, row) of the first row
        self._digests: list[np.ndarray] = []

    def label(self, rows: list[Row]) -> list[Row]:
        """The rows with their prompt_id filled in (a row number where none is given), checked and counted."""
        for r in rows:
            gives = r["prompt_id"] is not None
            if self._first is None:
                self._first = (gives, r["row"])
            elif self._first[0] != gives:
                had, first = self._first
                raise OutcomeLogError(
                    self.path,
                    f"this row {'gives' if gives else 'gives no'} prompt_id and row {first} "
                    f"{'does' if had else 'does not'}: give every row a prompt_id or none (each decision's "
                    "prompt_id is then its row number)",
                    row=r["row"],
                    column="prompt_id",
                )
            if not gives:
                r["prompt_id"] = str(r["row"])
        if self._first is None or not self._first[0]:
            return rows  # row numbers: none repeats, nothing to count
        self._digests.append(
            np.fromiter(
                (int.from_bytes(blake2b(r["prompt_id"].encode(), digest_size=8).digest(), "little") for r in rows),
                dtype=np.uint64,
                count=len(rows),
            )
        )
        return rows

    def repeated(self) -> int:
        """How many rows gave a prompt_id an earlier row gave (sorted in place: 8 bytes a row, 16 for a moment)."""
        digests = np.concatenate(self._digests) if self._digests else np.zeros(0, dtype=np.uint64)
        self._digests = [digests]
        digests.sort()
        return int(np.count_nonzero(digests[1:] == digests[:-1]))


def _jsonl_chunks(path: Path, rows_per_chunk: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for lineno, rec in iter_jsonl_objects(path):
        chunk.append(_row(path, rec, lineno))
        if len(chunk) == rows_per_chunk:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _parquet_chunks(path: Path, rows_per_chunk: int) -> Iterator[list[Row]]:
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise OutcomeLogError(path, f"not a readable Parquet file: {exc}") from None
    names = pf.schema_arrow.names
    twice = sorted({n for n in names if names.count(n) > 1} & {"prompt_id", "prompt", "task"})
    if twice:
        raise OutcomeLogError(path, f"column '{twice[0]}' appears more than once", column=twice[0])
    if "prompt" not in names:
        raise OutcomeLogError(path, f"no 'prompt' column (columns: {', '.join(names)})", column="prompt")
    columns = [c for c in ("prompt_id", "prompt", "task") if c in names]
    start = 0
    for batch in pf.iter_batches(batch_size=rows_per_chunk, columns=columns):
        prompts = batch.column("prompt").to_pylist()
        ids = batch.column("prompt_id").to_pylist() if "prompt_id" in columns else [None] * len(prompts)
        tasks = batch.column("task").to_pylist() if "task" in columns else [None] * len(prompts)
        yield [
            _row(path, {"prompt_id": pid, "prompt": p, "task": t}, start + i + 1)
            for i, (pid, p, t) in enumerate(zip(ids, prompts, tasks, strict=True))
        ]
        start += len(prompts)


def read_chunks(path: Path, rows_per_chunk: int) -> Iterator[list[Row]]:
    """The prompts of a JSONL or Parquet file, `rows_per_chunk` at a time (rows are 1-based in errors)."""
    if path.is_dir():
        raise OutcomeLogError(path, "is a folder, not a file: give the file of prompts")
    if not path.exists():
        raise OutcomeLogError(path, "no such file")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        if not path.is_file():  # a pipe (`<(...)`) or a device: JSONL streams from one, Parquet is read from its end
            raise OutcomeLogError(path, "is not a regular file: Parquet is read from its end; pipe JSONL instead")
        return _parquet_chunks(path, rows_per_chunk)
    if path.suffix.lower() in (".csv", ".tsv", ".xlsx"):
        raise OutcomeLogError(path, "a batch of prompts is JSONL (one JSON object a line) or Parquet, not CSV")
    return _jsonl_chunks(path, rows_per_chunk)


def count_rows(path: Path) -> int | None:
    """Rows in the input when known without reading it (Parquet metadata), else None."""
    if path.suffix.lower() in PARQUET_SUFFIXES and path.is_file():  # a pipe's open would wait for its writer
        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except (OSError, pa.ArrowException):
            return None
    return None


OTHER_FORMATS = (".csv", ".tsv", ".xlsx", ".xls", ".feather", ".arrow", ".orc", ".avro")
COMPRESSIONS = (".bz2", ".xz", ".zst", ".zstd", ".lz4", ".zip", ".7z", ".br", ".snappy")


def output_format(path: Path | None) -> str:
    """How decisions are written to `path`: "parquet" (.parquet, .pq), "jsonl.gz" (gzip: .gz) or "jsonl" (anything
    else, and standard output); a name promising a format or compression it would not hold raises ValueError."""
    if path is None:
        return "jsonl"
    *before, suffix = ["", *(x.lower() for x in path.suffixes[-2:])]
    gzipped = suffix == ".gz"
    if gzipped:
        suffix = before[-1]
    if suffix in PARQUET_SUFFIXES and not gzipped:
        return "parquet"
    if suffix not in (*PARQUET_SUFFIXES, *OTHER_FORMATS, *COMPRESSIONS):
        return "jsonl.gz" if gzipped else "jsonl"
    raise ValueError(
        "decisions are written as JSONL (gzip when the name ends in .gz) or Parquet (.parquet): "
        f"name it .jsonl, .jsonl.gz or .parquet, not {''.join(path.suffixes[-2:])}"
    )


class DecisionOutputError(Exception):
    """The decisions could not be written (an unwritable folder, a full disk, a closed pipe); names the output."""

    def __init__(self, where: str, exc: BaseException):
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        super().__init__(f"{where}: cannot write the decisions: {reason}")


class DecisionSink:
    """Decisions out as JSONL (a file, gzip by its name, or stdout) or Parquet (by the file's suffix), a chunk at a
    time.

    A file is replaced by a rename once `close(commit=True)` finished it, or written in place where a rename would
    change what its name means (training/output_file.py; standard output too): what a failed run wrote in place
    stays (a Parquet file without its footer, so no reader takes it for a whole one), and the failure says how
    much. A failure of the output raises DecisionOutputError."""

    def __init__(self, path: Path | None, tier_names: list[str]):
        self.format = output_format(path)
        self.shown = "standard output" if path is None else f"--out {path}"
        with self._failing():  # a folder this process may not search
            self.in_place = path is None or written_in_place(path)
        self.target = None if self.in_place else path
        self.path = path if self.in_place or path is None else temporary_beside(path, "partial")
        self.written = 0
        self._writer: pq.ParquetWriter | None = None
        quality = pa.struct([(n, pa.float64()) for n in tier_names])
        self._schema = pa.schema(
            [
                ("prompt_id", pa.string()),
                ("tier", pa.string()),
                ("model", pa.string()),
                ("predicted_quality", quality),
                ("expected_cost_usd", pa.float64()),
                ("novelty", pa.float64()),
                ("reason", pa.string()),
            ]
        )
        self._text: IO[str] | None = None
        self._file: IO[bytes] | None = None  # the Parquet file, opened here so its errors are Python's, not Arrow's
        # A file written in place is opened (and so emptied) at the first write, or at a commit without any: a run
        # that fails before it, on its input, leaves it as it was. Whether it can be written is checked now.
        self._opened = False
        if path is not None and self.in_place:
            with self._failing():
                if path.exists() and not os.access(path, os.W_OK):
                    raise PermissionError(errno.EACCES, "Permission denied")
        else:
            self._open()

    def _open(self) -> None:
        if self._opened:
            return
        self._opened = True
        with self._failing():
            if self.format == "parquet":
                assert self.path is not None
                self._file = self.path.open("wb")
            else:
                self._text = self._open_text()

    def _open_text(self) -> IO[str]:
        if self.path is None:
            return sys.stdout
        if self.format == "jsonl.gz":
            return gzip.open(self.path, "wt", encoding="utf-8")
        return self.path.open("w", encoding="utf-8")

    def _parquet_writer(self) -> pq.ParquetWriter:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._file, self._schema, compression="zstd")
        return self._writer

    @contextmanager
    def _failing(self) -> Iterator[None]:
        """Turns an error of the output into DecisionOutputError naming it (not its temporary file)."""
        try:
            yield
        except (OSError, pa.ArrowException) as exc:
            raise DecisionOutputError(self.shown, exc) from exc

    def write(self, records: list[Record]) -> None:
        self._open()
        with self._failing():
            if self.format == "parquet":
                self._parquet_writer().write_table(pa.Table.from_pylist(records, schema=self._schema))
            else:
                assert self._text is not None
                self._text.write("".join(json.dumps(r) + "\n" for r in records))
        self.written += len(records)

    def close(self, commit: bool = True) -> None:
        """Finish the output; a file is renamed onto its target only with `commit` (and if it closed), else deleted."""
        if commit:
            self._open()  # no decisions: an empty output (an in-place file is emptied only now)
        try:
            with self._failing():
                if self._file is not None:
                    try:
                        if commit:
                            self._parquet_writer().close()  # no rows: still a valid, empty file
                    finally:
                        self._file.close()
                        if not commit and self._writer is not None:
                            with suppress(OSError, ValueError, pa.ArrowException):
                                self._writer.close()  # its footer goes nowhere: the file is closed
                elif self._text is not None and self.path is not None:
                    self._text.close()
                elif self._text is not None:
                    self._text.flush()
                if self.target is not None and self.path is not None and commit:
                    replace_with(self.target, self.path)
                    self.path = None
        finally:
            if self.target is not None and self.path is not None:
                self.path.unlink(missing_ok=True)


def progress_bar(total: int | None, enabled: bool | None = None) -> Any:
    """A tqdm bar on stderr counting prompts; off unless stderr is a terminal (or `enabled` says otherwise)."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, unit=" prompts", disable=not show, file=sys.stderr, smoothing=0.1)


def write_decisions(
    chunks: Iterable[list[Record]], out: Path | None, tier_names: list[str], progress: Callable[[int], object]
) -> int:
    """Write decided chunks as they come; how many decisions were written. A file `out` is replaced only when every
    chunk was written and there was at least one decision (an input with no prompts leaves it as it was)."""
    sink = DecisionSink(out, tier_names)
    done = False
    try:
        for records in chunks:
            sink.write(records)
            progress(len(records))
        done = True
    except BaseException as exc:
        if sink.in_place and sink.written:
            exc.add_note(f"{sink.shown} holds the {sink.written} decisions written before this: incomplete")
        raise
    finally:
        sink.close(commit=done and sink.written > 0)
    return sink.written


@dataclass(frozen=True)
class BulkRun:
    """What a bulk run wrote: its decisions, and how many rows repeated an earlier row's prompt_id."""

    decisions: int
    repeated_ids: int


def route_file(
    router: Router,
    src: Path,
    out: Path | None,
    target: float,
    cost_weight: float | None = None,
    rows_per_chunk: int = 4096,
    chunk: int = 256,
    show_progress: bool | None = None,
    novelty_limit: float | None = None,
) -> BulkRun:
    """Route every prompt of `src` into `out` (JSONL or Parquet; None: JSONL on stdout), streaming; `novelty_limit`
    as in `decisions_json`."""
    ids = PromptIds(src)
    with progress_bar(count_rows(src), show_progress) as bar:
        decided = (
            decisions_json(router, ids.label(rows), target, chunk, cost_weight, novelty_limit)
            for rows in read_chunks(src, rows_per_chunk)
        )
        return BulkRun(write_decisions(decided, out, router.names, bar.update), ids.repeated())
