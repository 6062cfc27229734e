"""Dask: a LocalCluster of 2 worker processes routes and embeds exactly as one process does."""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.artifact import RouterArtifact
from router.embedders.factory import embedder_files, make_embedder
from router.features import featurize
from router.novelty import NoveltyReference
from router.routing import Router
from tests.conftest import make_log
from tests.integration.conftest import train_artifact
from training.bulk import route_file

pytest.importorskip("dask.distributed", reason="the dask extra is not installed: pip install 'tierwise[dask]'")
from training.dask_backend import DaskEmbedder, _loaded, close, connect, route_file_dask, worker_embedder

ONNX_DIR = Path(__file__).resolve().parents[2] / ".cache" / "onnx"
SIGINT_BEFORE_ANY_CLUSTER = signal.getsignal(signal.SIGINT)
pytestmark = pytest.mark.skipif(
    not all(p.exists() for p in embedder_files("static", ONNX_DIR)),
    reason=f"the static embedder is not built in {ONNX_DIR} (make setup)",
)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    c = connect("local:2")
    assert len(c.scheduler_info()["workers"]) == 2
    yield c
    close(c)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> RouterArtifact:
    embedder = make_embedder("static", onnx_dir=ONNX_DIR)
    return RouterArtifact.load(train_artifact(embedder, tmp_path_factory.mktemp("static-artifact")))


def test_bulk_routing_on_two_workers_equals_one_process(client: Any, artifact: RouterArtifact, tmp_path: Path):
    log = make_log(400, seed=3).drop_duplicates("prompt_id")
    src = tmp_path / "prompts.jsonl"
    src.write_text(
        "".join(
            json.dumps({"prompt_id": i, "prompt": p}) + "\n" for i, p in zip(log.prompt_id, log.prompt, strict=True)
        )
    )
    local = Router(artifact, artifact.tiers, make_embedder("static", onnx_dir=ONNX_DIR))
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    n1 = route_file(local, src, one, 0.7, rows_per_chunk=37, show_progress=False).decisions
    n2 = route_file_dask(
        client, artifact, artifact.tiers, "static", ONNX_DIR, src, two, 0.7, rows_per_chunk=37, show_progress=False
    ).decisions
    assert n1 == n2 == len(log)
    assert two.read_text() == one.read_text()
    # Both workers did some of the work, each loading the embedder once.
    loaded = client.run(lambda: _loaded.cache_info().currsize)
    assert sorted(loaded.values()) == [1, 1]
    assert len({json.loads(line)["tier"] for line in one.read_text().splitlines()}) > 1
    # With the service's out-of-distribution fallback (a low limit, so that some prompts take it), the same too.
    embedder = make_embedder("static", onnx_dir=ONNX_DIR)
    X = featurize(list(make_log(300, seed=4)["prompt"].unique()), artifact.features, embedder)
    ref = replace(artifact, novelty=NoveltyReference(n_reference=100).fit(X[:, : artifact.features.embedding_dim]))
    local = Router(ref, ref.tiers, embedder)
    route_file(local, src, one, 0.7, rows_per_chunk=37, show_progress=False, novelty_limit=0.5)
    route_file_dask(client, ref, ref.tiers, "static", ONNX_DIR, src, two, 0.7, show_progress=False, novelty_limit=0.5)
    assert two.read_text() == one.read_text()
    reasons = [json.loads(line)["reason"] for line in one.read_text().splitlines()]
    assert 0 < sum(r.startswith("out of distribution") for r in reasons) < len(reasons)


def test_dask_embedder_equals_the_local_embedder(client: Any):
    local = make_embedder("static", onnx_dir=ONNX_DIR)
    texts = list(make_log(300, seed=5)["prompt"].unique())
    remote = DaskEmbedder(client, local, "static", ONNX_DIR, rows_per_task=25)
    assert remote.id == local.id and remote.dim == local.dim
    np.testing.assert_array_equal(remote.encode(texts), local.encode(texts))


def _prompts_file(path: Path, n: int) -> Path:
    log = make_log(n, seed=4).drop_duplicates("prompt_id")
    rows = (json.dumps({"prompt_id": i, "prompt": p}) for i, p in zip(log.prompt_id, log.prompt, strict=True))
    path.write_text("".join(r + "\n" for r in rows))
    return path


def test_a_failure_on_a_worker_says_so(client: Any, artifact: RouterArtifact, tmp_path: Path) -> None:
    """A worker without the embedder's files: the error says it happened on a Dask worker (the CLI blamed the input
    file for it), and it is one DaskFailure, not the worker's traceback."""
    from training.dask_backend import DaskFailure

    src = _prompts_file(tmp_path / "prompts.jsonl", 40)
    empty = tmp_path / "no-embedder"
    empty.mkdir()
    with pytest.raises(DaskFailure, match="^on the Dask worker tcp://.*static-vectors.npy"):
        route_file_dask(client, artifact, artifact.tiers, "static", empty, src, tmp_path / "out.jsonl", 0.7)


