"""The proxy's pure parts: upstream fields of the tiers file, fallback chains, the prompt view, costing, merging."""

from __future__ import annotations

import asyncio
import gc
import json
import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace
from typing import Any

import aiohttp
import numpy as np
import pytest

from router.schema import TiersConfigError, parse_tiers
from serving.proxy.dispatch import RetryPolicy, Trail
from serving.proxy.fusion import MERGE_PROMPT, merge_request
from serving.proxy.service import prepare_for, route_options
from serving.proxy.upstream import (
    MAX_RETRY_AFTER_S,
    Stream,
    UpstreamFailure,
    answer_token_estimate,
    endpoint_for,
    retry_after_of,
    strict_json,
    usage_of,
)
from serving.proxy.wire import ChatCompletionRequest, ChatMessage, prompt_view
from serving.schemas import MAX_TOKENS, storable_text

TOML: dict[str, Any] = {
    "models": {
        "a": {"input_per_1m": 1.0, "output_per_1m": 2.0, "base_url": "http://up:1/v1/", "api_key_env": "A_KEY"},
        "b": {"input_per_1m": 3.0, "output_per_1m": 4.0, "base_url": "https://up.example/v1", "upstream_model": "B-1"},
        "c": {"input_per_1m": 5.0, "output_per_1m": 6.0},
    },
    "tiers": [{"name": "t1", "model": "a"}, {"name": "t2", "model": "b"}, {"name": "t3", "model": "c"}],
}


def test_upstream_fields_parse_and_resolve() -> None:
    cfg = parse_tiers(TOML)
    ep = endpoint_for("a", cfg, {"A_KEY": "secret"})
    assert ep.url == "http://up:1/v1/chat/completions" and ep.upstream_model == "a"
    assert ep.headers() == {"Authorization": "Bearer secret"}
    assert endpoint_for("b", cfg, {}).upstream_model == "B-1" and endpoint_for("b", cfg, {}).headers() == {}


