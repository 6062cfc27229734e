"""One estimate of what a text costs in tokens: routing's expected cost and the door's count share it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from router.artifact import RouterArtifact
from router.policy import NoTierFits
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
    mixed = art.expected_cost(["abcdefgh", "你好世界"], tokens_in=[1000, None])  # None: that prompt's estimate
    np.testing.assert_allclose(mixed, [[1000 + 20, 3000 + 80], [4 + 20, 12 + 80]])
    with pytest.raises(ValueError, match="1 input token counts for 2 prompts"):
        art.expected_cost(["a", "b"], tokens_in=[5])
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite and at least 0"):
            art.expected_cost(["a"], tokens_in=[bad])


def test_a_guarantee_trades_quality_against_the_cost_scale_it_was_calibrated_on() -> None:
    """A guarantee's λ was calibrated on the prompts' own expected costs: a caller's larger input count must not
    make it pick a cheaper tier than the guarantee allows (a review's find), while what fits still uses the count."""
    from router.guarantee import OperatingPoint
    from router.routing import Router

    router = Router(_artifact())
    point = OperatingPoint(0.05, 0.1, 5.0, 500, 0.04, 0.5)
    quality = np.array([[0.80, 0.97]])
    own = np.array([[0.0022, 0.0086]])  # brain's 0.17 more quality is worth its $0.0064 more at λ = 5 per USD
    counted = own * 100  # a long conversation: at λ = 5, brain's $0.64 more outweighs its quality
    [plain] = router.decide(quality, own, 0.9, guarantee=point)
    [naive] = router.decide(quality, counted, 0.9, guarantee=point)
    [scaled] = router.decide(quality, counted, 0.9, guarantee=point, guarantee_cost=own)
    assert router.names[plain.tier_index] == "brain" and router.names[naive.tier_index] == "main"
    assert scaled.tier_index == plain.tier_index and "priced as calibrated" in scaled.reason
    # what fits is still the counted cost: a budget below brain's counted cost downgrades
    [fits] = router.decide(quality, counted, 0.9, budget_usd=float(counted[0, 0]) + 1e-9, guarantee=point,
                           guarantee_cost=own)  # fmt: skip
    assert router.names[fits.tier_index] == "main"


def test_an_always_the_top_tier_guarantee_means_the_top_at_the_calibration_prices() -> None:
    """Where no λ was certified for an ε, the guarantee is "always the top tier": the tier that was dearest when it
    was calibrated. It took the dearest at live prices, which a tiers file can make another tier (review finding)."""
    from router.guarantee import OperatingPoint
    from router.routing import Router

    router = Router(_artifact())
    point = OperatingPoint(0.01, 0.1, None, 500, 0.0, 1.0)
    quality = np.array([[0.80, 0.97]])
    calibrated = np.array([[0.0022, 0.0086]])  # brain was the top tier
    live = np.array([[0.0022, 0.0010]])  # now brain costs less than main
    [d] = router.decide(quality, live, 0.9, guarantee=point, guarantee_cost=calibrated)
    assert router.names[d.tier_index] == "brain", d.reason
    [capped] = router.decide(quality, live, 0.9, max_cost_usd=0.0015, guarantee=point, guarantee_cost=calibrated)
    assert router.names[capped.tier_index] == "brain"  # what fits is the live cost: brain's $0.0010 does
    with pytest.raises(NoTierFits):  # below every tier's live cost
        router.decide(quality, live, 0.9, max_cost_usd=0.0005, guarantee=point, guarantee_cost=calibrated)
