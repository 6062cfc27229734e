"""A fake OpenAI-compatible upstream: a real HTTP server on loopback answering `/v1/chat/completions` from a script.

    with fake_upstream() as up:
        up.script("medium", Reply(status=503), Reply(text="second try"))   # queued per upstream model name
        up.base_url                                                          # http://127.0.0.1:PORT/v1
        up.requests                                                          # [(model, JSON body), ...] received
    up.max_in_flight                                                     # most delayed replies pending at once
    up.received                                                          # [(model, monotonic time), ...]
    up.peers                                                             # the client port of each request

A model with no queued reply answers `up.default` (a quick "ok from <model>" with usage). A `Reply` scripts the
status, text, usage, latency (before the headers, or before the first chunk), tool calls, and a stream or body that
dies after some chunks (the connection is dropped without finishing the message), a stream body held open after
`[DONE]`, a stream paused after its first chunk until the test says, and an error's headers (e.g. `Retry-After`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bench.process import REPO
from tests.integration.live_server import live_server


@dataclass(frozen=True)
class Reply:
    """One scripted answer. `usage=None` sends no usage; `chunks` is how many pieces a streamed text comes in."""

    text: str = "ok"
    status: int = 200
    usage: tuple[int, int] | None = (10, 5)
    delay_s: float = 0.0
    first_byte_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    chunks: int = 3
    die_after_chunks: int | None = None
    tool_calls: list[dict[str, Any]] | None = None
    error_message: str = "scripted failure"
    headers: tuple[tuple[str, str], ...] = ()
    linger_s: float = 0.0  # a stream's body stays open this long after [DONE]
    cut_after_chunks: int | None = None  # a stream's body ends cleanly after this many pieces: no finish, no [DONE]
    error_event_after_chunks: int | None = None  # a stream sends `{"error": {"message": error_message}}` here
    extra: dict[str, Any] | None = None  # merged into a completion's JSON as Python's json writes it (NaN included)
    until_in_flight: int = 0  # the delay ends once this many requests have been in their delays at once
    hold: threading.Event | None = None  # a stream pauses after its first chunk until this is set (at most 30 s)
    finish_reason: str = "stop"  # "length" when the request's max_tokens cut the answer (set by the fake)
    # a stream's end after its finish and usage: "done" ([DONE]), "drop" (the connection dropped), "hang" (the
    # body held open, for at most 30 s, with no [DONE])
    after_finish: str = "done"


class ConnectionDropped(Exception):
    """Raised inside a response body: uvicorn drops the connection mid-message."""


@dataclass
class FakeUpstream:
    base_url: str = ""
    default: Reply = field(default_factory=Reply)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    received: list[tuple[str, float]] = field(default_factory=list)
    peers: list[int] = field(default_factory=list)  # the client's port per request: a new port, a new connection
    max_in_flight: int = 0
    left_early: int = 0  # requests whose caller hung up during the reply's delay (the fake stops working on them)
    _in_flight: int = 0
    _queues: dict[str, deque[Reply]] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, model: str, *replies: Reply) -> None:
        with self._lock:
            self._queues[model].extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._queues.clear()
            self.requests.clear()
            self.received.clear()
            self.peers.clear()
            self.max_in_flight = 0
            self.left_early = 0

    def calls(self, model: str) -> list[dict[str, Any]]:
        with self._lock:
            return [body for m, body in self.requests if m == model]

    def times(self, model: str) -> list[float]:
        """When each request for `model` arrived (monotonic seconds)."""
        with self._lock:
            return [t for m, t in self.received if m == model]

    def _next(self, model: str, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append((model, body))
            self.received.append((model, time.monotonic()))
            queue = self._queues.get(model)
            reply = queue.popleft() if queue else self.default
        return _within_limit(replace(reply, text=reply.text.replace("{model}", model)), body)

    async def handle(self, request: Request) -> Response:
        body = await request.json()
        model = str(body.get("model"))
        self.peers.append(request.client.port if request.client else -1)
        reply = self._next(model, body)
        if reply.delay_s:
            self._in_flight += 1  # one event loop: no lock needed
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            try:
                met = (lambda: self.max_in_flight >= reply.until_in_flight) if reply.until_in_flight else None
                if await _caller_left_within(request, reply.delay_s, met):
                    self.left_early += 1
                    return Response(status_code=499)  # nobody reads it: the connection is gone
            finally:
                self._in_flight -= 1
        if reply.status >= 400:
            error = {"error": {"message": reply.error_message, "type": "scripted", "code": None, "param": None}}
            return JSONResponse(error, status_code=reply.status, headers=dict(reply.headers))
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_events(model, reply, include_usage), media_type="text/event-stream")
        if reply.die_after_chunks is not None:
            return StreamingResponse(_dying_body(reply), media_type="application/json")
        if reply.extra is not None:
            return Response(json.dumps({**completion(model, reply), **reply.extra}), media_type="application/json")
        return Response(json.dumps(completion(model, reply)), media_type="application/json")  # ASCII, as OpenAI's


def _within_limit(reply: Reply, body: dict[str, Any]) -> Reply:
    """As a real upstream answers: an answer over the request's `max_completion_tokens` (else `max_tokens`) is cut
    there (its usage says so, its text is cut at 4 characters a token) and finishes for "length"."""
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if not isinstance(limit, int) or reply.usage is None or reply.usage[1] <= limit:
        return reply
    return replace(reply, usage=(reply.usage[0], limit), text=reply.text[: 4 * limit], finish_reason="length")


async def _caller_left_within(request: Request, seconds: float, met: Callable[[], bool] | None = None) -> bool:
    """Wait `seconds`, or less if the caller hangs up first or `met()` turns true (checked every 50 ms); whether
    the caller hung up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        if await request.is_disconnected():
            return True
        if met is not None and met():
            return False
        await asyncio.sleep(min(0.05, left))
    return False