@pytest.mark.parametrize(
    ("model", "environ", "words"), [("c", {}, "no upstream configured"), ("a", {}, "A_KEY is not set")]
)
def test_an_unconfigured_upstream_is_a_config_failure(model: str, environ: dict[str, str], words: str) -> None:
    with pytest.raises(UpstreamFailure) as err:
        endpoint_for(model, parse_tiers(TOML), environ)
    assert err.value.kind == "config" and words in err.value.message


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("base_url", "ftp://x", '[models."a"]: base_url'),
        ("base_url", "not a url", '[models."a"]: base_url'),
        ("api_key_env", "1-BAD", '[models."a"]: api_key_env'),
        ("upstream_model", "", '[models."a"]: upstream_model'),
    ],
)
def test_bad_upstream_fields_name_the_model(field: str, value: str, words: str) -> None:
    data = {**TOML, "models": {**TOML["models"], "a": {**TOML["models"]["a"], field: value}}}
    with pytest.raises(TiersConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_tiers(data, "tiers.toml")


def test_fallbacks_default_to_every_tier_above_or_follow_the_list() -> None:
    cfg = parse_tiers(TOML)
    assert [t.name for t in cfg.fallbacks("t1")] == ["t2", "t3"] and cfg.fallbacks("t3") == []
    listed = {**TOML, "tiers": [{**TOML["tiers"][0], "fallback": ["t3"]}, *TOML["tiers"][1:]]}
    assert [t.name for t in parse_tiers(listed).fallbacks("t1")] == ["t3"]
    for bad in (["nope"], ["t1"]):
        broken = {**TOML, "tiers": [{**TOML["tiers"][0], "fallback": bad}, *TOML["tiers"][1:]]}
        with pytest.raises(TiersConfigError, match="fallback"):
            parse_tiers(broken)


def test_prompt_view_is_system_then_last_user_text() -> None:
    messages = [
        ChatMessage(role="system", content="sys"),
        ChatMessage(role="user", content="first"),
        ChatMessage(role="assistant", content="reply"),
        ChatMessage.model_validate(
            {"role": "user", "content": [{"type": "text", "text": "last"}, {"type": "image_url", "image_url": {}}]}
        ),
    ]
    assert prompt_view(messages) == "sys\n\nlast"
    assert prompt_view([ChatMessage(role="assistant", content="x")]) == ""
    image_only = {"role": "user", "content": [{"type": "image_url", "image_url": {}}, {"type": "input_audio"}]}
    with_space = {"role": "user", "content": [{"type": "text", "text": " "}, {"type": "image_url", "image_url": {}}]}
    for turn in (image_only, with_space):  # no text: the parts' types, so an image alone is routed, not refused
        view = prompt_view([ChatMessage(role="system", content="sys"), ChatMessage.model_validate(turn)])
        assert view == "sys\n\n" + ("[image_url] [input_audio]" if turn is image_only else "[image_url]")


def test_usage_is_costed_at_catalogue_prices_or_estimated() -> None:
    ep = endpoint_for("b", parse_tiers(TOML), {})
    u = usage_of(ep, {"prompt_tokens": 1000, "completion_tokens": 500}, {}, 0)
    assert (u.tokens_in, u.tokens_out, u.estimated) == (1000, 500, False)
    assert u.cost_usd == pytest.approx((1000 * 3.0 + 500 * 4.0) / 1e6)
    answer = {"choices": [{"message": {"content": "x" * 400}}]}
    guess = usage_of(ep, None, {"messages": [{"role": "user", "content": "x" * 400}]}, answer_token_estimate(answer))
    assert guess.estimated and guess.tokens_out == 100 and guess.tokens_in > 100
    # the one estimate routing uses: a CJK character is a token, not a quarter of one
    assert answer_token_estimate({"choices": [{"message": {"content": "你好世界"}}]}) == 4
    # a stream's chunks, unrounded, add up to the whole answer's estimate: 4 x 2 ASCII characters are 2 tokens, not 4
    chunks = [{"choices": [{"delta": {"content": "ab"}}]}] * 4
    assert usage_of(ep, None, {}, sum(answer_token_estimate(c) for c in chunks)).tokens_out == 2


def test_absurd_usage_is_kept_within_the_stores_columns() -> None:
    """An upstream's usage past any context (10**19 tokens) or infinite: the settlement stays storable (it failed
    the door's settlement with an OverflowError or PostgreSQL's integer range, a 500 after a paid answer)."""
    ep = endpoint_for("b", parse_tiers(TOML), {})
    huge = usage_of(ep, {"prompt_tokens": 10**19, "completion_tokens": 5}, {}, 0)
    assert (huge.tokens_in, huge.tokens_out, huge.estimated) == (MAX_TOKENS, 5, False)
    assert math.isfinite(huge.cost_usd)
    infinite = usage_of(ep, {"prompt_tokens": float("inf"), "completion_tokens": 5}, {}, 0)
    assert infinite.estimated and infinite.tokens_in <= MAX_TOKENS


def test_an_upstreams_unstorable_text_is_replaced() -> None:
    """A lone surrogate or NUL in an upstream's error message reaches the stored reason and the caller's error:
    neither UTF-8 nor PostgreSQL takes it."""
    failure = UpstreamFailure("small", "server", "bad \ud800 input\x00 here")
    assert failure.message == "bad \ufffd input\ufffd here"
    failure.message.encode("utf-8")  # would raise UnicodeEncodeError with the surrogate
    assert storable_text("é 中 ok") == "é 中 ok"


def test_a_tool_call_answer_is_estimated_by_its_arguments() -> None:
    """An upstream bills a tool call's name and arguments as answer tokens: without usage they were booked as 0."""
    call = {"function": {"name": "get_weather", "arguments": "x" * 400}}
    answer = {"choices": [{"message": {"content": None, "tool_calls": [call]}}]}
    assert answer_token_estimate(answer) == pytest.approx(100 + len("get_weather") / 4)
    piece = {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "x" * 40}}]}}]}
    assert answer_token_estimate(piece) == pytest.approx(10)
    legacy = {"choices": [{"message": {"function_call": {"name": "f", "arguments": "y" * 8}}}]}
    assert answer_token_estimate(legacy) == pytest.approx(2.25)
    assert answer_token_estimate({"choices": [{"message": {"refusal": "no" * 8}}]}) == pytest.approx(4)


def test_a_number_past_a_floats_range_is_no_json() -> None:
    """-1e400 is read by Python as -inf, which the caller's JSON cannot carry (a 500 after a charged call)."""
    with pytest.raises(ValueError, match="range"):
        strict_json('{"logprob": -1e400}')
    assert strict_json('{"a": 1e300, "b": 123456789012345678901234567890}')["b"] == 123456789012345678901234567890