def test_a_rebuilt_embedder_is_reloaded_and_every_worker_checked_first(
    client: Any, artifact: RouterArtifact, tmp_path: Path
) -> None:
    """Long-lived workers kept the embedder they loaded first, even after its files were rebuilt, and nothing
    checked the workers' embedder before a run (review findings). A worker now loads the files again when they
    change, and each run compares every worker's embedder with the model's before any chunk is sent."""
    from training.dask_backend import DaskFailure

    files = tmp_path / "onnx"
    shutil.copytree(ONNX_DIR, files)
    where = str(files.resolve())

    def mark() -> None:  # the embedder each worker holds now gets a mark; a reloaded one has none
        worker_embedder("static", where).tierwise_test_mark = True  # type: ignore[attr-defined]

    def marked() -> bool:
        return hasattr(worker_embedder("static", where), "tierwise_test_mark")

    client.run(mark)
    src = _prompts_file(tmp_path / "prompts.jsonl", 40)
    route_file_dask(client, artifact, artifact.tiers, "static", files, src, tmp_path / "out.jsonl", 0.7)
    assert set(client.run(marked).values()) == {True}  # the same files: the same embedder, not loaded again
    vectors = embedder_files("static", files)[0]
    vectors.write_bytes(vectors.read_bytes())  # rebuilt (the same bytes, a new write)
    route_file_dask(client, artifact, artifact.tiers, "static", files, src, tmp_path / "out.jsonl", 0.7)
    assert set(client.run(marked).values()) == {False}  # loaded again on every worker
    other = replace(artifact, features=artifact.features.model_copy(update={"embedder_id": "another:embedder"}))
    with pytest.raises(DaskFailure, match="^the Dask worker tcp://.* loads the embedder '.*static.*', not the model's"):
        route_file_dask(client, other, other.tiers, "static", files, src, tmp_path / "other.jsonl", 0.7)


def test_train_embeds_on_workers_with_this_process_embedder_only(client: Any) -> None:
    """`train --dask` checked no worker's embedder: a worker with another build embedded silently (review finding).
    The first encode checks every worker, and each task checks its own worker."""
    from training.dask_backend import DaskFailure, _encode

    local = make_embedder("static", onnx_dir=ONNX_DIR)

    class Other:
        id, dim = "another:embedder", local.dim

    remote = DaskEmbedder(client, Other(), "static", ONNX_DIR)  # type: ignore[arg-type]
    with pytest.raises(DaskFailure, match="^the Dask worker tcp://.* loads the embedder .*, not this process's"):
        remote.encode(["a prompt"])
    assert not remote._checked
    task = client.submit(_encode, ["a prompt"], "static", str(ONNX_DIR.resolve()), "another:embedder", pure=False)
    with pytest.raises(DaskFailure, match="^on the Dask worker tcp://.*EmbedderMismatch.*not this process's"):
        task.result()


def test_a_run_survives_its_only_worker_restarting(
    artifact: RouterArtifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one worker (local:1, or a cluster of one), the artifact was scattered data: when that worker died and its
    nanny restarted it, every chunk was cancelled (FutureCancelledError; review finding). As a task, it is rebuilt."""
    import contextlib
    import os

    from training import dask_backend

    src = _prompts_file(tmp_path / "prompts.jsonl", 300)
    single = connect("local:1")
    try:
        real = dask_backend.read_chunks

        def chunks_then_kill(path: Path, size: int) -> Iterator[Any]:
            for k, rows in enumerate(real(path, size)):
                # The artifact is on the worker and a chunk in flight: the worker dies, its nanny restarts it (the
                # call's own connection closes with the worker).
                if k == 1:
                    with contextlib.suppress(Exception):
                        single.run(os._exit, 1)
                yield rows

        monkeypatch.setattr(dask_backend, "read_chunks", chunks_then_kill)
        out = tmp_path / "out.jsonl"
        n = route_file_dask(
            single, artifact, artifact.tiers, "static", ONNX_DIR, src, out, 0.7, rows_per_chunk=50, show_progress=False
        ).decisions
    finally:
        close(single)
    local = Router(artifact, artifact.tiers, make_embedder("static", onnx_dir=ONNX_DIR))
    one = tmp_path / "one.jsonl"
    assert n == route_file(local, src, one, 0.7, rows_per_chunk=50, show_progress=False).decisions
    assert out.read_text() == one.read_text()


def test_local_workers_leave_ctrl_c_to_this_process(client: Any) -> None:
    """Ctrl-C reaches the whole process group: each LocalCluster worker printed its KeyboardInterrupt traceback
    (review finding). They ignore it; this process stops them."""
    handlers = client.run(lambda: signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
    assert handlers and all(handlers.values()), handlers
    # This process's own Ctrl-C is back as it was before the cluster started (Python's handler, unless this
    # process was started with SIGINT ignored, as a background job of a shell without job control is).
    assert signal.getsignal(signal.SIGINT) is SIGINT_BEFORE_ANY_CLUSTER
