"""The OpenAI-compatible proxy's overhead over its upstream, at concurrency 1, in one run.

    python -m bench.proxy [--reps 200] [--delay-ms 20]     # writes bench/results/proxy.json

A fake upstream (tests/integration/fake_upstream.py) answers after a fixed delay, from a process of its own as a
real upstream does (`--upstream-in-process` serves it from a thread of this process instead, where its work holds the
interpreter lock tierwise's threads need; on a 2-core Xeon, 2026-11-27, it added 0.2-1.2 ms of overhead beyond routing
in 4 of 5 alternating comparisons and 0.35 ms less in the fifth: a real but noisy cost). Each round calls, one after
the other and over kept-alive connections: the upstream directly, tierwise's /v1/chat/completions (route, call,
settle), /route and /ping. Streaming rounds measure the time to the first byte of the first event, directly and through
tierwise. Derived, from p50s of the same run:
- routing_ms = /route - /ping (the routing work without the HTTP round trip)
- overhead_ms = proxy - upstream; target: overhead_ms <= 3 ms + routing_ms
- first_byte_delay_ms = proxy first byte - upstream first byte - routing_ms; target <= 5 ms
With the default (durable) decision commit, then again with decision_commit=async (`async_commit`).
The router is the tests' small model with their hashing embedder (routing time differs with the ONNX embedder; the
overhead beyond routing does not depend on it). The store is SQLite, in a temporary directory.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO, machine_info, summarize_ms, write_json
from serving.app import create_app
from serving.model_source import LocalSource
from tests.conftest import HashingEmbedder
from tests.integration.conftest import CLIENT_KEY, bearer, train_artifact
from tests.integration.fake_upstream import Reply, fake_upstream, fake_upstream_process
from tests.integration.live_server import live_server
from tests.integration.proxy_fixtures import proxy_settings

logger = logging.getLogger("bench.proxy")
PROMPT = "easy question 2: alpha beta gamma delta omega"
OVERHEAD_TARGET_MS = 3.0
FIRST_BYTE_TARGET_MS = 5.0


def _first_byte_ms(client: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str]) -> float:
    start = time.perf_counter_ns()
    with client.stream("POST", url, json=body, headers=headers) as resp:
        lines = resp.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                elapsed = (time.perf_counter_ns() - start) / 1e6
                break
        else:
            raise RuntimeError(f"{url}: no event in the stream")
        for _ in lines:  # drain, so the proxy settles before the next round
            pass
    return elapsed


@contextmanager
def _upstream(reply: Reply, in_process: bool) -> Iterator[str]:
    """The fake upstream's base URL: in a process of its own (as a real upstream is), or in this one."""
    if not in_process:
        with fake_upstream_process(reply) as base_url:
            yield base_url
        return
    with fake_upstream() as up:
        up.default = reply
        yield up.base_url


