"""Dask for bulk work beyond one process: `--dask tcp://host:8786` (a running scheduler) or `--dask local:N`.

Bulk routing sends chunks of prompts to the workers; each worker process loads the embedder once per build of its
files (a cached per-process loader; each run first checks every worker's against the model's) and the router
artifact once (a task of its own, which the scheduler runs again on another
worker, or on the restarted one, if the worker holding it dies). At most two chunks per worker are in flight and
results are written in input order, so memory stays bounded on the client too. A failure of the cluster (a worker
killed over and over, the scheduler gone) or on a worker (its embedder files missing or another embedder's) is a
`DaskFailure` whose message says so, not an error of the input file.

Training uses Dask for the expensive part, embedding the log's prompts (`DaskEmbedder`), and fits the boosters on
one machine: a log of tens of thousands of prompts x ~260 features fits in memory many times over and three
800-tree boosters fit in seconds, while `lightgbm.dask` would ship the data to workers, lose the embedding cache
and could not reproduce DifficultyModel's out-of-fold calibration and shared-difficulty start.
The workers need the embedder's files at the same path (`make setup` on each machine, or a shared cache dir).
"""

from __future__ import annotations

import logging
import pickle
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from functools import lru_cache, wraps
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from router.artifact import RouterArtifact
from router.embedders.factory import FILE_BACKENDS, embedder_files, make_embedder
from router.embedders.protocol import Embedder
from router.features import EmbedderMismatch
from router.routing import Router
from router.schema import TiersConfig
from training.bulk import (
    BulkRun,
    PromptIds,
    Record,
    Row,
    count_rows,
    decisions_json,
    progress_bar,
    read_chunks,
    write_decisions,
)

IN_FLIGHT_PER_WORKER = 2
WORKERS_WAIT_S = 60.0  # how long a run waits for the cluster to have a worker
CONNECT_TIMEOUT_S = 10.0  # how long connecting to a scheduler's address may take
T = TypeVar("T")
Fingerprint = tuple[tuple[int, int, int] | None, ...]


class DaskFailure(RuntimeError):
    """The Dask cluster, or the work on one of its workers, failed (the CLI names its --dask in one line)."""


def _on_worker(fn: Callable[..., T]) -> Callable[..., T]:
    """A task function whose failure says it happened on a worker, and which (missing files there, another embedder)."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # any failure in the task: the client reports it in one line
            from dask.distributed import get_worker

            try:
                where = get_worker().address
            except ValueError:  # not on a worker (a test calling it directly)
                where = "this process"
            raise DaskFailure(f"on the Dask worker {where}: {type(exc).__name__}: {exc}") from None

    return run


def _cluster_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean the cluster failed the run: tasks cancelled (their data lost), a worker killed too often,
    a connection closed, a timeout waiting for the scheduler or its workers."""
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    return CancelledError, KilledWorker, CommClosedError, TimeoutError


def _cluster_failure(exc: BaseException) -> DaskFailure:
    return DaskFailure(f"the cluster failed the run ({type(exc).__name__}: {exc or 'no reason given'})")


def local_workers(spec: str) -> int | None:
    """N of a 'local:N' spec, None for a scheduler's address ('tcp://host:port', 'host:port'); ValueError for neither
    (checked before any work: `train --dask local:abc` loaded and split the log first)."""
    if spec.startswith("local:"):
        try:
            n = int(spec.removeprefix("local:"))
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--dask {spec}: expected local:N with N >= 1 workers")
        return n
    _, sep, port = spec.removeprefix("tcp://").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--dask {spec}: expected local:N or a scheduler's address, e.g. tcp://host:8786")
    return None


def connect(spec: str) -> Any:
    """A dask.distributed Client for 'local:N' (a LocalCluster of N single-threaded worker processes) or an address."""
    n = local_workers(spec)
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise RuntimeError("--dask needs the dask extra: pip install 'tierwise[dask]'") from exc
    if n is None:
        return Client(spec, timeout=CONNECT_TIMEOUT_S)  # type: ignore[no-untyped-call]
    # The workers ignore Ctrl-C (started while it is ignored, they keep ignoring it): this process stops them, and
    # each printed its KeyboardInterrupt traceback. No dashboard on a fixed port (a second run beside said port 8787
    # was taken); the workers' logs at errors only.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    return Client(cluster)  # type: ignore[no-untyped-call]


