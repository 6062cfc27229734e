"""The text features' character counts equal the plain per-character definition, ASCII or not."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from router.text import TEXT_FEATURE_NAMES, normalize_text, text_features


def _naive_fractions(prompt: str) -> tuple[float, float]:
    text = normalize_text(prompt)
    n = max(len(text), 1)
    return sum(c.isdigit() for c in text) / n, sum(c.isupper() for c in text) / n


@given(st.lists(st.text(min_size=1, max_size=200) | st.from_regex(r"[A-Za-z0-9 ?]{1,80}", fullmatch=True), min_size=1))
def test_digit_and_upper_fractions_match_the_definition(prompts: list[str]) -> None:
    got = text_features(prompts)
    digits, upper = TEXT_FEATURE_NAMES.index("frac_digits"), TEXT_FEATURE_NAMES.index("frac_upper")
    expected = np.array([_naive_fractions(p) for p in prompts], dtype=np.float32)
    np.testing.assert_array_equal(got[:, [digits, upper]], expected)


def test_non_ascii_digits_and_capitals_count() -> None:
    [row] = text_features(["É² ١٢ AB cd"])
    assert row[TEXT_FEATURE_NAMES.index("frac_digits")] == np.float32(3 / 11)
    assert row[TEXT_FEATURE_NAMES.index("frac_upper")] == np.float32(3 / 11)