def completion(model: str, reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None if reply.tool_calls else reply.text}
    if reply.tool_calls:
        message["tool_calls"] = reply.tool_calls
    out: dict[str, Any] = {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if reply.tool_calls else reply.finish_reason}
        ],
    }
    if reply.usage is not None:
        p, c = reply.usage
        out["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    return out


def _pieces(text: str, n: int) -> list[str]:
    n = max(1, min(n, len(text) or 1))
    size = -(-len(text) // n) or 1
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    event = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(event)}\n\n".encode()


async def _events(model: str, reply: Reply, include_usage: bool) -> AsyncIterator[bytes]:
    if reply.first_byte_delay_s:
        await asyncio.sleep(reply.first_byte_delay_s)
    yield _chunk(model, {"role": "assistant", "content": ""})
    if reply.hold is not None:
        deadline = time.monotonic() + 30.0
        while not reply.hold.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    for i, piece in enumerate(_pieces(reply.text, reply.chunks)):
        if reply.die_after_chunks is not None and i >= reply.die_after_chunks:
            raise ConnectionDropped(model)
        if reply.cut_after_chunks is not None and i >= reply.cut_after_chunks:
            return
        if reply.error_event_after_chunks is not None and i >= reply.error_event_after_chunks:
            yield f"data: {json.dumps({'error': {'message': reply.error_message}})}\n\n".encode()
            return
        if reply.chunk_delay_s:
            await asyncio.sleep(reply.chunk_delay_s)
        yield _chunk(model, {"content": piece})
    yield _chunk(model, {}, reply.finish_reason)
    if include_usage and reply.usage is not None:
        p, c = reply.usage
        usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        event = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [],
            "usage": usage,
        }
        yield f"data: {json.dumps(event)}\n\n".encode()
    if reply.after_finish == "drop":
        raise ConnectionDropped(model)
    if reply.after_finish == "hang":
        await asyncio.sleep(30)
        return
    yield b"data: [DONE]\n\n"
    if reply.linger_s:
        await asyncio.sleep(reply.linger_s)


async def _dying_body(reply: Reply) -> AsyncIterator[bytes]:
    text = json.dumps(completion("dying", reply))
    yield text[: len(text) // 2].encode()
    raise ConnectionDropped("dying")


@contextmanager
def fake_upstream() -> Iterator[FakeUpstream]:
    """Serve a FakeUpstream on a free loopback port; `base_url` ends in `/v1`, as an OpenAI client expects."""
    up = FakeUpstream()
    app = Starlette(routes=[Route("/v1/chat/completions", up.handle, methods=["POST"])])
    with live_server(lambda: app) as url:
        up.base_url = f"{url}/v1"
        yield up


@contextmanager
def fake_upstream_process(reply: Reply) -> Iterator[str]:
    """A fake upstream answering `reply` to every request, in a process of its own, as a real upstream is: its
    work then shares no interpreter lock with the caller's (bench.proxy); yields its base URL."""
    args = [sys.executable, "-m", "tests.integration.fake_upstream", str(reply.delay_s), reply.text]
    with subprocess.Popen(args, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None and child.stdin is not None
        base_url = child.stdout.readline().strip()
        if not base_url.startswith("http://"):
            child.kill()
            raise RuntimeError(f"the fake upstream process did not start (it printed {base_url!r})")
        try:
            yield base_url
        finally:
            child.stdin.close()  # it serves until its stdin closes
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":  # python -m tests.integration.fake_upstream DELAY_S TEXT: serve until stdin closes
    with fake_upstream() as _up:
        _up.default = Reply(text=sys.argv[2], delay_s=float(sys.argv[1]), first_byte_delay_s=0.0)
        sys.stdout.write(_up.base_url + "\n")
        sys.stdout.flush()
        sys.stdin.read()
