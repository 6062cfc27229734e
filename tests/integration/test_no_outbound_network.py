"""The ONNX embedder reaches no host: ONNX Runtime's Linux wheels send telemetry (DNS lookups of
mobile.events.data.microsoft.com within seconds of a session) unless ORT_DISABLE_TELEMETRY is set before it
initializes (router.embedders.onnx.load_onnxruntime sets it). Traced with strace: the only way to see the lookups,
made by ONNX Runtime's native threads (no Python socket hook sees them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ONNX_DIR = REPO / ".cache" / "onnx"
WATCH_S = 20  # without the setting, the first lookups came 2-15 s after the session (Zen 5, a review's VM)

SCRIPT = f"""
import time
from pathlib import Path
from router.embedders.factory import make_embedder
make_embedder("onnx-int8", onnx_dir=Path({str(ONNX_DIR)!r})).encode(["What is 2+2?"])
time.sleep({WATCH_S})
"""


def test_the_onnx_embedder_makes_no_network_call(tmp_path: Path) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: the embedder's native threads cannot be traced")
    if not (ONNX_DIR / "minilm-int8.onnx").is_file():
        pytest.skip(f"the int8 ONNX embedder is not built in {ONNX_DIR} (make setup)")
    trace = tmp_path / "trace.txt"
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    cmd = ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(trace), sys.executable, "-c", SCRIPT]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=WATCH_S + 120, check=False)
    if proc.returncode != 0 and "ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    calls = [line for line in trace.read_text().splitlines() if "AF_INET" in line or "htons(" in line]
    lookups = [line for line in trace.read_text().splitlines() if "sendto(" in line and "events" in line]
    assert not calls and not lookups, "\n".join((calls + lookups)[:5])
