"""The registered model loads and scores outside this checkout, in a clean venv with only what it declares.

A small router on the generated log with the real int8 ONNX embedder is registered in a throwaway SQLite
store; a fresh virtualenv gets the model's requirements.txt (plus the SQL client MLflow needs to read that
store), and from another directory, without this checkout on sys.path, `mlflow.pyfunc.load_model` loads the
champion and scores prompts. The install is the Makefile's (uv, else pip; with pip the test took 70 s on a Zen 1);
skipped where no package index can be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import mlflow
import pytest

from router.embedders.factory import make_embedder
from router.model import DifficultyModel
from router.schema import parse_tiers
from tests.conftest import TIERS_TOML, make_log
from training import tracking
from training.data import split_log
from training.evaluation import evaluate_artifact
from training.fit import TrainResult, run_params, train_router

REPO = Path(__file__).resolve().parents[2]
ONNX_DIR = REPO / ".cache" / "onnx"
INSTALLER = REPO / "scripts" / "venv_install.py"
NAME = "tierwise-router-standalone"
PROMPTS = ["What is the capital of France?", "hard question: prove that sqrt(2) is irrational, step by step"]
TRAINING_ONLY = ("torch", "sentence-transformers", "transformers", "onnx", "onnxscript", "matplotlib")
PIP_UNREACHABLE = ("NewConnectionError", "Failed to establish", "Temporary failure in name resolution", "timed out")

# Runs inside the clean venv: load the champion, score, and report what was imported from where.
SCRIPT = """
import importlib.util, json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
prompts = json.loads(sys.argv[2])
out = model.predict(pd.DataFrame({"prompt": prompts}))
hinted = model.predict(pd.DataFrame({"prompt": prompts, "task": ["hard"] + [None] * (len(prompts) - 1)}))
counted = model.predict(pd.DataFrame({"prompt": prompts, "input_tokens": [1e6] + [None] * (len(prompts) - 1)}))
whole = model.predict(pd.DataFrame({"prompt": prompts, "input_tokens": [10**6] + [40] * (len(prompts) - 1)}))
refused = []
for column, bad in (("input_tokens", "many"), ("input_tokens", 2.5), ("input_tokens", 0), ("input_tokens", True),
                    ("input_tokens", 1e300), ("task", ["code"]), ("task", "")):
    try:
        model.predict(pd.DataFrame({"prompt": prompts, column: [bad] * len(prompts)}))
        refused.append("")
    except Exception as exc:
        refused.append(str(exc))
shuffled = pd.DataFrame({"prompt": prompts[::-1]}, index=[7, 3][: len(prompts)])
by_index = model.predict(shuffled)
blanks = []
for bad in (["", "ok"], ["ok", "   "], ["ok", None]):
    try:
        model.predict(pd.DataFrame({"prompt": bad}))
        blanks.append("")
    except Exception as exc:
        blanks.append(str(exc))
import router
print(json.dumps({
    "columns": list(out.columns),
    "values": out.to_numpy().tolist(),
    "hinted": hinted.to_numpy().tolist(),
    "counted": counted.to_numpy().tolist(),
    "whole": whole.to_numpy().tolist(),
    "refused": refused,
    "index": list(by_index.index),
    "by_index": by_index.to_numpy().tolist(),
    "blanks": blanks,
    "router_file": router.__file__,
    "installed": {m: importlib.util.find_spec(m) is not None for m in ("torch", "sentence_transformers", "training")},
    "imported": sorted({k.split(".")[0] for k in sys.modules} & {"torch", "sentence_transformers", "training"}),
}))
"""


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny int8 router registered as champion in a SQLite store, once for the module; its URI."""
    tmp_path = tmp_path_factory.mktemp("standalone")
    try:
        from training.onnx_export import export_onnx

        export_onnx(ONNX_DIR)
    except ImportError as exc:
        pytest.skip(f"the int8 ONNX embedder is not built and the exporter can't run here ({exc})")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    tracking.configure(uri, "tierwise-standalone")
    embedder = make_embedder("onnx-int8", onnx_dir=ONNX_DIR)
    log = make_log(400, seed=3)  # enough held-out prompts for the champion gate to judge
    split = split_log(log, parse_tiers(TIERS_TOML), 0.3, seed=0)
    from router.features import FeatureSpec

    features = FeatureSpec(embedder_id=embedder.id)
    model = DifficultyModel(n_estimators=20, n_jobs=1, random_state=0)
    artifact = train_router(split, embedder, None, features, model)
    evaluation = evaluate_artifact(artifact, split, embedder, None, seed=0, baselines=False)
    test_prompts = split.table.prompts["prompt"][split.test].tolist()
    result = TrainResult(artifact, evaluation, run_params(split, features, model, 0.3, 0), test_prompts)
    training_log = tracking.TrainingLog("generated", str(tmp_path / "outcomes.parquet"), log)
    # The embedder's files as symlinks, as a shared or hand-made cache holds them: the model must carry the files.
    linked = tmp_path / "linked-onnx"
    linked.mkdir()
    for f in ONNX_DIR.iterdir():
        (linked / f.name).symlink_to(f)
    reg = tracking.log_and_register(result, NAME, None, test_prompts, training_log, onnx_dir=linked)
    mlflow.end_run()
    assert reg.alias == "champion"
    return uri