def run(
    reps: int = 200,
    warmup: int = 20,
    delay_ms: float = 20.0,
    decision_commit: str = "durable",
    upstream_in_process: bool = False,
) -> dict[str, Any]:
    delay_s = delay_ms / 1000
    samples: dict[str, list[float]] = {k: [] for k in ("upstream", "proxy", "route", "ping", "upstream_fb", "proxy_fb")}
    reply = Reply(text="a fixed answer in three chunks", delay_s=delay_s, first_byte_delay_s=0.0)
    with tempfile.TemporaryDirectory() as tmp_dir, _upstream(reply, upstream_in_process) as upstream_base:
        tmp = Path(tmp_dir)
        artifact = train_artifact(HashingEmbedder(), tmp / "artifact")
        settings = proxy_settings(tmp, upstream_base, upstream_retries=0, api_keys={}, decision_commit=decision_commit)
        app = create_app(settings=settings, model_source=LocalSource(artifact), embedder=HashingEmbedder())
        with live_server(lambda: app) as url, httpx.Client(timeout=30) as client:
            auth = bearer(CLIENT_KEY)
            chat = {"messages": [{"role": "user", "content": PROMPT}]}
            upstream_url = f"{upstream_base}/chat/completions"
            proxy_url = f"{url}/v1/chat/completions"

            def timed(name: str, call: Callable[[], Any]) -> None:
                start = time.perf_counter_ns()
                resp = call()
                samples[name].append((time.perf_counter_ns() - start) / 1e6)
                resp.raise_for_status()

            calls: list[tuple[str, Callable[[], Any]]] = [
                ("upstream", lambda: client.post(upstream_url, json={**chat, "model": "small"})),
                ("proxy", lambda: client.post(proxy_url, json={**chat, "model": "tierwise"}, headers=auth)),
                ("route", lambda: client.post(f"{url}/route", json={"prompt": PROMPT}, headers=auth)),
                ("ping", lambda: client.get(f"{url}/ping")),
            ]
            for i in range(warmup + reps):
                for name, call in calls:
                    timed(name, call)
                up_fb = _first_byte_ms(client, upstream_url, {**chat, "model": "small", "stream": True}, {})
                px_fb = _first_byte_ms(client, proxy_url, {**chat, "model": "tierwise", "stream": True}, auth)
                samples["upstream_fb"].append(up_fb)
                samples["proxy_fb"].append(px_fb)
                if i < warmup:
                    for s in samples.values():
                        s.clear()
    # Streaming rounds wait the delay before the headers too (the fake sleeps before answering).
    latency = {name: summarize_ms(s) for name, s in samples.items()}
    p50 = {name: v["p50_ms"] for name, v in latency.items()}
    routing = max(p50["route"] - p50["ping"], 0.0)
    overhead = p50["proxy"] - p50["upstream"]
    first_byte = p50["proxy_fb"] - p50["upstream_fb"] - routing
    return {
        "what": "OpenAI-compatible proxy over a fake upstream with a fixed delay, concurrency 1, one run",
        "command": f"python -m bench.proxy --reps {reps} --warmup {warmup} --delay-ms {delay_ms}"
        + (" --upstream-in-process" if upstream_in_process else ""),
        "decision_commit": decision_commit,
        "upstream": "this process (shares tierwise's interpreter lock)" if upstream_in_process else "its own process",
        "upstream_delay_ms": delay_ms,
        "latency": latency,
        "routing_ms": round(routing, 3),
        "overhead_p50_ms": round(overhead, 3),
        "overhead_beyond_routing_p50_ms": round(overhead - routing, 3),
        "proxy_over_upstream_p50": round(p50["proxy"] / p50["upstream"], 3),
        "first_byte_delay_beyond_routing_p50_ms": round(first_byte, 3),
        "targets": [
            {
                "name": f"overhead p50 <= {OVERHEAD_TARGET_MS:g} ms + routing",
                "value": round(overhead, 3),
                "limit": round(OVERHEAD_TARGET_MS + routing, 3),
                "met": overhead <= OVERHEAD_TARGET_MS + routing,
            },
            {
                "name": f"stream first byte within {FIRST_BYTE_TARGET_MS:g} ms of the upstream's (beyond routing)",
                "value": round(first_byte, 3),
                "limit": FIRST_BYTE_TARGET_MS,
                "met": first_byte <= FIRST_BYTE_TARGET_MS,
            },
        ],
        "machine": machine_info(),
    }


def both_commits(
    reps: int = 200, warmup: int = 20, delay_ms: float = 20.0, upstream_in_process: bool = False
) -> dict[str, Any]:
    """`run` with the default (durable) decision commit, and under `async_commit` with decision_commit=async (a
    sessionless decision and its settlement wait for no disk)."""
    report = run(reps, warmup, delay_ms, upstream_in_process=upstream_in_process)
    async_commit = run(reps, warmup, delay_ms, "async", upstream_in_process)
    report["async_commit"] = {k: v for k, v in async_commit.items() if k not in ("what", "command", "machine")}
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument(
        "--upstream-in-process",
        action="store_true",
        help="serve the fake upstream from this process, as before 2026-11-27 (its work then competes with "
        "tierwise's for one interpreter lock)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "proxy.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would be timed too
    report = both_commits(args.reps, args.warmup, args.delay_ms, args.upstream_in_process)
    write_json(args.out, report)
    for name, r in (("durable", report), ("async", report["async_commit"])):
        logger.info("%s: %s", name, [(t["name"], t["value"], t["met"]) for t in r["targets"]])
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
