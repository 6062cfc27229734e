"""Bulk routing throughput: `tierwise route --batch` end to end, and its routing step (the Router) alone."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tokenizers import Tokenizer

from bench.common import ONNX_DIR, REPO, load_avg
from infra.settings import Settings
from router.embedders.factory import backend_of, make_embedder
from router.routing import Router
from router.schema import load_tiers
from router.text import normalize_text, text_window
from serving.model_source import LoadedModel
from training.bulk import decisions_json

logger = logging.getLogger(__name__)

TARGET_PROMPTS_PER_S = 500.0
SHORT_CHARS = 160
CHUNK = 256


def sample_prompts(outcomes_path: Path, n: int) -> list[dict[str, str]]:
    """n distinct prompts of the outcome log, a fixed random sample."""
    log = pd.read_parquet(outcomes_path, columns=["prompt_id", "prompt"]).drop_duplicates("prompt_id")
    log = log.sample(n=min(n, len(log)), random_state=0)
    return [{"prompt_id": str(i), "prompt": p} for i, p in zip(log["prompt_id"], log["prompt"], strict=True)]


def shorten(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The last SHORT_CHARS characters of each prompt (its question, about 35 tokens)."""
    return [{"prompt_id": r["prompt_id"], "prompt": normalize_text(r["prompt"])[-SHORT_CHARS:]} for r in rows]


def token_stats(rows: list[dict[str, str]], tail_chars: int | None) -> dict[str, float]:
    """Word pieces the embedder actually reads per prompt (after the tail window and 256-token truncation)."""
    tok = Tokenizer.from_file(str(ONNX_DIR / "tokenizer.json"))
    tok.enable_truncation(max_length=256)
    tok.no_padding()
    n = np.array([len(e.ids) for e in tok.encode_batch([text_window(r["prompt"], tail_chars) for r in rows])])
    chars = np.array([len(r["prompt"]) for r in rows])
    return {
        "mean_tokens_embedded": round(float(n.mean()), 1),
        "p50_tokens_embedded": float(np.median(n)),
        "mean_chars": round(float(chars.mean()), 1),
    }


def _cli(rows: list[dict[str, str]], work: Path, name: str) -> float:
    src, out = work / f"{name}.jsonl", work / f"{name}-decisions.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tierwise = Path(sys.executable).with_name("tierwise")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(tierwise), "route", "--batch", str(src), "--out", str(out), "--chunk", str(CHUNK)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"tierwise route --batch exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    written = sum(1 for _ in out.open())
    if written != len(rows):
        raise RuntimeError(f"tierwise route --batch wrote {written} decisions for {len(rows)} prompts")
    return wall


def run(loaded: LoadedModel, n: int) -> dict[str, Any]:
    """prompts/s for long (log) and short prompts: CLI wall, CLI minus its fixed cost, route_prompts in-process."""
    settings = Settings()
    artifact = loaded.artifact
    tiers = load_tiers(REPO / settings.tiers_path)
    backend = backend_of(artifact.features.embedder_id)
    long_rows = sample_prompts(REPO / settings.outcomes_path, n)
    sets = {"long (log prompts)": long_rows, f"short (last {SHORT_CHARS} chars)": shorten(long_rows)}
    results: dict[str, Any] = {}
    load_start = load_avg()
    with tempfile.TemporaryDirectory(prefix="tierwise-bench-bulk-") as tmp:
        work = Path(tmp)
        fixed_s = _cli(long_rows[:1], work, "one")  # process start, imports, registry download, model load
        for label, rows in sets.items():
            cli_s = _cli(rows, work, label.split()[0])
            entry: dict[str, Any] = {
                "prompts": len(rows),
                **token_stats(rows, artifact.features.tail_chars),
                "cli_wall_s": round(cli_s, 2),
                "cli_prompts_per_s": round(len(rows) / cli_s, 1),
                "cli_minus_fixed_prompts_per_s": round(len(rows) / max(cli_s - fixed_s, 1e-9), 1),
            }
            for threads in (1, 2):
                embedder = make_embedder(backend, onnx_dir=ONNX_DIR, num_threads=threads)
                embedder.encode(["load the model"])
                t0 = time.perf_counter()
                decisions_json(Router(artifact, tiers, embedder), rows, settings.quality_target, CHUNK)
                wall = time.perf_counter() - t0
                entry[f"route_prompts_{threads}thread_s"] = round(wall, 2)
                entry[f"route_prompts_{threads}thread_prompts_per_s"] = round(len(rows) / wall, 1)
            results[label] = entry
            logger.info("bulk %s: %s", label, entry)
    return {
        "model": loaded.version,
        "embedder": backend,
        "chunk": CHUNK,
        "target_prompts_per_s": TARGET_PROMPTS_PER_S,
        "cli_fixed_s": round(fixed_s, 2),
        "notes": [
            "cli_*: wall time of `tierwise route --batch IN --out OUT --chunk 256` (1 intra-op thread, the CLI default), "
            "process start and model load included.",
            "cli_fixed_s: the same command on a 1-prompt file; cli_minus_fixed subtracts it.",
            "route_prompts_*: training.bulk.decisions_json (the Router) alone, model and embedder already loaded (the routing step).",
            "onnx-int8 embeds one sequence per session run (see router/embedders/onnx.py), so --chunk does not batch the ONNX call.",
        ],
        "load_avg_start": load_start,
        "load_avg_end": load_avg(),
        "sets": results,
    }
