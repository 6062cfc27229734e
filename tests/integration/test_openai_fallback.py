"""Upstream failures through the OpenAI SDK: retries, fallback to the next tier up (recorded in the decision's
reason), one clean OpenAI-format error with the right status when nothing answers, and no charge for a failure."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from openai import OpenAI

from router.schema import parse_tiers
from serving.proxy.answer_bound import input_tokens, worst_case
from tests.conftest import TIERS_TOML
from tests.integration.conftest import CLIENT_KEY, bearer
from tests.integration.fake_upstream import FakeUpstream, Reply
from tests.integration.proxy_fixtures import proxy_fixtures
from tests.integration.test_openai_proxy import EASY, HARD, cost, get_session, session

# The upstream timeout the service is started with, and a "slow" reply, far past it. Not shorter: every other call
# here must be answered within it, and a full run on 2 cores has seen a call stall over 1.5 s (proxy_fixtures).
TIMEOUT_S = 5.0
SLOW_S = 60.0


served, up, url, sdk = proxy_fixtures("fallback", upstream_timeout_s=TIMEOUT_S)


def ask(sdk: OpenAI, sid: str, prompt: str = EASY, **kwargs: object) -> object:
    return sdk.chat.completions.with_raw_response.create(
        model="tierwise",
        messages=[{"role": "user", "content": prompt}],
        extra_body={"tierwise": {"session_id": sid, **kwargs.pop("tierwise", {})}},  # type: ignore[dict-item]
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "failure",
    [Reply(status=503), Reply(status=429), Reply(status=500), Reply(delay_s=SLOW_S)],
    ids=["503", "429", "500", "timeout"],
)
def test_retries_then_falls_back_to_the_next_tier_up(sdk: OpenAI, url: str, up: FakeUpstream, failure: Reply) -> None:
    sid = session(url, cap_usd=1.0)
    up.script("small", failure, failure)  # the first attempt and its one retry
    up.script("medium", Reply(text="from medium", usage=(20, 10)))
    raw = ask(sdk, sid)
    answer = raw.parse()  # type: ignore[attr-defined]
    assert answer.choices[0].message.content == "from medium"
    assert raw.headers["x-tierwise-tier"] == "mid"  # type: ignore[attr-defined]
    info = answer.model_extra["tierwise"]
    assert (info["routed_tier"], info["tier"], info["fallback_from"]) == ("main", "mid", ["main"])
    assert len(up.calls("small")) == 2 and len(up.calls("medium")) == 1
    s = get_session(url, sid)
    assert s["spent_usd"] == pytest.approx(cost("medium", 20, 10)) and s["reserved_usd"] == pytest.approx(0)
    reason = s["recent_decisions"][0]["reason"]
    assert "fell back from tier(s) main" in reason and "small attempt 2" in reason


def test_a_retry_that_succeeds_does_not_fall_back(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    sid = session(url, cap_usd=1.0)
    up.script("small", Reply(status=502), Reply(text="second try"))
    raw = ask(sdk, sid)
    assert raw.parse().choices[0].message.content == "second try"  # type: ignore[attr-defined]
    assert raw.headers["x-tierwise-tier"] == "main" and up.calls("medium") == []  # type: ignore[attr-defined]


def test_a_refused_key_falls_back_at_once(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    up.script("small", Reply(status=401))
    raw = ask(sdk, session(url))
    assert raw.headers["x-tierwise-tier"] == "mid" and len(up.calls("small")) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("failure", "error", "status"),
    [
        (Reply(status=429), openai.RateLimitError, 429),
        (Reply(status=503), openai.InternalServerError, 502),
        (Reply(delay_s=SLOW_S), openai.InternalServerError, 504),
    ],
    ids=["429", "503", "timeout"],
)
def test_nothing_answers_one_clean_error_nothing_charged(
    sdk: OpenAI, url: str, up: FakeUpstream, failure: Reply, error: type[openai.APIStatusError], status: int
) -> None:
    sid = session(url, cap_usd=1.0)
    up.script("large", failure, failure)  # brain has no tier above it: two attempts, then the error
    with pytest.raises(error) as err:
        ask(sdk, sid, HARD)
    assert err.value.status_code == status
    assert set(err.value.body) >= {"message", "type", "code", "param"}  # type: ignore[arg-type]
    assert "no upstream answered (tier(s) tried: brain); last: large" in err.value.body["message"]  # type: ignore[index]
    assert len(up.calls("large")) == 2 and up.calls("small") == up.calls("medium") == []
    s = get_session(url, sid)
    assert s["spent_usd"] == 0 and s["reserved_usd"] == pytest.approx(0)
    assert "not served" in s["recent_decisions"][0]["reason"]
    decision_id = s["recent_decisions"][0]["decision_id"]  # the error names the decision it settled
    assert err.value.response.headers["x-tierwise-decision-id"] == decision_id
    assert err.value.body["decision_id"] == decision_id  # type: ignore[index]


def test_when_every_tier_fails_the_error_names_each_tier_tried(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    for model in ("small", "medium", "large"):
        up.script(model, Reply(status=503), Reply(status=503))
    with pytest.raises(openai.APIStatusError) as err:
        ask(sdk, session(url, cap_usd=1.0))
    assert err.value.status_code == 502
    assert "no upstream answered (tier(s) tried: main, mid, brain); last: large" in err.value.body["message"]  # type: ignore[index]
    assert [len(up.calls(m)) for m in ("small", "medium", "large")] == [2, 2, 2]


def test_the_upstream_refusing_the_request_goes_back_as_is(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    sid = session(url, cap_usd=1.0)
    up.script("small", Reply(status=400, error_message="tools[0].function.name is invalid"))
    with pytest.raises(openai.BadRequestError) as err:
        ask(sdk, sid)
    assert "tools[0].function.name is invalid" in err.value.message
    assert up.calls("medium") == []  # another tier would refuse it too
    assert get_session(url, sid)["spent_usd"] == 0


def test_streaming_falls_back_before_the_first_byte(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    up.script("small", Reply(status=503), Reply(status=503))
    up.script("medium", Reply(text="streamed by medium"))
    raw = ask(sdk, session(url), stream=True)
    chunks = list(raw.parse())  # type: ignore[attr-defined]
    assert raw.headers["x-tierwise-tier"] == "mid"  # type: ignore[attr-defined]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed by medium"


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (Reply(text="a b c d e f", chunks=6, die_after_chunks=2), "mid-stream"),
        # A body that ends cleanly before any finish_reason or [DONE] (an upstream, or a proxy before it, gave up)
        # is no answer either: no truncated text passed off as whole.
        (Reply(text="a b c d e f", chunks=6, cut_after_chunks=2), "the stream ended before its answer did"),
    ],
    ids=["dropped", "cut-short"],
)
def test_a_stream_failing_midway_is_an_error_event_and_not_charged(
    sdk: OpenAI, url: str, up: FakeUpstream, reply: Reply, says: str
) -> None:
    sid = session(url, cap_usd=1.0)
    up.script("small", reply)
    with pytest.raises(openai.APIError) as err:
        list(ask(sdk, sid, stream=True).parse())  # type: ignore[attr-defined]
    assert "mid-stream" in str(err.value) and says in str(err.value)
    s = get_session(url, sid)
    assert s["spent_usd"] == 0 and s["reserved_usd"] == pytest.approx(0)
    assert "mid-stream" in s["recent_decisions"][0]["reason"]


@pytest.mark.parametrize("after_finish", ["drop", "hang"])
def test_a_whole_streamed_answer_without_done_ends_cleanly_and_is_charged(
    sdk: OpenAI, url: str, up: FakeUpstream, after_finish: str
) -> None:
    """The answer finished and its usage came, then the upstream dropped the connection or held the body open with
    no [DONE]: the caller has the whole answer, so the stream ends cleanly (it ended in an error event, after the
    read timeout when held open) and its usage is charged (nothing was)."""
    sid = session(url, cap_usd=1.0)
    up.script("small", Reply(text="a whole answer", usage=(100, 50), after_finish=after_finish))
    start = time.monotonic()
    chunks = list(ask(sdk, sid, stream=True).parse())  # type: ignore[attr-defined]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a whole answer"
    assert time.monotonic() - start < TIMEOUT_S  # not held until the read timeout
    assert get_session(url, sid)["spent_usd"] == pytest.approx(cost("small", 100, 50))


def test_an_answer_holding_nan_is_an_upstream_failure_and_falls_back(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    """Python reads NaN from JSON, the caller's JSON could not carry it: a broken answer, retried, then fallback."""
    sid = session(url, cap_usd=1.0)
    broken = Reply(extra={"system_fingerprint": float("nan")})
    up.script("small", broken, broken)
    up.script("medium", Reply(text="from medium", usage=(20, 10)))
    answer = ask(sdk, sid).parse()  # type: ignore[attr-defined]
    assert answer.choices[0].message.content == "from medium"
    reason = get_session(url, sid)["recent_decisions"][0]["reason"]
    assert "fell back from tier(s) main" in reason and "not JSON" in reason


