"""Fusion's merge step: the judge's request, built from the caller's conversation and the panel's answers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from serving.proxy.tokens import text_tokens

MERGE_PROMPT = (
    "You are the judge of a panel. {n} assistants answered the conversation above independently; their answers "
    "follow. Write the one best reply to the last user message: keep what is correct, fix what is wrong, combine "
    "what complements, and answer the user directly without mentioning the panel or the answers.\n\n{answers}"
)
"""The judge's last user message; `{answers}` is `### Answer i` then the answer, for each member that answered."""


def answer_text(completion: Mapping[str, Any]) -> str:
    """A member's answer as text: its message content, or its tool calls as JSON when it called tools."""
    try:
        message = completion["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return ""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str) and content:
        return content
    calls = message.get("tool_calls")
    return f"(tool calls) {json.dumps(calls, ensure_ascii=False)}" if calls else ""


JUDGE_TOKENS_PER_ANSWER_TOKEN = 2
"""With an answer limit of t tokens, each answer the judge reads is at most 2·t tokens by the proxy's estimate
(serving.proxy.tokens, of the answer as JSON): twice its own limit, so only an answer far denser than text is cut."""


def fit(text: str, max_tokens: int) -> str:
    """`text`, cut so it is at most `max_tokens` tokens by the proxy's estimate of it as a JSON string."""

    def size(t: str) -> int:
        return text_tokens(json.dumps(t, ensure_ascii=False)[1:-1])

    if size(text) <= max_tokens:
        return text
    lo, hi = 0, len(text)  # the longest prefix that fits, by bisection (the estimate grows with the prefix)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size(text[:mid]) <= max_tokens else (lo, mid - 1)
    return text[:lo]


def merge_request(
    body: Mapping[str, Any], answers: Sequence[Mapping[str, Any]], answer_limit: int | None = None
) -> dict[str, Any]:
    """The judge's request: the caller's request with MERGE_PROMPT and the answers appended as one user message.

    Members are not named to the judge (so it weighs the answers, not the brands); their order is the tier's. With
    an answer limit (the caller's, or a capped session's), each answer is cut at JUDGE_TOKENS_PER_ANSWER_TOKEN
    tokens a token of the limit, so the judge's input is bounded as the proxy holds it.
    """
    texts = [answer_text(a) for a in answers]
    if answer_limit is not None:
        texts = [fit(t, JUDGE_TOKENS_PER_ANSWER_TOKEN * answer_limit) for t in texts]
    listed = "\n\n".join(f"### Answer {i}\n{t}" for i, t in enumerate(texts, start=1))
    merge = {"role": "user", "content": MERGE_PROMPT.format(n=len(answers), answers=listed)}
    return {**body, "messages": [*body.get("messages", []), merge]}
