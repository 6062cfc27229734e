"""Request id, latency histogram and one structured access-log line per request (pure ASGI)."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.logs import request_id
from serving.metrics import Metrics

logger = logging.getLogger("serving.access")


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
