"""The door against upstream answers that are malformed or hostile: every model answers the same bytes, so a bad
answer falls back through every tier and ends as a 502 in OpenAI's shape (never a 500 or a cut connection), and
the capped session holds nothing afterwards. A readable answer is charged once, from its usage or an estimate."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving.proxy.upstream import MAX_JSON_DEPTH
from tests.integration.conftest import CLIENT_KEY, bearer
from tests.integration.live_server import live_server
from tests.integration.proxy_fixtures import proxied_tierwise

EASY = "easy question 2: alpha beta gamma delta omega"
NESTED = b"[" * 100_000 + b"]" * 100_000  # past Python's recursion limit: json.loads raises RecursionError


class RawUpstream:
    """An upstream answering every model with `status`, `body` (bytes) as `content_type`."""

    def __init__(self) -> None:
        self.status, self.body, self.content_type = 200, b"{}", "application/json"

    async def handle(self, request: Request) -> Response:
        await request.body()
        return Response(self.body, status_code=self.status, media_type=self.content_type)


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory, artifact_dir: Path) -> Iterator[tuple[str, RawUpstream]]:
    raw = RawUpstream()
    app = Starlette(routes=[Route("/v1/chat/completions", raw.handle, methods=["POST"])])
    with (
        live_server(lambda: app) as up_url,
        proxied_tierwise(tmp_path_factory.mktemp("hostile"), artifact_dir, f"{up_url}/v1") as url,
    ):  # type: ignore[arg-type]
        yield url, raw


def chat(url: str, stream: bool) -> tuple[int, str, dict[str, Any]]:
    """One capped session's call: status, body text (-1 and the error when the connection was cut), the session."""
    sid = f"s-{uuid.uuid4().hex[:12]}"
    assert httpx.put(f"{url}/sessions/{sid}", json={"cap_usd": 1.0}, headers=bearer(CLIENT_KEY)).status_code == 200
    body = {"model": "tierwise", "messages": [{"role": "user", "content": EASY}], "stream": stream}
    body["tierwise"] = {"session_id": sid}
    try:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=bearer(CLIENT_KEY), timeout=60)
        status, text = r.status_code, r.text
    except httpx.HTTPError as exc:  # the stream cut mid-body
        status, text = -1, f"{type(exc).__name__}: {exc}"
    return status, text, httpx.get(f"{url}/sessions/{sid}", headers=bearer(CLIENT_KEY)).json()


def completion(**over: Any) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        **over,
    }


def nested(depth: int) -> bytes:
    """A chat completion with a field nested `depth` lists deep."""
    return json.dumps(completion())[:-1].encode() + b', "x": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(200, NESTED, id="nested past the recursion limit"),
        pytest.param(200, b'{"choices": ' + NESTED + b"}", id="nested inside choices"),
        pytest.param(500, NESTED, id="nested error body, 500"),
        pytest.param(400, NESTED, id="nested error body, 400"),
        # parsed in the dispatcher's task, but too deep to render in the answer's (a 500 after the charge)
        pytest.param(200, nested(970), id="nested 970 deep"),
        pytest.param(200, nested(MAX_JSON_DEPTH + 1), id="nested past MAX_JSON_DEPTH"),
    ],
)
def test_an_unreadable_answer_falls_back_and_ends_as_a_502(
    door: tuple[str, RawUpstream], status: int, body: bytes
) -> None:
    url, raw = door
    raw.status, raw.body, raw.content_type = status, body, "application/json"
    code, text, session = chat(url, stream=False)
    assert code in (400, 502), text[:300]  # an upstream's 400 is the caller's request: passed on, in OpenAI's shape
    assert set(json.loads(text)["error"]) >= {"message", "type", "code"}
    assert session["reserved_usd"] == 0 and session["spent_usd"] == 0


def test_a_negative_usage_is_no_usage_the_answer_is_charged_by_estimate(door: tuple[str, RawUpstream]) -> None:
    url, raw = door
    raw.status, raw.content_type = 200, "application/json"
    raw.body = json.dumps(completion(usage={"prompt_tokens": -(10**30), "completion_tokens": -1})).encode()
    code, text, session = chat(url, stream=False)
    assert code == 200, text
    assert json.loads(text)["tierwise"]["usage_estimated"] is True
    assert session["spent_usd"] > 0 and session["reserved_usd"] == 0  # was 0: an answered call for free


def sse(*events: Any, done: bool = True) -> bytes:
    data = b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events)
    return data + (b"data: [DONE]\n\n" if done else b"")


def chunk(content: str = "", finish: str | None = None, index: Any = 0) -> dict[str, Any]:
    choice = {"index": index, "delta": {"content": content}, "finish_reason": finish}
    return {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(sse(NESTED), id="first event nested past the recursion limit"),
        pytest.param(sse(chunk("a", "stop", index=[0])), id="first event's index unhashable"),
        pytest.param(sse({"id": "c", "choices": 5}), id="first event's choices a number"),
        pytest.param(sse(chunk("a"), chunk("b", "stop", index={"i": 0})), id="later event's index unhashable"),
        pytest.param(
            sse(chunk("a"), {"id": "c", "choices": 7}, chunk("", "stop")), id="later event's choices a number"
        ),
        pytest.param(sse(chunk("a"), NESTED, chunk("", "stop")), id="later event nested past the recursion limit"),
    ],
)
def test_an_unreadable_stream_is_an_error_not_a_cut_connection(door: tuple[str, RawUpstream], body: bytes) -> None:
    """Before its first event, a bad stream falls back (502 at the end); after it, the stream ends with an error
    event and charges nothing, as any upstream failure mid-stream (it was booked as served, the connection cut)."""
    url, raw = door
    raw.status, raw.body, raw.content_type = 200, body, "text/event-stream"
    code, text, session = chat(url, stream=True)
    assert code in (200, 502), text[-300:]
    if code == 200:
        last = [line for line in text.splitlines() if line.startswith("data:")][-1]
        assert "upstream_error" in last, text[-300:]
    else:
        assert json.loads(text)["error"]["code"], text
    assert session["reserved_usd"] == 0 and session["spent_usd"] == 0
