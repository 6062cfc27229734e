"""A stand-in OpenAI-compatible upstream for docker/smoke.sh (standard library only: it runs in the service image).

`python fake_upstream.py PORT` answers `POST .../chat/completions` with one fixed completion (the `model` asked for,
the text below, a usage block), streamed as server-sent events when the request says `"stream": true`, and
`GET /health` with 200. Anything else is a 404.
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = "smoke answer"


def completion(model: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-smoke",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }


def chunk(model: str, delta: dict[str, str], finish: str | None) -> bytes:
    event = {
        "id": "chatcmpl-smoke",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(event)}\n\n".encode()


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # http.server calls do_<METHOD>
        self._send(200 if self.path == "/health" else 404, b"{}", "application/json")

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        if not self.path.endswith("/chat/completions"):
            self._send(404, b"{}", "application/json")
            return
        body = json.loads(raw or b"{}")
        model = str(body.get("model"))
        if not body.get("stream"):
            self._send(200, json.dumps(completion(model)).encode(), "application/json")
            return
        events = chunk(model, {"role": "assistant", "content": ANSWER}, None) + chunk(model, {}, "stop")
        self._send(200, events + b"data: [DONE]\n\n", "text/event-stream")

    def _send(self, status: int, payload: bytes, media_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", media_type)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: object) -> None:  # quiet
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Upstream).serve_forever()
