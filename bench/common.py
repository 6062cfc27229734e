"""Shared bench helpers: where the repo is, machine facts, percentiles, CPU time of a process tree, JSON output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
ONNX_DIR = REPO / ".cache" / "onnx"
PACKAGES = (
    "numpy",
    "onnxruntime",
    "tokenizers",
    "torch",
    "sentence-transformers",
    "lightgbm",
    "scikit-learn",
    "fastapi",
    "uvicorn",
    "httpx",
    "sqlalchemy",
    "psycopg",
    "mlflow-skinny",
)
_TICKS = os.sysconf("SC_CLK_TCK")


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


SIMD_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8")


def cpu_facts() -> dict[str, Any]:
    """Model name, family/model/stepping, clock and the SIMD flags ONNX Runtime's kernels choose by.

    "AMD EPYC" alone names several generations; int8 MatMul speed depends on which one (and on VNNI).
    """
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {
        "cpu_model": fields.get("model name", platform.processor()),
        "cpu_family_model_stepping": "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping")),
        "cpu_mhz": float(fields["cpu MHz"]) if "cpu MHz" in fields else None,
        "cpu_simd": [f for f in SIMD_FLAGS if f in flags],
    }


def machine_info() -> dict[str, Any]:
    """CPU, cores, load, versions, commit and date: what a number was measured on."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        **cpu_facts(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": versions,
    }


def summarize_ms(samples_ms: Iterable[float]) -> dict[str, float]:
    """p50 / p99 / mean / min of latencies in milliseconds."""
    a = np.asarray(list(samples_ms), dtype=np.float64)
    return {
        "n": int(a.size),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
        "min_ms": round(float(a.min()), 3),
    }


def time_calls(fn: Any, reps: int, warmup: int) -> dict[str, float]:
    """Latency of fn() over reps calls after warmup calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return summarize_ms(samples)


def time_paired(base: Any, extra: Any, reps: int, warmup: int) -> dict[str, Any]:
    """What `extra()` costs beyond `base()`: the calls alternate, so drift in the machine's load hits both alike.

    Returns each one's latency summary and the median of the paired differences (extra - base, ms), which is
    the cost of what `extra` adds; a difference of two p50s measured minutes apart mostly measures the load.
    """
    for _ in range(warmup):
        base()
        extra()
    a, b = [], []
    for _ in range(reps):
        start = time.perf_counter_ns()
        base()
        mid = time.perf_counter_ns()
        extra()
        b.append((time.perf_counter_ns() - mid) / 1e6)
        a.append((mid - start) / 1e6)
    diff = np.subtract(b, a)
    return {"base": summarize_ms(a), "extra": summarize_ms(b), "paired_diff_p50_ms": round(float(np.median(diff)), 4)}


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(entry.name))
    return kids


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    kids = _children()
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS
        todo.extend(kids.get(p, []))
    return total


def portable(value: Any) -> Any:
    """`value` with this machine's paths written portably: the checkout as `.`, the temp dir as `$TMPDIR`, the home
    directory as `~` (results are committed and compared across machines)."""
    if isinstance(value, str):
        for root, name in ((str(REPO), "."), (tempfile.gettempdir(), "$TMPDIR"), (str(Path.home()), "~")):
            value = value.replace(root, name)
        return value
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [portable(v) for v in value]
    return value


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write atomically, so a crashed run never leaves half a file; machine paths written portably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(portable(report), indent=2) + "\n")
    tmp.replace(path)


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A throwaway PostgreSQL database on the server in `url`, dropped on exit; yields its URL."""
    admin = sa.make_url(url)
    name = f"tierwise_bench_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def replace_between(path: Path, begin: str, end: str, text: str) -> None:
    """Replace what lies between the markers `begin` and `end` in a file (a README's generated table) by `text`."""
    body = path.read_text()
    if begin not in body or end not in body:
        raise SystemExit(f"{path} has no {begin} ... {end} markers")
    head, rest = body.split(begin, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")
