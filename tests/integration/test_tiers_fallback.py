"""Without a tiers file the service routes the tiers the model was trained with; how loudly it says so depends on
whether the file was named (TIERWISE_TIERS_PATH) or is the default path the container, by design, does not have."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from infra.settings import Settings
from serving.model_source import LocalSource
from serving.runtime import build_runtime
from tests.conftest import HashingEmbedder


@pytest.mark.parametrize(("named", "level"), [(True, logging.WARNING), (False, logging.INFO)])
def test_a_missing_tiers_file_serves_the_models_tiers(
    artifact_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, named: bool, level: int
) -> None:
    loaded = LocalSource(artifact_dir).load()
    with caplog.at_level(logging.INFO, logger="serving.runtime"):
        runtime = build_runtime(loaded, tmp_path / "absent.toml", HashingEmbedder(), 1, tiers_path_named=named)
    assert runtime.router.tiers == loaded.artifact.tiers
    [record] = [r for r in caplog.records if "absent.toml not found" in r.getMessage()]
    assert record.levelno == level


def test_settings_know_whether_the_tiers_path_was_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TIERWISE_TIERS_PATH", raising=False)
    assert not Settings().tiers_path_named
    assert Settings(tiers_path=tmp_path / "t.toml").tiers_path_named
    monkeypatch.setenv("TIERWISE_TIERS_PATH", str(tmp_path / "t.toml"))
    assert Settings().tiers_path_named
