"""A fusion tier through the OpenAI SDK: members in parallel, the judge merges, its answer (streamed when asked)
returned; the cost is the sum of the real usages; a member that fails (dies mid-answer) is left out and said so."""

from __future__ import annotations

import json

import openai
import pytest
from openai import OpenAI

from serving.proxy.fusion import JUDGE_TOKENS_PER_ANSWER_TOKEN, MERGE_PROMPT
from serving.proxy.tokens import text_tokens
from tests.integration.fake_upstream import FakeUpstream, Reply
from tests.integration.proxy_fixtures import proxy_fixtures
from tests.integration.test_openai_proxy import EASY, cost, get_session, session

MERGE_HEAD = MERGE_PROMPT.split("{n}")[0]


served, up, url, sdk = proxy_fixtures("fusion", fusion=True)


def ask_panel(sdk: OpenAI, sid: str, **kwargs: object) -> object:
    return sdk.chat.completions.with_raw_response.create(
        model="tierwise/brain",  # the fusion tier
        messages=[{"role": "system", "content": "be exact"}, {"role": "user", "content": EASY}],
        extra_body={"tierwise": {"session_id": sid}},
        **kwargs,  # type: ignore[arg-type]
    )


def test_members_answer_in_parallel_and_the_judge_merges(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    sid = session(url, cap_usd=1.0)
    # Each member's answer waits until both are in flight (or 30 s): called one after the other, they would not meet.
    up.script("small", Reply(text="answer A", usage=(10, 3), delay_s=30.0, until_in_flight=2))
    up.script("medium", Reply(text="answer B", usage=(11, 4), delay_s=30.0, until_in_flight=2))
    up.script("large", Reply(text="merged answer", usage=(60, 9)))
    raw = ask_panel(sdk, sid)
    answer = raw.parse()  # type: ignore[attr-defined]
    assert answer.choices[0].message.content == "merged answer"
    assert raw.headers["x-tierwise-model"] == "fusion:brain" and "x-tierwise-left-out" not in raw.headers  # type: ignore[attr-defined]
    assert up.max_in_flight == 2  # both members were waiting at once: called in parallel
    [judged] = up.calls("large")
    assert judged["messages"][:2] == up.calls("small")[0]["messages"]  # the caller's conversation, then the merge
    merge = judged["messages"][-1]["content"]
    assert merge.startswith(MERGE_HEAD) and "### Answer 1\nanswer A" in merge and "### Answer 2\nanswer B" in merge
    total = cost("small", 10, 3) + cost("medium", 11, 4) + cost("large", 60, 9)
    info = answer.model_extra["tierwise"]
    assert info["cost_usd"] == pytest.approx(total)
    assert info["fusion"] == {"answered": ["small", "medium"], "left_out": [], "judge": "large"}
    assert get_session(url, sid)["spent_usd"] == pytest.approx(total)


def test_a_member_dying_mid_answer_is_left_out_and_said_so(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    sid = session(url, cap_usd=1.0)
    dying = Reply(text="never finished", die_after_chunks=1)
    up.script("medium", dying, dying)  # its attempt and its retry both die mid-body
    up.script("small", Reply(text="answer A", usage=(10, 3)))
    up.script("large", Reply(text="judged", usage=(40, 5)))
    raw = ask_panel(sdk, sid)
    answer = raw.parse()  # type: ignore[attr-defined]
    assert answer.choices[0].message.content == "judged"
    assert raw.headers["x-tierwise-left-out"] == "medium"  # type: ignore[attr-defined]
    assert answer.model_extra["tierwise"]["fusion"]["left_out"] == ["medium"]
    merge = up.calls("large")[0]["messages"][-1]["content"]
    assert "### Answer 1\nanswer A" in merge and "### Answer 2" not in merge and "never finished" not in merge
    s = get_session(url, sid)
    assert s["spent_usd"] == pytest.approx(cost("small", 10, 3) + cost("large", 40, 5))  # the dead member is free
    assert "fusion member(s) left out: medium" in s["recent_decisions"][0]["reason"]


def test_the_judge_streams_when_asked(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    sid = session(url, cap_usd=1.0)
    up.script("large", Reply(text="the judge streams this", chunks=4, usage=(50, 6)))
    raw = ask_panel(sdk, sid, stream=True)
    chunks = list(raw.parse())  # type: ignore[attr-defined]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "the judge streams this"
    assert chunks[0].model_extra["tierwise"]["fusion"]["answered"] == ["small", "medium"]
    assert up.calls("small")[0]["stream"] is False and up.calls("large")[0]["stream"] is True
    expected = cost("small", 10, 5) + cost("medium", 10, 5) + cost("large", 50, 6)  # members: the default usage
    assert get_session(url, sid)["spent_usd"] == pytest.approx(expected)


def test_every_member_failing_fails_the_tier(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    sid = session(url, cap_usd=1.0)
    up.script("small", Reply(status=503), Reply(status=503))
    up.script("medium", Reply(status=500), Reply(status=500))
    with pytest.raises(openai.InternalServerError) as err:
        ask_panel(sdk, sid)
    assert err.value.status_code == 502 and "every member" in err.value.message
    assert up.calls("large") == []  # no judge without answers
    assert get_session(url, sid)["spent_usd"] == 0


def test_a_failing_judge_still_books_what_the_members_cost(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    """The members answered and their upstreams bill them: a session's cap must see that spend, or a panel whose
    judge keeps failing would burn member tokens that no cap counts."""
    sid = session(url, cap_usd=1.0)
    up.script("small", Reply(text="answer A", usage=(1000, 300)))
    up.script("medium", Reply(text="answer B", usage=(1100, 400)))
    up.script("large", Reply(status=503), Reply(status=503))  # the judge, and its retry
    with pytest.raises(openai.APIStatusError) as err:
        ask_panel(sdk, sid)
    assert err.value.status_code == 502
    s = get_session(url, sid)
    assert s["spent_usd"] == pytest.approx(cost("small", 1000, 300) + cost("medium", 1100, 400))
    assert s["reserved_usd"] == pytest.approx(0)
    assert "not served: charged the 2 call(s) that answered" in s["recent_decisions"][0]["reason"]


def test_in_a_capped_session_every_call_of_the_panel_is_limited_to_what_the_cap_leaves(
    sdk: OpenAI, url: str, up: FakeUpstream
) -> None:
    """Members and judge each get the same answer limit, the one whose worst case (members' answers, the judge
    reading them and answering) fits the cap; answers that would run to 2,000 tokens stay within it."""
    cap = 0.01
    sid = session(url, cap_usd=cap)
    long = "word " * 2000
    up.script("small", Reply(text=long, usage=(10, 2000)))
    up.script("medium", Reply(text=long, usage=(11, 2000)))
    answer = ask_panel(sdk, sid).parse()  # type: ignore[attr-defined]
    limit = answer.model_extra["tierwise"]["max_tokens"]
    # small 0.2 + medium 2.0 out, the judge (large) reading both answers at 10.0 and writing at 30.0, per 1M tokens
    assert 100 < limit < (cap / ((0.2 + 2.0 + 2 * 10.0 + 30.0) / 1e6))
    sent = [body for _, body in up.requests]
    assert sorted(b["model"] for b in sent[:2]) == ["medium", "small"] and sent[2]["model"] == "large"
    assert all(b["max_tokens"] == limit for b in sent)
    spent = get_session(url, sid)
    assert spent["reserved_usd"] == pytest.approx(0) and spent["spent_usd"] <= cap
    # what each call was charged: the members' answers cut at the limit
    assert spent["spent_usd"] >= cost("small", 10, limit) + cost("medium", 11, limit)


def test_the_judge_reads_no_more_of_each_answer_than_the_cap_holds(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    """Answers dense in characters that JSON escapes (a control character is 6 characters escaped) made the judge's
    input, estimated at characters / 4 of its messages, pass what the cap held for it (a review's find)."""
    cap = 0.01
    sid = session(url, cap_usd=cap)
    dense = "\x01" * 20_000
    up.script("small", Reply(text=dense, usage=(10, 5000)))
    up.script("medium", Reply(text=dense, usage=(11, 5000)))
    up.script("large", Reply(text="merged " * 3000, usage=None))  # no usage: the door estimates the judge's call
    answer = ask_panel(sdk, sid).parse()  # type: ignore[attr-defined]
    limit = answer.model_extra["tierwise"]["max_tokens"]
    merge = up.calls("large")[0]["messages"][-1]["content"]
    for part in merge.split("### Answer ")[1:]:
        answer_text = part.split("\n", 1)[1].rstrip("\n")
        assert text_tokens(json.dumps(answer_text, ensure_ascii=False)[1:-1]) <= JUDGE_TOKENS_PER_ANSWER_TOKEN * limit
    spent = get_session(url, sid)
    assert spent["reserved_usd"] == pytest.approx(0) and spent["spent_usd"] <= cap * (1 + 1e-9)