def test_a_tier_model_sets_a_floor_no_lower_min_tier_lowers() -> None:
    names = ["main", "mid", "brain"]
    headers = {"X-Tierwise-Min-Tier": "main"}
    for model, body_floor, head, floor in [
        ("tierwise/brain", {"min_tier": "main"}, {}, "brain"),
        ("tierwise/mid", None, headers, "mid"),
        ("tierwise/main", {"min_tier": 2}, {}, "brain"),  # a higher floor asked for stays
        ("tierwise/mid", {"min_tier": "nope"}, {}, "nope"),  # refused later, as on /route
    ]:
        req = ChatCompletionRequest.model_validate(
            {"model": model, "messages": [{"role": "user", "content": "hi"}], "tierwise": body_floor}
        )
        assert route_options(req, head, names).min_tier == floor, (model, body_floor, head)


def _stream_of(body: dict[str, Any], *events: dict[str, Any], then: BaseException) -> Stream:
    """A Stream over a body sending `events` as SSE, then raising `then` (a dropped connection)."""

    async def iter_any() -> Any:
        for event in events:
            yield f"data: {json.dumps(event)}\n\n".encode()
        raise then

    response = SimpleNamespace(content=SimpleNamespace(iter_any=iter_any), release=lambda: None)
    return Stream(endpoint_for("b", parse_tiers(TOML), {}), body, response)  # type: ignore[arg-type]


def test_a_stream_is_whole_once_every_asked_choice_finished() -> None:
    """A connection dropped after the answer finished ends the stream (the caller has it all); dropped while one
    of n = 2 choices is still open, it is a failure, as before any finish."""
    dropped = aiohttp.ServerDisconnectedError()

    def chunk(index: int, finish: str | None) -> dict[str, Any]:
        return {"choices": [{"index": index, "delta": {"content": "x"}, "finish_reason": finish}]}

    async def read(stream: Stream) -> list[dict[str, Any]]:
        return [e async for e in stream.events()]

    whole = _stream_of({"n": 2}, chunk(0, None), chunk(1, None), chunk(0, "stop"), chunk(1, "stop"), then=dropped)
    assert len(asyncio.run(read(whole))) == 4 and whole.finished
    nulls = _stream_of({}, {**chunk(0, None), "error": None}, {**chunk(0, "stop"), "error": None}, then=dropped)
    assert len(asyncio.run(read(nulls))) == 2  # `"error": null` is no error event, as OpenAI's SDK reads it
    half = _stream_of({"n": 2}, chunk(0, None), chunk(1, None), chunk(0, "stop"), then=dropped)
    with pytest.raises(UpstreamFailure):
        asyncio.run(read(half))
    assert not half.finished


def test_a_header_sent_in_utf8_is_read_as_sent() -> None:
    req = ChatCompletionRequest.model_validate({"model": "tierwise", "messages": [{"role": "user", "content": "hi"}]})
    as_starlette_reads_it = "café-Ω".encode().decode("latin-1")
    opts = route_options(req, {"x-tierwise-task": as_starlette_reads_it}, ["main"])
    assert opts.task == "café-Ω"
    assert route_options(req, {"x-tierwise-task": "caf\xe9"}, ["main"]).task == "caf\xe9"  # Latin-1 kept


