"""LeanRoute: /route and /route/batch answer a plain request without FastAPI's dependency solving, byte for byte as
FastAPI would; every other request takes FastAPI's own path."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.deps import get_settings as settings_dep
from tests.integration.conftest import CLIENT_KEY, bearer

JSON = {"Content-Type": "application/json"}
ID = re.compile(rb'"decision_id":"[0-9a-f]{32}"')


BODIES = [
    ("/route", {"prompt": "easy question 2: alpha beta"}),
    ("/route", {"prompt": 'hard question: ünïcode ✓ "quoted"', "quality_target": 0.5, "metadata": {"k": [1, 2.5]}}),
    ("/route", {"prompt": "easy question 2: alpha beta", "min_tier": "mid", "max_cost_usd": 1.0}),
    ("/route/batch", {"prompts": ["easy question 2: alpha beta", "hard question 7"], "cost_weight_per_usd": 10.0}),
]


@pytest.mark.parametrize(("path", "body"), BODIES)
def test_the_lean_answer_is_fastapis_byte_for_byte(
    client_factory: Callable[..., TestClient], solved: list[str], path: str, body: dict[str, Any]
) -> None:
    client = client_factory()
    lean = client.post(path, json=body, headers=bearer(CLIENT_KEY))
    assert solved == []  # answered on the lean path
    client.app.dependency_overrides[settings_dep] = settings_dep  # type: ignore[attr-defined]
    full = client.post(path, json=body, headers=bearer(CLIENT_KEY))
    assert solved == [path]  # FastAPI's path
    assert lean.status_code == full.status_code == 200
    assert ID.sub(b"ID", lean.content) == ID.sub(b"ID", full.content)
    assert ID.search(lean.content)
    for name in ("content-type", "content-length"):
        assert lean.headers[name] == full.headers[name]


@pytest.mark.parametrize(
    ("path", "content", "headers", "status"),
    [
        ("/route", b'{"prompt": "easy question"}', {}, 401),  # no key: the same 401
        ("/route", b'{"prompt": ""}', bearer(CLIENT_KEY), 422),  # invalid body
        ("/route", b'{"prompt": "easy question", "extra": 1}', bearer(CLIENT_KEY), 422),
        ("/route", b'{"prompt": "easy', bearer(CLIENT_KEY), 422),  # not JSON
        ("/route", b"[1, 2]", bearer(CLIENT_KEY), 422),
        ("/route", b"null", bearer(CLIENT_KEY), 422),
        ("/route/batch", b'{"prompts": []}', bearer(CLIENT_KEY), 422),
        ("/route", b'{"prompt": "easy", "session_id": "bad id!"}', bearer(CLIENT_KEY), 422),
        ("/route", b'{"prompt": "easy", "min_tier": "nonexistent"}', bearer(CLIENT_KEY), 422),  # raised in routing
    ],
)
def test_refusals_are_fastapis(
    client_factory: Callable[..., TestClient], path: str, content: bytes, headers: dict[str, str], status: int
) -> None:
    client = client_factory()
    lean = client.post(path, content=content, headers=JSON | headers)
    client.app.dependency_overrides[settings_dep] = settings_dep  # type: ignore[attr-defined]
    full = client.post(path, content=content, headers=JSON | headers)
    assert lean.status_code == full.status_code == status
    assert lean.content == full.content


@pytest.mark.parametrize(
    ("url", "headers", "status"),
    [
        # a query string: the service's check of query parameters (repeated, unknown) is FastAPI's
        ("/route?x=1", JSON, 422),
        ("/route", {"Content-Type": "application/json; charset=utf-8"}, 200),
        ("/route", {"Content-Type": "application/vnd.api+json"}, 200),
    ],
)
def test_anything_else_takes_fastapis_path(
    client_factory: Callable[..., TestClient], solved: list[str], url: str, headers: dict[str, str], status: int
) -> None:
    client = client_factory()
    r = client.post(url, content=b'{"prompt": "easy question 2: alpha beta"}', headers=headers | bearer(CLIENT_KEY))
    assert r.status_code == status, r.text
    assert solved == ["/route"]


def test_a_repeated_query_parameter_is_still_refused(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory()
    r = client.post("/route?a=1&a=2", json={"prompt": "easy question"}, headers=bearer(CLIENT_KEY))
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "query_repeated"


def test_a_service_without_a_model_is_not_ready_on_either_path(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory()
    client.app.state.runtime = None  # type: ignore[attr-defined]
    lean = client.post("/route", json={"prompt": "easy question"}, headers=bearer(CLIENT_KEY))
    client.app.dependency_overrides[settings_dep] = settings_dep  # type: ignore[attr-defined]
    full = client.post("/route", json={"prompt": "easy question"}, headers=bearer(CLIENT_KEY))
    assert lean.status_code == full.status_code == 503
    assert lean.content == full.content
