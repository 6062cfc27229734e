"""Quality floors of the router `make train` builds (pooled shared difficulty) on the shared RouterBench data.

Measured 2026-11-25 on config/tiers.toml (main = mistral-7b, mid = Yi-34B, brain = gpt-4), 949
held-out prompts, onnx-int8: router AIQ 0.814 vs random mix 0.804 and kNN 0.804; 95% of gpt-4's quality
at 45% of its cost; quality 0.843 (96% of gpt-4's 0.880) at half of its cost; ECE 0.020.
"""

from __future__ import annotations

import numpy as np
import pytest

from router.policy import cheapest_sufficient
from router.text import normalize_text

pytestmark = pytest.mark.quality


def test_router_beats_random_mix_and_every_single_tier(trained_default):
    table = trained_default.result.table
    router = table.loc["router", "AIQ"]
    assert router >= 0.80
    assert router > table.loc["random mix", "AIQ"]
    for name in [m for m in table.index if m.startswith("tier:")]:
        assert router > table.loc[name, "AIQ"], name
    assert router > table.loc["kNN (k=25)", "AIQ"]


def test_router_reaches_near_top_quality_at_a_fraction_of_its_cost(trained_default):
    row = trained_default.result.table.loc["router"]
    top_q = trained_default.result.metrics["top_quality"]
    assert row["cost_for_95pct_top_pct"] <= 50.0
    assert row["quality_at_half_top_cost"] >= 0.95 * top_q
    assert row["max_quality"] >= top_q - 1e-9
    assert row["ECE"] <= 0.05


def test_raising_the_target_never_lowers_the_tier(trained_default):
    pred = trained_default.artifact.model.predict_quality(trained_default.X_test)
    prompts = trained_default.split.table.prompts["prompt"][trained_default.split.test].tolist()
    cost = trained_default.artifact.expected_cost(prompts)
    prev = cheapest_sufficient(pred, cost, 0.0)
    for target in np.linspace(0, 1, 41):
        cur = cheapest_sufficient(pred, cost, target)
        assert (cur >= prev).all(), target
        prev = cur


def test_whitespace_changes_do_not_change_the_route(trained_default, embedder_int8):
    prompts = trained_default.split.table.prompts["prompt"][trained_default.split.test].tolist()[:40]
    mangled = ["  " + p.replace(" ", "  \n", 3).replace("\n\n", "\n \t\n") + "\n\n" for p in prompts]
    assert all(normalize_text(a) == normalize_text(b) for a, b in zip(prompts, mangled, strict=True))
    a = trained_default.artifact.predict_quality(prompts, embedder_int8)
    b = trained_default.artifact.predict_quality(mangled, embedder_int8)
    np.testing.assert_allclose(a, b, atol=1e-6)
