"""The int8 ONNX embedder routes like full precision (issue 5).

The full-precision reference is the fp32 ONNX export, which embeds like torch (tests/unit/test_onnx_embedder.py) and
costs CI less; the numbers below were measured against torch, and the fp32 reference's are in the tests' comments.

Measured 2026-11-25 (949 held-out prompts; bench/int8_agreement.py has every number):
- AIQ 0.8139 trained and evaluated on int8 vs 0.8154 on torch on a Zen 1 EPYC; on AVX-512 VNNI CPUs int8 scored
  0.003-0.005 *above* torch. int8 rounding differs between CPUs, so the AIQ test is one-sided (issue 9).
- The torch-trained router fed int8 features picks the same tier for 90-100% of prompts across nine
  policy settings (lambda along the whole curve, quality targets 0.7-0.9); the issue asked for 98%.
  The same router retrained with another seed, on the very same torch features, agrees with it on
  90-100% too: int8 moves decisions no more than a retrain does (within 0.001 at every setting, mean
  0.945 vs 0.943). Quantizing every MatMul, FFN outputs included (tierwise's first int8 recipe), did
  worse: 0.846 at target 0.7, where the twin has 0.903.
- 98% is out of reach for any int8 with this model: mid and brain are often predicted within a hair
  of each other, and even a tenth of int8's error (cosine >= 0.9998 to torch) flips up to 2.3% of
  decisions at some settings.
- What a user sees does not move: realised quality at every knob is within 0.0043 of torch's, and where
  the decision is not a near-tie (utility margin >= 0.05) the tiers agree on 98.9-100% (asserted: 0.01, 95%).
"""

from __future__ import annotations

import numpy as np
import pytest

from router import evaluate as ev
from router.embedding_cache import EmbeddingCache
from router.features import featurize
from router.model import DifficultyModel
from router.policy import cheapest_sufficient, tradeoff
from tests.quality.conftest import CACHE, Trained, shared_embedder

pytestmark = pytest.mark.quality

AIQ_RESEED_RANGE = 0.005
"""How far the router's AIQ moves when only the LightGBM seed changes (measured 0.0041 over 10 seeds)."""


def _policies(cost: np.ndarray) -> dict[str, object]:
    """Decision rules across the cost–quality curve: λ from 0 to all-cheapest, and quality targets."""
    scale = float(np.median(cost))
    rules: dict[str, object] = {
        f"lam*{m:g}": (lambda p, m=m: tradeoff(p, cost, m / scale)) for m in (0, 0.01, 0.1, 0.3, 1, 10)
    }
    rules.update({f"target {t}": (lambda p, t=t: cheapest_sufficient(p, cost, t)) for t in (0.7, 0.8, 0.9)})
    return rules


@pytest.fixture(scope="module")
def int8_features(trained_fp32: Trained) -> np.ndarray:
    prompts = trained_fp32.split.table.prompts["prompt"][trained_fp32.split.test].tolist()
    int8 = shared_embedder("onnx-int8")
    spec = trained_fp32.artifact.features.model_copy(update={"embedder_id": int8.id})
    return featurize(prompts, spec, int8, EmbeddingCache(CACHE / "embeddings.sqlite"))


def test_int8_changes_decisions_about_as_much_as_retraining_does(trained_fp32: Trained, int8_features: np.ndarray):
    """The fp32-trained router fed int8 features agrees with itself about as often as a reseeded twin does."""
    split, artifact = trained_fp32.split, trained_fp32.artifact
    prompts = split.table.prompts["prompt"]
    cost = artifact.expected_cost(prompts[split.test].tolist())
    fp32 = shared_embedder("onnx-fp32")
    X_train = featurize(
        prompts[split.train].tolist(), artifact.features, fp32, EmbeddingCache(CACHE / "embeddings.sqlite")
    )
    twin = DifficultyModel(random_state=1).fit(X_train, split.table.scores[split.train], split.tiers.names)
    p_fp32 = artifact.model.predict_quality(trained_fp32.X_test)
    p_int8 = artifact.model.predict_quality(int8_features)
    p_twin = twin.predict_quality(trained_fp32.X_test)
    rows = []
    for name, rule in _policies(cost).items():
        a, b, c = rule(p_fp32), rule(p_int8), rule(p_twin)  # type: ignore[operator]
        same_int8, same_twin = (a == b).mean(), (a == c).mean()
        print(f"{name}: same tier with int8 {same_int8:.3f}, with a reseeded twin {same_twin:.3f}")  # noqa: T201 - shown with -s
        rows.append((name, same_int8, same_twin))
    # Measured: int8 0.904-1.0, the twin 0.899-1.0, int8 at most 0.001 below the twin (every-MatMul int8: 0.057).
    assert all(same_int8 >= 0.88 for _, same_int8, _ in rows), rows
    assert all(same_int8 >= same_twin - 0.02 for _, same_int8, same_twin in rows), rows


