"""`python -m serving` with two worker processes, started as a user would: /metrics and reloads reach every worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.process import REPO, free_port, start_service
from router.embedders.factory import make_embedder
from router.embedders.onnx import INT8_RECIPE
from router.embedders.protocol import MINILM_ID
from tests.integration.conftest import ADMIN_KEY, CLIENT_KEY, bearer, train_artifact, write_tiers
from tests.integration.processes import (
    ONNX_DIR,
    get,
    service_env,
    stop,
    wait_until_both_workers_started,
)

N_ROUTES = 40
N_SCRAPES = 12
N_TIERS_READS = 40
RELOAD_CHECK_INTERVAL_S = 0.5
# The stated bound is the check interval plus one model load. A reload of this small router took 0.02-0.05 s
# (8 reloads, load average 10 on 2 cores); the test waits up to 60 s for it (a stalled machine is no failure) and
# checks that every worker got there, each with one load.
FOLLOW_WAIT_S = 60.0

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
    tiers_path: Path
    log: Path


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
    env = service_env(tmp, artifact, port, TIERWISE_RELOAD_CHECK_INTERVAL_S=str(RELOAD_CHECK_INTERVAL_S))
    log = tmp / "serve.log"
    proc = start_service(env, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_both_workers_started(proc, log)
        assert get(f"{url}/readyz").status_code == 200, log.read_text()[-4000:]
        yield Service(url, metrics_dir, stale_files, tmp / "tiers.toml", log)
    finally:
        stop(proc)


def scrape_decisions(url: str) -> str:
    """The decision counter lines of one scrape, on a new connection (so any worker may answer)."""
    text = get(f"{url}/metrics").text
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
    env = service_env(tmp_path, artifact, free_port(), TIERWISE_EMBEDDER="onnx-fp32")
    done = subprocess.run(
        [sys.executable, "-m", "serving"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Application startup" not in done.stderr
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("tierwise:")]
    assert "trained with embedder 'test/hashing:hash'" in line and f"'{MINILM_ID}:onnx-fp32'" in line


def until_every_worker_serves(service: Service, model: str) -> None:
    """Wait (up to FOLLOW_WAIT_S) until N_TIERS_READS reads in a row, from both workers, see `model` as brain's."""
    deadline = time.monotonic() + FOLLOW_WAIT_S
    while set(seen := brain_models(service, N_TIERS_READS)) != {model}:
        assert time.monotonic() < deadline, f"not every worker serves {model}: {seen}"
        time.sleep(RELOAD_CHECK_INTERVAL_S)


def brain_models(service: Service, n: int) -> list[str]:
    """The brain tier's model as `n` requests, each on a new connection (so both workers answer), see it."""
    out = []
    for _ in range(n):
        r = get(f"{service.url}/tiers", headers=bearer(CLIENT_KEY))
        assert r.status_code == 200, r.text
        out.append(r.json()["tiers"][2]["model"])
    return out


def reload_once(service: Service) -> httpx.Response:
    r = httpx.post(f"{service.url}/admin/reload", headers=bearer(ADMIN_KEY), timeout=60)
    assert r.status_code == 200, r.text
    return r


@pytest.mark.parametrize("model", ["unused"])
def test_one_reload_reaches_every_worker(service: Service, model: str) -> None:
    """One POST /admin/reload, answered by one worker; then every worker serves the new tiers, each loaded once."""
    original = write_tiers(service.tiers_path).read_text()
    assert set(brain_models(service, N_TIERS_READS)) == {"large"}
    loads_before = service.log.read_text().count('"msg": "model loaded"')
    write_tiers(service.tiers_path, {"brain": model})
    try:
        assert reload_once(service).json()["tiers"][2]["model"] == model
        until_every_worker_serves(service, model)
        # Each of the two workers loaded the new tiers exactly once: the one asked, and the one that followed.
        loads = service.log.read_text().split('"msg": "model loaded"')[loads_before + 1 :]
        assert len(loads) == 2 and all(model in line.split("\n", 1)[0] for line in loads), loads
        versions = {get(f"{service.url}/readyz").json()["router_version"] for _ in range(N_TIERS_READS)}
        assert len(versions) == 1
    finally:
        service.tiers_path.write_text(original)
        reload_once(service)
    until_every_worker_serves(service, "large")