def held_at_most(messages: list[dict[str, str]], tier: str, max_tokens: int) -> float:
    """The worst case a door call in a capped session holds on `tier` with an answer of at most `max_tokens`."""
    tiers = parse_tiers(TIERS_TOML)
    return worst_case(tiers, tiers.tier(tier), {"messages": messages}).usd(max_tokens)


def routed_easy(url: str, **options: int) -> dict:
    routed = httpx.post(f"{url}/route", json={"prompt": EASY, **options}, headers=bearer(CLIENT_KEY)).json()
    assert routed["tier"] == "main"
    return routed


def test_falling_back_never_spends_past_the_sessions_cap(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    routed = routed_easy(url)
    sid = session(url, cap_usd=2 * routed["expected_cost_usd"])  # room for main, not for mid (5x its price) or brain
    up.script("small", Reply(status=503), Reply(status=503))
    up.script("medium", Reply(text="from medium", usage=(20, 10)))
    with pytest.raises(openai.APIStatusError) as err:
        ask(sdk, sid)
    message = err.value.body["message"]  # type: ignore[index]
    assert "(tier(s) tried: main; skipped (over the max cost or the session's cap): mid, brain)" in message
    assert up.calls("medium") == [] and up.calls("large") == []
    s = get_session(url, sid)
    assert s["spent_usd"] == 0 and s["reserved_usd"] == pytest.approx(0)
    assert (
        "fallback skipped (over the request's max cost or the session's cap): mid, brain"
        in (s["recent_decisions"][0]["reason"])
    )


def test_a_fallback_gets_only_the_room_the_cap_has_now(url: str, up: FakeUpstream) -> None:
    """Two requests share a capped session. A is routed to main; then B takes, for mid, what A's routing saw left.
    When A's main fails, falling back to mid must not spend past the cap: B holds that room now."""
    # Expected costs as the door prices them: the input it sends (its messages as it counts them), not the prompt's.
    messages = [{"role": "user", "content": EASY}]
    door_input = input_tokens({"messages": messages})
    main_cost = routed_easy(url, input_tokens=door_input)["expected_cost_usd"]
    as_mid = {"prompt": EASY, "min_tier": "mid", "cost_weight_per_usd": 1e9, "input_tokens": door_input}
    mid = httpx.post(f"{url}/route", json=as_mid, headers=bearer(CLIENT_KEY)).json()
    assert mid["tier"] == "mid"
    # A limits its answer to 100 tokens: it holds main's worst case of that, short of mid's; B holds the rest.
    a_holds = max(main_cost, held_at_most(messages, "main", 100))
    assert held_at_most(messages, "mid", 100) > a_holds
    sid = session(url, cap_usd=a_holds + max(mid["expected_cost_usd"], held_at_most(messages, "mid", 1)) * 1.0001)
    # A's main answers 503 only once B's call to mid is in flight too (or after 30 s); B's answer comes then, and
    # costs at least what B reserved: settled or not, B leaves A no room.
    up.script("small", Reply(status=503, delay_s=30.0, until_in_flight=2), Reply(status=503))
    dear = (int(20 * mid["expected_cost_usd"] * 1e6) + 1, 0)  # tokens in at $1 per million: 20x the reservation
    up.script("medium", Reply(text="for B", usage=dear, delay_s=30.0, until_in_flight=2), Reply(text="for A"))

    def chat(model: str, **limit: int) -> httpx.Response:
        body = {"model": model, "messages": messages, "tierwise": {"session_id": sid}, **limit}
        return httpx.post(f"{url}/v1/chat/completions", json=body, headers=bearer(CLIENT_KEY), timeout=60)

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(chat, "tierwise", max_tokens=100)
        deadline = time.monotonic() + 30
        while not up.calls("small") and time.monotonic() < deadline:  # A routed, reserved and called main
            time.sleep(0.01)
        b = pool.submit(chat, "tierwise/mid")
        answer_a, answer_b = a.result(), b.result()
    assert answer_b.status_code == 200, answer_b.text
    assert answer_a.status_code == 502, answer_a.text
    assert "skipped (over the max cost or the session's cap): mid, brain" in answer_a.json()["error"]["message"]
    assert len(up.calls("medium")) == 1 and up.calls("large") == []  # only B's
    assert get_session(url, sid)["reserved_usd"] == pytest.approx(0)


def test_falling_back_respects_the_requests_max_cost(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    limit = 2 * routed_easy(url)["expected_cost_usd"]
    up.script("small", Reply(status=503), Reply(status=503))
    with pytest.raises(openai.APIStatusError) as refused:
        ask(sdk, session(url), tierwise={"max_cost_usd": limit})
    assert refused.value.status_code == 502  # the upstream's failure, not a routing refusal
    assert len(up.calls("small")) == 2 and up.calls("medium") == [] and up.calls("large") == []


def test_a_provider_out_of_credit_falls_back_at_once(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    """An upstream's 402 is the operator's account, not the caller's request: like a refused key it falls back
    (it was passed on as a 402, which callers read as their own session's cap; a review's find)."""
    up.script("small", Reply(status=402))
    up.script("medium", Reply(text="from medium"))
    raw = ask(sdk, session(url))
    assert raw.headers["x-tierwise-tier"] == "mid" and len(up.calls("small")) == 1  # type: ignore[attr-defined]


def test_half_an_emoji_in_an_answer_or_a_model_name_is_no_500(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    """A lone surrogate (JSON's escaped half of an emoji) in the upstream's answer was a 500 after the answer was
    charged, where the stream passed it on; in the request's model name it was a 500 outside OpenAI's shape."""
    sid = session(url, cap_usd=1.0)
    up.script("small", Reply(text="half an emoji \ud83d"))
    raw = ask(sdk, sid)
    assert raw.http_response.status_code == 200  # type: ignore[attr-defined]
    assert raw.parse().choices[0].message.content == "half an emoji \ud83d"  # type: ignore[attr-defined]
    assert get_session(url, sid)["spent_usd"] > 0
    body = b'{"model": "tierwise\\ud800", "messages": [{"role": "user", "content": "hi"}]}'
    headers = {**bearer(CLIENT_KEY), "Content-Type": "application/json"}
    r = httpx.post(f"{url}/v1/chat/completions", content=body, headers=headers, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text


def test_a_null_stream_is_no_stream(url: str, up: FakeUpstream) -> None:
    """OpenAI's spec lets `stream` be null; it was refused as "not a valid boolean"."""
    up.script("small", Reply(text="plain"))
    body = {"model": "tierwise", "messages": [{"role": "user", "content": EASY}], "stream": None}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=bearer(CLIENT_KEY), timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "plain", r.text
