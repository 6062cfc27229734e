"""Pure ASGI middleware: request id, latency histogram and one access-log line per request; the body limit; loopback
callers only while API keys are off."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.logs import request_id
from serving.metrics import Metrics
from serving.proxy.wire import error_body
from serving.security import LOOPBACK

logger = logging.getLogger("serving.access")


@dataclass(eq=False)
class HttpMiddleware:
    """Pure ASGI middleware that hands every scope but HTTP (lifespan, websocket) to `app`; `http` does the work."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


@dataclass(eq=False)
class RequestContext(HttpMiddleware):
    """Sets the request id, observes latency and logs the request once: method, path (never the query
    string, which may carry a key) and status.

    Not asgi-correlation-id: it refuses non-UUID ids by default and would be a second pass for what this one does.
    """

    metrics: Metrics

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")[:64]
        rid = incoming or uuid.uuid4().hex
        token = request_id.set(rid)
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route: Any = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.latency.labels(scope["method"], path, str(status)).observe(elapsed)
            if path not in ("/ping", "/metrics", "/healthz"):
                logger.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={"status": status, "route": path, "latency_ms": round(elapsed * 1000, 3)},
                )
            request_id.reset(token)


async def _send_error(
    scope: Scope, send: Send, status: int, detail: str, door_type: str, door_code: str | None = None
) -> None:
    """A JSON error answered before the app: `{"detail": ...}`, or OpenAI's error shape on the OpenAI-compatible
    door (/v1/), as its other refusals."""
    door = scope["path"].startswith("/v1/")
    body = json.dumps(error_body(detail, door_type, door_code) if door else {"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _hostname(value: str) -> str | None:
    """The host name of a Host header or an Origin (`127.0.0.1:8000`, `[::1]:8000`, `http://localhost:8000`);
    None when it names none."""
    try:
        return urlsplit(value if "://" in value else f"//{value}").hostname
    except ValueError:  # a malformed bracket or port
        return None


LOOPBACK_PEERS = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def _own_origin(origin: bytes, fetch_site: bytes | None) -> bool:
    """Whether a request's Origin is a loopback page's. The admin page's forms send `Origin: null` (the page's
    Referrer-Policy is no-referrer), which a sandboxed page of any site sends too: that one counts only with the
    browser's `Sec-Fetch-Site: same-origin`, which no page can set."""
    if origin == b"null":
        return fetch_site == b"same-origin"
    return _hostname(origin.decode("latin-1")) in LOOPBACK


@dataclass(eq=False)
class LoopbackOnly(HttpMiddleware):
    """While API keys are off (every caller has admin scope; the service is bound to loopback): refuse a request
    from another machine (its peer address; uvicorn started by hand with --host 0.0.0.0 skips the bind check), whose
    Host is not a loopback name, or that a web page of another origin sent (its Origin header).

    Binding to 127.0.0.1 does not keep a browser out: a page on another site could rebind its own host name to
    127.0.0.1 and call the service as admin (DNS rebinding: spend the upstream keys through /v1, delete sessions),
    or send a cross-site POST that needs no preflight (POST /admin/reload with no body). Review finding."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        host = _hostname(headers.get(b"host", b"").decode("latin-1"))
        origin = headers.get(b"origin")
        client = scope.get("client")  # None on a Unix socket: this machine's by nature
        if client is not None and client[0] not in LOOPBACK_PEERS:
            await self._refuse(scope, send, f"a call from {client[0] or 'an unknown address'} is not from this machine")
        elif host not in LOOPBACK:
            await self._refuse(scope, send, f"Host {host or '(none)'} is not a loopback name")
        elif origin is not None and not _own_origin(origin, headers.get(b"sec-fetch-site")):
            await self._refuse(scope, send, "a web page of another origin sent the request")
        else:
            await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, why: str) -> None:
        detail = f"{why}: with no API keys configured, tierwise serves only this machine's own callers"
        await _send_error(scope, send, 403, detail, "permission_error")


@dataclass(eq=False)
class BodyLimit(HttpMiddleware):
    """Answer 413 to a body over `max_bytes` before the app parses it: at once when Content-Length says so,
    else as soon as the streamed (chunked) body passes the limit.

    The body is read here and handed on whole: the app would buffer it to parse the JSON anyway. (Starlette's
    RequestBodyLimitMiddleware answers text/plain on one of these paths; our 413 is always the JSON error.)
    """

    max_bytes: int

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, send, 413 if declared.isdigit() else 400)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, send, 413)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send, status: int) -> None:
        detail = (
            f"the request body is over the limit of {self.max_bytes} bytes"
            if status == 413
            else "the Content-Length header is not a number"
        )
        await _send_error(scope, send, status, detail, "invalid_request_error", "too_large" if status == 413 else None)
