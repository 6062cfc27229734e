"""Dask for bulk work beyond one process: `--dask tcp://host:8786` (a running scheduler) or `--dask local:N`.

Bulk routing sends chunks of prompts to the workers; each worker process loads the embedder once (a cached
per-process loader) and receives the router artifact once (scattered to every worker). At most two chunks per
worker are in flight and results are written in input order, so memory stays bounded on the client too.

Training uses Dask for the expensive part, embedding the log's prompts (`DaskEmbedder`), and fits the boosters on
one machine: a log of tens of thousands of prompts x ~260 features fits in memory many times over and three
800-tree boosters fit in seconds, while `lightgbm.dask` would ship the data to workers, lose the embedding cache
and could not reproduce DifficultyModel's out-of-fold calibration and shared-difficulty start.
The workers need the embedder's files at the same path (`make setup` on each machine, or a shared cache dir).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from router.artifact import RouterArtifact
from router.embedders.factory import make_embedder
from router.embedders.protocol import Embedder
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


def connect(spec: str) -> Any:
    """A dask.distributed Client for 'local:N' (a LocalCluster of N single-threaded worker processes) or an address."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise RuntimeError("--dask needs the dask extra: pip install 'tierwise[dask]'") from exc
    if spec.startswith("local:"):
        try:
            n = int(spec.removeprefix("local:"))
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--dask {spec}: expected local:N with N >= 1 workers")
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)  # type: ignore[no-untyped-call]
        return Client(cluster)  # type: ignore[no-untyped-call]
    return Client(spec)  # type: ignore[no-untyped-call]


def close(client: Any) -> None:
    """Close the client and, for local:N, its LocalCluster."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def n_workers(client: Any) -> int:
    return max(len(client.scheduler_info().get("workers", {})), 1)


@lru_cache(maxsize=4)
def worker_embedder(backend: str, onnx_dir: str) -> Embedder:
    """The embedder of this worker process, loaded once and kept (one intra-op thread: workers are the parallelism)."""
    return make_embedder(backend, onnx_dir=Path(onnx_dir), num_threads=1)


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
    router = Router(artifact, tiers, worker_embedder(backend, onnx_dir), num_threads=1)
    return decisions_json(router, rows, target, chunk, cost_weight, novelty_limit)


def _encode(texts: Sequence[str], backend: str, onnx_dir: str) -> np.ndarray:
    return worker_embedder(backend, onnx_dir).encode(texts)


def _ordered(submit: Any, items: Iterator[Any], in_flight: int) -> Iterator[Any]:
    """Results of submit(item) for each item, in input order, with at most `in_flight` tasks outstanding."""
    pending: deque[Any] = deque()
    for item in items:
        pending.append(submit(item))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


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
    [art] = client.scatter([artifact], broadcast=True)
    in_flight = IN_FLIGHT_PER_WORKER * n_workers(client)
    args = (art, tiers, backend, str(onnx_dir), target, cost_weight, chunk, novelty_limit)

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
        self.onnx_dir = str(onnx_dir)
        self.rows_per_task = rows_per_task

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
        parts = (texts[i : i + self.rows_per_task] for i in range(0, len(texts), self.rows_per_task))

        def submit(part: list[str]) -> Any:
            return self.client.submit(_encode, part, self.backend, self.onnx_dir, pure=False)

        in_flight = IN_FLIGHT_PER_WORKER * n_workers(self.client)
        return np.vstack(list(_ordered(submit, parts, in_flight))).astype(np.float32)
