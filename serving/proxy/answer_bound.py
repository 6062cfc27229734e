"""What a door call can cost at most, as a function of its answer-length limit, and the limit a budget leaves.

In a capped session the door holds a call's *worst case* on the session (not its expected cost), so the cap bounds
what the call can spend: the request's input tokens (`input_tokens`: its messages and tool definitions by the
estimate of serving.proxy.tokens, which a usage the upstream does not report is booked at, plus an allowance per
image) plus `max_tokens` answer tokens at the output price, for each of the `n` choices asked. A fusion tier's
worst case is every member's plus the judge's, whose input holds the members' answers (cut to twice the limit
each). The limit is the caller's (`max_completion_tokens`, else `max_tokens`), else the service's
`session_answer_tokens`, lowered to what the cap leaves; it is sent in the field the caller used (`max_tokens` when
the caller sent none), or the upstream model's `answer_limit_field`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.schema import Tier, TiersConfig
from serving.proxy.fusion import JUDGE_TOKENS_PER_ANSWER_TOKEN, MERGE_PROMPT
from serving.proxy.tokens import json_tokens

LIMIT_FIELDS = ("max_completion_tokens", "max_tokens")
"""The request fields that limit an answer's length, in the order they are read (OpenAI's newer one first)."""


@dataclass(frozen=True)
class WorstCase:
    """Serving a tier with an answer limit of `t` tokens costs at most `fixed_usd + per_token_usd * t`."""

    fixed_usd: float
    per_token_usd: float

    def usd(self, tokens: int) -> float:
        return self.fixed_usd + self.per_token_usd * tokens

    def tokens_within(self, usd: float) -> float:
        """The largest answer limit whose worst case fits in `usd` (inf when answer tokens are free)."""
        if self.per_token_usd <= 0:
            return math.inf if usd >= self.fixed_usd else -math.inf
        # A hair of slack so a budget computed as usd(t) gives back t, not t - 1, through rounding.
        return math.floor((usd - self.fixed_usd) / self.per_token_usd + 1e-9)


IMAGE_TOKENS = 1_600
"""What the proxy holds for each part of a message that is not text (an image, audio) besides its JSON: about the
most a provider bills for one high-detail image."""
TOOL_FIELDS = ("tools", "functions", "tool_choice", "response_format")
"""Request fields the upstream reads as input besides the messages (their JSON is counted)."""


def input_tokens(body: Mapping[str, Any]) -> int:
    """The most input tokens the proxy expects a request to be billed: its messages and tool definitions as JSON
    (serving.proxy.tokens), and IMAGE_TOKENS for each part of a message that is not text."""
    messages = body.get("messages") or []
    parts = sum(
        1
        for m in messages
        if isinstance(m, dict) and isinstance(m.get("content"), list)
        for p in m["content"]
        if not (isinstance(p, dict) and p.get("type") == "text")
    )
    extra = {k: body[k] for k in TOOL_FIELDS if k in body}
    return json_tokens(messages) + (json_tokens(extra) if extra else 0) + IMAGE_TOKENS * parts


def choices(body: Mapping[str, Any]) -> int:
    """How many choices a request asks for (`n`, else 1)."""
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1


def worst_case(tiers: TiersConfig, tier: Tier, body: Mapping[str, Any], tokens_in: int | None = None) -> WorstCase:
    """The worst case of serving `tier` the request `body`, at the catalogue prices the door settles with.

    `tokens_in`: the body's input as the door counted it already (`input_tokens`, which walks the whole conversation
    as JSON); counted here when not given."""
    tokens_in, n = input_tokens(body) if tokens_in is None else tokens_in, choices(body)

    def price(model: str) -> tuple[float, float]:
        p = tiers.models.get(model)
        if p is None:  # a single tier's own price (the door refuses a model without an upstream anyway)
            return tier.input_per_1m / 1e6, tier.output_per_1m / 1e6
        return p.input_per_1m / 1e6, p.output_per_1m / 1e6

    if tier.kind == "single":
        p_in, p_out = price(tier.model)
        return WorstCase(tokens_in * p_in, n * p_out)
    fixed = per_token = 0.0
    for member in tier.members:
        p_in, p_out = price(member)
        fixed += tokens_in * p_in
        per_token += n * p_out
    if tier.judge is not None:
        p_in, p_out = price(tier.judge)
        # The judge reads the conversation, the merge prompt and each member's first answer (a heading each), an
        # answer cut at JUDGE_TOKENS_PER_ANSWER_TOKEN tokens a token of the limit (fusion.merge_request).
        merge_tokens = json_tokens(MERGE_PROMPT) + 8 * len(tier.members)
        fixed += (tokens_in + merge_tokens) * p_in
        per_token += len(tier.members) * JUDGE_TOKENS_PER_ANSWER_TOKEN * p_in + n * p_out
    return WorstCase(fixed, per_token)


def asked_limit(body: Mapping[str, Any]) -> int | None:
    """The answer-length limit the caller sent (a positive whole number), else None."""
    for name in LIMIT_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


def with_limit(body: Mapping[str, Any], tokens: int) -> dict[str, Any]:
    """`body` with its answer limited to `tokens`, in the field the caller used (`max_tokens` when none)."""
    used = [name for name in LIMIT_FIELDS if name in body]
    return {**body, **dict.fromkeys(used or ["max_tokens"], tokens)}


def in_field(body: Mapping[str, Any], field: str | None) -> dict[str, Any]:
    """`body` with its answer limit, if it has one, sent in `field` alone (the upstream's `answer_limit_field`;
    None: as it is)."""
    limit = asked_limit(body)
    if field is None or limit is None:
        return dict(body)
    return {**{k: v for k, v in body.items() if k not in LIMIT_FIELDS}, field: limit}


def answer_tokens_at_most(body: Mapping[str, Any]) -> int | None:
    """The most answer tokens a request can be charged for (its limit times its choices), None without a limit."""
    limit = asked_limit(body)
    return None if limit is None else limit * choices(body)
