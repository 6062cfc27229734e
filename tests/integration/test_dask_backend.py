"""Dask: a LocalCluster of 2 worker processes routes and embeds exactly as one process does."""

from __future__ import annotations

import json
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
from training.dask_backend import DaskEmbedder, close, connect, route_file_dask, worker_embedder

ONNX_DIR = Path(__file__).resolve().parents[2] / ".cache" / "onnx"
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
    loaded = client.run(lambda: worker_embedder.cache_info().currsize)
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
