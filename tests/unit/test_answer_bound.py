"""The worst case of a door call as a function of its answer limit, and the limit a budget leaves."""

from __future__ import annotations

import json
import math

import pytest

from router.schema import parse_tiers
from serving.proxy.answer_bound import (
    IMAGE_TOKENS,
    WorstCase,
    answer_tokens_at_most,
    asked_limit,
    in_field,
    input_tokens,
    with_limit,
    worst_case,
)
from serving.proxy.fusion import MERGE_PROMPT, fit, merge_request
from serving.proxy.tokens import json_tokens, text_tokens
from tests.conftest import TIERS_TOML

MESSAGES = [{"role": "user", "content": "x" * 400}]
TOKENS_IN = math.ceil(len(json.dumps(MESSAGES)) / 4)  # all ASCII


def test_a_single_tier_pays_its_input_and_each_choices_answer() -> None:
    tiers = parse_tiers(TIERS_TOML)
    w = worst_case(tiers, tiers.tier("mid"), {"messages": MESSAGES, "n": 3})
    assert w.fixed_usd == pytest.approx(TOKENS_IN * 1.0 / 1e6)  # medium: 1.0 in, 2.0 out per 1M
    assert w.per_token_usd == pytest.approx(3 * 2.0 / 1e6)


def test_an_input_the_door_counted_already_is_priced_as_given() -> None:
    """The door counts a request's input once (routing and the hold price the same count): a long conversation is
    not walked again for each tier a capped session's call may be served by."""
    tiers = parse_tiers(TIERS_TOML)
    body = {"messages": MESSAGES}
    assert worst_case(tiers, tiers.tier("mid"), body, input_tokens(body)) == worst_case(tiers, tiers.tier("mid"), body)
    assert worst_case(tiers, tiers.tier("mid"), body, 1_000_000).fixed_usd == pytest.approx(1.0)


def test_a_fusion_tier_pays_its_members_and_a_judge_reading_their_answers() -> None:
    raw = {**TIERS_TOML, "tiers": [*TIERS_TOML["tiers"][:2], {"name": "brain", "kind": "fusion",
           "members": ["small", "medium"], "judge": "large"}]}  # fmt: skip
    tiers = parse_tiers(raw)
    w = worst_case(tiers, tiers.tier("brain"), {"messages": MESSAGES})
    merge_tokens = math.ceil(len(json.dumps(MERGE_PROMPT)) / 4) + 16
    assert w.fixed_usd == pytest.approx((TOKENS_IN * (0.2 + 1.0) + (TOKENS_IN + merge_tokens) * 10.0) / 1e6)
    # each member's answer is read by the judge at up to 2 estimated tokens per answer token
    assert w.per_token_usd == pytest.approx((0.2 + 2.0 + 2 * 2 * 10.0 + 30.0) / 1e6)


def test_the_limit_a_budget_leaves() -> None:
    w = WorstCase(fixed_usd=1e-4, per_token_usd=3e-6)
    assert w.tokens_within(w.usd(123)) == 123  # no token lost to rounding
    assert w.tokens_within(w.usd(123) - 1e-12) == 122
    assert w.tokens_within(5e-5) < 1  # not even the input
    assert WorstCase(1e-4, 0.0).tokens_within(1e-4) == math.inf  # free answer tokens
    assert WorstCase(1e-4, 0.0).tokens_within(5e-5) == -math.inf


def test_the_callers_limit_and_the_field_it_is_sent_in() -> None:
    assert asked_limit({"max_tokens": 50}) == 50
    assert asked_limit({"max_completion_tokens": 20, "max_tokens": 50}) == 20  # OpenAI's newer field first
    assert asked_limit({"max_tokens": 0}) is None and asked_limit({"max_tokens": True}) is None
    assert asked_limit({"max_tokens": "50"}) is None and asked_limit({}) is None
    assert with_limit({"messages": []}, 7) == {"messages": [], "max_tokens": 7}
    assert with_limit({"max_completion_tokens": 99}, 7) == {"max_completion_tokens": 7}
    assert with_limit({"max_tokens": 99, "max_completion_tokens": 99}, 7) == {
        "max_tokens": 7,
        "max_completion_tokens": 7,
    }


def test_a_limit_is_sent_in_the_field_the_upstream_reads() -> None:
    assert in_field({"max_tokens": 9, "x": 1}, "max_completion_tokens") == {"max_completion_tokens": 9, "x": 1}
    assert in_field({"max_completion_tokens": 9, "max_tokens": 20}, "max_tokens") == {"max_tokens": 9}
    assert in_field({"max_tokens": 9}, None) == {"max_tokens": 9} and in_field({"x": 1}, "max_tokens") == {"x": 1}
    assert answer_tokens_at_most({"max_tokens": 9, "n": 2}) == 18 and answer_tokens_at_most({"n": 2}) is None


@pytest.mark.parametrize("text", ["plain words " * 50, '"quoted"' * 60, "\x01" * 300, "é" * 400, "漢字" * 300])
def test_an_answer_is_cut_to_what_the_judge_may_read(text: str) -> None:
    def size(t: str) -> int:
        return text_tokens(json.dumps(t, ensure_ascii=False)[1:-1])

    cut = fit(text, 50)
    assert text.startswith(cut) and size(cut) <= 50
    assert size(text[: len(cut) + 1]) > 50  # the longest prefix that fits
    assert fit("short", 50) == "short"


def test_text_costs_a_token_per_4_ascii_characters_and_one_per_other_character() -> None:
    assert text_tokens("abcd" * 10) == 10 and text_tokens("abcde") == 2
    assert text_tokens("漢字かな") == 4 and text_tokens("ab漢") == 2
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}]}
    assert input_tokens(body) == json_tokens(body["messages"]) + IMAGE_TOKENS
    tools = {"tools": [{"type": "function", "function": {"name": "f"}}]}
    assert input_tokens({**body, **tools}) == input_tokens(body) + json_tokens(tools)


def test_the_judge_is_sent_each_answer_cut_at_the_limit() -> None:
    answers = [{"choices": [{"message": {"content": "a" * 1000}}]}, {"choices": [{"message": {"content": "b"}}]}]
    merge = merge_request({"messages": []}, answers, answer_limit=10)["messages"][-1]["content"]
    assert "### Answer 1\n" + "a" * 80 + "\n\n### Answer 2\nb" in merge and "a" * 81 not in merge  # 2 x 10 tokens
    assert "a" * 1000 in merge_request({"messages": []}, answers)["messages"][-1]["content"]
