"""`python -m serving` as a real process group, for the tests that need worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path

import httpx

from bench.process import REPO
from tests.integration.conftest import KEYS, write_tiers

ONNX_DIR = REPO / ".cache" / "onnx"
STARTUP_TIMEOUT_S = 60


def service_env(tmp: Path, artifact: Path, port: int, **extra: str) -> dict[str, str]:
    """Two workers on `port` serving `artifact` with the int8 embedder; all their state in `tmp`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERWISE_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    return env | {
        "TIERWISE_HOST": "127.0.0.1",
        "TIERWISE_PORT": str(port),
        "TIERWISE_WORKERS": "2",
        "TIERWISE_DATABASE_URL": f"sqlite:///{tmp / 'serve.db'}",
        "TIERWISE_TIERS_PATH": str(write_tiers(tmp / "tiers.toml")),
        "TIERWISE_SPOOL_PATH": str(tmp / "spool.jsonl"),
        "TIERWISE_RELOAD_SIGNAL_PATH": str(tmp / "reload-generation"),
        "TIERWISE_API_KEYS": json.dumps(KEYS),
        "TIERWISE_QUALITY_TARGET": "0.7",
        "TIERWISE_EMBEDDER": "onnx-int8",
        "TIERWISE_CACHE_DIR": str(ONNX_DIR.parent),
        "TIERWISE_LOCAL_MODEL_PATH": str(artifact),
        "TIERWISE_METRICS_DIR": str(tmp / "metrics"),
        # An empty file store: the registry has no such model, so the local artifact is served.
        "MLFLOW_TRACKING_URI": (tmp / "mlruns").as_uri(),
        **extra,
    }


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to uvicorn's supervisor (it stops its workers), then SIGKILL whatever is left of the group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def wait_until_both_workers_started(proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while log.read_text().count("Application startup complete") < 2:
        assert proc.poll() is None, f"the service exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"two workers did not start in {STARTUP_TIMEOUT_S} s:\n{log.read_text()}"
        time.sleep(0.2)


def get(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """One request on a new connection, so that any worker may answer it."""
    return httpx.get(url, headers=headers, timeout=10)
