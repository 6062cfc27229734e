"""A session's cap bounds what door calls spend, however long the upstream would answer: in a capped session the
door limits each answer's length to what the cap leaves and holds that worst case until the call ends. What calls
in flight hold makes other requests wait (402, session open, Retry-After), never freezes the session; spending the
cap does."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI

from router.schema import parse_tiers
from serving.proxy.answer_bound import worst_case
from tests.conftest import TIERS_TOML
from tests.integration.conftest import CLIENT_KEY, bearer
from tests.integration.fake_upstream import FakeUpstream, Reply
from tests.integration.proxy_fixtures import proxy_fixtures, streamed_in_session
from tests.integration.test_openai_proxy import EASY, get_session, session

ANSWER_TOKENS = 4096  # the service's session_answer_tokens here (the default)
LONG = Reply(text="word " * 2000, usage=(10, 2000))  # an upstream that would answer 2,000 tokens


served, up, url, sdk = proxy_fixtures("answer_bound", session_answer_tokens=ANSWER_TOKENS)


def worst(messages: list[dict[str, str]], tier: str, tokens: int, **body: object) -> float:
    tiers = parse_tiers(TIERS_TOML)
    return worst_case(tiers, tiers.tier(tier), {"messages": messages, **body}).usd(tokens)


def chat(url: str, sid: str | None, **body: object) -> httpx.Response:
    payload = {"model": "tierwise", "messages": [{"role": "user", "content": EASY}], **body}
    if sid is not None:
        payload["tierwise"] = {"session_id": sid}
    return httpx.post(f"{url}/v1/chat/completions", json=payload, headers=bearer(CLIENT_KEY), timeout=60)


def route(url: str, sid: str) -> httpx.Response:
    return httpx.post(f"{url}/route", json={"prompt": EASY, "session_id": sid}, headers=bearer(CLIENT_KEY))


def test_concurrent_long_answers_never_spend_past_the_cap(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    """A review's case: 8 door calls at once in a session with a tiny cap, each upstream answering 2,000 tokens where
    a few were expected, spent 64 times the cap. Now the first holds the whole cap while it answers (its answer
    cut to what the cap pays for), the others wait without freezing the session, and the spend stays under the cap."""
    messages = [{"role": "user", "content": EASY}]
    expected = route(url, session(url))
    assert expected.status_code == 200 and expected.json()["tier"] == "main"
    cap = 3 * expected.json()["expected_cost_usd"]
    per_token = worst(messages, "main", 1) - worst(messages, "main", 0)
    limit = int((cap - worst(messages, "main", 0)) / per_token + 1e-9)
    assert 1 <= limit < 2000  # the cap pays for some of the answer, not all of it
    sid = session(url, cap_usd=cap)
    hold = threading.Event()
    up.script("small", Reply(text=LONG.text, usage=LONG.usage, hold=hold))
    stream, decision_id = streamed_in_session(sdk, sid, EASY)  # the first call: routed, upstream held
    try:
        [(_, sent)] = up.requests
        assert sent["max_tokens"] == limit
        held = get_session(url, sid)
        assert held["reserved_usd"] == pytest.approx(cap, rel=1e-6)  # the whole cap: that answer's worst case fits
        assert worst(messages, "main", limit) <= held["reserved_usd"]
        up.default = LONG
        with ThreadPoolExecutor(7) as pool:
            others = list(pool.map(lambda _: chat(url, sid), range(7)))
        for r in others:
            assert r.status_code == 402, r.text
            assert r.headers["retry-after"] == "2"
            error = r.json()["error"]
            assert error["code"] == "over_budget" and error["session"]["status"] == "open"
            assert "calls in flight hold" in error["message"] and error["session"]["held_by"] == [decision_id]
        busy = route(url, sid)  # /route waits for the door's call too; the session stays open
        assert busy.status_code == 402 and busy.json()["status"] == "open" and busy.headers["retry-after"] == "2"
        assert busy.json()["held_by"] == [decision_id]  # what holds the room (an admin may release one left behind)
        assert get_session(url, sid)["status"] == "open"
    finally:
        hold.set()
    chunks = list(stream)
    assert chunks[-1].choices[-1].finish_reason == "length"
    after = get_session(url, sid)
    assert after["reserved_usd"] == pytest.approx(0)
    assert after["spent_usd"] <= cap * (1 + 1e-9)  # was 64x over
    assert after["spent_usd"] == pytest.approx((10 * 0.2 + limit * 0.2) / 1e6)
    assert len(up.requests) == 1  # no waiting call reached an upstream
    # The cap is spent now (up to a fraction of a token): spending it, not holding it, freezes the session.
    frozen = route(url, sid)
    assert frozen.status_code == 402 and frozen.json()["status"] == "frozen"
    assert decision_id in {d["decision_id"] for d in after["recent_decisions"]}


def test_the_callers_own_limit_is_kept_in_its_field_and_held(url: str, up: FakeUpstream) -> None:
    messages = [{"role": "user", "content": EASY}]
    sid = session(url, cap_usd=1.0)
    up.default = LONG
    r = chat(url, sid, max_completion_tokens=50)
    assert r.status_code == 200, r.text
    [(_, sent)] = up.requests
    assert sent["max_completion_tokens"] == 50 and "max_tokens" not in sent
    assert r.json()["tierwise"]["max_tokens"] == 50 and r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["tierwise"]["cost_usd"] == pytest.approx((10 * 0.2 + 50 * 0.2) / 1e6)
    # n choices: each may be as long, so the worst case held is n times the answer's
    assert worst(messages, "main", 50, n=3) - worst(messages, "main", 0, n=3) == pytest.approx(
        3 * (worst(messages, "main", 50) - worst(messages, "main", 0))
    )


def test_a_caller_limit_over_what_the_cap_leaves_is_lowered(url: str, up: FakeUpstream) -> None:
    messages = [{"role": "user", "content": EASY}]
    cap = worst(messages, "main", 300)
    sid = session(url, cap_usd=cap)
    up.default = LONG
    r = chat(url, sid, max_tokens=100_000)
    assert r.status_code == 200, r.text
    [(_, sent)] = up.requests
    assert sent["max_tokens"] in (299, 300)  # what the cap pays for (rounding of the cap's last token)
    assert get_session(url, sid)["spent_usd"] <= cap * (1 + 1e-9)


@pytest.mark.parametrize("sessionless", [False, True], ids=["uncapped session", "no session"])
def test_without_a_cap_the_answer_is_not_limited(url: str, up: FakeUpstream, sessionless: bool) -> None:
    r = chat(url, None if sessionless else session(url))
    assert r.status_code == 200, r.text
    [(_, sent)] = up.requests
    assert "max_tokens" not in sent and "max_completion_tokens" not in sent
    assert "max_tokens" not in r.json()["tierwise"]


def test_a_caller_who_leaves_before_the_first_event_releases_what_the_call_held(url: str, up: FakeUpstream) -> None:
    """The settlement of a stream whose caller left was cancelled with the response: the call's worst case stayed
    held for good, and the session answered 402 "retry" to everything after (a review's find)."""
    sid = session(url, cap_usd=0.01)
    up.script("small", Reply(text="hello " * 50, usage=(10, 50), first_byte_delay_s=1.5))
    body = json.dumps({"model": "tierwise", "stream": True, "messages": [{"role": "user", "content": EASY}],
                       "tierwise": {"session_id": sid}}).encode()  # fmt: skip
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as caller:
        caller.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: tierwise\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {CLIENT_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 30
        while not get_session(url, sid)["reserved_usd"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert get_session(url, sid)["reserved_usd"] > 0  # routed, its worst case held
    # the caller has left, before the upstream's first event
    deadline = time.monotonic() + 30
    while get_session(url, sid)["reserved_usd"] and time.monotonic() < deadline:
        time.sleep(0.1)
    after = get_session(url, sid)
    assert after["reserved_usd"] == 0 and after["recent_decisions"][0]["settled"]
    assert route(url, sid).status_code == 200


@pytest.mark.parametrize(("field", "value"), [("n", 3.0), ("max_tokens", 50.0), ("max_tokens", 0),
                                              ("max_completion_tokens", "50"), ("n", True), ("n", 129),
                                              ("max_tokens", 10**400), ("max_completion_tokens", 2**31)])  # fmt: skip
def test_what_bounds_an_answer_must_be_a_whole_number(url: str, up: FakeUpstream, field: str, value: object) -> None:
    """A lax upstream reads `n: 3.0` as 3 choices, which the door had counted as 1; a limit it cannot read was
    replaced by the default one; a limit of 10**400 overflowed the worst-case arithmetic (a 500)."""
    r = chat(url, session(url, cap_usd=1.0), **{field: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field and up.requests == []


def test_an_upstream_without_usage_is_charged_no_more_answer_than_the_limit(url: str, up: FakeUpstream) -> None:
    """Without usage the door estimates the answer (ASCII at characters / 4): an upstream that honours the limit with
    long tokens (6 characters each here) was charged past it, and past the cap."""
    messages = [{"role": "user", "content": EASY}]
    sid = session(url, cap_usd=1.0)
    up.default = Reply(text=" hello" * 40, usage=None)  # 40 tokens of 6 characters: 60 by the estimate
    r = chat(url, sid, max_tokens=40)
    assert r.status_code == 200, r.text
    assert r.json()["tierwise"]["max_tokens"] == 40 and r.json()["tierwise"]["tokens_out"] == 40
    assert get_session(url, sid)["spent_usd"] <= worst(messages, "main", 40)  # what the call held


def test_a_prompt_in_chinese_is_held_at_about_a_token_a_character(url: str, up: FakeUpstream) -> None:
    """Input held at characters / 4 let a prompt in Chinese (about a token a character) spend past the cap: the
    upstream billed 4 times the input the door had held for it (a review's find)."""
    cap = 3e-4
    sid = session(url, cap_usd=cap)
    prompt = "请解释为什么天空是蓝色的" * 84  # 1,008 characters, no ASCII
    up.default = Reply(text="答" * 4000, usage=(len(prompt), 4000))  # a token a character, as tokenizers bill it
    r = chat(url, sid, messages=[{"role": "user", "content": prompt}])
    assert r.status_code == 200, r.text
    assert get_session(url, sid)["spent_usd"] <= cap * (1 + 1e-9)
