"""The OpenAI SDK (sync, async, streaming) against a live tierwise whose tiers call a fake upstream on loopback:
routing, the `tierwise` field and headers, tools passed through, settlement on the session, 402 and auth."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from serving.proxy import upstream
from serving.proxy.answer_bound import input_tokens
from tests.integration import fake_upstream
from tests.integration.conftest import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, bearer
from tests.integration.fake_upstream import FakeUpstream, Reply
from tests.integration.proxy_fixtures import proxied_tierwise, proxy_fixtures, streamed_in_session

HARD = "hard question 1: omega sigma alpha beta gamma"
EASY = "easy question 2: alpha beta gamma delta omega"
PRICES = {"small": (0.2, 0.2), "medium": (1.0, 2.0), "large": (10.0, 30.0)}


def cost(model: str, tokens_in: int, tokens_out: int) -> float:
    p_in, p_out = PRICES[model]
    return (tokens_in * p_in + tokens_out * p_out) / 1e6


served, up, url, sdk = proxy_fixtures("proxy")


def session(url: str, cap_usd: float | None = None) -> str:
    sid = f"s-{uuid.uuid4().hex[:12]}"
    if cap_usd is not None:
        r = httpx.put(f"{url}/sessions/{sid}", json={"cap_usd": cap_usd}, headers=bearer(CLIENT_KEY))
        assert r.status_code == 200, r.text
    return sid


def get_session(url: str, sid: str) -> dict:
    r = httpx.get(f"{url}/sessions/{sid}", headers=bearer(CLIENT_KEY))
    assert r.status_code == 200, r.text
    return r.json()


def test_models_lists_tierwise_and_each_tier(sdk: OpenAI) -> None:
    assert [m.id for m in sdk.models.list()] == ["tierwise", "tierwise/main", "tierwise/mid", "tierwise/brain"]
    assert sdk.models.retrieve("tierwise/mid").id == "tierwise/mid"  # the SDK's retrieve: GET /v1/models/{id}
    with pytest.raises(openai.NotFoundError) as err:
        sdk.models.retrieve("gpt-4o")
    assert isinstance(err.value.body, dict) and err.value.body["code"] == "model_not_found"
    # an id no path converter takes (a newline: the fuzzer's find) and an unknown endpoint are OpenAI 404s too
    for path in ("/v1/models/a%0Ab", "/v1/embeddings"):
        r = httpx.get(f"{sdk.base_url}".rstrip("/").removesuffix("/v1") + path, headers=bearer(CLIENT_KEY))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.text)


@pytest.mark.parametrize(("prompt", "tier", "model"), [(EASY, "main", "small"), (HARD, "brain", "large")])
def test_routes_like_route_and_says_who_served(
    sdk: OpenAI, url: str, up: FakeUpstream, prompt: str, tier: str, model: str
) -> None:
    routed = httpx.post(f"{url}/route", json={"prompt": prompt}, headers=bearer(CLIENT_KEY)).json()
    assert routed["tier"] == tier  # the proxy must agree with /route on the same prompt
    up.script(model, Reply(text="answer from {model}", usage=(12, 7)))
    raw = sdk.chat.completions.with_raw_response.create(
        model="tierwise", messages=[{"role": "user", "content": prompt}]
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == f"answer from {model}"
    assert raw.headers["x-tierwise-tier"] == tier and raw.headers["x-tierwise-model"] == model
    info = answer.model_extra["tierwise"]
    assert info["decision_id"] == raw.headers["x-tierwise-decision-id"]
    assert (info["tier"], info["model"], info["routed_tier"]) == (tier, model, tier)
    assert info["cost_usd"] == pytest.approx(cost(model, 12, 7))
    [(called, body)] = up.requests
    assert called == model and "tierwise" not in body


def test_prompt_view_is_system_plus_last_user_turn(sdk: OpenAI, up: FakeUpstream) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": HARD},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": [{"type": "text", "text": EASY}, {"type": "image_url", "image_url": {"url": "x"}}]},
    ]
    raw = sdk.chat.completions.with_raw_response.create(model="tierwise", messages=messages)  # type: ignore[arg-type]
    assert raw.headers["x-tierwise-tier"] == "main"  # scored on the last (easy) turn, not the earlier hard one
    [(_, body)] = up.requests
    assert body["messages"] == messages  # the whole conversation reaches the upstream untouched


def test_an_image_alone_is_routed_and_answered(sdk: OpenAI, up: FakeUpstream) -> None:
    """A user turn holding only an image is OpenAI's to answer: it was a 400 "no text to route". It is scored as its
    parts' types (`[image_url]`) and sent upstream untouched."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = [{"role": "user", "content": [image]}]
    raw = sdk.chat.completions.with_raw_response.create(model="tierwise", messages=messages)  # type: ignore[arg-type]
    assert raw.headers["x-tierwise-tier"] in ("main", "mid", "brain") and raw.parse().choices[0].message.content
    [(_, body)] = up.requests
    assert body["messages"] == messages


