"""train -> log -> register -> load by alias -> route, against MLflow on SQLite and on PostgreSQL."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from infra.settings import Settings
from router.embedding_cache import EmbeddingCache
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.schema import parse_tiers
from serving.app import create_app
from serving.model_source import RegistrySource
from tests.conftest import TIERS_TOML, HashingEmbedder, make_log
from tests.integration.conftest import PG_URL, local_client, write_tiers
from training import cli, tracking
from training.data import split_log
from training.evaluation import evaluate_artifact
from training.fit import TrainResult, run_params, train_router
from training.gate import ChampionComparison

NAME = "tierwise-router-test"


def _pg_available() -> bool:
    try:
        with sa.create_engine(PG_URL).connect() as conn:
            conn.execute(sa.text("select 1"))
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def tracking_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        yield uri
        return
    if not _pg_available():
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL}")
    db = f"mlflow_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {db}"))
    try:
        yield PG_URL.rsplit("/", 1)[0].replace("+psycopg", "+psycopg") + f"/{db}"
    finally:
        sa.create_engine(PG_URL).dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))


LOG = make_log(240, seed=1)


def _training_log(tmp_path: Path) -> tracking.TrainingLog:
    return tracking.TrainingLog("generated", str(tmp_path / "outcomes.parquet"), LOG)


def _train(tmp_path: Path, seed: int, n_estimators: int, toml: dict = TIERS_TOML) -> tuple[TrainResult, list[str]]:
    tiers = parse_tiers(toml)
    emb = HashingEmbedder()
    split = split_log(LOG, tiers, 0.3, seed=0)
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    features = FeatureSpec(embedder_id=emb.id)
    model = DifficultyModel(n_estimators=n_estimators, n_jobs=1, random_state=seed)
    artifact = train_router(split, emb, cache, features, model)
    evaluation = evaluate_artifact(artifact, split, emb, cache, seed=0)
    prompts = split.table.prompts["prompt"][split.test].tolist()
    params = run_params(split, features, model, 0.3, 0, task_prior=artifact.task_prior)
    result = TrainResult(artifact, evaluation, params, split.table.prompts["prompt_id"][split.test].tolist())
    return result, prompts


def test_train_register_promote_and_serve(tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # on PostgreSQL, MLflow's default artifact root is relative to the working directory
    tracking.configure(tracking_uri, "tierwise-test")
    first, prompts = _train(tmp_path, seed=0, n_estimators=60)
    reg1 = tracking.log_and_register(first, NAME, None, prompts, _training_log(tmp_path))
    assert reg1.alias == "champion" and reg1.version == "1"

    client = MlflowClient()
    run = client.get_run(reg1.run_id)
    assert run.data.metrics["router_AIQ"] == pytest.approx(first.evaluation.metrics["router_AIQ"])
    assert "model.n_estimators" in run.data.params
    # The generated log has categories: the task prior (its tasks, learned weights) is a run parameter.
    assert first.artifact.task_prior is not None and first.artifact.task_prior.classifier is not None
    assert run.data.params["task_prior.tasks"] == str(len(first.artifact.task_prior.means))
    assert run.data.params["task_prior.guesses_task"] == "True"
    assert run.data.params["task_prior.router_weight"].count("=") == len(first.artifact.tier_names)
    artifacts = {a.path for a in client.list_artifacts(reg1.run_id, "plots")}
    assert {"plots/cost_quality.png", "plots/calibration.png"} <= artifacts

    # The MLflow UI tells the story: a model-training experiment, a named run with its dataset, tags and a note.
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.run_name == "train-generated-hash-seed0"
    assert run.data.tags["tierwise.dataset"] == "generated"
    assert run.data.tags["tierwise.aiq"] == f"{first.evaluation.metrics['router_AIQ']:.4f}"
    assert "held-out prompts: AIQ" in run.data.tags["mlflow.note.content"]
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "generated" and str(tmp_path) in dataset_input.dataset.source
    version = client.get_model_version(NAME, "1")
    assert "AIQ" in version.description and version.tags["tierwise.embedder"] == "test/hashing:hash"
    if tracking_uri.startswith("sqlite"):  # artifacts live next to the database, not in the working directory
        assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())

    # A worse model (one tree) becomes challenger; the champion alias stays on version 1.
    weak, _ = _train(tmp_path, seed=1, n_estimators=1)
    reg2 = tracking.log_and_register(
        weak,
        NAME,
        ChampionComparison(new_aiq=reg1.new_aiq, champion_aiq=reg1.new_aiq + 1.0, n_prompts=100),
        input_prompts=prompts,
        log=_training_log(tmp_path),
    )
    assert reg2.alias == "challenger" and "challenger" in reg2.message
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "2"

    # Load by alias, as serving and `tierwise route` do, and check it scores like the trained model.
    loaded = tracking.download_artifact(f"models:/{NAME}@champion", tmp_path / "dl")
    emb = HashingEmbedder()
    np.testing.assert_allclose(
        loaded.predict_quality(prompts[:20], emb), first.artifact.predict_quality(prompts[:20], emb), atol=1e-9
    )

    settings = Settings(
        mlflow_tracking_uri=tracking_uri,
        registered_model=NAME,
        database_url=f"sqlite:///{tmp_path / 'serve.db'}",
        tiers_path=write_tiers(tmp_path / "tiers.toml"),
        spool_path=tmp_path / "spool.jsonl",
    )
    source = RegistrySource(tracking_uri, NAME, "champion")
    with local_client(create_app(settings=settings, model_source=source, embedder=emb)) as http:  # keys off
        resp = http.post("/route", json={"prompt": prompts[0]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["router_version"] == f"{NAME}/1"
        assert set(body["predicted_quality"]) == {"main", "mid", "brain"}

    # A reload downloads into a temporary directory that is gone once the model is in memory.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert source.load().version == f"{NAME}/1"
    assert list(scratch.iterdir()) == []
    mlflow.end_run()


def test_a_champion_whose_embedder_is_gone_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After an upgrade changes the embedder (a new int8 recipe), the old champion can't be re-scored or served."""

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.configure(uri, "tierwise-test")
    old, prompts = _train(tmp_path, seed=0, n_estimators=20)  # trained with HashingEmbedder "test/hashing:hash"
    tracking.log_and_register(old, NAME, None, prompts, _training_log(tmp_path))
    split = split_log(LOG, parse_tiers(TIERS_TOML), 0.3, seed=0)
    cache = EmbeddingCache(tmp_path / "emb.sqlite")

    same = tracking.champion_comparison(NAME, split, cache, 0, lambda backend: HashingEmbedder(), old.artifact)
    assert same is not None and same.shared_known
    assert same.champion_aiq == same.new_aiq == pytest.approx(old.evaluation.metrics["router_AIQ"])
    upgraded = HashingEmbedder(name="test/hashing:hash+v2")
    gone = tracking.champion_comparison(NAME, split, cache, 0, lambda backend: upgraded, old.artifact)
    assert gone is not None and "its embedder 'test/hashing:hash' is no longer built" in gone.unservable
    # Even with no held-out prompt in common (another log), it is replaced, not kept for want of a comparison.
    recorded = tracking.held_out_digests
    monkeypatch.setattr(tracking, "held_out_digests", lambda run_id: set())
    elsewhere = tracking.champion_comparison(NAME, split, cache, 0, lambda backend: upgraded, old.artifact)
    assert elsewhere is not None and elsewhere.unservable == gone.unservable
    monkeypatch.setattr(tracking, "held_out_digests", recorded)
    # Nor one whose files can't be read: `train` died with a traceback after the fit (review finding).
    download = tracking.download_artifact

    def unreadable(uri: str, dst: Path) -> None:
        raise MlflowException("No such artifact: 'artifacts/router'")

    monkeypatch.setattr(tracking, "download_artifact", unreadable)
    lost = tracking.champion_comparison(NAME, split, cache, 0, lambda backend: HashingEmbedder(), old.artifact)
    assert lost is not None and "its files cannot be read: No such artifact" in lost.unservable
    monkeypatch.setattr(tracking, "download_artifact", download)
    # So the next run replaces it without a comparison with the old champion (the baseline checks still apply).
    weaker, _ = _train(tmp_path, seed=1, n_estimators=10)
    reg = tracking.log_and_register(weaker, NAME, gone, prompts, _training_log(tmp_path))
    assert reg.alias == "champion" and reg.version == "2" and reg.champion_aiq is None
    # and the verdict says why there was nothing to compare with (it was only a log line: review finding)
    assert "the champion cannot be served (its embedder 'test/hashing:hash' is no longer built)" in reg.message
    mlflow.end_run()


