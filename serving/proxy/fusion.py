"""Fusion's merge step: the judge's request, built from the caller's conversation and the panel's answers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

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


def merge_request(body: Mapping[str, Any], answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The judge's request: the caller's request with MERGE_PROMPT and the answers appended as one user message.

    Members are not named to the judge (so it weighs the answers, not the brands); their order is the tier's.
    """
    listed = "\n\n".join(f"### Answer {i}\n{answer_text(a)}" for i, a in enumerate(answers, start=1))
    merge = {"role": "user", "content": MERGE_PROMPT.format(n=len(answers), answers=listed)}
    return {**body, "messages": [*body.get("messages", []), merge]}
