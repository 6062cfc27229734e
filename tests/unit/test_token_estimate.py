"""One estimate of what a text costs in tokens: routing's expected cost and the door's count share it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from router.artifact import RouterArtifact
from router.schema import parse_tiers
from router.text import prompt_tokens, token_estimate
from serving.proxy.tokens import text_tokens

PRICES = {"a": {"input_per_1m": 1e6, "output_per_1m": 2e6}, "b": {"input_per_1m": 3e6, "output_per_1m": 4e6}}
TIERS = parse_tiers({"models": PRICES, "tiers": [{"name": "main", "model": "a"}, {"name": "brain", "model": "b"}]})


def _artifact() -> RouterArtifact:
    """Expected cost only reads the tiers and the mean answer tokens: USD 1 (main) or 3 (brain) an input token."""
    model: Any = SimpleNamespace(tier_names_=TIERS.names)
    return RouterArtifact(model, None, TIERS, {"main": 10.0, "brain": 20.0})  # type: ignore[arg-type]


def test_ascii_counts_four_characters_a_token_and_any_other_character_one() -> None:
    assert token_estimate("abcdefgh") == 2.0
    assert token_estimate("你好世界") == 4.0  # characters / 4 would say 1
    assert token_estimate("ab 你好") == 3 / 4 + 2
    assert token_estimate("") == 0.0
    assert text_tokens("abcde") == 2  # the door's whole tokens round the same estimate up


def test_prompts_are_counted_after_whitespace_normalisation() -> None:
    np.testing.assert_array_equal(prompt_tokens(["a  b\n\n c", "你好"]), [5 / 4, 2.0])


def test_expected_cost_prices_the_counted_input_when_given() -> None:
    art = _artifact()
    estimated = art.expected_cost(["abcdefgh", "你好世界"])
    np.testing.assert_allclose(estimated, [[2 + 20, 6 + 80], [4 + 20, 12 + 80]])
    counted = art.expected_cost(["abcdefgh", "你好世界"], tokens_in=[1000, 1])
    np.testing.assert_allclose(counted, [[1000 + 20, 3000 + 80], [1 + 20, 3 + 80]])
    with pytest.raises(ValueError, match="1 input token counts for 2 prompts"):
        art.expected_cost(["a", "b"], tokens_in=[5])
