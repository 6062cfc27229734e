"""Prompt text: whitespace normalisation, the embedded window, and cheap length and shape features."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from router.schema import CHARS_PER_TOKEN
from router.schema import normalize_text as normalize_text  # defined there (the outcome log merges by it); re-exported


def text_window(prompt: str, tail_chars: int | None) -> str:
    """The part of a normalised prompt that is embedded: its last `tail_chars` characters.

    Few-shot prompts open with shared examples and end with the question; MiniLM reads only
    its first 256 word pieces, so the tail carries the signal.
    """
    text = normalize_text(prompt)
    if tail_chars is None or len(text) <= tail_chars:
        return text
    return text[-tail_chars:]


def token_estimate(text: str) -> float:
    """Tokens a text is billed as, where nothing counted them: ASCII at CHARS_PER_TOKEN characters a token (English
    and code with a BPE tokenizer), every other character a token of its own (Chinese, Japanese and Korean run about
    one a character; characters / 4 would count a quarter of that). The one estimate of input and answer tokens:
    routing's expected cost, the door's hold on a capped session and its usage when an upstream reports none."""
    ascii_chars = len(text.encode("ascii", "ignore"))
    return ascii_chars / CHARS_PER_TOKEN + (len(text) - ascii_chars)


MAX_TOKENS = 2**31 - 1
"""The most tokens a request may count or ask for (input_tokens, max_tokens): far past any model's context, it keeps
the cost arithmetic finite and fits the store's integer columns."""


def prompt_tokens(prompts: Sequence[str]) -> np.ndarray:
    """`token_estimate` of each normalised prompt, (n,) float."""
    return np.array([token_estimate(normalize_text(p)) for p in prompts], dtype=float)


_CODE_RE = re.compile(r"\b(def|return|class|import|function|for|while)\b|[{}\[\]();=]")
TEXT_FEATURE_NAMES = ("log_chars", "log_words", "frac_digits", "frac_upper", "frac_code_tokens", "n_question_marks")


_ASCII_DIGITS, _ASCII_UPPER = b"0123456789", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _count(text: str, test: Callable[[str], bool], ascii_chars: bytes) -> int:
    """How many characters pass `test` (str.isdigit or str.isupper); ASCII text is counted in C, 50x faster."""
    if text.isascii():
        raw = text.encode("ascii")
        return len(raw) - len(raw.translate(None, ascii_chars))
    return sum(map(test, text))


def text_features(prompts: Sequence[str]) -> np.ndarray:
    """Cheap length and shape features of the whole (normalised) prompt, (n, 6) float32."""
    rows = []
    for prompt in prompts:
        text = normalize_text(prompt)
        n = max(len(text), 1)
        words = text.split(" ")
        rows.append(
            (
                np.log1p(len(text)),
                np.log1p(len(words)),
                _count(text, str.isdigit, _ASCII_DIGITS) / n,
                _count(text, str.isupper, _ASCII_UPPER) / n,
                len(_CODE_RE.findall(text)) / max(len(words), 1),
                min(text.count("?"), 20),
            )
        )
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(TEXT_FEATURE_NAMES))
