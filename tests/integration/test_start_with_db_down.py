"""The service starts with its database down: unready with the reason, ready once the database answers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from bench.process import free_port, start_service
from infra.settings import Settings
from router.embedders.factory import make_embedder
from serving.__main__ import migrate_before_fork, preflight
from tests.integration.conftest import CLIENT_KEY, bearer, train_artifact
from tests.integration.pg_server import PgServer, pg_server  # noqa: F401 - the fixture
from tests.integration.processes import (
    ONNX_DIR,
    get,
    service_env,
    stop,
    wait_until_both_workers_started,
)

WAIT_S = 60  # only a guard against a hang; the loop ends as soon as the service is ready
N_READS = 20  # /readyz reads on new connections, so both workers answer


def down_url() -> str:
    """A PostgreSQL URL where nothing listens."""
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres"


def test_starts_unready_and_becomes_ready_when_the_database_comes_up(
    client_factory: Callable[..., TestClient],
    pg_server: PgServer,  # noqa: F811
) -> None:
    client = client_factory(database_url=pg_server.url(), store_retry_interval_s=0.1)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["detail"].startswith("store unavailable: ")
    assert "Connection refused" in r.json()["detail"] and "\n" not in r.json()["detail"]
    assert client.get("/healthz").status_code == 200
    pg_server.start()
    deadline = time.monotonic() + WAIT_S
    while (r := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, f"never became ready: {r.text}"
        time.sleep(0.1)
    assert r.json()["status"] == "ready"
    # The migration ran: the tables are there, so a session-scoped route is stored.
    body = {"prompt": "What is 2+2?", "session_id": "after-outage"}
    assert client.post("/route", json=body, headers=bearer(CLIENT_KEY)).status_code == 200


def test_migration_and_preflight_before_the_workers_survive_a_down_database(tmp_path: Path) -> None:
    url = down_url()
    migrate_before_fork(url)  # logs one line, raises nothing
    settings = Settings(database_url=url, mlflow_tracking_uri=url, cache_dir=tmp_path, local_model_path=None)
    started = time.monotonic()
    assert preflight(settings) is None  # nothing to check: the service starts and reports on /readyz
    assert time.monotonic() - started < 30, "MLflow retried the unreachable tracking store for ~100 s"


@pytest.mark.skipif(not (ONNX_DIR / "minilm-int8.onnx").is_file(), reason=f"needs the int8 ONNX embedder in {ONNX_DIR}")
def test_python_m_serving_with_the_database_down(tmp_path: Path, pg_server: PgServer) -> None:  # noqa: F811
    """Two workers start unready (no traceback, no exit), and both become ready once PostgreSQL is up."""
    artifact = train_artifact(make_embedder("onnx-int8", onnx_dir=ONNX_DIR), tmp_path / "artifact", n_prompts=60)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = service_env(
        tmp_path, artifact, port, TIERWISE_DATABASE_URL=pg_server.url(), TIERWISE_STORE_RETRY_INTERVAL_S="0.2"
    )
    log = tmp_path / "serve.log"
    proc = start_service(env, log)
    try:
        wait_until_both_workers_started(proc, log)
        answers = [get(f"{url}/readyz") for _ in range(N_READS)]
        assert {r.status_code for r in answers} == {503}
        assert all(r.json()["detail"].startswith("store unavailable: ") for r in answers)
        pg_server.start()
        deadline = time.monotonic() + WAIT_S
        while {get(f"{url}/readyz").status_code for _ in range(N_READS)} != {200}:
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.2)
        r = httpx.post(f"{url}/route", json={"prompt": "What is 2+2?", "session_id": "s"}, headers=bearer(CLIENT_KEY))
        assert r.status_code == 200, r.text
        assert "Traceback" not in log.read_text(), log.read_text()[-4000:]
    finally:
        stop(proc)


def test_an_unreachable_store_is_one_line_on_readyz(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(database_url=down_url())  # drawn here: a parameter must be the same in every xdist worker
    detail = client.get("/readyz").json()["detail"]
    assert detail.startswith("store unavailable: (psycopg.OperationalError)") and "\n" not in detail
