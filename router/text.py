"""Prompt text: whitespace normalisation, the embedded window, and cheap length and shape features."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np


def normalize_text(prompt: str) -> str:
    """Collapse whitespace runs so that layout changes never change a prompt's features."""
    return " ".join(prompt.split())


def text_window(prompt: str, tail_chars: int | None) -> str:
    """The part of a normalised prompt that is embedded: its last `tail_chars` characters.

    Few-shot prompts open with shared examples and end with the question; MiniLM reads only
    its first 256 word pieces, so the tail carries the signal.
    """
    text = normalize_text(prompt)
    if tail_chars is None or len(text) <= tail_chars:
        return text
    return text[-tail_chars:]


_CODE_RE = re.compile(r"\b(def|return|class|import|function|for|while)\b|[{}\[\]();=]")
TEXT_FEATURE_NAMES = ("log_chars", "log_words", "frac_digits", "frac_upper", "frac_code_tokens", "n_question_marks")


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
                sum(c.isdigit() for c in text) / n,
                sum(c.isupper() for c in text) / n,
                len(_CODE_RE.findall(text)) / max(len(words), 1),
                min(text.count("?"), 20),
            )
        )
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(TEXT_FEATURE_NAMES))
