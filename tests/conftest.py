"""Shared fixtures: a deterministic hashing embedder and small generated outcome logs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from infra.settings import get_settings
from router.schema import TiersConfig, parse_tiers


@pytest.hookimpl(optionalhook=True)  # xdist's hook: unknown, and unused, where xdist is off (`-p no:xdist`)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test` runs two pytest-xdist workers: every quality test goes to one of them, first (the largest unit of
    work), because their session fixtures embed and train on the shared logs, CPU-bound for most of the suite's
    time, while the other worker runs the unit and integration tests, many of which mostly wait (servers,
    subprocesses). xdist's own `--dist loadgroup` cannot group here: it renames the test ids through an attribute
    pytest 9 no longer reads."""
    from xdist.scheduler import LoadScopeScheduling

    class QualityTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "quality" if nodeid.startswith("tests/quality/") else nodeid

    return QualityTogether(config, log)


@pytest.fixture(autouse=True, scope="session")
def _private_default_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test writes to the user's real stores or cache: the per-user defaults point into a tmp dir."""
    patch = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("tierwise-home")
    patch.setenv("TIERWISE_STORE_DIR", str(home / "store"))
    patch.setenv("TIERWISE_CACHE_DIR", str(home / "cache"))
    for name in ("MLFLOW_TRACKING_URI", "TIERWISE_MLFLOW_TRACKING_URI", "TIERWISE_DATABASE_URL", "TIERWISE_SPOOL_PATH"):
        patch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    patch.undo()
    get_settings.cache_clear()


TIERS_TOML: dict[str, Any] = {
    "models": {
        "small": {"input_per_1m": 0.2, "output_per_1m": 0.2},
        "medium": {"input_per_1m": 1.0, "output_per_1m": 2.0},
        "large": {"input_per_1m": 10.0, "output_per_1m": 30.0},
        "unused": {"input_per_1m": 5.0, "output_per_1m": 5.0},
    },
    "tiers": [
        {"name": "main", "model": "small"},
        {"name": "mid", "model": "medium"},
        {"name": "brain", "model": "large"},
    ],
}


def write_tiers(
    path: Path,
    overrides: dict[str, str] | None = None,
    tiers: list[dict] | None = None,
    prices: dict[str, dict[str, float]] | None = None,
) -> Path:
    """Write the test tiers as TOML (`tiers`, default TIERS_TOML's), with `overrides` {tier name: model} swapped in
    and `prices` {model: {input_per_1m, output_per_1m}} replacing TIERS_TOML's."""
    lines = []
    for t in TIERS_TOML["tiers"] if tiers is None else tiers:
        model = (overrides or {}).get(t["name"], t["model"])
        lines += ["[[tiers]]", f'name = "{t["name"]}"', f'model = "{model}"', ""]
    for name, price in (TIERS_TOML["models"] | (prices or {})).items():
        lines += [f'[models."{name}"]', *(f"{k} = {v}" for k, v in price.items()), ""]
    path.write_text("\n".join(lines))
    return path


class HashingEmbedder:
    """Bag-of-words hashed into 384 dims, unit-normalised: fast, deterministic, no model download."""

    def __init__(self, dim: int = 384, name: str = "test/hashing:hash"):
        self._dim = dim
        self._id = name
        self.calls = 0

    @property
    def id(self) -> str:
        return self._id

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += len(texts)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                h = int(hashlib.md5(word.encode()).hexdigest()[:8], 16)
                out[i, h % self._dim] += 1.0
            out[i, 0] += 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_log(n_prompts: int = 300, seed: int = 0) -> pd.DataFrame:
    """A generated outcome log where prompts mentioning 'hard' need the brain tier.

    easy prompts: every tier succeeds; medium prompts: mid and brain; hard prompts: only brain.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_prompts):
        kind = rng.choice(["easy", "medium", "hard"])
        words = rng.choice(["alpha", "beta", "gamma", "delta", "omega", "sigma"], size=5)
        prompt = f"{kind} question {i}: " + " ".join(words)
        need = {"easy": 0, "medium": 1, "hard": 2}[kind]
        for level, model in enumerate(["small", "medium", "large"]):
            p_ok = 0.92 if level >= need else 0.08
            rows.append(
                {
                    "prompt_id": f"p{i}",
                    "prompt": prompt,
                    "model": model,
                    "score": float(rng.random() < p_ok),
                    "cost_usd": len(prompt) / 4 * [0.2, 1.0, 10.0][level] / 1e6,
                    "category": kind,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture
def tiers() -> TiersConfig:
    return parse_tiers(TIERS_TOML)


@pytest.fixture
def outcome_log() -> pd.DataFrame:
    return make_log()


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder()
