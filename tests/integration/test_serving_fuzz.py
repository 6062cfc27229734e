"""A bounded schemathesis run against the service's own OpenAPI: no input gives a 5xx."""

from __future__ import annotations

from collections.abc import Callable

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.integration.conftest import ADMIN_KEY, bearer


def test_no_server_errors(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(max_batch=8, max_prompt_chars=500)
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    strategies = [
        result.ok().as_strategy(generation_mode=mode)
        for result in schema.get_all_operations()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]
    failures: list[str] = []
    seen: set[int] = set()

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(strategies))
    def check(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call(headers=bearer(ADMIN_KEY))
        seen.add(response.status_code)
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path} {case.body!r} -> {response.status_code}")

    check()
    assert not failures, failures[:5]
    assert {200, 422} <= seen, seen
