"""Prompt structure features and the question-only view (candidate features for issue 10).

The default text features describe the whole prompt; these describe its shape: how many answer
options, worked examples and numbers it holds, whether it ends in a question, and how long the
final question is. They read the raw prompt (line breaks matter), unlike the embedding views.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from router.text import normalize_text

_OPTION_RE = re.compile(r"(?m)^\s*\(?([A-Ja-j])[\.\):]\s")
_INLINE_OPTION_RE = re.compile(r"(?:^|\s)\(?([A-J])[\.\)]\s")
_SHOT_RE = re.compile(r"(?im)^\s*(answer|a|output|solution)\s*:\s*\S")
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)?")
_CODE_RE = re.compile(r"```|\bdef \w+\(|\breturn\b|\bclass \w+|;\s*$|\{\s*$", re.MULTILINE)
_MATH_RE = re.compile(r"[\^=+*/<>]|\\frac|\\sqrt|\$")
_SENTENCE_END_RE = re.compile(r"[.!?]\s")

STRUCTURE_FEATURE_NAMES: tuple[str, ...] = (
    "n_options",
    "n_worked_examples",
    "n_paragraphs",
    "n_lines",
    "log_n_numbers",
    "code_markers",
    "math_symbol_frac",
    "ends_with_question",
    "log_question_chars",
    "log_question_words",
    "question_share",
    "n_sentences_in_question",
)


def question_text(prompt: str) -> str:
    """The last paragraph that is more than an answer cue: the question a few-shot prompt ends with."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", prompt.strip()) if p.strip()]
    if not paras:
        return normalize_text(prompt)
    last = paras[-1]
    # "Answer:" alone, or a bare instruction line, belongs to the paragraph before it.
    if len(paras) > 1 and len(last) < 40:
        last = paras[-2] + "\n" + last
    return normalize_text(last)


def structure_features(prompts: Sequence[str]) -> np.ndarray:
    """Shape features of raw prompts, (n, len(STRUCTURE_FEATURE_NAMES)) float32."""
    rows = []
    for prompt in prompts:
        q = question_text(prompt)
        q_options = {m.group(1).upper() for m in _OPTION_RE.finditer(q)} or set(_INLINE_OPTION_RE.findall(q))
        paras = [p for p in re.split(r"\n\s*\n", prompt.strip()) if p.strip()]
        flat = normalize_text(prompt)
        n = max(len(flat), 1)
        rows.append(
            (
                len(q_options),
                len(_SHOT_RE.findall(prompt)),
                len(paras),
                np.log1p(prompt.count("\n")),
                np.log1p(len(_NUMBER_RE.findall(q))),
                len(_CODE_RE.findall(prompt)),
                len(_MATH_RE.findall(q)) / max(len(q), 1),
                float(q.rstrip().endswith("?") or q.rstrip().endswith("Answer:")),
                np.log1p(len(q)),
                np.log1p(len(q.split())),
                len(q) / n,
                len(_SENTENCE_END_RE.findall(q + " ")),
            )
        )
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(STRUCTURE_FEATURE_NAMES))
