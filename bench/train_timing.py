"""Time `tierwise train` with a cold embedding cache, then warm, in a throwaway cache and MLflow store."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from bench.common import ONNX_DIR, REPO, load_avg
from infra.settings import Settings

logger = logging.getLogger(__name__)

TARGET_S = {"cold": 600.0, "warm": 60.0}
_REGISTERED = re.compile(r"registered (\S+) version (\S+) as '(\w+)'")
_CACHE = re.compile(r"embedding cache: (\d+) hits, (\d+) to embed")
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO (\S+): (.*)$")


def _milestones(stderr: str, started: float) -> list[dict[str, Any]]:
    """Seconds from process start to each INFO line of the training log."""
    out = []
    for line in stderr.splitlines():
        m = _LOG_LINE.match(line)
        if m:
            at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append({"t_s": round(at - started, 2), "logger": m.group(2), "message": m.group(3)[:160]})
    return out


def _small_log(path: Path, dest: Path, n_prompts: int) -> Path:
    log = pd.read_parquet(path)
    keep = log["prompt_id"].drop_duplicates().sample(n=n_prompts, random_state=0)
    log[log["prompt_id"].isin(keep)].to_parquet(dest, index=False)
    return dest


def run(quick: bool) -> dict[str, Any]:
    """Cold then warm `tierwise train`, each in a fresh process, sharing one temp cache and registry."""
    settings = Settings()
    work = Path(tempfile.mkdtemp(prefix="tierwise-bench-train-"))
    try:
        cache = work / "cache"
        cache.mkdir()
        (cache / "onnx").symlink_to(ONNX_DIR)
        outcomes = (REPO / settings.outcomes_path).resolve()
        if quick:
            outcomes = _small_log(outcomes, work / "outcomes.parquet", 150)
        env = os.environ | {
            "TIERWISE_CACHE_DIR": str(cache),
            "TIERWISE_OUTCOMES_PATH": str(outcomes),
            "TIERWISE_TIERS_PATH": str((REPO / settings.tiers_path).resolve()),
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        }
        tierwise = Path(sys.executable).with_name("tierwise")
        phases: dict[str, Any] = {}
        for phase in ("cold", "warm"):
            load_start = load_avg()
            started = time.time()
            t0 = time.perf_counter()
            # cwd is the temp dir: MLflow puts a sqlite store's artifacts under ./mlruns.
            proc = subprocess.run([str(tierwise), "train"], cwd=work, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"tierwise train ({phase}) exited {proc.returncode}:\n{proc.stderr[-3000:]}")
            reg = _REGISTERED.search(proc.stdout)
            cache_lines = [(int(h), int(m)) for h, m in _CACHE.findall(proc.stderr)]
            phases[phase] = {
                "wall_s": round(wall, 2),
                "target_s": TARGET_S[phase],
                "met": wall <= TARGET_S[phase],
                "embedded_texts": sum(m for _, m in cache_lines),
                "cache_hits": sum(h for h, _ in cache_lines),
                "registered": {"version": reg.group(2), "alias": reg.group(3)} if reg else None,
                "load_avg_start": load_start,
                "load_avg_end": load_avg(),
                "milestones": _milestones(proc.stderr, started),
            }
            logger.info("train %s: %.1f s, %d texts embedded", phase, wall, phases[phase]["embedded_texts"])
        return {
            "command": "tierwise train",
            "quick": quick,
            "outcomes_path": str(outcomes.relative_to(REPO)) if outcomes.is_relative_to(REPO) else str(outcomes),
            "embedder": settings.embedder,
            "notes": [
                "Each phase is a fresh process (imports, data load, split, embed, fit, evaluate, MLflow log + register).",
                "Cold: empty TIERWISE_CACHE_DIR (ONNX files symlinked in); warm: the same cache dir again.",
                "The warm run also re-evaluates the cold run's model as the registered champion (AIQ rule); "
                "the cold run has no champion to compare against.",
                "MLflow store: a temp sqlite file, so the real registry is untouched.",
            ],
            "phases": phases,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