def test_merge_request_appends_the_answers_after_the_conversation() -> None:
    body = {"messages": [{"role": "user", "content": "q"}], "temperature": 0.1}
    answers = [
        {"choices": [{"message": {"content": "one"}}]},
        {"choices": [{"message": {"content": None, "tool_calls": [{"id": "c"}]}}]},
    ]
    merged = merge_request(body, answers)
    assert merged["temperature"] == 0.1 and merged["messages"][0] == body["messages"][0]
    last = merged["messages"][-1]["content"]
    assert last.startswith(MERGE_PROMPT.split("{n}")[0] + "2 assistants")
    assert "### Answer 1\none" in last and '### Answer 2\n(tool calls) [{"id": "c"}]' in last
    assert len(body["messages"]) == 1  # the caller's request is not changed


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # OpenAI's milliseconds first
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after": "1e300"}, MAX_RETRY_AFTER_S),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past: now
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "later"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_as_seconds_milliseconds_or_a_date(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_of(headers) == seconds


def test_retry_after_as_a_future_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    assert 28 <= (retry_after_of({"retry-after": format_datetime(when, usegmt=True)}) or 0) <= 30


def test_the_retry_wait_honours_the_hint_within_its_limit() -> None:
    policy = RetryPolicy(retries=2, backoff_s=0.5, max_retry_after_s=10.0)
    assert policy.wait_s(1, UpstreamFailure("m", "server", "x", 500)) == 1.0  # no hint: the doubled backoff
    assert policy.wait_s(0, UpstreamFailure("m", "rate_limited", "x", 429, 0.1)) == 0.5  # never below the backoff
    assert 3.9 < (policy.wait_s(0, UpstreamFailure("m", "rate_limited", "x", 429, 4.0)) or 0) <= 4.0
    assert policy.wait_s(0, UpstreamFailure("m", "rate_limited", "x", 429, 11.0)) is None  # over the limit


def test_the_forwarded_wait_is_the_soonest_hint_rounded_up() -> None:
    trail = Trail()
    assert trail.retry_after_s() is None
    trail.hinted += [UpstreamFailure("a", "rate_limited", "x", 429, 7.5), UpstreamFailure("b", "server", "x", 503, 2.2)]
    assert trail.retry_after_s() == 3


class RoomStore:
    """The store's side of holding a worst case: `room` USD the decision may hold in all (its reservation plus what
    the cap leaves). On a stored session: tests/integration/test_openai_fallback.py, test_door_answer_bound.py."""

    def __init__(self, room: float):
        self.room = room

    def grow_reservation_within(self, decision_id: str, session_id: str, least: float, most: float) -> float | None:
        return None if least > self.room else min(max(most, least), self.room)


def test_a_tier_is_sent_what_the_cap_leaves_after_what_the_request_spent_already() -> None:
    """The session's cap leaves 3.0 for the request (its reservation 1.0 plus 2.0); mid is expected at 2.0 and its
    answer tokens cost 1.0 each (no input price)."""
    prices = {"a": {"input_per_1m": 0.0, "output_per_1m": 1e5}, "b": {"input_per_1m": 0.0, "output_per_1m": 1e6}}
    cfg = parse_tiers({"models": prices, "tiers": [{"name": "main", "model": "a"}, {"name": "mid", "model": "b"}]})
    rt: Any = SimpleNamespace(tiers=cfg, router=SimpleNamespace(expected_cost=lambda _p, _t: np.array([[1.0, 2.0]])))
    mid, body = cfg.tier("mid"), {"messages": [{"role": "user", "content": "p"}]}
    decision: Any = SimpleNamespace(tier="main", expected_cost_usd=1.0, budget_left_usd=2.0, session_id="s",
                                    decision_id="d")  # fmt: skip
    spent, trail = [0.0], Trail()
    prepare = prepare_for(rt, "p", 1, decision, None, lambda: spent[0], RoomStore(3.0), trail, 4096)  # type: ignore[arg-type]
    assert prepare is not None
    assert asyncio.run(prepare(mid, body)) == {**body, "max_tokens": 3} and trail.answer_limit == 3
    assert asyncio.run(prepare(mid, {**body, "max_tokens": 2})) == {**body, "max_tokens": 2}  # the caller's, lower
    spent[0] = 1.5  # a fusion tier's members answered before its judge failed: no room for mid's expected 2.0
    assert asyncio.run(prepare(mid, body)) is None
    assert asyncio.run(prepare(mid, {**body, "max_tokens": 1})) == {**body, "max_tokens": 1}  # 1.5 + 1.0 fits
    uncapped: Any = SimpleNamespace(tier="main", expected_cost_usd=1.0, budget_left_usd=None, session_id=None)
    limited = prepare_for(rt, "p", 1, uncapped, 2.5, lambda: 0.6, None, trail, 4096)  # type: ignore[arg-type]
    assert limited is not None and asyncio.run(limited(mid, body)) is None  # 0.6 + 2.0 over the request's max cost
    assert asyncio.run(limited(cfg.tier("main"), body)) == body  # the routed tier: routing checked it
    assert prepare_for(rt, "p", 1, uncapped, None, lambda: 9.0, None, trail, 4096) is None  # type: ignore[arg-type]


def test_a_caller_leaving_during_a_blocked_write_closes_the_relay_at_once() -> None:
    """uvicorn's ASGI 2.3: on a disconnect Starlette cancels the response; a write blocked on a caller who stopped
    reading takes the cancellation in `send`, with the body paused at its `yield`. Its cleanup (the relay's
    settlement) must run then, not when the garbage collector finds it (Starlette 1.10's StreamingResponse fails
    this test: its body is still paused when the response is done)."""
    from serving.proxy.service import ClosingStreamingResponse

    cleaned: list[str] = []

    async def body() -> Any:
        try:
            yield b"data: first\n\n"
            yield b"data: second\n\n"
        finally:
            cleaned.append("settled")

    async def scenario() -> None:
        written = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            if message.get("body"):
                written.set()
                await asyncio.sleep(3600)  # the socket's buffer is full: the write waits for a reader who left

        async def receive() -> dict[str, Any]:
            await written.wait()
            return {"type": "http.disconnect"}

        scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "POST", "path": "/", "headers": []}
        await ClosingStreamingResponse(body())(scope, receive, send)
        assert cleaned == ["settled"]  # right when the response is done, with the garbage collector off

    gc.disable()
    try:
        asyncio.run(scenario())
    finally:
        gc.enable()