def test_int8_keeps_clear_decisions_and_realised_quality(trained_fp32: Trained, int8_features: np.ndarray):
    split, artifact = trained_fp32.split, trained_fp32.artifact
    table, test = split.table, split.test
    cost = artifact.expected_cost(table.prompts["prompt"][test].tolist())
    complete = np.isfinite(table.scores[test]).all(axis=1) & np.isfinite(table.costs[test]).all(axis=1)
    S, C = table.scores[test][complete], table.costs[test][complete]
    p_fp32 = artifact.model.predict_quality(trained_fp32.X_test)
    p_int8 = artifact.model.predict_quality(int8_features)
    scale = float(np.median(cost))
    for m in (0, 0.01, 0.1, 0.3, 1, 10):
        lam = m / scale
        a, b = tradeoff(p_fp32, cost, lam), tradeoff(p_int8, cost, lam)
        utility = np.sort(p_fp32 - lam * cost, axis=1)
        clear = utility[:, -1] - utility[:, -2] >= 0.05
        (c_fp32, q_fp32), (c_int8, q_int8) = ev.realised(a[complete], S, C), ev.realised(b[complete], S, C)
        print(  # noqa: T201 - shown with -s
            f"lam*{m:g}: same tier where clear {(a == b)[clear].mean():.3f}; quality {q_fp32:.4f} vs {q_int8:.4f}; "
            f"cost {c_fp32:.6g} vs {c_int8:.6g} ({c_int8 / c_fp32 - 1:+.1%})"
        )
        assert (a == b)[clear].mean() >= 0.95, (m, (a == b)[clear].mean(), clear.mean())
        # One-sided, as the AIQ test below: int8 realising more quality, or spending less, is no failure; it may
        # not buy its quality with cost. Measured on a Zen 3 against fp32 at these six knobs: int8 quality -0.0053
        # to +0.0063, cost -5.4% to +3.0%; five reseeded fp32 twins (the noise floor) quality -0.0042 to +0.0148,
        # cost -13.6% to +3.7%. |quality difference| <= 0.0032 against torch on a Zen 1. The cost bound is about
        # twice the largest reseeding move: it catches a systematic shift to dearer tiers, not a retrain's noise.
        assert q_int8 >= q_fp32 - 0.01, (m, q_fp32, q_int8)
        assert c_int8 <= c_fp32 * 1.3, (m, c_fp32, c_int8)


def test_int8_aiq_is_not_worse_than_fp32_beyond_the_reseeding_spread(trained_fp32: Trained, trained_int8: Trained):
    """One-sided: int8 numerics differ from CPU to CPU, and int8 scoring *better* than fp32 is no failure.

    Measured (bench/aiq_spread.py, 10 LightGBM seeds on one split): torch AIQ std 0.0011, range 0.0041; int8
    std 0.0010. int8 minus torch at seed 0: -0.0015 on a Zen 1 EPYC (AVX2), +0.0046 on an AVX-512 VNNI Xeon,
    +0.0032 (mean over seeds) on an AVX-512 VNNI EPYC. The tolerance is the reseeding range, rounded up.
    """
    aiq_fp32 = trained_fp32.result.table["AIQ"].astype(float)["router"]
    aiq_int8 = trained_int8.result.table["AIQ"].astype(float)["router"]
    assert aiq_int8 >= aiq_fp32 - AIQ_RESEED_RANGE, (aiq_int8, aiq_fp32)
