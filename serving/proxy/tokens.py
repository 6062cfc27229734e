"""The proxy's estimate of how many tokens a text costs, where the upstream does not say (or has not yet)."""

from __future__ import annotations

import json
import math
from typing import Any

from router.schema import CHARS_PER_TOKEN


def text_tokens(text: str) -> int:
    """Tokens `text` may cost: ASCII at 4 characters a token (English and code with a BPE tokenizer), every other
    character a token of its own (Chinese, Japanese and Korean run about one a character; characters / 4 would
    count a quarter of that)."""
    ascii_chars = len(text.encode("ascii", "ignore"))
    return math.ceil(ascii_chars / CHARS_PER_TOKEN) + len(text) - ascii_chars


def json_tokens(value: Any) -> int:
    """`text_tokens` of a value written as JSON (unescaped, as the upstream reads it)."""
    return text_tokens(json.dumps(value, ensure_ascii=False))
