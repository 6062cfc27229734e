"""Embedding micro-benchmark: single-prompt latency p50/p99 per backend, short and long prompts, 1 thread; and
bulk encoding with int8 on every core (how training and `tierwise route --batch` embed many texts).

python -m bench.embed_bench --out bench/results/embed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine_info
from router.embedders.factory import make_embedder
from router.embedders.protocol import Embedder

logger = logging.getLogger("embed_bench")

BACKENDS = ("torch", "onnx-fp32", "onnx-int8")
# About 30 and (after truncation) exactly 256 MiniLM word pieces; the token counts are recorded in the output.
PROMPTS = {
    "short": "Question: A store sells pencils at 3 for $0.75. How much do 12 pencils cost? Explain step by step.",
    "long": " ".join(
        f"Example {i}: a train leaves the station at {i} o'clock and travels {3 * i} miles north before it stops."
        for i in range(20)
    )
    + " Question: how far has the last train travelled?",
}


def time_single(embedder: Embedder, text: str, reps: int, warmup: int) -> dict[str, float]:
    """Latency of encode([text]) in ms over reps calls, after warmup calls."""
    for _ in range(warmup):
        embedder.encode([text])
    samples = np.empty(reps, dtype=np.float64)
    for i in range(reps):
        start = time.perf_counter_ns()
        embedder.encode([text])
        samples[i] = (time.perf_counter_ns() - start) / 1e6
    return {
        "p50_ms": round(float(np.percentile(samples, 50)), 3),
        "p99_ms": round(float(np.percentile(samples, 99)), 3),
        "mean_ms": round(float(samples.mean()), 3),
        "min_ms": round(float(samples.min()), 3),
    }


BULK_TEXTS = 240


def bulk_texts(n: int = BULK_TEXTS) -> list[str]:
    """n few-shot-like texts of about 100 to 256 word pieces (training embeds the log's prompts' last 700 characters)."""
    return [
        " ".join(
            f"Example {i}.{j}: {3 * j + i} apples and {j} pears make {4 * j + i} fruit." for j in range(6 + i % 12)
        )
        + f" Question {i}: how many fruit?"
        for i in range(n)
    ]


def time_bulk(onnx_dir: Path, threads: int) -> dict[str, Any]:
    """Seconds to embed BULK_TEXTS texts with int8 and `threads` threads: one encode([text]) per text (a run on
    `threads` intra-op threads each, how encode(texts) worked before) against one encode(texts) (texts spread over
    `threads` worker threads, one intra-op thread each); the best of 3 each, alternating."""
    texts = bulk_texts()
    embedder = make_embedder("onnx-int8", onnx_dir=onnx_dir, num_threads=threads)
    embedder.encode(texts[:threads])  # load both sessions
    one_by_one, spread = [], []
    for _ in range(3):
        start = time.perf_counter()
        a = np.vstack([embedder.encode([t]) for t in texts])
        one_by_one.append(time.perf_counter() - start)
        start = time.perf_counter()
        b = embedder.encode(texts)
        spread.append(time.perf_counter() - start)
    return {
        "texts": len(texts),
        "threads": threads,
        "one_text_per_run_on_intra_op_threads_s": round(min(one_by_one), 3),
        "texts_spread_over_worker_threads_s": round(min(spread), 3),
        "speedup": round(min(one_by_one) / min(spread), 2),
        "max_abs_difference": float(np.abs(a - b).max()),
    }


def count_tokens(onnx_dir: Path, text: str, max_length: int = 256) -> int:
    """MiniLM word pieces in text after truncation, special tokens included."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(onnx_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return len(tokenizer.encode(text).ids)


def run(backends: list[str], onnx_dir: Path, reps: int, warmup: int, threads: int) -> dict[str, Any]:
    """Benchmark every backend on every prompt length; one backend in memory at a time."""
    machine = machine_info()
    results: dict[str, Any] = {}
    for backend in backends:
        embedder = make_embedder(backend, onnx_dir=onnx_dir, num_threads=threads)
        embedder.encode(["load the model"])
        results[backend] = {}
        for length, text in PROMPTS.items():
            results[backend][length] = time_single(embedder, text, reps, warmup)
            logger.info("%-10s %-5s %s", backend, length, results[backend][length])
        del embedder
    speedup = {
        backend: {
            length: round(results["torch"][length]["p50_ms"] / results[backend][length]["p50_ms"], 2)
            for length in PROMPTS
        }
        for backend in backends
        if "torch" in results
    }
    return {
        "machine": machine | {"load_avg_1m_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "settings": {"reps": reps, "warmup": warmup, "intra_op_threads": threads, "call": "encode([one prompt])"},
        "prompts": {
            length: {"tokens": count_tokens(onnx_dir, text), "chars": len(text)} for length, text in PROMPTS.items()
        },
        "latency": results,
        "p50_speedup_vs_torch": speedup,
        "bulk": time_bulk(onnx_dir, os.cpu_count() or 1) if "onnx-int8" in backends else None,
    }


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: run the benchmark and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/embed.json"))
    parser.add_argument("--onnx-dir", type=Path, default=Path(".cache/onnx"))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # sentence-transformers draws a progress bar per encode call when its logger is at INFO: not in a timing loop.
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    report = run(args.backends, args.onnx_dir, args.reps, args.warmup, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
