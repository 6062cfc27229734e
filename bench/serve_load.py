"""Load a running tierwise service: POST /route and the GET /ping floor at several concurrencies.

    python bench/serve_load.py --url http://127.0.0.1:8000 --seconds 15 --out bench/results/serve.json

Writes p50/p99 latency (ms) and requests/s per endpoint and concurrency. Set --key for a keyed service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

PROMPT = (
    "Explain in two sentences why the sky looks blue at noon but red at sunset, "
    "and name the physical effect responsible for it."
)  # about 30 tokens
CONCURRENCY = (1, 8, 32)


async def _worker(
    client: httpx.AsyncClient, method: str, path: str, body: Any, stop: float, lat: list[float], errors: list[int]
) -> None:
    while time.perf_counter() < stop:
        start = time.perf_counter()
        try:
            r = await client.request(method, path, json=body)
            ok = r.status_code < 400
        except httpx.HTTPError:
            ok = False
        if ok:
            lat.append(time.perf_counter() - start)
        else:
            errors.append(1)


async def measure(
    url: str, method: str, path: str, body: Any, concurrency: int, seconds: float, headers: dict[str, str]
) -> dict[str, float]:
    """Closed-loop load: `concurrency` clients send back to back for `seconds`."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as client:
        await client.request(method, path, json=body)  # warm the connection and the model
        lat: list[float] = []
        errors: list[int] = []
        start = time.perf_counter()
        stop = start + seconds
        await asyncio.gather(*(_worker(client, method, path, body, stop, lat, errors) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ms = np.asarray(lat) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": len(errors),
        "rps": round(len(lat) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3) if len(ms) else float("nan"),
        "p99_ms": round(float(np.percentile(ms, 99)), 3) if len(ms) else float("nan"),
    }


async def run(url: str, seconds: float, headers: dict[str, str], levels: Sequence[int]) -> dict[str, Any]:
    targets = {"route": ("POST", "/route", {"prompt": PROMPT}), "ping": ("GET", "/ping", None)}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for c in levels:
        for name, (method, path, body) in targets.items():
            results[name].append(await measure(url, method, path, body, c, seconds, headers))
            print(json.dumps({"endpoint": name, **results[name][-1]}))
    return {
        "url": url,
        "seconds_per_level": seconds,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "prompt_chars": len(PROMPT),
        "endpoints": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/serve.json"))
    parser.add_argument("--key", default=None, help="bearer API key, when the service has keys")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    args = parser.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    report = asyncio.run(run(args.url, args.seconds, headers, args.concurrency))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
