"""A bounded schemathesis run against the service's own OpenAPI: no input gives a 5xx, and every answer
conforms to the spec (status code, content type, body schema), with the bearer scheme the spec declares."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.parameters import ParameterLocation

from tests.integration.conftest import ADMIN_KEY, bearer

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Not positive_data_acceptance: some schema-valid requests are 422 by design (a tier name the live tiers
# don't have, a prompt with a NUL character, metadata with NaN), and the spec cannot list them.
MAX_EXAMPLES = 400


def auth(case: Any) -> dict[str, str]:
    """The admin's bearer for a case, unless its headers are what the case made invalid (a bad or missing
    Authorization): then none, and the case's own headers must be refused (401). Sent over them, the admin's
    bearer made such a case valid, and its 200 read as a schema-violating request accepted (found when the suite
    ran on two xdist workers, which loads other modules beside this test and so draws another sample)."""
    components = getattr(case.meta, "components", None) or {}
    header = components.get(ParameterLocation.HEADER)
    return {} if header is not None and header.mode == GenerationMode.NEGATIVE else bearer(ADMIN_KEY)


def run_fuzz(strategies: list[st.SearchStrategy[Any]], max_examples: int, examples: Sequence[Any] = ()) -> Counter[int]:
    """Call and validate (CHECKS) the given example cases and a bounded, derandomized sample of the strategies' cases,
    the status codes seen; a failed check raises (schemathesis' FailureGroup), hypothesis shrinks it and reports the
    curl line. Derandomized, yet the sample is not fixed: hypothesis mixes in constants it finds in the project's
    modules that are loaded, so it changes with the code and with which tests share the process (alone, the door's
    fuzz once drew no chat request with user text). What a test needs to reach, it passes as an example."""
    seen: Counter[int] = Counter()

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies))
    def check(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call_and_validate(headers=auth(case), checks=CHECKS)
        seen[response.status_code] += 1

    for case in examples:
        check = example(case=case)(check)
    check()
    return seen


# A schema-violating request may also be refused for its size (413) before it is validated.
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "413", "422"]}}}
)


def test_answers_conform_to_the_spec(client_factory: Callable[..., TestClient]) -> None:
    # Small limits, so the 413s are reached too.
    client = client_factory(max_batch=8, max_prompt_chars=500, max_body_bytes=4096)
    # The OpenAI-compatible door needs upstreams (none are configured here): test_openai_fuzz.py fuzzes it with one.
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app, config=CONFIG).exclude(path_regex="^/v1/")
    strategies = [
        result.ok().as_strategy(generation_mode=mode)
        for result in schema.get_all_operations()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]
    seen = run_fuzz(strategies, MAX_EXAMPLES)
    assert {200, 422} <= set(seen), seen