def test_a_relay_closed_before_it_started_settles_once() -> None:
    """A caller gone before the response starts (ASGI 2.3 cancels the response before its body is read): closing
    a generator that never started runs none of it, so the relay's settlement runs from RelayBody.aclose."""
    from serving.proxy.service import RelayBody

    settled: list[str] = []

    async def relay() -> Any:
        try:
            yield b"data: first\n\n"
        finally:
            settled.append("by the relay")

    async def unstarted() -> None:
        settled.append("unstarted")

    async def scenario(read: bool) -> None:
        body = RelayBody(relay(), unstarted)
        if read:
            assert [chunk async for chunk in body] == [b"data: first\n\n"]
        await body.aclose()
        await body.aclose()  # a second close settles nothing more

    asyncio.run(scenario(read=False))
    assert settled == ["unstarted"]
    settled.clear()
    asyncio.run(scenario(read=True))
    assert settled == ["by the relay"]


def test_a_model_that_reads_another_limit_field_is_sent_it() -> None:
    from serving.proxy.upstream import _payload

    toml = {
        **TOML,
        "models": {**TOML["models"], "a": {**TOML["models"]["a"], "answer_limit_field": "max_completion_tokens"}},
    }
    ep = endpoint_for("a", parse_tiers(toml), {"A_KEY": "k"})
    sent = _payload(ep, {"messages": [], "max_tokens": 30}, stream=False)
    assert sent["max_completion_tokens"] == 30 and "max_tokens" not in sent and sent["model"] == "a"
    plain = _payload(endpoint_for("b", parse_tiers(TOML), {}), {"messages": [], "max_tokens": 30}, stream=False)
    assert plain["max_tokens"] == 30 and "max_completion_tokens" not in plain
    with pytest.raises(TiersConfigError, match="answer_limit_field"):
        parse_tiers({**TOML, "models": {**TOML["models"], "a": {**TOML["models"]["a"], "answer_limit_field": "max"}}})


def test_a_refusal_keeps_its_headers_as_an_openai_error() -> None:
    """A refusal that says when to retry says it on the door too; a 401 still names the scheme."""
    from serving.api.openai_compat import _openai_error
    from serving.errors import NotSettledYet, Unauthorized

    waiting = _openai_error(NotSettledYet("not settled yet"))
    assert waiting.status_code == 503 and waiting.headers["retry-after"] == "5"
    refused = _openai_error(Unauthorized("no key"))
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "retry-after" not in refused.headers


def test_an_upstream_error_message_is_cut_before_it_is_passed_on_or_stored() -> None:
    """A 100 KB error message from an upstream's 400 went whole into the decision's reason (review finding)."""
    import json

    from serving.proxy.upstream import MAX_UPSTREAM_MESSAGE, _failure_for_status

    body = json.dumps({"error": {"message": "x" * 100_000}})
    failure = _failure_for_status("m", 400, body, {})
    assert failure.kind == "client" and len(failure.message) == MAX_UPSTREAM_MESSAGE
