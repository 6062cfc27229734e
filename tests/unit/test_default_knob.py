"""The stored operating point: which knob a request routes with, and its round trip through router.json."""

from __future__ import annotations

import pytest

from router.artifact import RouterArtifact
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.policy import DefaultKnob, resolve_knob
from router.schema import parse_tiers
from tests.conftest import TIERS_TOML, HashingEmbedder, make_log
from training.data import split_log
from training.fit import train_router


@pytest.mark.parametrize(
    ("quality_target", "cost_weight", "stored", "expected"),
    [
        (None, None, 40.0, (0.8, 40.0)),  # nothing asked: the stored λ
        (0.6, None, 40.0, (0.6, None)),  # a quality target overrides it
        (None, 7.0, 40.0, (0.8, 7.0)),  # so does a λ
        (None, None, None, (0.8, None)),  # a model without a stored point: the default target
    ],
)
def test_resolve_knob(quality_target, cost_weight, stored, expected) -> None:
    assert resolve_knob(quality_target, cost_weight, stored, 0.8) == expected


def test_default_knob_round_trip_and_live_prices(tmp_path) -> None:
    tiers = parse_tiers(TIERS_TOML)
    split = split_log(make_log(120, seed=0), tiers, 0.3, seed=0)
    emb = HashingEmbedder()
    art = train_router(split, emb, None, FeatureSpec(embedder_id=emb.id), DifficultyModel(n_estimators=5, n_jobs=1))
    assert art.default_cost_weight_per_usd() is None
    art.default_knob = DefaultKnob(0.5, 1000.0, "test", 36, 0.9, 0.001)
    # The priciest tier (large: $10 in, $30 out per 1M) for 1000 input tokens and its mean output tokens.
    ref = 1000 * 10 / 1e6 + art.tokens_out["brain"] * 30 / 1e6
    assert art.default_cost_weight_per_usd() == pytest.approx(0.5 / ref)
    loaded = RouterArtifact.load(art.save(tmp_path / "a"))
    assert loaded.default_knob == art.default_knob
    # Halve every price: the same trade-off costs half as many dollars, so λ per USD doubles.
    cheap = {**TIERS_TOML, "models": {k: {p: v / 2 for p, v in m.items()} for k, m in TIERS_TOML["models"].items()}}
    assert loaded.default_cost_weight_per_usd(parse_tiers(cheap)) == pytest.approx(2 * 0.5 / ref)
