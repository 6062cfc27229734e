"""Install and run anywhere: per-user default paths, serving without torch, the train extra, ONNX on first use."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.settings import Settings, get_settings
from router.embedders.factory import make_embedder
from training import cli

REPO = Path(__file__).resolve().parents[2]
TRAINING_ONLY = {"torch", "sentence_transformers", "transformers", "onnx", "onnxscript", "matplotlib"}
runner = CliRunner()


@pytest.fixture
def fresh_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No TIERWISE_* or MLflow variables; platformdirs' per-user dirs under tmp_path (XDG on Linux)."""
    for name in [n for n in os.environ if n.startswith("TIERWISE_") or n == "MLFLOW_TRACKING_URI"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


@pytest.mark.skipif(sys.platform != "linux", reason="platformdirs follows XDG only on Linux")
def test_stores_and_cache_default_to_per_user_dirs(fresh_env: Path) -> None:
    s = Settings()
    store = fresh_env / "xdg-data" / "tierwise"
    assert s.cache_dir == fresh_env / "xdg-cache" / "tierwise"
    assert s.mlflow_tracking_uri == f"sqlite:///{store / 'mlflow.db'}"
    assert s.database_url == f"sqlite:///{store / 'tierwise.db'}"
    assert s.spool_path == store / "outcome-spool.jsonl"
    assert s.metrics_dir == s.cache_dir / "prometheus"


def test_store_dir_moves_every_default_store_and_explicit_urls_win(
    fresh_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERWISE_STORE_DIR", str(fresh_env / "elsewhere"))
    s = Settings()
    assert s.mlflow_tracking_uri == f"sqlite:///{fresh_env / 'elsewhere' / 'mlflow.db'}"
    assert s.database_url.endswith("/elsewhere/tierwise.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow@db/mlflow")
    monkeypatch.setenv("TIERWISE_DATABASE_URL", "postgresql+psycopg://tw@db/tw")
    s = Settings()
    assert (s.mlflow_tracking_uri, s.database_url) == ("postgresql://mlflow@db/mlflow", "postgresql+psycopg://tw@db/tw")


def test_settings_command_prints_the_effective_value(fresh_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERWISE_STORE_DIR", str(fresh_env / "s"))
    res = runner.invoke(cli.app, ["settings", "mlflow_tracking_uri"])
    assert res.exit_code == 0 and res.output.strip() == f"sqlite:///{fresh_env / 's' / 'mlflow.db'}"
    res = runner.invoke(cli.app, ["settings", "no_such_thing"])
    assert res.exit_code == 2 and "no setting 'no_such_thing'" in res.output


def test_the_settings_listing_masks_database_passwords(fresh_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERWISE_DATABASE_URL", "postgresql+psycopg://tierwise:s3cret@db:5432/tierwise")
    res = runner.invoke(cli.app, ["settings"])
    assert res.exit_code == 0 and "s3cret" not in res.output and "tierwise:***@db" in res.output


def test_missing_onnx_files_are_built_on_first_use(tmp_path: Path) -> None:
    built: list[Path] = []

    def build(onnx_dir: Path) -> None:
        built.append(onnx_dir)
        onnx_dir.mkdir(parents=True)
        for name in ("minilm-int8.onnx", "tokenizer.json"):
            (onnx_dir / name).write_text("stub")

    embedder = make_embedder("onnx-int8", onnx_dir=tmp_path / "onnx", build=build)
    assert built == [tmp_path / "onnx"] and embedder.id.endswith("onnx-int8+ffn-out-fp32")
    make_embedder("onnx-int8", onnx_dir=tmp_path / "onnx", build=build)
    assert len(built) == 1  # present files are not rebuilt


def test_route_without_onnx_files_or_torch_is_one_line(fresh_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training import onnx_export

    model_dir = fresh_env / "model"
    _tiny_onnx_artifact(model_dir)
    monkeypatch.setattr(onnx_export, "missing_build_deps", lambda: ["torch"])
    monkeypatch.chdir(fresh_env)  # not the checkout: its config/tiers.toml swaps the tiny model's tiers, with a warning
    res = runner.invoke(cli.app, ["route", "hello", "--model-uri", str(model_dir)])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and "tierwise[train]" in line and "tierwise build-embedder" in line


def _tiny_onnx_artifact(out: Path) -> None:
    """A router artifact that claims the int8 embedder (its features are never computed here)."""
    import numpy as np

    from router.artifact import RouterArtifact
    from router.embedders.onnx import INT8_RECIPE
    from router.embedders.protocol import EMBEDDING_DIM
    from router.features import FeatureSpec
    from router.model import DifficultyModel
    from router.schema import parse_tiers
    from tests.conftest import TIERS_TOML

    tiers = parse_tiers(TIERS_TOML)
    spec = FeatureSpec(embedder_id=f"sentence-transformers/all-MiniLM-L6-v2:onnx-int8+{INT8_RECIPE}")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, EMBEDDING_DIM + 6))
    Y = (rng.random((60, 3)) < 0.5).astype(float)
    model = DifficultyModel(n_estimators=2, n_jobs=1).fit(X, Y, tiers.names)
    RouterArtifact(model, spec, tiers, dict.fromkeys(tiers.names, 10.0)).save(out)


def test_serving_and_the_cli_import_without_training_packages(tmp_path: Path) -> None:
    """The service's import path (and the CLI's) loads none of the `train` extra: it runs where only core is."""
    code = (
        "import sys\n"
        "import serving.app, serving.__main__, router.embedders.onnx, training.cli, training.tracking\n"
        "from infra.settings import Settings\n"
        f"serving.app.create_app(Settings(store_dir={str(tmp_path)!r}, cache_dir={str(tmp_path)!r}))\n"
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(TRAINING_ONLY)!r}))\n"
        "sys.exit(f'imported {bad}' if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_core_dependencies_leave_training_to_the_train_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {r.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for r in reqs}

    core, extras = names(project["dependencies"]), project["optional-dependencies"]
    assert not core & {"torch", "sentence-transformers", "onnx", "onnxscript", "matplotlib", "transformers"}
    assert {"onnxruntime", "tokenizers", "mlflow-skinny", "platformdirs"} <= core
    assert "torch==2.13.0" in extras["train"]  # an unpinned torch pulls a multi-GB CUDA build
    assert "tierwise[train]" in extras["dev"]


@pytest.mark.parametrize(
    ("path", "from_store", "name"),
    [
        ("data/routerbench_subset/outcomes.parquet", False, "routerbench_subset"),
        ("/logs/mine.csv", False, "mine"),
        ("data/routerbench_subset/outcomes.parquet", True, "routerbench_subset+store"),
    ],
)
def test_runs_are_named_after_their_dataset(path: str, from_store: bool, name: str) -> None:
    assert cli._dataset_name(Path(path), from_store) == name
