"""Load an endpoint with wrk (C, one thread per core it is given) when it is installed: a lighter client
than the in-repo Python one, which burns most of a core by itself on a 2-core machine."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def available() -> bool:
    return shutil.which("wrk") is not None


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * UNITS_MS[m.group(2)]


def parse(output: str) -> dict[str, Any]:
    """p50/p99 latency, req/s and errors from `wrk --latency` output."""
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, flags=re.M))
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, flags=re.M)
    reqs = re.search(r"(\d+) requests in", output)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errs = re.search(r"Socket errors:.*", output)
    if "50" not in pct or "99" not in pct or not rps or not reqs:
        raise ValueError(f"unexpected wrk output:\n{output}")
    return {
        "p50_ms": round(_ms(pct["50"]), 3),
        "p99_ms": round(_ms(pct["99"]), 3),
        "rps": round(float(rps.group(1)), 1),
        "requests": int(reqs.group(1)),
        "errors": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errs.group(0) if errs else None,
    }


def measure(url: str, method: str, path: str, body: Any, concurrency: int, seconds: float) -> dict[str, Any]:
    """One closed-loop wrk run: `concurrency` connections on one wrk thread for `seconds`."""
    with tempfile.TemporaryDirectory(prefix="tierwise-wrk-") as tmp:
        script = Path(tmp) / "req.lua"
        lines = [f'wrk.method = "{method}"']
        if body is not None:
            lines += [f"wrk.body = {json.dumps(json.dumps(body))}", 'wrk.headers["Content-Type"] = "application/json"']
        script.write_text("\n".join(lines) + "\n")
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s", "--latency"]
        cmd += ["-s", str(script)]
        out = subprocess.run([*cmd, url + path], capture_output=True, text=True, check=True, timeout=seconds + 60)
    result = parse(out.stdout)
    result.update(concurrency=concurrency, load_generator="wrk -t1")
    return result