def test_the_champion_is_compared_only_on_prompts_it_did_not_train_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another split (a grown log, another seed) held out prompts the champion trained on; re-scored on them it
    looked better than it is, and better retrains stayed challengers (new-user finding)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tracking, "MIN_TEST_PROMPTS", 10)  # this small log shares ~30 held-out prompts
    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", "tierwise-test")
    champ, prompts = _train(tmp_path, seed=0, n_estimators=20)
    tracking.log_and_register(champ, NAME, None, prompts, _training_log(tmp_path))
    tiers, cache, emb = parse_tiers(TIERS_TOML), EmbeddingCache(tmp_path / "emb.sqlite"), HashingEmbedder()
    old = split_log(LOG, tiers, 0.3, seed=0)
    new = split_log(LOG, tiers, 0.5, seed=1)
    both = new.test & old.test & new.table.complete
    assert 0 < both.sum() < (new.test & new.table.complete).sum()  # some of the new test prompts trained the champion
    compared = tracking.champion_comparison(NAME, new, cache, 0, lambda backend: emb, champ.artifact)
    assert compared is not None and compared.shared_known and compared.n_prompts == both.sum()
    on_both = evaluate_artifact(champ.artifact, replace(new, test=both), emb, cache, seed=0)
    assert compared.champion_aiq == compared.new_aiq == on_both.draws["router"]["AIQ"][0]
    # A champion from before the digests were recorded is matched by its recorded prompt ids (review finding: it was
    # compared on the whole split again), and one that recorded neither on the whole split, saying so.
    monkeypatch.setattr(tracking, "held_out_digests", lambda run_id: None)
    by_id = tracking.champion_comparison(NAME, new, cache, 0, lambda backend: emb, champ.artifact)
    assert by_id is not None and by_id.shared_known and by_id.n_prompts == both.sum()
    monkeypatch.setattr(tracking, "_run_text", lambda run_id, path: None)
    legacy = tracking.champion_comparison(NAME, new, cache, 0, lambda backend: emb, champ.artifact)
    assert legacy is not None and not legacy.shared_known
    assert legacy.n_prompts == (new.test & new.table.complete).sum()
    mlflow.end_run()


