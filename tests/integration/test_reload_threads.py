"""Reloads from the MLflow registry leave no threads behind (the count grew with every reload before)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import mlflow
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from serving.model_source import RegistrySource
from tests.integration.conftest import ADMIN_KEY, CLIENT_KEY, bearer

NAME = "tierwise-threads"
N_RELOADS = 30
# The app's own threads (the test client's portal, the thread pool's workers) may still start one or two.
SLACK_THREADS = 3


@pytest.fixture
def registry(artifact_dir: Path, tmp_path: Path) -> Iterator[tuple[str, MlflowClient]]:
    """A SQLite registry with two versions of the test router; the champion alias on version 1."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("threads", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(artifact_dir), "router")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(NAME)
    for _ in range(2):
        client.create_model_version(NAME, f"{run.info.artifact_uri}/router", run.info.run_id)
    client.set_registered_model_alias(NAME, "champion", "1")
    yield uri, client
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)  # the service set both


def mlflow_threads(besides: Collection[threading.Thread] = ()) -> list[str]:
    """MLflow's threads alive now, leaving out `besides` (threads an earlier test left to the garbage collector)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("Mlflow") and t not in besides]


def test_reloads_do_not_grow_the_thread_count(
    client_factory: Callable[..., TestClient], registry: tuple[str, MlflowClient]
) -> None:
    uri, mlflow_client = registry
    # Threads of this process's earlier MLflow calls (this test's registry fixture, a model logged by another test)
    # live until a garbage collection, whenever it runs: they are not the service's (a full run, 2026-11-26).
    earlier = set(threading.enumerate())
    client = client_factory(source=RegistrySource(uri, NAME, "champion"))
    # Without the collector, threads that only a garbage collection would end stay alive, whenever it runs.
    gc.disable()
    try:
        counts = []
        for i in range(N_RELOADS):
            version = str(i % 2 + 1)  # the alias moves every time, so every reload downloads
            mlflow_client.set_registered_model_alias(NAME, "champion", version)
            r = client.post("/admin/reload", headers=bearer(ADMIN_KEY))
            assert r.status_code == 200 and r.json()["router_version"] == f"{NAME}/{version}", r.text
            counts.append(threading.active_count())
    finally:
        gc.enable()
    assert counts[-1] <= counts[1] + SLACK_THREADS, counts
    assert mlflow_threads(besides=earlier) == []


def test_a_reload_with_the_alias_unmoved_downloads_nothing(
    client_factory: Callable[..., TestClient], registry: tuple[str, MlflowClient]
) -> None:
    uri, _ = registry
    source = RegistrySource(uri, NAME, "champion")
    client = client_factory(source=source)
    first = client.app.state.runtime
    assert client.post("/admin/reload", headers=bearer(ADMIN_KEY)).status_code == 200
    assert client.app.state.runtime is not first  # a new Runtime (the tiers file is re-read) ...
    assert client.app.state.runtime.router.artifact is first.router.artifact  # ... around the same artifact


def test_a_reload_the_registry_refuses_is_a_409_and_the_model_stays(
    client_factory: Callable[..., TestClient], registry: tuple[str, MlflowClient]
) -> None:
    """The alias deleted (or any refusal of MLflow's) was a 500 with two tracebacks in the log."""
    uri, mlflow_client = registry
    client = client_factory(source=RegistrySource(uri, NAME, "champion"))
    mlflow_client.delete_registered_model_alias(NAME, "champion")
    r = client.post("/admin/reload", headers=bearer(ADMIN_KEY))
    assert r.status_code == 409, r.text
    assert "still serving the previous model" in r.json()["detail"] and "champion" in r.json()["detail"]
    assert client.get("/readyz").json()["router_version"] == f"{NAME}/1"
    assert client.post("/route", json={"prompt": "2+2?"}, headers=bearer(CLIENT_KEY)).status_code == 200


def test_a_reload_with_the_registry_unreachable_is_a_503(
    client_factory: Callable[..., TestClient], registry: tuple[str, MlflowClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    import serving.model_source as model_source

    uri, _ = registry
    source = RegistrySource(uri, NAME, "champion")
    client = client_factory(source=source)

    def unreachable(tracking_uri: str, timeout_s: int = 5) -> None:
        raise ConnectionError("tracking store unreachable: connection refused")

    source._clients.clear()  # the next call connects again
    monkeypatch.setattr(model_source, "check_reachable", unreachable)
    r = client.post("/admin/reload", headers=bearer(ADMIN_KEY))
    assert r.status_code == 503 and "still serving the previous model" in r.json()["detail"], r.text
    assert client.get("/readyz").json()["router_version"] == f"{NAME}/1"