def _pip_install(venv: Path, requirements: Path) -> None:
    """Install the model's requirements and the store's SQL client into venv, with the Makefile's installer (uv
    run from this venv when it can be had: the test took 21 s with pip, 12 s so on a Zen 5); skip when no index is
    reachable."""
    names = {line.split("==")[0] for line in requirements.read_text().split()}
    extra = [f"{pkg}=={version(pkg)}" for pkg in ("mlflow-skinny", "sqlalchemy", "alembic") if pkg not in names]
    proc = subprocess.run(
        [sys.executable, str(INSTALLER), "--python", str(venv / "bin" / "python"), "-r", str(requirements), *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        if any(s in proc.stderr for s in PIP_UNREACHABLE):
            pytest.skip(f"pip cannot reach a package index: {proc.stderr.strip().splitlines()[-1]}")
        pytest.fail(f"pip could not install the model's requirements:\n{proc.stderr[-3000:]}")


def test_the_champion_loads_and_scores_in_a_clean_venv(registered: str, tmp_path: Path) -> None:
    uri = registered
    tracking.configure(uri, "tierwise-standalone")
    model_uri = f"models:/{NAME}@champion"

    reqs_dir = tmp_path / "reqs"
    reqs_dir.mkdir()
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    requirements = Path(ModelsArtifactRepository(model_uri).download_artifacts("requirements.txt", str(reqs_dir)))
    declared = {line.split("==")[0].lower() for line in requirements.read_text().split()}
    assert not declared & set(TRAINING_ONLY), f"the int8 model declares training-only packages: {declared}"
    assert {"onnxruntime", "tokenizers", "lightgbm"} <= declared

    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)  # the interpreter behind this venv
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, capture_output=True)
    _pip_install(venv, requirements)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("TIERWISE_")
    }
    env |= {"MLFLOW_TRACKING_URI": uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", SCRIPT, model_uri, json.dumps(PROMPTS)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    tiers = [t["name"] for t in TIERS_TOML["tiers"]]
    assert report["columns"] == [f"quality_{t}" for t in tiers] + [f"expected_cost_usd_{t}" for t in tiers]
    values = report["values"]
    assert len(values) == len(PROMPTS)
    for row in values:
        assert all(0.0 <= q <= 1.0 for q in row[: len(tiers)]), row
        assert all(c > 0 for c in row[len(tiers) :]), row
    # An optional task column is each prompt's task hint: "hard" (a category of make_log) moves the first prompt's
    # quality toward that category's means (brain high, main low); a missing hint changes nothing.
    hinted = report["hinted"]
    assert hinted[0][: len(tiers)] != values[0][: len(tiers)]
    assert hinted[0][len(tiers) - 1] - hinted[0][0] > values[0][len(tiers) - 1] - values[0][0]
    assert hinted[1] == values[1] and hinted[0][len(tiers) :] == values[0][len(tiers) :]
    # An optional input_tokens column prices what each call sends (a million tokens: dollars at these prices); a
    # missing count is the prompt's estimate, and quality does not depend on it.
    counted = report["counted"]
    assert all(c > v + 0.1 for c, v in zip(counted[0][len(tiers) :], values[0][len(tiers) :], strict=True)), counted
    assert counted[1] == values[1] and counted[0][: len(tiers)] == values[0][: len(tiers)]
    assert report["whole"][0] == counted[0]  # whole numbers (int64) are taken as they are
    # What /route refuses is refused naming the column and row: a count that is not a whole number from 1 (a
    # string, 2.5, 0, a boolean, past the store's integers), a task that is not text of 1 to 128 characters.
    assert all(msg.startswith("row 0 of the 'input_tokens' column") for msg in report["refused"][:5]), report["refused"]
    assert all(msg.startswith("row 0 of the 'task' column") for msg in report["refused"][5:]), report["refused"]
    # The output keeps the input's index, so a join pairs each prompt with its own predictions (it was 0..n-1).
    assert report["index"] == [7, 3] and report["by_index"] == values[::-1]
    # A blank or missing prompt is refused naming its row, as /route refuses it (it was scored, or a traceback).
    rows = [msg.split(" of the 'prompt' column")[0] for msg in report["blanks"]]
    assert rows == ["row 0", "row 1", "row 1"], report["blanks"]
    # The code came with the model, not from this checkout; neither torch nor training code was needed.
    assert not Path(report["router_file"]).is_relative_to(REPO), report["router_file"]
    assert report["installed"] == {"torch": False, "sentence_transformers": False, "training": False}
    assert report["imported"] == []


def test_the_service_downloads_the_router_artifact_without_the_embedder_files(registered: str, tmp_path: Path) -> None:
    """The model carries ~70 MB of ONNX for standalone use; the service has its own and must not fetch them."""
    from serving.model_source import RegistrySource, _download

    uri = registered
    target = tmp_path / "download"
    target.mkdir()
    local = Path(_download(f"models:/{NAME}/1", str(target), uri))
    assert (local / "router.json").is_file()
    assert not list(target.rglob("*.onnx")), sorted(p.name for p in target.rglob("*"))
    loaded = RegistrySource(uri, NAME, "champion").load()
    assert loaded.version == f"{NAME}/1" and loaded.artifact.tier_names == ["main", "mid", "brain"]


def test_a_model_whose_artifacts_are_gone_says_where_they_were(registered: str, tmp_path: Path) -> None:
    """A store copied without its artifact files (MLflow keeps their absolute path) named a deleted temporary folder:
    "/tmp/tierwise-model-...: no router.json found" (review finding)."""
    from serving.model_source import RegistrySource

    artifacts = Path(registered.removeprefix("sqlite:///")).parent / "mlartifacts"
    hidden = artifacts.with_name("mlartifacts-hidden")
    artifacts.rename(hidden)
    try:
        with pytest.raises(FileNotFoundError, match="has no files at its artifact location") as exc:
            RegistrySource(registered, NAME, "champion").load()
        assert str(artifacts) in str(exc.value), exc.value
    finally:
        hidden.rename(artifacts)


def test_the_service_takes_the_models_own_embedder_files_where_its_cache_has_none(
    registered: str, tmp_path: Path
) -> None:
    """A host that never built the embedder (no torch: `make setup` cannot) served nothing, though the registered
    model carries the very files it was trained with (review finding): the preflight puts them in the cache."""
    from infra.settings import Settings
    from serving.__main__ import preflight

    def settings(cache: Path, embedder: str) -> Settings:
        return Settings(
            mlflow_tracking_uri=registered,
            registered_model=NAME,
            cache_dir=cache,
            embedder=embedder,
            tiers_path=tmp_path / "none.toml",
        )

    cache = tmp_path / "cache"
    assert preflight(settings(cache, "onnx-int8")) is None
    for name in ("minilm-int8.onnx", "tokenizer.json"):
        assert (cache / "onnx" / name).read_bytes() == (ONNX_DIR / name).read_bytes(), name
    assert sorted(p.name for p in (cache / "onnx").iterdir()) == ["minilm-int8.onnx", "tokenizer.json"]  # no leftovers
    # Another embedder than the model's is refused as before, and nothing is fetched for it.
    other = tmp_path / "other"
    reason = preflight(settings(other, "static"))
    assert reason is not None and "static" in reason, reason
    assert not (other / "onnx").exists() or not any((other / "onnx").iterdir())


def test_the_cli_routes_with_the_models_own_embedder_files_where_its_cache_has_none(
    registered: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tierwise route` on a host that never built the embedder (no torch) said to build it, though the registered
    model carries its files: it takes them into the cache, as the service's preflight does, and routes."""
    from typer.testing import CliRunner

    from infra.settings import get_settings
    from router.embedders.install import FETCH_PREFIX
    from training import cli

    cache = tmp_path / "cache"
    leftover = cache / "onnx" / f"{FETCH_PREFIX}killed"  # a fetch killed midway, long ago
    leftover.mkdir(parents=True)
    (leftover / "half.onnx").write_bytes(b"\0" * 10)
    for p in (leftover / "half.onnx", leftover):
        os.utime(p, (0, 0))
    monkeypatch.chdir(tmp_path)  # no config/tiers.toml here: the model's own tiers
    for key, value in {
        "TIERWISE_CACHE_DIR": str(cache),
        "MLFLOW_TRACKING_URI": registered,
        "TIERWISE_REGISTERED_MODEL": NAME,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cli, "_build_onnx", lambda onnx_dir: pytest.fail("built the embedder instead of fetching it"))
    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(cli.app, ["route", PROMPTS[0]])
    finally:
        get_settings.cache_clear()
    assert res.exit_code == 0, res.output
    assert "from the model" in res.stderr and "minilm-int8.onnx" in res.stderr, res.stderr
    assert json.loads(res.stdout)["tier"] in {"main", "mid", "brain"}, res.stdout
    for name in ("minilm-int8.onnx", "tokenizer.json"):
        assert (cache / "onnx" / name).read_bytes() == (ONNX_DIR / name).read_bytes(), name
    # Only the files: no download folder left, the killed fetch's one removed.
    assert sorted(p.name for p in (cache / "onnx").iterdir()) == ["minilm-int8.onnx", "tokenizer.json"]