def test_a_retrain_on_a_grown_log_is_compared_on_every_prompt_the_champion_held_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The split was drawn anew when the log grew: a retrain shared ~test_size² of the prompts with its champion's
    held-out ones (a log under ~560 prompts kept every retrain a challenger). Each prompt keeps its side now."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tracking, "MIN_TEST_PROMPTS", 10)
    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", "tierwise-test")
    champ, prompts = _train(tmp_path, seed=0, n_estimators=20)
    tracking.log_and_register(champ, NAME, None, prompts, _training_log(tmp_path))
    tiers, cache, emb = parse_tiers(TIERS_TOML), EmbeddingCache(tmp_path / "emb.sqlite"), HashingEmbedder()
    later = make_log(160, seed=2).assign(
        prompt_id=lambda d: "later-" + d["prompt_id"], prompt=lambda d: "later " + d["prompt"]
    )
    grown = split_log(pd.concat([LOG, later], ignore_index=True), tiers, 0.3, seed=0)
    old = split_log(LOG, tiers, 0.3, seed=0)
    compared = tracking.champion_comparison(NAME, grown, cache, 0, lambda backend: emb, champ.artifact)
    assert compared is not None and compared.shared_known
    assert compared.n_prompts == (old.test & old.table.complete).sum() > 0
    mlflow.end_run()


def test_training_promotes_the_alias_the_service_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With TIERWISE_MODEL_ALIAS=prod, the winner becomes prod (what the service loads), and the next run is
    compared with prod."""
    monkeypatch.chdir(tmp_path)
    tracking.configure(f"sqlite:///{tmp_path / 'alias.db'}", "tierwise-alias")
    first, prompts = _train(tmp_path, seed=0, n_estimators=30)
    reg = tracking.log_and_register(first, NAME, None, prompts, _training_log(tmp_path), champion_alias="prod")
    assert reg.alias == "prod"
    assert str(MlflowClient().get_model_version_by_alias(NAME, "prod").version) == reg.version
    assert tracking.champion_version(MlflowClient(), NAME) is None  # nothing was called champion
    split = split_log(LOG, parse_tiers(TIERS_TOML), 0.3, seed=0)
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    measured = tracking.champion_comparison(
        NAME, split, cache, 0, lambda backend: HashingEmbedder(), first.artifact, alias="prod"
    )
    assert measured is not None and measured.champion_aiq == pytest.approx(reg.new_aiq)


def test_a_model_for_other_tiers_stays_challenger_until_promoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run for other tiers than the champion's is not compared with it and not promoted behind the service's
    back (a service set up for the champion's tiers would refuse it); `tierwise promote` moves the alias."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.configure(uri, "tierwise-test")
    three, prompts = _train(tmp_path, seed=0, n_estimators=30)
    assert tracking.log_and_register(three, NAME, None, prompts, _training_log(tmp_path)).alias == "champion"
    two_tiers = {"models": TIERS_TOML["models"], "tiers": [TIERS_TOML["tiers"][0], TIERS_TOML["tiers"][2]]}
    two, _ = _train(tmp_path, seed=0, n_estimators=30, toml=two_tiers)
    reg = tracking.log_and_register(two, NAME, None, prompts, _training_log(tmp_path))
    assert reg.alias == "challenger" and reg.verdict is not None, reg.message
    assert "same_tiers_as_champion" in [c.name for c in reg.verdict.failed], reg.message
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TIERWISE_REGISTERED_MODEL", NAME)
    res = CliRunner().invoke(cli.app, ["promote", reg.version])
    assert res.exit_code == 0, res.output
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == reg.version
    res = CliRunner().invoke(cli.app, ["promote", "99"])
    assert res.exit_code == 2 and "cannot promote" in res.output and "version 99" in res.output
    mlflow.end_run()