def test_routing_prices_the_whole_conversation_the_door_sends(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    """The door routes on the prompt view but prices every turn it sends (as its hold on a session counts them):
    its decision's expected cost is /route's for the same view with `input_tokens` = the door's count."""
    messages = [
        {"role": "user", "content": "an earlier question " * 300},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": EASY},
    ]
    sid = session(url, cap_usd=100.0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="tierwise",
        messages=messages,  # type: ignore[arg-type]
        extra_body={"tierwise": {"session_id": sid}},
    )
    decision_id = raw.headers["x-tierwise-decision-id"]
    [door] = [d for d in get_session(url, sid)["recent_decisions"] if d["decision_id"] == decision_id]
    counted = input_tokens({"messages": messages})
    assert counted > 1500
    at_count = httpx.post(f"{url}/route", json={"prompt": EASY, "input_tokens": counted}, headers=bearer(CLIENT_KEY))
    view_only = httpx.post(f"{url}/route", json={"prompt": EASY}, headers=bearer(CLIENT_KEY))
    assert at_count.status_code == view_only.status_code == 200, at_count.text
    assert door["tier"] == at_count.json()["tier"]
    assert door["expected_cost_usd"] == pytest.approx(at_count.json()["expected_cost_usd"])
    assert door["expected_cost_usd"] > view_only.json()["expected_cost_usd"] * 10  # the earlier turns cost too
    # The door counts for itself: a count of the caller's is refused, naming the field.
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="tierwise", messages=messages, extra_body={"tierwise": {"input_tokens": 9}})  # type: ignore[arg-type]
    assert refused.value.body["param"] == "tierwise.input_tokens"  # type: ignore[index]


def test_a_conversation_too_long_for_the_cap_waits_and_never_freezes_the_session(
    sdk: OpenAI, url: str, up: FakeUpstream
) -> None:
    """Routing prices the whole conversation: one the cap cannot afford is a 402 that leaves the session open, and a
    short call after it is served (a review's find: it froze the session, spent nothing, until an admin confirmed)."""
    sid = session(url, cap_usd=0.001)
    up.default = Reply(text="ok", usage=(10, 2))
    earlier = [{"role": "user", "content": "earlier context " * 3000}, {"role": "assistant", "content": "noted"}]
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.chat.completions.create(
            model="tierwise",
            messages=[*earlier, {"role": "user", "content": EASY}],  # type: ignore[list-item]
            extra_body={"tierwise": {"session_id": sid}},
        )
    assert refused.value.status_code == 402
    assert refused.value.body["code"] == "over_budget" and "stays open" in refused.value.body["message"]  # type: ignore[index]
    assert get_session(url, sid)["status"] == "open" and up.requests == []
    short = sdk.chat.completions.create(
        model="tierwise", messages=[{"role": "user", "content": EASY}], extra_body={"tierwise": {"session_id": sid}}
    )
    assert short.choices[0].message.content == "ok"


