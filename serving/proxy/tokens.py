"""The proxy's count of what a text costs, where the upstream does not say (or has not yet): whole tokens of the
one estimate routing uses too (router.text.token_estimate), rounded up."""

from __future__ import annotations

import json
import math
from typing import Any

from router.text import token_estimate


def text_tokens(text: str) -> int:
    """`token_estimate` of `text`, rounded up to whole tokens."""
    return math.ceil(token_estimate(text))


def json_tokens(value: Any) -> int:
    """`text_tokens` of a value written as JSON (unescaped, as the upstream reads it)."""
    return text_tokens(json.dumps(value, ensure_ascii=False))