def close(client: Any) -> None:
    """Close the client and, for local:N, its LocalCluster."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def n_workers(client: Any) -> int:
    return max(len(client.scheduler_info().get("workers", {})), 1)


def _fingerprint(backend: str, onnx_dir: str) -> Fingerprint:
    """(inode, size, mtime) of each file the backend loads (None: missing): a rebuild of the files changes it."""
    if backend not in FILE_BACKENDS:
        return ()
    out: list[tuple[int, int, int] | None] = []
    for path in embedder_files(backend, Path(onnx_dir)):
        try:
            st = path.stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


@lru_cache(maxsize=4)
def _loaded(backend: str, onnx_dir: str, fingerprint: Fingerprint) -> Embedder:  # noqa: ARG001 (the cache key)
    embedder = make_embedder(backend, onnx_dir=Path(onnx_dir), num_threads=1)
    embedder.encode(["tierwise"])  # the files read now (every embedder loads lazily): a broken one fails here
    return embedder


def worker_embedder(backend: str, onnx_dir: str) -> Embedder:
    """The embedder of this worker process (one intra-op thread: workers are the parallelism), loaded once per build
    of its files: a long-lived worker whose files were rebuilt loads them again."""
    return _loaded(backend, onnx_dir, _fingerprint(backend, onnx_dir))


def _checked_embedder(backend: str, onnx_dir: str, expected_id: str, whose: str) -> Embedder:
    embedder = worker_embedder(backend, onnx_dir)
    if embedder.id != expected_id:
        raise EmbedderMismatch(f"this worker loads the embedder '{embedder.id}', not {whose} '{expected_id}'")
    return embedder


@_on_worker
def _route_rows(
    rows: list[Row],
    artifact: RouterArtifact,
    tiers: TiersConfig,
    backend: str,
    onnx_dir: str,
    target: float,
    cost_weight: float | None,
    chunk: int,
    novelty_limit: float | None,
) -> list[Record]:
    router = Router(artifact, tiers, worker_embedder(backend, onnx_dir), num_threads=1)  # featurize checks its id
    return decisions_json(router, rows, target, chunk, cost_weight, novelty_limit)


@_on_worker
def _encode(texts: Sequence[str], backend: str, onnx_dir: str, expected_id: str) -> np.ndarray:
    return _checked_embedder(backend, onnx_dir, expected_id, "this process's").encode(texts)


def _embedder_id(backend: str, onnx_dir: str) -> str:
    return worker_embedder(backend, onnx_dir).id


def check_workers(client: Any, backend: str, onnx_dir: str, expected_id: str, whose: str) -> None:
    """Before any work: the embedder each worker loads (from its files, `worker_embedder`) must be `expected_id`
    (`whose`: the model's, this process's); a DaskFailure names the first worker that differs or cannot load it. A
    worker lost meanwhile is left out: one that comes back loads its files anew, and its tasks check again."""
    try:
        client.wait_for_workers(1, timeout=WORKERS_WAIT_S)
    except _cluster_errors() as exc:
        raise DaskFailure(f"the cluster has no worker ({type(exc).__name__}: {exc})") from None
    try:
        ids = client.run(_embedder_id, backend, onnx_dir, on_error="return")
    except _cluster_errors() as exc:
        raise _cluster_failure(exc) from None
    for worker, got in sorted(ids.items()):
        if isinstance(got, (*_cluster_errors(), OSError)) and not isinstance(got, FileNotFoundError):
            continue  # the connection to that worker, not its embedder
        if isinstance(got, BaseException):
            raise DaskFailure(f"on the Dask worker {worker}: {type(got).__name__}: {got}")
        if got != expected_id:
            raise DaskFailure(f"the Dask worker {worker} loads the embedder '{got}', not {whose} '{expected_id}'")


def _ordered(submit: Any, items: Iterator[Any], in_flight: int) -> Iterator[Any]:
    """Results of submit(item) for each item, in input order, with at most `in_flight` tasks outstanding; a failure
    of the cluster meanwhile is a DaskFailure."""
    pending: deque[Any] = deque()
    try:
        for item in items:
            pending.append(submit(item))
            if len(pending) >= in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except _cluster_errors() as exc:
        raise _cluster_failure(exc) from None


def route_file_dask(
    client: Any,
    artifact: RouterArtifact,
    tiers: TiersConfig,
    backend: str,
    onnx_dir: Path,
    src: Path,
    out: Path | None,
    target: float,
    cost_weight: float | None = None,
    rows_per_chunk: int = 4096,
    chunk: int = 256,
    show_progress: bool | None = None,
    novelty_limit: float | None = None,
) -> BulkRun:
    """`training.bulk.route_file` with the chunks decided on the Dask workers; the same records, in input order."""
    onnx = str(onnx_dir.resolve())
    check_workers(client, backend, onnx, artifact.features.embedder_id, "the model's")  # waits
    try:
        # The artifact as a task (not scattered data, which no one can rebuild once the workers holding it are gone).
        art = client.submit(pickle.loads, pickle.dumps(artifact), pure=False)
    except _cluster_errors() as exc:
        raise _cluster_failure(exc) from None
    in_flight = IN_FLIGHT_PER_WORKER * n_workers(client)
    args = (art, tiers, backend, onnx, target, cost_weight, chunk, novelty_limit)

    def submit(rows: list[Row]) -> Any:
        return client.submit(_route_rows, rows, *args, pure=False)

    ids = PromptIds(src)
    with progress_bar(count_rows(src), show_progress) as bar:
        decided = _ordered(submit, (ids.label(rows) for rows in read_chunks(src, rows_per_chunk)), in_flight)
        return BulkRun(write_decisions(decided, out, tiers.names, bar.update), ids.repeated())


class DaskEmbedder:
    """An Embedder whose `encode` runs on the Dask workers, `rows_per_task` texts per task, results in order.

    Same id and dim as the backend's own embedder, so the embedding cache and the trained model cannot tell
    the difference (and a service configured with that backend serves the model).
    """

    def __init__(self, client: Any, local: Embedder, backend: str, onnx_dir: Path, rows_per_task: int = 2048):
        self.client = client
        self.local = local
        self.backend = backend
        self.onnx_dir = str(onnx_dir.resolve())  # the workers' own working directories may differ
        self.rows_per_task = rows_per_task
        self._checked = False

    @property
    def id(self) -> str:
        return self.local.id

    @property
    def dim(self) -> int:
        return self.local.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if not self._checked:  # once, before the first texts leave this process (each task checks again)
            check_workers(self.client, self.backend, self.onnx_dir, self.local.id, "this process's")
            self._checked = True
        parts = (texts[i : i + self.rows_per_task] for i in range(0, len(texts), self.rows_per_task))

        def submit(part: list[str]) -> Any:
            return self.client.submit(_encode, part, self.backend, self.onnx_dir, self.local.id, pure=False)

        in_flight = IN_FLIGHT_PER_WORKER * n_workers(self.client)
        return np.vstack(list(_ordered(submit, parts, in_flight))).astype(np.float32)