def test_tools_and_unknown_fields_pass_through_untouched(sdk: OpenAI, up: FakeUpstream) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    call = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]
    up.script("small", Reply(tool_calls=call))
    answer = sdk.chat.completions.create(
        model="tierwise",
        messages=[{"role": "user", "content": EASY}],
        tools=tools,  # type: ignore[arg-type]
        tool_choice="auto",
        temperature=0.25,
        extra_body={"vendor_knob": {"a": [1, 2]}},
    )
    assert answer.choices[0].message.tool_calls[0].function.arguments == '{"city":"Oslo"}'  # type: ignore[index,union-attr]
    [(_, body)] = up.requests
    assert body["tools"] == tools and body["tool_choice"] == "auto" and body["temperature"] == 0.25
    assert body["vendor_knob"] == {"a": [1, 2]}


def test_knobs_by_extra_body_and_headers(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    messages = [{"role": "user", "content": EASY}]
    by_body = sdk.chat.completions.create(
        model="tierwise", messages=messages, extra_body={"tierwise": {"min_tier": "mid"}}
    )  # type: ignore[arg-type]
    by_header = sdk.chat.completions.with_raw_response.create(
        model="tierwise",
        messages=messages,
        extra_headers={"X-Tierwise-Min-Tier": "brain"},  # type: ignore[arg-type]
    )
    forced = sdk.chat.completions.create(model="tierwise/mid", messages=messages)  # type: ignore[arg-type]
    assert by_body.model_extra["tierwise"]["tier"] == "mid"
    assert by_header.headers["x-tierwise-tier"] == "brain"
    assert forced.model_extra["tierwise"]["tier"] == "mid"
    sid = session(url)
    sdk.chat.completions.create(model="tierwise", messages=messages, extra_headers={"X-Tierwise-Session-Id": sid})  # type: ignore[arg-type]
    assert len(get_session(url, sid)["recent_decisions"]) == 1
    # The task hint, by header and by body (this model knows no tasks: ignored, and the reason says so).
    for task, by_header in (("poetry", True), ("sonnets", False)):
        hinted = session(url)
        headers = {"X-Tierwise-Session-Id": hinted} | ({"X-Tierwise-Task": task} if by_header else {})
        body = {} if by_header else {"tierwise": {"task": task}}
        sdk.chat.completions.create(model="tierwise", messages=messages, extra_headers=headers, extra_body=body)  # type: ignore[arg-type]
        [decision] = get_session(url, hinted)["recent_decisions"]
        assert f"task hint {task!r} is not a task this model knows" in decision["reason"]


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        ({"model": "gpt-4"}, 404, "model"),  # as OpenAI answers a model it does not have (was a pattern's 400)
        ({"messages": [{"role": "robot", "content": EASY}]}, 400, "messages.0.role"),
        ({"model": "tierwise/nope"}, 404, "model"),
        ({"extra_body": {"tierwise": {"quality_target": 2}}}, 400, "quality_target"),
        ({"extra_headers": {"X-Tierwise-Max-Cost-Usd": "lots"}}, 400, "x-tierwise-max-cost-usd"),
        ({"extra_body": {"tierwise": {"min_tier": "nope"}}}, 400, "min_tier"),
        ({"messages": [{"role": "assistant", "content": "no user text"}]}, 400, "messages"),
        ({"messages": []}, 400, "messages"),
        ({"stream": True, "stream_options": "yes"}, 400, "stream_options"),
        ({"stream": True, "stream_options": ["include_usage"]}, 400, "stream_options"),
        # the field's path, not pydantic's union members ("messages.0.content.str")
        ({"messages": [{"role": "user", "content": 7}]}, 400, "messages.0.content"),
        ({"messages": [{"role": "user", "content": [{"type": 1}]}]}, 400, "messages.0.content.0.type"),
        # nor its names of constrained members ("tierwise.min_tier.constrained-int")
        ({"extra_body": {"tierwise": {"min_tier": -1}}}, 400, "min_tier"),
        ({"extra_body": {"tierwise": {"min_tier": 1.5}}}, 400, "min_tier"),
    ],
)
def test_bad_requests_are_openai_errors(sdk: OpenAI, up: FakeUpstream, kwargs: dict, status: int, param: str) -> None:
    args = {"model": "tierwise", "messages": [{"role": "user", "content": EASY}], **kwargs}
    with pytest.raises(openai.APIStatusError) as err:
        sdk.chat.completions.create(**args)
    assert err.value.status_code == status
    body = err.value.body
    assert isinstance(body, dict) and set(body) >= {"message", "type", "code", "param"}  # the SDK unwraps "error"
    assert param in (body["param"] or "")
    assert "[" not in (body["param"] or "") and not (body["param"] or "").endswith(".str")
    assert "constrained" not in (body["param"] or "")
    assert up.requests == []  # refused before any upstream call


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("temperature", "NaN", "temperature"),
        ("top_p", "Infinity", "top_p"),
        ("logit_bias", '{"50256": -Infinity}', "logit_bias.50256"),
        ("tools", '[{"type": "function", "function": {"name": "f", "x": [1, NaN]}}]', "tools.0.function.x.1"),
        ("temperature", "1e309", "temperature"),  # past a float's range: read as infinity
    ],
)
def test_a_number_json_has_not_is_a_400_naming_it(
    url: str, up: FakeUpstream, field: str, value: str, param: str
) -> None:
    """Python's JSON reader takes NaN and Infinity, which no JSON number is: passed on, the upstream got a body that
    is not JSON (`"temperature": NaN`)."""
    headers = {**bearer(CLIENT_KEY), "content-type": "application/json"}
    body = f'{{"model": "tierwise", "messages": [{{"role": "user", "content": "hi"}}], "{field}": {value}}}'
    r = httpx.post(f"{url}/v1/chat/completions", content=body.encode(), headers=headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "not a JSON number" in error["message"]
    assert up.requests == []


def test_a_body_that_is_nan_names_no_parameter(url: str, up: FakeUpstream) -> None:
    headers = {**bearer(CLIENT_KEY), "content-type": "application/json"}
    r = httpx.post(f"{url}/v1/chat/completions", content=b"NaN", headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] is None and r.json()["error"]["message"].startswith("body: nan")


def test_a_body_that_is_no_json_names_no_parameter(url: str, up: FakeUpstream) -> None:
    headers = {**bearer(CLIENT_KEY), "content-type": "application/json"}
    r = httpx.post(f"{url}/v1/chat/completions", content=b'{"model": "tierwise", ', headers=headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] is None and error["code"] == "json_invalid"  # was param "22", the character position
    assert error["message"].startswith("the body is not valid JSON") and "22" in error["message"]
    assert up.requests == []


@pytest.mark.parametrize(
    "messages",
    [
        '[{"role": "user", "content": "hi \\ud800"}]',  # a lone surrogate: was a 500 (the tokenizer's TypeError)
        '[{"role": "system", "content": "be \\udfff brief"}, {"role": "user", "content": "hi"}]',
        '[{"role": "user", "content": [{"type": "text", "text": "hi \\ud800"}]}]',
        '[{"role": "user", "content": "hi \\u0000"}]',
    ],
)
@pytest.mark.parametrize("stream", ["false", "true"])
def test_text_no_store_can_keep_is_a_400(url: str, up: FakeUpstream, messages: str, stream: str) -> None:
    body = f'{{"model": "tierwise", "stream": {stream}, "messages": {messages}}}'.encode()
    headers = {**bearer(CLIENT_KEY), "content-type": "application/json"}
    r = httpx.post(f"{url}/v1/chat/completions", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "messages" and r.json()["error"]["type"] == "invalid_request_error"
    assert up.requests == []


def test_a_min_tier_header_that_only_looks_like_a_number_is_a_400(url: str, up: FakeUpstream) -> None:
    """'²' (latin-1 0xB2) is a digit to str.isdigit and not to int(): a tier name, unknown."""
    body = {"model": "tierwise", "messages": [{"role": "user", "content": EASY}]}
    headers = [(b"authorization", f"Bearer {CLIENT_KEY}".encode()), (b"x-tierwise-min-tier", b"\xb2")]
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "min_tier" and up.requests == []


def test_streaming_relays_chunks_and_settles_before_done(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    sid = session(url, cap_usd=1.0)
    up.script("small", Reply(text="one two three four", chunks=4, usage=(40, 8)))
    stream = sdk.chat.completions.create(
        model="tierwise",
        messages=[{"role": "user", "content": EASY}],
        stream=True,
        extra_body={"tierwise": {"session_id": sid}},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three four"
    assert chunks[0].model_extra["tierwise"]["tier"] == "main"
    assert all(c.choices for c in chunks)  # the usage-only chunk is dropped: this caller did not ask for usage
    s = get_session(url, sid)  # read right after [DONE]: settled already
    assert s["spent_usd"] == pytest.approx(cost("small", 40, 8)) and s["reserved_usd"] == pytest.approx(0)
    assert s["recent_decisions"][0]["settled"] is True


def test_a_streamed_answer_leaves_its_upstream_connection_open_for_the_next_call(
    sdk: OpenAI, up: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The upstream's body is read to its end after [DONE]: a stream closed before it would close its pooled
    # connection, and every call after a streamed one would pay a new TCP (and, to a real upstream, TLS) handshake.
    # The read past [DONE] gives up after upstream.DRAIN_S (50 ms); here 10 s, so a stalled machine does not close it.
    monkeypatch.setattr(upstream, "DRAIN_S", 10.0)
    messages = [{"role": "user", "content": EASY}]
    for _ in range(3):
        assert list(sdk.chat.completions.create(model="tierwise", messages=messages, stream=True))  # type: ignore[arg-type]
        assert sdk.chat.completions.create(model="tierwise", messages=messages).choices  # type: ignore[arg-type]
    assert len(up.peers) == 6
    assert len(set(up.peers)) == 1, f"new upstream connections: {up.peers}"


def test_an_upstream_holding_its_stream_open_after_done_does_not_hold_the_caller(sdk: OpenAI, up: FakeUpstream) -> None:
    up.script("small", Reply(text="done early", linger_s=60.0))  # the relay's drain gives up after upstream.DRAIN_S
    started = time.monotonic()
    chunks = list(
        sdk.chat.completions.create(model="tierwise", messages=[{"role": "user", "content": EASY}], stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "done early"
    assert time.monotonic() - started < 20.0  # the caller's stream ended long before the upstream's body did


def test_a_streamed_event_longer_than_a_read_buffer_arrives_whole(sdk: OpenAI, up: FakeUpstream) -> None:
    # One SSE line of ~600 KB (a big tool call or a long answer in one chunk): aiohttp's own readline would refuse
    # a line over its buffer ("Chunk too big"); the relay splits the body into lines itself.
    text = "".join(f"{i:06d} " for i in range(86_000))
    up.script("small", Reply(text=text, chunks=1))
    chunks = list(
        sdk.chat.completions.create(model="tierwise", messages=[{"role": "user", "content": EASY}], stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


def _streamed_with_usage(sdk: OpenAI) -> list[Any]:
    """The chunks of a streamed call that asked for usage (`stream_options.include_usage`)."""
    stream = sdk.chat.completions.create(
        model="tierwise",
        messages=[{"role": "user", "content": EASY}],
        stream=True,
        stream_options={"include_usage": True},
    )
    return list(stream)


def test_streaming_usage_chunk_reaches_a_caller_who_asked(sdk: OpenAI, up: FakeUpstream) -> None:
    up.script("small", Reply(usage=(3, 4)))
    chunks = _streamed_with_usage(sdk)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    # ... with what the call cost in `tierwise`, known only once it ended (the first chunk names the decision)
    last, first = chunks[-1].model_extra["tierwise"], chunks[0].model_extra["tierwise"]  # type: ignore[index]
    assert "cost_usd" not in first and last["decision_id"] == first["decision_id"]
    assert last["cost_usd"] == pytest.approx(cost("small", 3, 4)) and (last["tokens_in"], last["tokens_out"]) == (3, 4)
    assert sum(1 for c in chunks if not c.choices) == 1  # one usage chunk, as the upstream sent


def _raw_events(events: list[dict]) -> Any:
    async def gen(model: str, reply: Reply, include_usage: bool) -> AsyncIterator[bytes]:
        for event in events:
            yield f"data: {json.dumps(event)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return gen


def _chunk(content: str | None, finish: str | None = None, index: Any = 0, **more: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    choices = [{"index": index, "delta": delta, "finish_reason": finish}] if content is not None or finish else []
    return {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": choices, **more}


def test_the_cost_rides_on_the_usage_chunk_not_on_a_later_empty_one(
    sdk: OpenAI, up: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Azure-like upstream sends a chunk with no choices and no usage after the usage chunk: `tierwise`'s cost
    went on that one, the usage chunk out without it. And a finished choice whose index is null is index 0."""
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    events = [
        _chunk(""),
        _chunk("a", "stop", index=None),
        _chunk(None, usage=usage),
        _chunk(None, prompt_filter_results=[]),
    ]
    monkeypatch.setattr(fake_upstream, "_events", _raw_events(events))
    chunks = _streamed_with_usage(sdk)
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0].model_extra["tierwise"]["cost_usd"] == pytest.approx(
        cost("small", 3, 1)
    )  # type: ignore[index]
    assert all("cost_usd" not in (c.model_extra or {}).get("tierwise", {}) for c in chunks if c.usage is None)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a"


@pytest.mark.parametrize("where", ["with the finish", "none"])
def test_a_caller_who_asked_for_usage_gets_it_last_whatever_the_upstream_sent(
    sdk: OpenAI, up: FakeUpstream, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """An upstream that puts usage on the finishing chunk (it still has choices) or sends none at all: the caller
    who asked got no usage chunk, and no cost, though the call was settled (review finding)."""
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    finish = _chunk("a", "stop", usage=usage) if where == "with the finish" else _chunk("a", "stop")
    monkeypatch.setattr(fake_upstream, "_events", _raw_events([_chunk(""), finish]))
    chunks = _streamed_with_usage(sdk)
    last = chunks[-1]
    assert not last.choices and last.usage is not None and last.id == "c"
    paid = last.model_extra["tierwise"]  # type: ignore[index]
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (paid["tokens_in"], paid["tokens_out"])
    if where == "none":
        assert paid["usage_estimated"] and paid["cost_usd"] > 0
    else:
        assert paid["cost_usd"] == pytest.approx(cost("small", 3, 1)) and not paid["usage_estimated"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a"


def test_async_client_plain_and_streaming(url: str, up: FakeUpstream) -> None:
    async def run() -> tuple[str, str]:
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0) as client:
            messages = [{"role": "user", "content": HARD}]
            plain, stream = await asyncio.gather(
                client.chat.completions.create(model="tierwise", messages=messages),  # type: ignore[arg-type]
                client.chat.completions.create(model="tierwise", messages=messages, stream=True),  # type: ignore[arg-type]
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return plain.choices[0].message.content or "", text

    up.default = Reply(text="async answer")
    try:
        assert asyncio.run(run()) == ("async answer", "async answer")
    finally:
        up.default = Reply()


def test_settles_the_session_and_an_outcome_needs_only_a_score(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    sid = session(url, cap_usd=1.0)
    up.script("large", Reply(usage=(1000, 200)))
    raw = sdk.chat.completions.with_raw_response.create(
        model="tierwise", messages=[{"role": "user", "content": HARD}], extra_body={"tierwise": {"session_id": sid}}
    )
    real = cost("large", 1000, 200)
    s = get_session(url, sid)
    assert s["spent_usd"] == pytest.approx(real) and s["reserved_usd"] == pytest.approx(0)
    assert s["recent_decisions"][0]["expected_cost_usd"] != pytest.approx(real)  # booked the real cost, not the guess
    decision_id = raw.headers["x-tierwise-decision-id"]
    r = httpx.post(f"{url}/outcomes", json={"decision_id": decision_id, "score": 0.9}, headers=bearer(CLIENT_KEY))
    assert r.status_code == 201, r.text
    assert get_session(url, sid)["spent_usd"] == pytest.approx(real)  # never charged twice
    # An outcome that names no decision still needs its cost.
    r = httpx.post(f"{url}/outcomes", json={"prompt": HARD, "model": "large", "score": 1}, headers=bearer(CLIENT_KEY))
    assert r.status_code == 422


def test_an_outcome_waits_until_the_door_has_settled_the_answer(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    # While the answer streams, neither the real cost nor the model that answered (a fallback changes it) is known:
    # an outcome then is a 503 to retry (with or without the client's own cost), a client's usage post a 409. Before,
    # an outcome with the client's cost settled the session with it, credited the routed model, and its identical
    # retry after the stream was a 409.
    sid = session(url, cap_usd=1.0)
    hold = threading.Event()
    up.script("small", Reply(status=503), Reply(status=503))  # main fails: the door falls back to mid (medium)
    up.script("medium", Reply(text="one two three", usage=(400, 80), hold=hold))
    try:
        stream, decision_id = streamed_in_session(sdk, sid, EASY)  # the upstream now waits for `hold`
        assert get_session(url, sid)["recent_decisions"][0]["settled"] is False
        outcome = {"decision_id": decision_id, "score": 0.7}
        for body in (outcome, {**outcome, "cost_usd": 0.0}):  # "not yet", not a conflict: a 503 to retry
            r = httpx.post(f"{url}/outcomes", json=body, headers=bearer(CLIENT_KEY))
            assert r.status_code == 503 and "still being served by the proxy" in r.json()["detail"], r.text
            assert r.headers["retry-after"] == "5"
        usage = httpx.post(f"{url}/decisions/{decision_id}/usage", json={"cost_usd": 0.0}, headers=bearer(CLIENT_KEY))
        assert usage.status_code == 409 and "served by the proxy" in usage.json()["detail"], usage.text
        assert get_session(url, sid)["recent_decisions"][0]["settled"] is False  # nothing settled it
    finally:
        hold.set()
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "one two three"
    s = get_session(url, sid)
    assert s["spent_usd"] == pytest.approx(cost("medium", 400, 80)) and s["reserved_usd"] == pytest.approx(0)
    # Then the outcome takes the door's settlement (the model that answered, the real cost); its retry is one.
    recorded = [httpx.post(f"{url}/outcomes", json=outcome, headers=bearer(CLIENT_KEY)) for _ in range(2)]
    assert [(r.status_code, r.json()["recorded"]) for r in recorded] == [(201, 1), (201, 0)]
    same = httpx.post(f"{url}/outcomes", json={**outcome, "model": "medium"}, headers=bearer(CLIENT_KEY))
    assert same.status_code == 201 and same.json()["recorded"] == 0, same.text  # stored as medium's
    routed = httpx.post(f"{url}/outcomes", json={**outcome, "model": "small"}, headers=bearer(CLIENT_KEY))
    assert routed.status_code == 409 and "model" in routed.json()["detail"], routed.text


def test_only_the_admin_may_settle_a_door_decision_by_hand(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    # A service that died mid-answer leaves the door's reservation in place: the operator releases it.
    sid = session(url, cap_usd=1.0)
    hold = threading.Event()
    up.script("small", Reply(text="one two three", usage=(400, 80), hold=hold))
    try:
        stream, decision_id = streamed_in_session(sdk, sid, EASY)
        by_client = httpx.post(f"{url}/decisions/{decision_id}/release", headers=bearer(CLIENT_KEY))
        assert by_client.status_code == 409 and "proxy" in by_client.json()["detail"], by_client.text
        release = {"cost_usd": None}
        r = httpx.post(f"{url}/decisions/{decision_id}/usage", json=release, headers=bearer(ADMIN_KEY))
        assert r.status_code == 200 and r.json()["booked"] is True, r.text
        assert get_session(url, sid)["reserved_usd"] == pytest.approx(0)
    finally:
        hold.set()
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "one two three"
    s = get_session(url, sid)  # the first settlement counts: the door's, after the admin's release, books nothing
    assert s["spent_usd"] == 0 and s["reserved_usd"] == pytest.approx(0)


def test_frozen_session_is_a_402_through_the_sdk(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    sid = session(url, cap_usd=1e-9)
    with pytest.raises(openai.APIStatusError) as err:
        sdk.chat.completions.create(
            model="tierwise", messages=[{"role": "user", "content": HARD}], extra_body={"tierwise": {"session_id": sid}}
        )
    assert err.value.status_code == 402
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "session_frozen" and body["type"] == "insufficient_quota"
    assert body["session"]["status"] == "frozen" and body["session"]["cap_usd"] == pytest.approx(1e-9)
    assert up.requests == []
    assert get_session(url, sid)["status"] == "frozen"


def test_auth_same_keys_as_route(url: str, up: FakeUpstream) -> None:
    messages = [{"role": "user", "content": EASY}]
    with pytest.raises(openai.AuthenticationError) as err:
        OpenAI(base_url=f"{url}/v1", api_key="not-a-key", max_retries=0).chat.completions.create(
            model="tierwise",
            messages=messages,  # type: ignore[arg-type]
        )
    assert err.value.body["type"] == "authentication_error"  # type: ignore[index]
    keyless = httpx.post(f"{url}/v1/chat/completions", json={"model": "tierwise", "messages": messages})
    assert keyless.status_code == 401 and keyless.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()
    assert up.requests == []
    # Another client's session is refused, an admin may use it.
    sid = session(url, cap_usd=1.0)
    other = OpenAI(base_url=f"{url}/v1", api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        other.chat.completions.create(model="tierwise", messages=messages, extra_body={"tierwise": {"session_id": sid}})  # type: ignore[arg-type]
    admin = OpenAI(base_url=f"{url}/v1", api_key=ADMIN_KEY, max_retries=0)
    admin.chat.completions.create(model="tierwise", messages=messages, extra_body={"tierwise": {"session_id": sid}})  # type: ignore[arg-type]


def test_the_door_routes_with_the_services_exploration_settings(
    tmp_path: Path, artifact_dir: Path, up: FakeUpstream
) -> None:
    """The door decides through the same request path as /route: a service that explores explores here too."""
    for model in PRICES:
        up.script(model, Reply(text="ok", usage=(5, 5)))
    with proxied_tierwise(tmp_path, artifact_dir, up, exploration_rate=0.5) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0)
        served = [
            client.chat.completions.create(model="tierwise", messages=[{"role": "user", "content": EASY}])
            for _ in range(24)
        ]
        metrics = httpx.get(f"{url}/metrics").text
    infos = [s.model_extra["tierwise"] for s in served]
    assert {i["routed_tier"] for i in infos} != {"main"}, "no request explored past the policy's tier"
    assert any(line.startswith("tierwise_decisions_total") for line in metrics.splitlines())


def test_a_method_or_size_refused_before_the_door_is_an_openai_error(url: str, up: FakeUpstream) -> None:
    """Starlette's 405 and the body limit's 413 answer before the door's route: they were `{"detail": ...}`."""
    r = httpx.get(f"{url}/v1/chat/completions", headers=bearer(CLIENT_KEY))
    assert r.status_code == 405 and r.headers["allow"] == "POST", r.text
    assert r.json()["error"]["code"] == "method_not_allowed" and "use POST" in r.json()["error"]["message"]
    headers = {**bearer(CLIENT_KEY), "content-type": "application/json"}
    big = b'{"x": "' + b"v" * 1_100_000 + b'"}'  # over the default max_body_bytes (1 MiB)
    r = httpx.post(f"{url}/v1/chat/completions", content=big, headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text
    assert "over the limit" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/route", content=big, headers=headers)  # tierwise's own API keeps its shape
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    assert up.requests == []
