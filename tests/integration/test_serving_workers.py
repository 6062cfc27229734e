"""`python -m serving` with two worker processes, started as a user would: /metrics counts every worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from router.features import MINILM_ID, make_embedder
from router.onnx_embedder import INT8_RECIPE
from tests.integration.conftest import CLIENT_KEY, KEYS, bearer, train_artifact, write_tiers

REPO = Path(__file__).resolve().parents[2]
ONNX_DIR = REPO / ".cache" / "onnx"
N_ROUTES = 40
N_SCRAPES = 12
STARTUP_TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(
    not (ONNX_DIR / "minilm-int8.onnx").is_file(), reason=f"needs the int8 ONNX embedder in {ONNX_DIR} (make setup)"
)

# A previous run's counter file, written by prometheus_client itself under the service's metric name.
PREVIOUS_RUN = """
from prometheus_client import Counter
Counter("tierwise_decisions", "Routing decisions per tier", ["tier", "model"]).labels("stale", "previous-run").inc(1000)
"""


@dataclass
class Service:
    url: str
    metrics_dir: Path
    stale_files: list[Path]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to uvicorn's supervisor (it stops its workers), then SIGKILL whatever is left of the group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def wait_until_both_workers_serve(proc: subprocess.Popen[bytes], log: Path, url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while log.read_text().count("Application startup complete") < 2:
        assert proc.poll() is None, f"the service exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"two workers did not start in {STARTUP_TIMEOUT_S} s:\n{log.read_text()}"
        time.sleep(0.2)
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200, log.read_text()[-4000:]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Two workers on a free port, a temp SQLite store, the small router, and a metrics dir a previous run left."""
    tmp = tmp_path_factory.mktemp("workers")
    # The subprocess builds its own embedder, so the router is trained on the same int8 embeddings.
    artifact = train_artifact(make_embedder("onnx-int8", onnx_dir=ONNX_DIR), tmp / "artifact", n_prompts=100)
    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "notes.txt").write_text("not a metric file")
    subprocess.run(
        [sys.executable, "-c", PREVIOUS_RUN],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        check=True,
    )
    stale_files = list(metrics_dir.glob("*.db"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERWISE_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env |= {
        "TIERWISE_HOST": "127.0.0.1",
        "TIERWISE_PORT": str(port),
        "TIERWISE_WORKERS": "2",
        "TIERWISE_DATABASE_URL": f"sqlite:///{tmp / 'serve.db'}",
        "TIERWISE_TIERS_PATH": str(write_tiers(tmp / "tiers.toml")),
        "TIERWISE_SPOOL_PATH": str(tmp / "spool.jsonl"),
        "TIERWISE_API_KEYS": json.dumps(KEYS),
        "TIERWISE_QUALITY_TARGET": "0.7",
        "TIERWISE_EMBEDDER": "onnx-int8",
        "TIERWISE_CACHE_DIR": str(ONNX_DIR.parent),
        "TIERWISE_LOCAL_MODEL_PATH": str(artifact),
        "TIERWISE_METRICS_DIR": str(metrics_dir),
        # An empty file store: the registry has no such model, so the local artifact is served.
        "MLFLOW_TRACKING_URI": (tmp / "mlruns").as_uri(),
    }
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_both_workers_serve(proc, log, url)
        yield Service(url, metrics_dir, stale_files)
    finally:
        stop(proc)


def scrape_decisions(url: str) -> str:
    """The decision counter lines of one scrape, on a new connection (so any worker may answer)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return "\n".join(line for line in text.splitlines() if line.startswith("tierwise_decisions_total{"))


def total(lines: str) -> float:
    return sum(float(line.split()[-1]) for line in lines.splitlines())


def test_metrics_count_the_decisions_of_every_worker(service: Service) -> None:
    def route(i: int) -> int:
        body = {"prompt": f"question {i}: alpha beta gamma"}
        return httpx.post(f"{service.url}/route", json=body, headers=bearer(CLIENT_KEY), timeout=30).status_code

    # Concurrent requests, each on its own connection, keep both workers busy.
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert set(pool.map(route, range(N_ROUTES))) == {200}
    totals = [total(scrape_decisions(service.url)) for _ in range(N_SCRAPES)]
    assert totals == [N_ROUTES] * N_SCRAPES


def test_startup_wipes_the_previous_runs_metric_files(service: Service) -> None:
    assert service.stale_files and not any(f.exists() for f in service.stale_files)
    assert all('tier="stale"' not in scrape_decisions(service.url) for _ in range(N_SCRAPES))
    assert (service.metrics_dir / "notes.txt").is_file()
    counter_files = list(service.metrics_dir.glob("counter_*.db"))
    assert counter_files, "the workers write their counters to the metrics dir"


def test_scrape_time_values_reach_every_scrape(service: Service) -> None:
    for _ in range(N_SCRAPES):
        lines = httpx.get(f"{service.url}/metrics", timeout=10).text.splitlines()
        assert "tierwise_frozen_sessions 0.0" in lines
        [model] = [line for line in lines if line.startswith("tierwise_model_info{")]
        assert f'embedder="{MINILM_ID}:onnx-int8+{INT8_RECIPE}"' in model and 'router_version="local:' in model


def test_a_model_for_another_embedder_stops_the_service_with_one_line(tmp_path: Path) -> None:
    """Checked before the workers start: one line on stderr and a non-zero exit, no traceback per worker."""
    from tests.conftest import HashingEmbedder

    artifact = train_artifact(HashingEmbedder(), tmp_path / "artifact", n_prompts=60)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERWISE_")}
    env |= {
        "TIERWISE_PORT": str(free_port()),
        "TIERWISE_WORKERS": "2",
        "TIERWISE_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
        "TIERWISE_TIERS_PATH": str(write_tiers(tmp_path / "tiers.toml")),
        "TIERWISE_EMBEDDER": "onnx-fp32",
        "TIERWISE_CACHE_DIR": str(ONNX_DIR.parent),
        "TIERWISE_LOCAL_MODEL_PATH": str(artifact),
        "TIERWISE_METRICS_DIR": str(tmp_path / "metrics"),
        "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(),
    }
    done = subprocess.run(
        [sys.executable, "-m", "serving"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Application startup" not in done.stderr
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("tierwise:")]
    assert "trained with embedder 'test/hashing:hash'" in line and f"'{MINILM_ID}:onnx-fp32'" in line
