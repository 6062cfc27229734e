"""The OpenAI-compatible door on LeanRoute's path: a plain request is answered without FastAPI's dependency solving,
as FastAPI's own path answers it (the same statuses, fields and headers; refusals byte for byte)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.deps import get_settings as settings_dep
from tests.integration.conftest import CLIENT_KEY, bearer
from tests.integration.fake_upstream import FakeUpstream, Reply
from tests.integration.proxy_fixtures import door_client

PATH = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}
CHAT = {"model": "tierwise", "messages": [{"role": "user", "content": "easy question 2: alpha beta gamma"}]}


@pytest.fixture
def door(tmp_path: Path, artifact_dir: Path) -> Iterator[tuple[TestClient, FakeUpstream]]:
    with door_client(tmp_path, artifact_dir, upstream_retries=0) as door:
        yield door


def _full_path(client: TestClient) -> None:
    """From here on the app's requests take FastAPI's path (LeanRoute steps aside for dependency overrides)."""
    client.app.dependency_overrides[settings_dep] = settings_dep  # type: ignore[attr-defined]


def _without_ids(body: dict[str, Any]) -> dict[str, Any]:
    """The answer without what differs from call to call: the decision's id, the upstream's id and time."""
    return {**body, "id": "ID", "created": 0, "tierwise": {**body["tierwise"], "decision_id": "ID"}}


def test_a_plain_answer_takes_the_lean_path_and_matches_fastapis(
    door: tuple[TestClient, FakeUpstream], solved: list[str]
) -> None:
    client, up = door
    up.default = Reply(text="the same answer", usage=(5, 3))
    lean = client.post(PATH, json=CHAT, headers=bearer(CLIENT_KEY))
    assert solved == []  # answered on the lean path
    _full_path(client)
    full = client.post(PATH, json=CHAT, headers=bearer(CLIENT_KEY))
    assert solved == [PATH]  # FastAPI's path
    assert lean.status_code == full.status_code == 200, (lean.text, full.text)
    assert _without_ids(lean.json()) == _without_ids(full.json())
    assert lean.json()["tierwise"]["decision_id"] != full.json()["tierwise"]["decision_id"]
    for name in ("content-type", "x-tierwise-tier", "x-tierwise-model"):
        assert lean.headers[name] == full.headers[name]


def test_a_streamed_answer_takes_the_lean_path(door: tuple[TestClient, FakeUpstream], solved: list[str]) -> None:
    client, up = door
    up.default = Reply(text="one two three", chunks=3)
    with client.stream("POST", PATH, json={**CHAT, "stream": True}, headers=bearer(CLIENT_KEY)) as resp:
        lines = [line for line in resp.iter_lines() if line.startswith("data:")]
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    assert solved == []
    assert lines[-1] == "data: [DONE]"
    text = "".join(
        (e["choices"][0]["delta"].get("content") or "")
        for e in map(json.loads, (x[5:] for x in lines[:-1]))
        if e["choices"]
    )
    assert text == "one two three"


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (json.dumps(CHAT).encode(), {}, 401),  # no key
        (b'{"model": "tierwise"}', bearer(CLIENT_KEY), 400),  # no messages
        (b'{"model": "tierwise", "messages": [', bearer(CLIENT_KEY), 400),  # not JSON
        (b"[1, 2]", bearer(CLIENT_KEY), 400),
        (json.dumps({**CHAT, "model": "tierwise/nonexistent"}).encode(), bearer(CLIENT_KEY), 404),
        (json.dumps({**CHAT, "tierwise": {"min_tier": "nonexistent"}}).encode(), bearer(CLIENT_KEY), 400),
    ],
)
def test_refusals_are_the_same_openai_errors_on_both_paths(
    door: tuple[TestClient, FakeUpstream], content: bytes, headers: dict[str, str], status: int
) -> None:
    client, up = door
    lean = client.post(PATH, content=content, headers=JSON | headers)
    _full_path(client)
    full = client.post(PATH, content=content, headers=JSON | headers)
    assert lean.status_code == full.status_code == status, (lean.text, full.text)
    assert lean.content == full.content
    assert "error" in lean.json()
    assert up.requests == []  # refused before any upstream call
