"""Start `python -m serving` on a free port, load it with bench/serve_load.py, stop it cleanly."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench import serve_load, wrk
from bench.common import load_avg, summarize_ms, tree_cpu_seconds
from bench.process import free_port, start_service
from infra.settings import Settings

logger = logging.getLogger(__name__)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log_path: Path) -> float:
    """Seconds until /readyz answered 200 on 10 fresh connections in a row (every worker has a model)."""
    start = time.perf_counter()
    streak = 0
    while streak < 10:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError(f"/readyz not 200 after {timeout_s} s:\n{log_path.read_text()[-3000:]}")
        try:
            ok = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            ok = False
        streak = streak + 1 if ok else 0
        time.sleep(0.05 if ok else 0.5)
    return time.perf_counter() - start


def stop(proc: subprocess.Popen[bytes], grace_s: float = 30) -> dict[str, Any]:
    """SIGTERM the uvicorn supervisor (it stops its workers); SIGKILL its process group only if it hangs."""
    start = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(grace_s)
        killed = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
        killed = True
    return {"exit_code": code, "stop_s": round(time.perf_counter() - start, 2), "killed": killed}


@contextmanager
def running_service(
    env: dict[str, str], log_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes], dict[str, Any]]]:
    """The service as a subprocess in its own process group; yields (url, process, lifecycle facts)."""
    port = free_port()
    env = os.environ | {"TIERWISE_HOST": "127.0.0.1", "TIERWISE_PORT": str(port)} | env
    url = f"http://127.0.0.1:{port}"
    facts: dict[str, Any] = {}
    proc = start_service(env, log_path)
    try:
        facts["ready_s"] = round(wait_ready(url, proc, 300, log_path), 2)
        yield url, proc, facts
    finally:
        facts["shutdown"] = stop(proc)


def server_side_ms(log_path: Path, offset: int, route: str) -> dict[str, float] | None:
    """Latency the service's own access log measured (middleware in to response out) for `route` after `offset`."""
    with log_path.open("rb") as fh:
        fh.seek(offset)
        lines = fh.read().decode(errors="replace").splitlines()
    ms = []
    for line in lines:
        if '"latency_ms"' in line:
            with suppress(json.JSONDecodeError):
                rec = json.loads(line)
                if rec.get("route") == route:
                    ms.append(float(rec["latency_ms"]))
    return summarize_ms(ms) if ms else None


def _measure(
    url: str,
    proc: subprocess.Popen[bytes],
    log_path: Path,
    method: str,
    path: str,
    body: Any,
    concurrency: int,
    seconds: float,
) -> dict[str, Any]:
    """One serve_load measurement plus the CPU the server and this load generator burnt during it."""
    offset = log_path.stat().st_size
    server0, me0, t0 = tree_cpu_seconds(proc.pid), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if wrk.available():
        result: dict[str, Any] = wrk.measure(url, method, path, body, concurrency, seconds)
    else:
        result = asyncio.run(serve_load.measure(url, method, path, body, concurrency, seconds, {}))
    wall = time.perf_counter() - t0
    me1 = resource.getrusage(resource.RUSAGE_SELF)
    result["server_cpu_cores"] = round((tree_cpu_seconds(proc.pid) - server0) / wall, 2)
    result["loadgen_cpu_cores"] = round((me1.ru_utime + me1.ru_stime - me0.ru_utime - me0.ru_stime) / wall, 2)
    result["load_avg_end"] = load_avg()
    time.sleep(0.2)  # let the workers flush their last access-log lines
    server_side = server_side_ms(log_path, offset, path)
    if server_side is not None:  # /ping is not access-logged
        result["server_side_p50_ms"] = server_side["p50_ms"]
        result["server_side_p99_ms"] = server_side["p99_ms"]
    return result


def count_decisions(database_url: str) -> int:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar_one())
    finally:
        engine.dispose()


def run(
    database_url: str, seconds: float, levels: list[int], label: str, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Load /route and /ping at each concurrency against a fresh service on `database_url` (plus `extra_env`)."""
    fields: dict[str, Any] = {k.removeprefix("TIERWISE_").lower(): v for k, v in (extra_env or {}).items()}
    settings = Settings(**fields)
    targets = {"route": ("POST", "/route", {"prompt": serve_load.PROMPT}), "ping": ("GET", "/ping", None)}
    endpoints: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    with tempfile.TemporaryDirectory(prefix="tierwise-bench-serve-") as tmp:
        env = {"TIERWISE_DATABASE_URL": database_url, "TIERWISE_SPOOL_PATH": str(Path(tmp) / "spool.jsonl")}
        env |= extra_env or {}
        log_path = Path(tmp) / "service.log"
        load_start = load_avg()
        with running_service(env, log_path) as (url, proc, facts):
            ready = httpx.get(f"{url}/readyz", timeout=5).json()
            for c in levels:
                for name, (method, path, body) in targets.items():
                    endpoints[name].append(_measure(url, proc, log_path, method, path, body, c, seconds))
                    logger.info("serve %-9s %-5s c=%-2d %s", label, name, c, endpoints[name][-1])
        decisions_written = count_decisions(database_url)
        service_log_tail = log_path.read_text().splitlines()[-20:]
    routed = sum(r["requests"] + 1 for r in endpoints["route"])  # +1: serve_load's warm-up request
    return {
        "label": label,
        "url": "http://127.0.0.1:<free port>",
        "database": sa.make_url(database_url).get_backend_name(),
        "workers": settings.workers,
        "intra_op_threads": settings.intra_op_threads,
        "embedder": settings.embedder,
        "decision_commit": settings.decision_commit,
        "extra_env": extra_env or {},
        "router_version": ready.get("router_version"),
        "seconds_per_level": seconds,
        "prompt_chars": len(serve_load.PROMPT),
        "load_generator": "wrk -t1 (installed)"
        if wrk.available()
        else "bench/serve_load.py: asyncio + httpx, in this process",
        "notes": [
            "The load generator runs on the same 2 cores as the server: loadgen_cpu_cores + server_cpu_cores "
            "is capped near nproc, so req/s at c=8/32 is a floor for the server alone.",
            "server_cpu_cores: CPU seconds of the uvicorn supervisor and its workers / wall seconds of the level.",
            "server_side_p50/p99_ms (/route only): latency_ms from the service's access log, i.e. the ASGI "
            "middleware's view (routing, validation, threadpool hop, handler, response); the rest of p50_ms is "
            "the event loop, HTTP parsing, the socket and the client.",
        ],
        "lifecycle": facts,
        "decisions_written": decisions_written,
        "route_requests_sent": routed,
        "load_avg_start": load_start,
        "load_avg_end": load_avg(),
        "endpoints": endpoints,
        "service_log_tail": service_log_tail,
    }
