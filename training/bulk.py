"""Bulk routing for `tierwise route --batch`: stream prompts in (JSONL or Parquet), decisions out, chunk by chunk.

Memory stays bounded by the chunk size whatever the input's length: a chunk of prompts is read, scored in one
vectorised call (embedding, text features, boosters), decided and written before the next is read.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from router.policy import Decision
from router.routing import Router
from router.schema import OutcomeLogError, is_unicode_text, iter_jsonl_objects
from router.task_hint import MAX_TASK_CHARS

Row = dict[str, Any]  # {"prompt_id": str, "prompt": str, "task": str | None}
Record = dict[str, Any]
PARQUET_SUFFIXES = (".parquet", ".pq")


def decisions_json(
    router: Router, rows: list[Row], target: float, chunk: int, cost_weight: float | None = None
) -> list[Record]:
    """Decide a tier for each {"prompt_id", "prompt", "task"} row, embedding in length-sorted chunks; a row's task
    is its task hint (router/task_hint.py), as on `/route`."""
    tasks = [r.get("task") for r in rows]
    hinted = tasks if any(t is not None for t in tasks) else None
    quality, cost, decisions = router.route([r["prompt"] for r in rows], target, chunk, cost_weight, hinted)
    return decision_records(router, rows, quality, cost, decisions)


def decision_records(
    router: Router, rows: list[Row], quality: np.ndarray, cost: np.ndarray, decisions: list[Decision]
) -> list[Record]:
    """The JSON record of each row's decision: its tier, model, every tier's predicted quality, cost and reason."""
    names = router.tiers.tiers
    out = []
    for i, (row, d) in enumerate(zip(rows, decisions, strict=True)):
        tier = names[d.tier_index]
        out.append(
            {
                "prompt_id": row["prompt_id"],
                "tier": tier.name,
                "model": tier.model,
                "predicted_quality": {n: round(q, 4) for n, q in zip(router.names, quality[i].tolist(), strict=True)},
                "expected_cost_usd": float(cost[i, d.tier_index]),
                "reason": d.reason,
            }
        )
    return out


def _row(path: Path, rec: dict[str, Any], row: int) -> Row:
    """One input record as {"prompt_id", "prompt", "task"}; a bad one raises naming the file and row."""
    prompt = rec.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
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
    if isinstance(prompt_id, str) and not is_unicode_text(prompt_id):
        raise OutcomeLogError(
            path, "the prompt_id is not valid Unicode (a lone surrogate)", row=row, column="prompt_id"
        )
    return {"prompt_id": str(row if prompt_id is None else prompt_id), "prompt": prompt, "task": task or None}


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
    if not path.is_file():
        raise OutcomeLogError(path, "no such file")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _parquet_chunks(path, rows_per_chunk)
    if path.suffix.lower() in (".csv", ".tsv", ".xlsx"):
        raise OutcomeLogError(path, "a batch of prompts is JSONL (one JSON object a line) or Parquet, not CSV")
    return _jsonl_chunks(path, rows_per_chunk)


def count_rows(path: Path) -> int | None:
    """Rows in the input when known without reading it (Parquet metadata), else None."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except (OSError, pa.ArrowException):
            return None
    return None


class DecisionSink:
    """Decisions out as JSONL (a file or stdout) or Parquet (by the file's suffix), one chunk at a time.

    A regular file (or a new one) is written beside `path` under a temporary name and renamed onto it by
    `close(commit=True)`: a run that fails (a bad row, a full disk) leaves what was at `path` as it was. Anything
    else (a symlink, /dev/stdout, a pipe) is written in place, as it was asked."""

    def __init__(self, path: Path | None, tier_names: list[str]):
        in_place = path is None or path.is_symlink() or (path.exists() and not path.is_file())
        self.target = None if in_place else path
        self.path = path if in_place or path is None else path.with_name(f".{path.name}.{os.getpid()}.partial")
        self.written = 0
        self._parquet = path is not None and path.suffix.lower() in PARQUET_SUFFIXES
        self._writer: pq.ParquetWriter | None = None
        quality = pa.struct([(n, pa.float64()) for n in tier_names])
        self._schema = pa.schema(
            [
                ("prompt_id", pa.string()),
                ("tier", pa.string()),
                ("model", pa.string()),
                ("predicted_quality", quality),
                ("expected_cost_usd", pa.float64()),
                ("reason", pa.string()),
            ]
        )
        self._text: IO[str] | None = None
        if not self._parquet:
            self._text = self.path.open("w") if self.path is not None else sys.stdout

    def write(self, records: list[Record]) -> None:
        if self._parquet:
            if self._writer is None:
                self._writer = pq.ParquetWriter(str(self.path), self._schema, compression="zstd")
            self._writer.write_table(pa.Table.from_pylist(records, schema=self._schema))
        else:
            assert self._text is not None
            self._text.write("".join(json.dumps(r) + "\n" for r in records))
        self.written += len(records)

    def close(self, commit: bool = True) -> None:
        """Finish the output; a file is renamed onto its target only with `commit` (and if it closed), else deleted."""
        try:
            if self._parquet:
                if self._writer is None:  # no rows: still a valid, empty file
                    self._writer = pq.ParquetWriter(str(self.path), self._schema, compression="zstd")
                self._writer.close()
            elif self._text is not None and self.path is not None:
                self._text.close()
            elif self._text is not None:
                self._text.flush()
        except BaseException:
            commit = False
            raise
        finally:
            if self.path is not None and self.target is not None:
                if commit:
                    os.replace(self.path, self.target)
                else:
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
    finally:
        sink.close(commit=done and sink.written > 0)
    return sink.written


def route_file(
    router: Router,
    src: Path,
    out: Path | None,
    target: float,
    cost_weight: float | None = None,
    rows_per_chunk: int = 4096,
    chunk: int = 256,
    show_progress: bool | None = None,
) -> int:
    """Route every prompt of `src` into `out` (JSONL or Parquet; None: JSONL on stdout), streaming; the count."""
    with progress_bar(count_rows(src), show_progress) as bar:
        decided = (
            decisions_json(router, rows, target, chunk, cost_weight) for rows in read_chunks(src, rows_per_chunk)
        )
        return write_decisions(decided, out, router.names, bar.update)
