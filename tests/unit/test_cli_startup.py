"""The `tierwise` process's fixed cost: routing from a local artifact loads no MLflow, and the process skips the
garbage collector's teardown walk (issue 12, bulk routing's whole-command throughput)."""

from __future__ import annotations

import gc
import json
import sys

import pytest
from typer.testing import CliRunner

import training
from infra.settings import get_settings
from tests.conftest import HashingEmbedder
from tests.unit.test_cli import _fresh_settings, artifact_dir  # noqa: F401 - the fixtures
from training import cli


def test_route_from_a_local_artifact_needs_no_mlflow(tmp_path, artifact_dir, monkeypatch):  # noqa: F811
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    monkeypatch.chdir(tmp_path)  # no config/tiers.toml here: the model's own tiers
    # training.tracking (MLflow, about a second of imports) cannot be imported in this test.
    monkeypatch.delattr(training, "tracking", raising=False)
    monkeypatch.setitem(sys.modules, "training.tracking", None)
    batch = tmp_path / "prompts.jsonl"
    batch.write_text("\n".join(json.dumps({"prompt_id": f"q{i}", "prompt": f"question {i}"}) for i in range(3)))
    out = tmp_path / "decisions.jsonl"
    args = ["route", "--batch", str(batch), "--out", str(out), "--model-uri", str(artifact_dir)]
    res = CliRunner().invoke(cli.app, args)
    assert res.exit_code == 0, res.output
    assert [json.loads(line)["prompt_id"] for line in out.read_text().splitlines()] == ["q0", "q1", "q2"]


def test_a_registry_uri_still_goes_through_mlflow(monkeypatch):
    monkeypatch.delattr(training, "tracking", raising=False)
    monkeypatch.setitem(sys.modules, "training.tracking", None)
    with pytest.raises(ImportError):
        cli._load_artifact(get_settings(), "models:/tierwise-router@champion")


def test_the_cli_process_freezes_its_objects_at_exit(monkeypatch):
    registered = []
    monkeypatch.setattr(cli.atexit, "register", registered.append)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # typer's __call__ installs its own
    cli.app(["settings", "seed"], standalone_mode=False)
    assert registered == [gc.freeze]
