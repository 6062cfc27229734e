"""tierwise as an OpenAI-compatible provider of LiteLLM: the real `litellm` (completion, acompletion, streaming and
the Router) -> a live tierwise's /v1/chat/completions -> fake upstreams on loopback. No network."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

# LiteLLM fetches its price map from the network on import unless told not to; this machine has no network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = pytest.importorskip("litellm", reason="the litellm extra is not installed (pip install -e '.[litellm]')")

from tests.integration.conftest import CLIENT_KEY, bearer  # noqa: E402
from tests.integration.fake_upstream import FakeUpstream, Reply, fake_upstream  # noqa: E402
from tests.integration.proxy_fixtures import proxied_tierwise  # noqa: E402

HARD = "hard question 1: omega sigma alpha beta gamma"
EASY = "easy question 2: alpha beta gamma delta omega"


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with fake_upstream() as upstream:
        yield upstream


@pytest.fixture
def tierwise(tmp_path: Path, artifact_dir: Path, up: FakeUpstream) -> Iterator[str]:
    with proxied_tierwise(tmp_path, artifact_dir, up) as url:
        yield url


@pytest.fixture
def api(tierwise: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tierwise, headers=bearer(CLIENT_KEY), timeout=10) as c:
        yield c


def provider(url: str) -> dict[str, Any]:
    """The two-line switch: LiteLLM's OpenAI provider, pointed at tierwise."""
    return {"model": "openai/tierwise", "api_base": f"{url}/v1", "api_key": CLIENT_KEY, "num_retries": 0}


def headers_of(resp: Any) -> dict[str, str]:
    """tierwise's X-Tierwise-* response headers, as LiteLLM keeps them (prefixed `llm_provider-`)."""
    extra = resp._hidden_params["additional_headers"]
    return {k.removeprefix("llm_provider-"): v for k, v in extra.items() if k.startswith("llm_provider-x-tierwise")}


def user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_completion_is_routed_served_and_settled(tierwise: str, api: httpx.Client, up: FakeUpstream, mode: str) -> None:
    api.put("/sessions/lit", json={"cap_usd": 1.0})
    kwargs = provider(tierwise) | {"messages": user(HARD), "extra_body": {"tierwise": {"session_id": "lit"}}}
    resp = litellm.completion(**kwargs) if mode == "sync" else asyncio.run(litellm.acompletion(**kwargs))
    assert resp.choices[0].message.content == "ok" and [m for m, _ in up.requests] == ["large"]
    assert "tierwise" not in up.requests[0][1], "the knobs stop at tierwise"
    tw = resp.tierwise  # the documented extra body field survives LiteLLM's response object
    assert tw["tier"] == "brain" and tw["model"] == "large" and tw["session_id"] == "lit"
    assert headers_of(resp) == {
        "x-tierwise-decision-id": tw["decision_id"],
        "x-tierwise-tier": "brain",
        "x-tierwise-model": "large",
    }
    session = api.get("/sessions/lit").json()
    assert session["spent_usd"] == pytest.approx(tw["cost_usd"]) and session["reserved_usd"] == 0
    assert [(d["decision_id"], d["settled"]) for d in session["recent_decisions"]] == [(tw["decision_id"], True)]


def test_streaming_through_litellm(tierwise: str, up: FakeUpstream) -> None:
    up.script("large", Reply(text="one two three four", chunks=4))
    chunks = list(litellm.completion(**provider(tierwise), messages=user(HARD), stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "one two three four", (up.requests, getattr(chunks[0], "tierwise", None))
    assert chunks[0].tierwise["tier"] == "brain", "the first chunk carries the decision"


def test_a_tier_can_be_forced_by_model_name(tierwise: str, up: FakeUpstream) -> None:
    resp = litellm.completion(**provider(tierwise) | {"model": "openai/tierwise/brain"}, messages=user(EASY))
    assert resp.tierwise["tier"] == "brain" and [m for m, _ in up.requests] == ["large"]


def test_the_litellm_router_with_tierwise_as_a_deployment(tierwise: str, up: FakeUpstream) -> None:
    params = {"model": "openai/tierwise", "api_base": f"{tierwise}/v1", "api_key": CLIENT_KEY}
    router = litellm.Router(model_list=[{"model_name": "smart", "litellm_params": params}], num_retries=0)
    resp = router.completion(model="smart", messages=user(HARD))
    assert resp.choices[0].message.content == "ok" and resp.tierwise["tier"] == "brain"
    resp = asyncio.run(
        router.acompletion(model="smart", messages=user(EASY), extra_body={"tierwise": {"min_tier": "mid"}})
    )
    assert resp.tierwise["tier"] in ("mid", "brain") and up.requests[-1][0] in ("medium", "large")


def test_an_upstream_failure_falls_back_inside_tierwise(tierwise: str, up: FakeUpstream) -> None:
    up.script("small", Reply(status=503), Reply(status=503))
    resp = litellm.completion(**provider(tierwise), messages=user(EASY))
    assert resp.tierwise["routed_tier"] == "main" and resp.tierwise["tier"] == "mid" and resp.tierwise["fallback_from"]
    assert [m for m, _ in up.requests] == ["small", "small", "medium"] and resp.choices[0].message.content == "ok"


def test_an_upstream_that_keeps_failing_is_one_clean_litellm_error(tierwise: str, up: FakeUpstream) -> None:
    up.script("large", Reply(status=503), Reply(status=503), Reply(status=503))
    with pytest.raises(litellm.exceptions.BadGatewayError) as failed:
        litellm.completion(**provider(tierwise), messages=user(HARD))
    assert failed.value.status_code == 502 and len(up.calls("large")) >= 2, "retried, then one clean error"


def test_refusals_arrive_as_litellm_exceptions_with_their_status(tierwise: str, api: httpx.Client) -> None:
    api.put("/sessions/broke", json={"cap_usd": 0.0})
    with pytest.raises(litellm.exceptions.APIError) as frozen:
        litellm.completion(**provider(tierwise), messages=user(HARD), extra_body={"tierwise": {"session_id": "broke"}})
    assert frozen.value.status_code == 402 and "spend cap" in str(frozen.value)
    with pytest.raises(litellm.AuthenticationError):
        litellm.completion(**provider(tierwise) | {"api_key": "wrong"}, messages=user(HARD))
