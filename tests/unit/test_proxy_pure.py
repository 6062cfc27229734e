"""The proxy's pure parts: upstream fields of the tiers file, fallback chains, the prompt view, costing, merging."""

from __future__ import annotations

from typing import Any

import pytest

from router.schema import TiersConfigError, parse_tiers
from serving.proxy.fusion import MERGE_PROMPT, merge_request
from serving.proxy.upstream import UpstreamFailure, endpoint_for, usage_of
from serving.proxy.wire import ChatMessage, prompt_view

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


def test_usage_is_costed_at_catalogue_prices_or_estimated() -> None:
    ep = endpoint_for("b", parse_tiers(TOML), {})
    u = usage_of(ep, {"prompt_tokens": 1000, "completion_tokens": 500}, {}, 0)
    assert (u.tokens_in, u.tokens_out, u.estimated) == (1000, 500, False)
    assert u.cost_usd == pytest.approx((1000 * 3.0 + 500 * 4.0) / 1e6)
    guess = usage_of(ep, None, {"messages": [{"role": "user", "content": "x" * 400}]}, 400)
    assert guess.estimated and guess.tokens_out == 100 and guess.tokens_in > 100


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
