"""The CLI: one-line errors for bad input, and batch routing on a user's own log and tiers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import replace

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from infra.settings import get_settings
from router.artifact import RouterArtifact
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.routing import Router
from router.schema import load_outcomes, load_tiers
from tests.conftest import TIERS_TOML, HashingEmbedder, make_log, write_tiers
from training import cli
from training.data import split_log
from training.evaluation import calibrate_knob
from training.fit import train_router

runner = CliRunner()


@pytest.fixture
def artifact_dir(tmp_path, tiers):
    emb = HashingEmbedder()
    split = split_log(make_log(150), tiers, 0.3, 0)
    art = train_router(split, emb, None, FeatureSpec(embedder_id=emb.id), DifficultyModel(n_estimators=20))
    return art.save(tmp_path / "artifact")


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("TIERWISE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_train_names_the_bad_file_row_and_column(tmp_path):
    log = make_log(5)
    log.loc[3, "score"] = 7.0
    path = tmp_path / "mine.csv"
    log.to_csv(path, index=False)
    tiers = tmp_path / "tiers.toml"
    tiers.write_text('[[tiers]]\nname = "only"\nmodel = "small"\ninput_per_1m = 1\noutput_per_1m = 1\n')
    res = runner.invoke(cli.app, ["train", "--outcomes", str(path), "--tiers", str(tiers)])
    assert res.exit_code == 2
    out = res.output.strip()
    assert "mine.csv, row 4, column 'score'" in out and "Traceback" not in out


def test_route_batch_writes_one_decision_per_prompt(tmp_path, artifact_dir, monkeypatch):
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    monkeypatch.chdir(tmp_path)  # no config/tiers.toml here: the model's own tiers
    batch = tmp_path / "prompts.jsonl"
    batch.write_text("\n".join(json.dumps({"prompt_id": f"q{i}", "prompt": f"hard question {i}"}) for i in range(5)))
    out = tmp_path / "decisions.jsonl"
    res = runner.invoke(
        cli.app,
        ["route", "--batch", str(batch), "--out", str(out), "--model-uri", str(artifact_dir)],
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == [f"q{i}" for i in range(5)]
    for r in rows:
        assert set(r) >= {"prompt_id", "tier", "model", "predicted_quality", "expected_cost_usd"}
        assert set(r["predicted_quality"]) == {"main", "mid", "brain"}


def test_a_default_tiers_file_with_other_models_is_said(tmp_path, artifact_dir, monkeypatch):
    """Trained with --tiers mine.toml, then routed from the checkout: its config/tiers.toml, read by default, put
    other models behind the same tier names without a word (review finding). Now one warning names the file and
    each swap; the same models (prices may differ) say nothing."""
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    write_tiers(tmp_path / "config" / "tiers.toml", overrides={"mid": "unused"})
    res = runner.invoke(cli.app, ["route", "hard question 1", "--model-uri", str(artifact_dir)])
    assert res.exit_code == 0 and json.loads(res.stdout)["tier"] in ("main", "mid", "brain"), res.output
    assert "read as the default tiers file puts other models behind tiers" in res.stderr
    assert "(mid: medium -> unused)" in res.stderr, res.stderr
    write_tiers(tmp_path / "config" / "tiers.toml", prices={"small": {"input_per_1m": 9, "output_per_1m": 9}})
    res = runner.invoke(cli.app, ["route", "hard question 1", "--model-uri", str(artifact_dir)])
    assert res.exit_code == 0 and "warning" not in res.stderr, res.output


def test_route_batch_streams_jsonl_from_a_pipe_and_names_a_folder(tmp_path, artifact_dir, monkeypatch):
    """`--batch <(...)` was "no such file", as was a folder (review finding); Parquet cannot come from a pipe."""
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    monkeypatch.chdir(tmp_path)
    for name in ("pipe.jsonl", "pipe.parquet"):
        os.mkfifo(tmp_path / name)
    lines = "".join(json.dumps({"prompt_id": f"q{i}", "prompt": f"hard question {i}"}) + "\n" for i in range(3))
    # daemon: were the command never to open the pipe, the writer must not keep the test process alive
    writer = threading.Thread(target=(tmp_path / "pipe.jsonl").write_text, args=(lines,), daemon=True)
    writer.start()
    res = runner.invoke(cli.app, ["route", "--batch", str(tmp_path / "pipe.jsonl"), "--model-uri", str(artifact_dir)])
    writer.join(timeout=10)
    assert res.exit_code == 0, res.output
    assert [json.loads(line)["prompt_id"] for line in res.stdout.splitlines()] == ["q0", "q1", "q2"]
    # Nothing may open the Parquet pipe (its open waits for a writer for good): after 20 s one comes, and says so.
    stuck: list[bool] = []
    rescue = threading.Timer(20, lambda: (stuck.append(True), (tmp_path / "pipe.parquet").open("wb").close()))
    rescue.daemon = True
    rescue.start()
    res = runner.invoke(cli.app, ["route", "--batch", str(tmp_path / "pipe.parquet"), "--model-uri", str(artifact_dir)])
    rescue.cancel()
    assert not stuck, "the command opened the Parquet pipe before refusing it"
    assert res.exit_code == 2 and "pipe.parquet: is not a regular file" in res.output, res.output
    res = runner.invoke(cli.app, ["route", "--batch", str(tmp_path), "--model-uri", str(artifact_dir)])
    assert res.exit_code == 2 and f"{tmp_path}: is a folder" in res.output, res.output


def test_route_batch_bad_line(tmp_path, artifact_dir, monkeypatch):
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    batch = tmp_path / "prompts.jsonl"
    batch.write_text('{"prompt_id": "a", "prompt": "ok"}\n{"prompt_id": "b"}\n')
    res = runner.invoke(cli.app, ["route", "--batch", str(batch), "--model-uri", str(artifact_dir)])
    assert res.exit_code == 2 and "prompts.jsonl, row 2, column 'prompt'" in res.output


def test_route_without_a_registered_model_says_what_to_do(tmp_path):
    res = runner.invoke(cli.app, ["route", "hello"])
    assert res.exit_code == 2 and "make train" in res.output


def test_from_store_adds_the_service_outcomes(tmp_path, tiers):
    from infra.store import OutcomeRow, Store

    log_path = tmp_path / "log.parquet"
    make_log(30).to_parquet(log_path)
    tiers_path = tmp_path / "tiers.toml"
    tiers_path.write_text(
        "\n".join(
            [f'[[tiers]]\nname = "{t.name}"\nmodel = "{t.model}"\n' for t in tiers.tiers]
            + [
                f'[models."{m}"]\ninput_per_1m = {p.input_per_1m}\noutput_per_1m = {p.output_per_1m}\n'
                for m, p in tiers.models.items()
            ]
        )
    )
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.migrate()
    store.record_outcomes(
        [
            OutcomeRow(id=f"o{i}", prompt="brand new prompt  from production", model=m, score=1.0, cost_usd=0.01)
            for i, m in enumerate(["small", "large"])
        ]
    )
    settings = cli._settings(outcomes_path=log_path, tiers_path=tiers_path, database_url=url)
    _, log = cli._load_inputs(settings, from_store=True)
    added = log[log["prompt"] == "brand new prompt  from production"]
    assert len(log) == 30 * 3 + 2
    assert sorted(added["model"]) == ["large", "small"] and added["prompt_id"].nunique() == 1


def test_from_store_keeps_outcomes_of_a_model_swapped_out_of_the_tiers(tmp_path, tiers):
    from infra.store import OutcomeRow, Store

    log_path = tmp_path / "log.parquet"
    make_log(30).to_parquet(log_path)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.migrate()
    old = OutcomeRow(id="o1", prompt="a prompt from production", model="retired-model", score=1.0, cost_usd=0.01)
    store.record_outcomes([old])
    settings = cli._settings(outcomes_path=log_path, tiers_path=write_tiers(tmp_path / "t.toml"), database_url=url)
    _, log = cli._load_inputs(settings, from_store=True)  # refused the whole store before (an unknown model)
    assert log[log["model"] == "retired-model"]["prompt"].tolist() == ["a prompt from production"]


def test_route_batch_refuses_to_write_over_its_input_and_a_bad_chunk(tmp_path, artifact_dir, monkeypatch):
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    batch = tmp_path / "prompts.jsonl"
    text = "".join(json.dumps({"prompt_id": f"q{i}", "prompt": f"question {i}"}) + "\n" for i in range(3))
    batch.write_text(text)
    model = ["--model-uri", str(artifact_dir)]
    res = runner.invoke(cli.app, ["route", "--batch", str(batch), "--out", str(tmp_path / "." / batch.name), *model])
    assert res.exit_code == 2 and "is the --batch file" in res.output, res.output
    assert batch.read_text() == text  # emptied before the check
    alias = tmp_path / "alias.jsonl"
    os.link(batch, alias)  # a hard link is written in place, so it was emptied before it was read (review finding)
    res = runner.invoke(cli.app, ["route", "--batch", str(batch), "--out", str(alias), *model])
    assert res.exit_code == 2 and "is the --batch file" in res.output, res.output
    assert batch.read_text() == text
    for chunk in ("0", "-5"):  # 0 was a ValueError, -5 routed every prompt on zero predictions
        res = runner.invoke(cli.app, ["route", "--batch", str(batch), "--chunk", chunk, *model])
        assert res.exit_code == 2 and "--chunk" in res.output and "Traceback" not in res.output, res.output


@pytest.mark.parametrize("command", [["route", "hello"], ["evaluate"], ["calibrate", "--top-share", "0.3"]])
def test_a_tiers_file_named_but_missing_is_an_error(tmp_path, artifact_dir, command):
    # It was silently replaced by the model's own tiers.
    for named, says in ((tmp_path / "nosuch.toml", "no such file"), (tmp_path, "is a folder")):
        res = runner.invoke(cli.app, [*command, "--model-uri", str(artifact_dir), "--tiers", str(named)])
        assert res.exit_code == 2 and f"--tiers {named}: {says}" in res.output, res.output


@pytest.mark.parametrize("command", [["route", "hello"], ["evaluate"], ["calibrate", "--top-share", "0.3"]])
def test_a_tiers_file_the_environment_names_but_missing_is_an_error(tmp_path, artifact_dir, command, monkeypatch):
    # TIERWISE_TIERS_PATH with a typo: the model's own tiers and prices were used without a word (review finding).
    for named, says in ((tmp_path / "typo.toml", "tiers file not found"), (tmp_path, "is a folder")):
        monkeypatch.setenv("TIERWISE_TIERS_PATH", str(named))
        get_settings.cache_clear()
        res = runner.invoke(cli.app, [*command, "--model-uri", str(artifact_dir)])
        assert res.exit_code == 2 and f"{named}: {says}" in res.output, res.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["train", "--seed", "-1"], "--seed: Input should be greater than or equal to 0"),
        (["purge", "--older-than-days", "inf"], "--older-than-days must be above 0 and at most 100000"),
        (["purge", "--older-than-days", "nan"], "--older-than-days must be above 0 and at most 100000"),
        (["purge", "--older-than-days", "0.5"], "--older-than-days 0.5 is shorter than 1 days"),
        # was an OverflowError traceback (inf, 1e12), a message naming no flag (nan), everything (0), or the future
        *(
            ([command, "--from-store", *more, "--since-days", days], "--since-days must be above 0 and at most 100000")
            for command, more in (("evaluate", []), ("calibrate", ["--top-share", "0.3"]))
            for days in ("inf", "1e12", "nan", "0", "-3")
        ),
    ],
)
def test_out_of_range_numbers_are_one_line(args, says):
    res = runner.invoke(cli.app, args)
    assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output, res.output


def test_outputs_and_models_that_cannot_be_are_refused_up_front(tmp_path, artifact_dir):
    res = runner.invoke(
        cli.app, ["evaluate", "--model-uri", str(artifact_dir), "--json-out", str(tmp_path / "nodir" / "e.json")]
    )
    assert res.exit_code == 2 and "--json-out" in res.output and "does not exist" in res.output, res.output
    afile = tmp_path / "afile"
    afile.write_text("x")
    res = runner.invoke(cli.app, ["add-model", "--out", str(afile), "--model-uri", str(artifact_dir)])
    assert res.exit_code == 2 and "is a file; give a folder" in res.output, res.output
    # Another model's folder: its files (a novelty reference, a task classifier) would load with the new model.
    res = runner.invoke(cli.app, ["add-model", "--out", str(artifact_dir), "--model-uri", str(artifact_dir)])
    assert res.exit_code == 2 and "is not empty; give a new or empty folder" in res.output, res.output
    for content in (None, "{not json", "{}"):
        folder = tmp_path / f"model-{content is None}-{len(content or '')}"
        folder.mkdir()
        if content is not None:
            (folder / "router.json").write_text(content)
        res = runner.invoke(cli.app, ["route", "hello", "--model-uri", str(folder)])
        assert res.exit_code == 2 and "not a tierwise model folder" in res.output, res.output


def test_a_log_whose_calls_cost_nothing_is_one_line(tmp_path):
    log = make_log(60)
    log["cost_usd"] = 0.0
    path = tmp_path / "free.parquet"
    log.to_parquet(path)
    res = runner.invoke(cli.app, ["train", "--outcomes", str(path), "--tiers", str(write_tiers(tmp_path / "t.toml"))])
    assert res.exit_code == 2 and "free.parquet: every outcome of the tiers' models has cost_usd 0" in res.output


def test_a_bad_pooled_log_is_one_line_naming_the_setting(tmp_path, monkeypatch):
    log_path, bad = tmp_path / "log.parquet", tmp_path / "trunc.parquet"
    make_log(60).to_parquet(log_path)
    bad.write_bytes(b"PAR1 not really")
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    monkeypatch.setenv("TIERWISE_POOL_PATHS", json.dumps([str(bad)]))
    get_settings.cache_clear()
    tiers = str(write_tiers(tmp_path / "t.toml"))
    res = runner.invoke(cli.app, ["train", "--outcomes", str(log_path), "--tiers", tiers])
    assert res.exit_code == 2 and "trunc.parquet" in res.output and "TIERWISE_POOL_PATHS" in res.output, res.output


def test_a_file_the_command_cannot_read_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    # What no command checks itself (here the store's database) still ends in one line, through the command guard.
    bad_db = tmp_path / "tierwise.db"
    bad_db.write_bytes(b"this is not a database" * 100)
    for url, says in ((f"sqlite:///{bad_db}", "the database refused"), ("notaurl", "not a database URL")):
        monkeypatch.setenv("TIERWISE_DATABASE_URL", url)
        get_settings.cache_clear()
        res = runner.invoke(cli.app, ["purge", "--older-than-days", "1"])
        assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output, res.output


def test_bad_flag_value_is_one_line():
    res = runner.invoke(cli.app, ["train", "--test-size", "2"])
    assert res.exit_code == 2 and "--test-size" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli.app, ["route", "--target", "2", "x"])
    assert res.exit_code == 2 and "--target:" in res.output and "--quality-target" not in res.output


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (["--top-share", "0.3"], "TIERWISE_QUALITY_TARGET="),
        (["--mean-cost-usd", "1"], "cost_weight_per_usd"),
        (["--quality-share", "0.9"], "90% of the top tier's quality: λ"),
    ],
)
def test_calibrate_prints_the_setting_and_what_it_realises(tmp_path, artifact_dir, monkeypatch, args, setting):
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    log = tmp_path / "log.parquet"
    make_log(150).to_parquet(log)
    tiers_file = str(write_tiers(tmp_path / "tiers.toml"))
    res = runner.invoke(
        cli.app,
        ["calibrate", *args, "--model-uri", str(artifact_dir), "--outcomes", str(log), "--tiers", str(tiers_file)],
    )
    assert res.exit_code == 0, res.output
    first, second = res.output.strip().splitlines()[-2:]
    assert setting in first
    assert "held-out prompts: quality" in second and "mean cost $" in second
    if "--quality-share" in args:  # --register needs the registry, not a local artifact
        res = runner.invoke(cli.app, ["calibrate", *args, "--register", "--model-uri", str(artifact_dir)])
        assert res.exit_code == 2 and "leave out --model-uri" in res.output


def test_calibrate_prices_with_the_tiers_file_as_the_service_does(tmp_path, artifact_dir, monkeypatch):
    """The model was trained at TIERS_TOML's prices; the tiers file now makes mid ten times dearer. The λ the
    service will apply per USD must come from the prices it routes with: the file's."""
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    log = tmp_path / "log.parquet"
    make_log(150).to_parquet(log)
    dearer = write_tiers(tmp_path / "tiers.toml", prices={"medium": {"input_per_1m": 10.0, "output_per_1m": 20.0}})
    args = ["calibrate", "--mean-cost-usd", "0.00005", "--model-uri", str(artifact_dir), "--outcomes", str(log)]
    res = runner.invoke(cli.app, [*args, "--tiers", str(dearer)])
    assert res.exit_code == 0, res.output
    artifact = RouterArtifact.load(artifact_dir)
    live = load_tiers(dearer)
    settings = get_settings()
    # the fixture's model records no split: the CLI takes it for one from before the hash rule (the draw)
    split = split_log(load_outcomes(log, live), live, settings.test_size, settings.seed, rule="draw")
    with_live = calibrate_knob(Router(artifact, live, HashingEmbedder()), split, None, 0.00005)
    with_trained = calibrate_knob(Router(artifact, None, HashingEmbedder()), split, None, 0.00005)
    assert with_live != with_trained  # the file's prices change the answer
    assert res.output.strip().endswith(with_live)
    # evaluate too: the router's curve at the file's prices.
    out = tmp_path / "eval.json"
    common = ["--model-uri", str(artifact_dir), "--outcomes", str(log), "--json-out", str(out)]
    router_rows = []
    for tiers in (dearer, write_tiers(tmp_path / "trained.toml")):
        res = runner.invoke(cli.app, ["evaluate", *common, "--tiers", str(tiers)])
        assert res.exit_code == 0, res.output
        router_rows.append(next(r for r in json.loads(out.read_text())["table"] if r["method"] == "router"))
    assert router_rows[0] != router_rows[1]


def test_train_refuses_a_tier_without_enough_outcomes_before_fitting(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("fitted or embedded a log that cannot train")

    monkeypatch.setattr(cli, "make_embedder", never)
    log = make_log(150)
    log = log[log["model"] != "medium"]  # the mid tier's model has no outcomes at all
    path = tmp_path / "mine.parquet"
    log.to_parquet(path)
    res = runner.invoke(cli.app, ["train", "--outcomes", str(path), "--tiers", str(write_tiers(tmp_path / "t.toml"))])
    assert res.exit_code == 2, res.output
    assert "mine.parquet" in res.output and "tier 'mid' (medium) has 0 outcomes in the training split" in res.output
    assert "Traceback" not in res.output


def test_evaluate_and_calibrate_refuse_tiers_the_model_was_not_trained_for(tmp_path, artifact_dir, monkeypatch):
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    log = tmp_path / "log.parquet"
    make_log(150).to_parquet(log)
    two = str(write_tiers(tmp_path / "two.toml", tiers=[TIERS_TOML["tiers"][0], TIERS_TOML["tiers"][2]]))
    common = ["--model-uri", str(artifact_dir), "--outcomes", str(log), "--tiers", two]
    for args in (["evaluate", *common], ["calibrate", "--top-share", "0.3", *common]):
        res = runner.invoke(cli.app, args)
        assert res.exit_code == 2, res.output
        assert "two.toml: the model was trained for tiers ['main', 'mid', 'brain']" in res.output, res.output


def test_add_model_names_the_input_at_fault(tmp_path, artifact_dir, monkeypatch):
    """Every refusal named the outcome log, also one of the model or of the tiers file (review finding)."""
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    log = make_log(150)
    swapped = log[log["model"] == "medium"].head(40).assign(model="unused")
    path = tmp_path / "swap.parquet"
    pd.concat([log, swapped]).to_parquet(path)
    tiers = write_tiers(tmp_path / "swap.toml", overrides={"mid": "unused"})
    common = ["--outcomes", str(path), "--tiers", str(tiers), "--out", str(tmp_path / "new")]
    res = runner.invoke(cli.app, ["add-model", *common, "--model-uri", str(artifact_dir)])  # no shared difficulty
    assert res.exit_code == 2 and f"error: {artifact_dir}: refitting" in res.output, res.output
    renamed_tiers = [{**t, "name": f"x{t['name']}"} for t in TIERS_TOML["tiers"]]
    renamed = write_tiers(tmp_path / "renamed.toml", tiers=renamed_tiers)
    res = runner.invoke(
        cli.app, ["add-model", *common[:2], "--tiers", str(renamed), *common[4:], "--model-uri", str(artifact_dir)]
    )
    assert res.exit_code == 2 and f"{renamed}: the model was trained for tiers" in res.output, res.output
    assert str(path) not in res.output
    unchanged = write_tiers(tmp_path / "unchanged.toml")  # what to change is the tiers file, not the log
    res = runner.invoke(
        cli.app, ["add-model", *common[:2], "--tiers", str(unchanged), *common[4:], "--model-uri", str(artifact_dir)]
    )
    assert res.exit_code == 2 and f"error: {unchanged}: no tier's model differs" in res.output, res.output


def test_evaluate_with_no_training_side_scores_the_router_alone(tmp_path, artifact_dir, monkeypatch):
    """The baselines train on the split's training side: with none left (a --test-size of 0.999) the command was a
    scikit-learn traceback (review finding)."""
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    log = tmp_path / "log.parquet"
    make_log(150).to_parquet(log)
    common = ["--model-uri", str(artifact_dir), "--outcomes", str(log), "--tiers", str(write_tiers(tmp_path / "t"))]
    res = runner.invoke(cli.app, ["evaluate", *common, "--test-size", "0.999", "--json-out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert "warning: no baselines: they train on the split's training side, where tier 'main'" in res.output
    methods = {r["method"] for r in json.loads((tmp_path / "e.json").read_text())["table"]}
    assert "router" in methods and "kNN (k=25)" not in methods


def test_evaluate_refuses_a_tier_with_no_outcomes_in_the_log(tmp_path, artifact_dir, monkeypatch):
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    log = tmp_path / "log.parquet"
    make_log(150).query("model != 'medium'").to_parquet(log)  # the log of a tier's swapped-in model is not in yet
    tiers = str(write_tiers(tmp_path / "t.toml"))
    res = runner.invoke(
        cli.app, ["evaluate", "--model-uri", str(artifact_dir), "--outcomes", str(log), "--tiers", tiers]
    )
    assert res.exit_code == 2 and "tier 'mid' (medium) has 0 outcomes in the test split" in res.output, res.output


def test_route_batch_names_a_line_that_is_not_utf8_and_a_missing_output_folder(tmp_path, artifact_dir, monkeypatch):
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    batch = tmp_path / "prompts.jsonl"
    batch.write_bytes(b'{"prompt_id": "a", "prompt": "ok"}\n{"prompt_id": "b", "prompt": "caf\xe9"}\n')
    res = runner.invoke(cli.app, ["route", "--batch", str(batch), "--model-uri", str(artifact_dir)])
    assert res.exit_code == 2 and "prompts.jsonl: line 2 is not UTF-8 (byte 0xe9" in res.output, res.output
    batch.write_text('{"prompt_id": "a", "prompt": "ok"}\n')
    out = tmp_path / "no" / "such" / "out.jsonl"
    res = runner.invoke(cli.app, ["route", "--batch", str(batch), "--out", str(out), "--model-uri", str(artifact_dir)])
    assert res.exit_code == 2 and f"the folder {out.parent} does not exist" in res.output, res.output


def test_a_csv_log_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "excel.csv"
    make_log(5).to_csv(path, index=False)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b"question", "quéstion".encode("latin-1"), 1)
    path.write_bytes(b"".join(lines))
    tiers = str(write_tiers(tmp_path / "t.toml"))
    res = runner.invoke(cli.app, ["train", "--outcomes", str(path), "--tiers", tiers])
    assert res.exit_code == 2 and "excel.csv: line 4 is not UTF-8 (byte 0xe9" in res.output, res.output


def test_calibrate_top_share_on_a_model_with_a_stored_operating_point_names_the_request_knob(
    tmp_path, artifact_dir, monkeypatch
):
    """TIERWISE_QUALITY_TARGET does nothing for a model that carries a λ: calibrate says what does."""
    from router.artifact import RouterArtifact, find_artifact
    from router.policy import DefaultKnob

    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    art = RouterArtifact.load(find_artifact(str(artifact_dir)))
    art.default_knob = DefaultKnob(0.5, 1000.0, "test", 36, 0.9, 0.001)
    with_knob = art.save(tmp_path / "with_knob")
    log = tmp_path / "log.parquet"
    make_log(150).to_parquet(log)
    tiers = str(write_tiers(tmp_path / "t.toml"))
    args = ["calibrate", "--top-share", "0.3", "--model-uri", str(with_knob), "--outcomes", str(log), "--tiers", tiers]
    res = runner.invoke(cli.app, args)
    assert res.exit_code == 0, res.output
    assert '"quality_target": ' in res.output and "TIERWISE_QUALITY_TARGET does not change" in res.output
    assert "TIERWISE_QUALITY_TARGET=" not in res.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--quality-share", "1.5"], "--quality-share must be in (0, 1]"),
        (["--mean-cost-usd", "-1"], "--mean-cost-usd must be a finite number above 0"),
        (["--mean-cost-usd", "inf"], "--mean-cost-usd must be a finite number above 0"),
        (["--mean-cost-usd", "nan"], "--mean-cost-usd must be a finite number above 0"),
    ],
)
def test_calibrate_refuses_a_share_or_cost_out_of_range(args, says):
    res = runner.invoke(cli.app, ["calibrate", *args])
    assert res.exit_code == 2 and says in res.output, res.output


def test_route_batch_says_a_csv_is_not_a_batch_format(tmp_path, artifact_dir, monkeypatch):
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    batch = tmp_path / "prompts.csv"
    batch.write_text("prompt_id,prompt\na,hello\n")
    res = runner.invoke(cli.app, ["route", "--batch", str(batch), "--model-uri", str(artifact_dir)])
    assert res.exit_code == 2 and "prompts.csv: a batch of prompts is JSONL" in res.output, res.output


@pytest.mark.parametrize(("limit", "ood"), [("0.000001", True), ("2", False)])
def test_route_one_prompt_falls_back_out_of_distribution_as_the_service_does(
    tmp_path, artifact_dir, monkeypatch, limit, ood
):
    """`tierwise route PROMPT` decides like POST /route: past TIERWISE_NOVELTY_LIMIT, the conservative tier."""
    from dataclasses import replace

    from router.artifact import RouterArtifact, find_artifact
    from router.features import featurize
    from router.novelty import NoveltyReference

    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    monkeypatch.setenv("TIERWISE_NOVELTY_LIMIT", limit)
    art = RouterArtifact.load(find_artifact(str(artifact_dir)))
    X = featurize(list(make_log(300, seed=4)["prompt"].unique()), art.features, HashingEmbedder())
    referenced = replace(art, novelty=NoveltyReference(n_reference=100).fit(X[:, :384])).save(tmp_path / "ref")
    monkeypatch.chdir(tmp_path)  # no config/tiers.toml here: the model's own tiers
    res = runner.invoke(cli.app, ["route", "easy question 3", "--model-uri", str(referenced)])
    assert res.exit_code == 0, res.output
    decision = json.loads(res.output)
    assert decision["reason"].startswith("out of distribution") == ood, decision
    if ood:
        assert decision["tier"] == "brain"  # the priciest tier: the documented conservative choice
    # --batch decides each prompt the same way (it routed on the predictions alone)
    batch, out = tmp_path / "prompts.jsonl", tmp_path / "decisions.parquet"
    batch.write_text(
        "".join(json.dumps({"prompt_id": i, "prompt": p}) + "\n" for i, p in enumerate(["x", "easy question 3"]))
    )
    res = runner.invoke(cli.app, ["route", "--batch", str(batch), "--out", str(out), "--model-uri", str(referenced)])
    assert res.exit_code == 0, res.output
    from_batch = pq.read_table(out).to_pylist()[1]
    assert {**from_batch, "prompt_id": "-"} == decision and 0 <= decision["novelty"] <= 1


def _one_model_per_prompt(log):
    """A log of served traffic: each prompt has the outcome of one model only (the one it was routed to)."""
    models = sorted(log["model"].unique())
    index = log["prompt_id"].str[1:].astype(int)
    return log[log["model"] == [models[i % len(models)] for i in index]].reset_index(drop=True)


CANNOT_COMPARE = {
    "served traffic": "no held-out prompt has an outcome of every tier's model",  # was an IndexError
    "equal costs": "every tier's mean cost on the held-out prompts is $0.002",  # a ValueError (max_cost)
    "one tier": "the tiers file has one tier",
    "24 prompts": "training prompts; the novelty check",  # passed the size check, then a ValueError
}


@pytest.mark.parametrize(
    ("shape", "says", "command"),
    [
        *((shape, says, "train") for shape, says in CANNOT_COMPARE.items()),
        # evaluate fits nothing (the novelty reference is training's) and keeps the model's tiers
        *((shape, CANNOT_COMPARE[shape], "evaluate") for shape in ("served traffic", "equal costs")),
    ],
)
def test_a_log_that_cannot_compare_tiers_is_one_line_before_any_fit(
    tmp_path, artifact_dir, monkeypatch, shape, says, command
):
    monkeypatch.setenv("TIERWISE_POOL_PATHS", "[]")
    get_settings.cache_clear()
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    # 24 prompts: every tier keeps enough outcomes (the booster's minimum) in the 17 training prompts
    log = make_log(300 if shape != "24 prompts" else 24, seed=3)
    if shape == "served traffic":
        log = _one_model_per_prompt(log)
    if shape == "equal costs":
        log["cost_usd"] = 0.002
    path = tmp_path / "log.parquet"
    log.to_parquet(path)
    tiers = tmp_path / "t.toml"
    if shape == "one tier":
        tiers.write_text('[[tiers]]\nname = "only"\nmodel = "small"\ninput_per_1m = 1\noutput_per_1m = 1\n')
        log[log["model"] == "small"].to_parquet(path)
    else:
        write_tiers(tiers)
    args = [command, "--outcomes", str(path), "--tiers", str(tiers)]
    if command == "evaluate":
        args += ["--model-uri", str(artifact_dir)]
    res = runner.invoke(cli.app, args)
    assert res.exit_code == 2, res.output
    assert says in res.output and "Traceback" not in res.output, res.output


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("TIERWISE_SEED", "abc", "TIERWISE_SEED: Input should be a valid integer"),
        ("TIERWISE_EMBEDDER", "foo", "TIERWISE_EMBEDDER: Input should be"),
        ("TIERWISE_POOL_PATHS", "notjson", 'error parsing value for field "pool_paths"'),
        # a check across fields names no single variable: it was "TIERWISE_: Value error, ..." (review finding)
        ("TIERWISE_PROMPT_STORAGE", "hash", "the environment's TIERWISE_* settings: prompt_storage=hash needs"),
        # it purged decisions still holding their session's room: an answer settled later was never booked (review)
        ("TIERWISE_RETENTION_DAYS", "0.5", "TIERWISE_RETENTION_DAYS 0.5 is shorter than 1 days"),
    ],
)
@pytest.mark.parametrize("command", [["settings"], ["route", "hi"]])
def test_a_bad_environment_value_is_one_line_naming_the_variable(monkeypatch, variable, value, says, command):
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    res = runner.invoke(cli.app, command)
    assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output, res.output
    assert "default_factory_not_called" not in res.output


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("TIERWISE_RETENTION_DAYS", "0", "TIERWISE_RETENTION_DAYS: Input should be greater than 0"),
        ("TIERWISE_PROMPT_STORAGE", "hash", "prompt_storage=hash needs prompt_hash_key"),
    ],
)
def test_the_service_says_a_bad_environment_value_in_one_line(tmp_path, variable: str, value: str, says: str):
    """`python -m serving` printed pydantic's whole traceback (review finding)."""
    env = {**os.environ, variable: value, "TIERWISE_STORE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "serving"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and says in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().startswith("tierwise: cannot serve: ")


@pytest.mark.parametrize("uri", ["notaurl://", "mysql://u@127.0.0.1/x"])
def test_a_tracking_store_mlflow_cannot_use_is_one_line_before_any_fit(tmp_path, monkeypatch, uri):
    """It was a traceback (UnsupportedModelRegistryStoreURIException, or the driver's ModuleNotFoundError), in train
    only after the embedding, the fit and the evaluation."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TIERWISE_POOL_PATHS", "[]")
    get_settings.cache_clear()
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())

    def no_fit(*a, **k):
        raise AssertionError("fitted before the tracking store was checked")

    monkeypatch.setattr("training.fit.train_router", no_fit)
    path = tmp_path / "log.parquet"
    make_log(60).to_parquet(path)
    for args in (["train", "--outcomes", str(path), "--tiers", str(write_tiers(tmp_path / "t.toml"))], ["route", "hi"]):
        res = runner.invoke(cli.app, args)
        assert res.exit_code == 2, res.output
        assert f"MLFLOW_TRACKING_URI {uri}: MLflow cannot use it" in res.output and "Traceback" not in res.output


def test_a_prompt_that_is_no_unicode_text_is_one_line(tmp_path, artifact_dir, monkeypatch):
    """A lone surrogate (JSON's "\\ud800", or command-line bytes that are no UTF-8) was the tokenizer's TypeError."""
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"prompt": "fine"}\n{"prompt_id": "s", "prompt": "bad \\ud800 surrogate"}\n')
    model = ["--model-uri", str(artifact_dir)]
    res = runner.invoke(cli.app, ["route", "--batch", str(batch), *model])
    assert res.exit_code == 2 and "batch.jsonl, row 2, column 'prompt': the prompt is not valid Unicode" in res.output
    res = runner.invoke(cli.app, ["route", "caf\udce9 prompt", *model])  # b"caf\xe9" as Python reads argv
    assert res.exit_code == 2 and "the prompt is not valid UTF-8 text" in res.output and "Traceback" not in res.output


def test_an_output_that_cannot_be_written_keeps_the_old_file_and_is_one_line(tmp_path, artifact_dir, monkeypatch):
    """--json-out was written in place: a full disk left half a JSON file where the old one was, with a traceback."""
    import pathlib

    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    log = tmp_path / "log.parquet"
    make_log(150).to_parquet(log)
    out = tmp_path / "eval.json"
    out.write_text('{"previous": "evaluation"}')
    tiers = write_tiers(tmp_path / "t.toml")
    args = ["evaluate", "--model-uri", str(artifact_dir), "--outcomes", str(log), "--json-out", str(out)]
    real_write = pathlib.Path.write_text

    def full_disk(self, data, *a, **k):
        real_write(self, data[:100], *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    res = runner.invoke(cli.app, [*args, "--tiers", str(tiers)])
    monkeypatch.undo()
    assert res.exit_code == 2, res.output
    assert f"--json-out {out}: cannot write it: No space left on device" in res.output
    assert json.loads(out.read_text()) == {"previous": "evaluation"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".eval")] == []  # no temporary file left


def test_a_symlinked_json_out_stays_a_link_and_a_replaced_one_keeps_its_mode(tmp_path, artifact_dir, monkeypatch):
    """--json-out (and the other commands' --out) replaced a symlink with a plain file, a private file's 0600 with
    the umask's mode, and detached a hard-linked file from its other name (review findings)."""
    import stat

    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    log = tmp_path / "log.parquet"
    make_log(150).to_parquet(log)
    tiers = write_tiers(tmp_path / "t.toml")
    real, link, private = tmp_path / "real.json", tmp_path / "link.json", tmp_path / "private.json"
    linked, other_name = tmp_path / "linked.json", tmp_path / "other-name.json"
    real.write_text("{}")
    link.symlink_to(real)
    private.write_text("{}")
    private.chmod(0o600)
    linked.write_text("{}")
    os.link(linked, other_name)
    for out in (link, private, linked):
        args = ["evaluate", "--model-uri", str(artifact_dir), "--outcomes", str(log), "--tiers", str(tiers)]
        res = runner.invoke(cli.app, [*args, "--json-out", str(out)])
        assert res.exit_code == 0, res.output
    assert link.is_symlink() and json.loads(real.read_text()) != {}
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and json.loads(private.read_text()) != {}
    assert json.loads(other_name.read_text()) != {}  # a hard link is written in place: its other name sees it


def test_import_routerbench_refuses_a_folder_as_its_output(tmp_path):
    folder = tmp_path / "log.parquet"
    folder.mkdir()
    res = runner.invoke(cli.app, ["import-routerbench", str(tmp_path / "raw.csv"), "--out", str(folder)])
    assert res.exit_code == 2 and "is a folder, not a file" in res.output, res.output  # was IsADirectoryError


def test_a_full_output_is_named_not_the_input(tmp_path, artifact_dir, monkeypatch):
    """A write error on an open file has no filename: it was blamed on the --batch file (or printed as "None")."""
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"prompt": "easy question 1: alpha"}\n')
    res = runner.invoke(
        cli.app, ["route", "--batch", str(batch), "--out", "/dev/full", "--model-uri", str(artifact_dir)]
    )
    assert res.exit_code == 2, res.output
    assert "--out /dev/full: cannot write the decisions: No space left on device" in res.output, res.output


def test_an_output_that_cannot_be_created_is_named_not_the_input_nor_a_temporary_file(
    tmp_path, artifact_dir, monkeypatch
):
    """An --out whose folder cannot take a new file: Parquet blamed the --batch file, JSONL named the hidden
    temporary file (review finding). A folder removed after the check stands in for an unwritable one (the tests
    may run as root, who may write anywhere)."""
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"prompt": "easy question 1: alpha"}\n')
    gone = tmp_path / "gone"
    gone.mkdir()
    checked = cli._output_file

    def check_then_remove(flag, path):
        checked(flag, path)
        gone.rmdir()

    monkeypatch.setattr(cli, "_output_file", check_then_remove)
    for name in ("d.parquet", "d.jsonl"):
        gone.mkdir(exist_ok=True)
        out = gone / name
        args = ["route", "--batch", str(batch), "--out", str(out), "--model-uri", str(artifact_dir)]
        res = runner.invoke(cli.app, args)
        assert res.exit_code == 2, res.output
        assert f"--out {out}: cannot write the decisions: No such file or directory" in res.output, res.output
        assert ".partial" not in res.output and str(batch) not in res.output


@pytest.mark.parametrize("damage", ["booster deleted", "booster garbled", "json a list", "stray booster"])
def test_a_damaged_model_folder_is_one_line_or_read_as_saved(tmp_path, artifact_dir, monkeypatch, damage):
    """A garbled booster (LightGBMError) or a part holding a JSON list (AttributeError) was a traceback; a deleted
    booster was read as no booster (the tier predicted 0.5, exit 0); a stray file from an older model was read."""
    import shutil

    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    before = runner.invoke(cli.app, ["route", "easy question 1: alpha", "--model-uri", str(artifact_dir)])
    assert before.exit_code == 0, before.output
    parts = artifact_dir / "difficulty_model"
    if damage == "booster deleted":
        (parts / "tier_0.txt").unlink()
    elif damage == "booster garbled":
        (parts / "tier_0.txt").write_text("not a booster")
    elif damage == "json a list":
        (parts / "difficulty_model.json").write_text("[]")
    else:  # a booster file the saved model does not list (a model written over an older one's folder)
        meta = json.loads((parts / "difficulty_model.json").read_text())
        meta["boosters"][0] = False
        (parts / "difficulty_model.json").write_text(json.dumps(meta))
        shutil.copy(parts / "tier_1.txt", parts / "tier_0.txt")
    res = runner.invoke(cli.app, ["route", "easy question 1: alpha", "--model-uri", str(artifact_dir)])
    if damage == "stray booster":
        assert res.exit_code == 0 and RouterArtifact.load(artifact_dir).model.boosters_[0] is None, res.output
        return
    assert res.exit_code == 2 and "not a tierwise model folder" in res.output and "Traceback" not in res.output
    if damage.startswith("booster"):
        assert "tier_0.txt" in res.output or "booster file is damaged" in res.output, res.output


def test_sigterm_during_a_batch_keeps_the_old_output_and_leaves_no_partial_file(tmp_path, artifact_dir, monkeypatch):
    """A SIGTERM (a scheduler's stop) killed the process where it stood: `.NAME.PID.partial` stayed beside --out
    (review finding). It now unwinds like Ctrl-C, exit status 143."""
    import os
    import signal

    calls = []

    class TerminatedMidway(HashingEmbedder):
        def encode(self, texts):
            calls.append(len(texts))
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # delivered here, in the main thread, before encode returns
            return super().encode(texts)

    def not_unwound(signum, frame):
        raise RuntimeError("SIGTERM reached the test's handler: the CLI did not handle it")

    previous = signal.signal(signal.SIGTERM, not_unwound)
    try:
        monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: TerminatedMidway())
        batch, out = tmp_path / "prompts.jsonl", tmp_path / "decisions.jsonl"
        batch.write_text("".join(json.dumps({"prompt": f"hard question {i}"}) + "\n" for i in range(10)))
        out.write_text("the previous run's decisions\n")
        args = ["route", "--batch", str(batch), "--out", str(out), "--chunk", "4", "--model-uri", str(artifact_dir)]
        res = runner.invoke(cli.app, args)
        assert res.exit_code == 143, (res.output, res.exception)
        assert len(calls) == 2
        assert out.read_text() == "the previous run's decisions\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([batch.name, out.name, artifact_dir.name])
        assert signal.getsignal(signal.SIGTERM) is not_unwound  # the CLI's handler does not outlive the command
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("name", ["decisions.csv", "decisions.jsonl.zst", "decisions.parquet.gz"])
def test_route_batch_refuses_an_output_name_it_would_not_honour(tmp_path, artifact_dir, monkeypatch, name):
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    batch = tmp_path / "prompts.jsonl"
    batch.write_text('{"prompt": "hard question 1"}\n')
    out = tmp_path / name
    res = runner.invoke(cli.app, ["route", "--batch", str(batch), "--out", str(out), "--model-uri", str(artifact_dir)])
    assert res.exit_code == 2 and f"--out {out}: decisions are written as JSONL" in res.output, res.output
    assert not out.exists()


def test_route_batch_warns_of_repeated_prompt_ids(tmp_path, artifact_dir, monkeypatch):
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    batch = tmp_path / "prompts.jsonl"
    batch.write_text("".join(json.dumps({"prompt_id": i % 3, "prompt": f"hard question {i}"}) + "\n" for i in range(7)))
    res = runner.invoke(cli.app, ["route", "--batch", str(batch), "--model-uri", str(artifact_dir)])
    assert res.exit_code == 0, res.output
    assert f"warning: 4 rows of {batch} repeat an earlier row's prompt_id" in res.output


def test_route_batch_passes_chunk_to_dask(tmp_path, artifact_dir, monkeypatch):
    """`--chunk` was dropped on the way to the Dask workers (review finding)."""
    from training import dask_backend
    from training.bulk import BulkRun

    seen = {}

    def fake_route_file_dask(*args, **kwargs):
        seen.update(kwargs)
        return BulkRun(decisions=1, repeated_ids=0)

    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    monkeypatch.setattr(cli, "_dask_client", lambda spec: object())
    monkeypatch.setattr(dask_backend, "route_file_dask", fake_route_file_dask)
    monkeypatch.setattr(dask_backend, "close", lambda client: None)
    batch = tmp_path / "prompts.jsonl"
    batch.write_text('{"prompt": "hard question 1"}\n')
    args = ["route", "--batch", str(batch), "--chunk", "7", "--dask", "local:1", "--model-uri", str(artifact_dir)]
    res = runner.invoke(cli.app, args)
    assert res.exit_code == 0, res.output
    assert seen["chunk"] == 7


def test_route_batch_on_dask_refuses_this_machines_other_embedder_as_without_dask(tmp_path, artifact_dir, monkeypatch):
    """With --dask, this machine's embedder files of another build were blamed on a Dask worker (the workers read
    the same cache); the refusal is now the one `route --batch` gives without --dask, before any chunk is sent."""
    from training import dask_backend

    sent = []
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder(name="test/hashing:another-build"))
    monkeypatch.setattr(cli, "_dask_client", lambda spec: object())
    monkeypatch.setattr(dask_backend, "route_file_dask", lambda *a, **k: sent.append(a))
    monkeypatch.setattr(dask_backend, "close", lambda client: None)
    batch = tmp_path / "prompts.jsonl"
    batch.write_text('{"prompt": "hard question 1"}\n')
    for dask in ([], ["--dask", "local:1"]):
        res = runner.invoke(cli.app, ["route", "--batch", str(batch), "--model-uri", str(artifact_dir), *dask])
        assert res.exit_code == 2 and sent == []
        assert "error: the model was trained with embedder 'test/hashing:hash' but 'test/hashing:another-build'" in (
            res.output
        ), res.output


def test_route_batch_names_an_output_symlink_loop(tmp_path, artifact_dir, monkeypatch):
    """`--out` a symlink to itself was a traceback (RuntimeError: Symlink loop) from the is-it-the-input check."""
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    batch, loop = tmp_path / "prompts.jsonl", tmp_path / "loop.jsonl"
    batch.write_text('{"prompt": "hard question 1"}\n')
    loop.symlink_to(loop)
    res = runner.invoke(cli.app, ["route", "--batch", str(batch), "--out", str(loop), "--model-uri", str(artifact_dir)])
    assert res.exit_code == 2 and f"--out {loop}:" in res.output and "Traceback" not in res.output, res.output


def test_route_without_a_champion_says_how_to_use_the_challenger_or_train(tmp_path):
    """A first model the gate kept as challenger: route said "Run `make train` first", which the user had just
    done (new-user finding)."""
    from mlflow import MlflowClient

    res = runner.invoke(cli.app, ["route", "hello"])
    assert res.exit_code == 2 and "Train one first: `tierwise train`" in res.output, res.output
    settings = get_settings()
    MlflowClient(settings.mlflow_tracking_uri).create_registered_model(settings.registered_model)
    MlflowClient(settings.mlflow_tracking_uri).create_model_version(settings.registered_model, str(tmp_path))
    res = runner.invoke(cli.app, ["route", "hello"])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and f"--model-uri models:/{settings.registered_model}/1" in out, out
    assert "tierwise promote 1" in out and ".." not in out
    # A champion whose files can't be read is not "kept as a challenger" (review finding).
    MlflowClient(settings.mlflow_tracking_uri).set_registered_model_alias(settings.registered_model, "champion", "1")
    res = runner.invoke(cli.app, ["route", "hello"])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "The registry lists it" in out and "challenger" not in out, out


def test_evaluate_and_calibrate_draw_the_split_the_model_was_trained_with(tmp_path, artifact_dir, monkeypatch):
    """They drew the settings' split (seed 0, test size 0.3) whatever the model was trained with: its training
    prompts among the held-out ones, and a significant-looking win measured on them (new-user finding)."""
    from router.artifact import HeldOut, RouterArtifact, find_artifact

    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder())
    log = tmp_path / "log.parquet"
    make_log(150).to_parquet(log)
    art = RouterArtifact.load(find_artifact(str(artifact_dir)))
    model = art.save(tmp_path / "trained")
    marked = replace(art, held_out=HeldOut(0.5, 7)).save(tmp_path / "marked")
    assert RouterArtifact.load(marked).held_out == HeldOut(0.5, 7)
    common = ["--outcomes", str(log), "--tiers", str(write_tiers(tmp_path / "t.toml"))]

    def evaluate(uri, *more):
        out = tmp_path / "e.json"
        res = runner.invoke(cli.app, ["evaluate", "--model-uri", str(uri), *common, "--json-out", str(out), *more])
        assert res.exit_code == 0, res.output
        return json.loads(out.read_text())["source"], res.output

    source, said = evaluate(marked)
    assert "seed 7, test size 0.5" in source and "warning" not in said
    source, said = evaluate(marked, "--seed", "0")  # the test size is still the model's
    assert "seed 0, test size 0.5" in source and "the model's log was split with seed 7 and test size 0.5" in said
    _, said = evaluate(marked, "--test-size", "0.3")  # the hash rule: a part of the model's held-out prompts
    assert "warning" not in said, said
    _, said = evaluate(marked, "--test-size", "0.6")
    assert "the model's log was split with seed 7 and test size 0.5" in said
    from training.data import prompt_set_digest

    drawn = HeldOut(0.5, 7, prompt_set_digest(make_log(150)["prompt"]), rule="draw")  # a model from before the hash
    same = replace(art, held_out=drawn).save(tmp_path / "same")
    assert RouterArtifact.load(same).held_out == drawn
    source, said = evaluate(same)  # the log it split: no warning
    assert "seed 7, test size 0.5" in source and "warning" not in said
    grown = replace(art, held_out=replace(drawn, log_digest="another log")).save(tmp_path / "grown")
    source, said = evaluate(grown)  # another log than the one it split: another draw (review findings)
    assert "seed 7, test size 0.5" in source and "is not the log the model split" in said
    bigger = tmp_path / "grown.parquet"
    make_log(200).to_parquet(bigger)  # the same 150 prompts and 50 more
    res = runner.invoke(cli.app, ["evaluate", "--model-uri", str(marked), "--outcomes", str(bigger), *common[2:]])
    assert res.exit_code == 0 and "warning" not in res.output, res.output  # hash rule: still held out
    swapped = replace(art, held_out=HeldOut(0.5, 7, None, ("mid",))).save(tmp_path / "swapped")
    assert RouterArtifact.load(swapped).held_out == HeldOut(0.5, 7, None, ("mid",))
    _, said = evaluate(swapped)
    assert "tier(s) mid were swapped in by add-model" in said
    source, said = evaluate(model)  # a model from before the split was stored
    assert "seed 0, test size 0.3" in source and "does not record how its log was split" in said
    res = runner.invoke(cli.app, ["calibrate", "--top-share", "0.3", "--model-uri", str(marked), *common])
    assert res.exit_code == 0 and "warning" not in res.output, res.output


def test_training_with_every_tier_priced_at_zero_warns_up_front(tmp_path, monkeypatch):
    """Such a router sends every prompt to the tier it predicts best; only the gate said so, after the fit
    (new-user finding)."""
    log = tmp_path / "log.parquet"
    make_log(150).to_parquet(log)
    free = {m: {"input_per_1m": 0.0, "output_per_1m": 0.0} for m in ("small", "medium", "large", "unused")}
    monkeypatch.setenv("TIERWISE_POOL_PATHS", "[]")
    get_settings.cache_clear()

    def stop(*_a, **_k):
        cli._fail("stopped before the fit")

    monkeypatch.setattr(cli, "_embedder", stop)
    for prices, warned in ((free, True), (None, False)):
        tiers = write_tiers(tmp_path / f"t{warned}.toml", prices=prices)
        res = runner.invoke(cli.app, ["train", "--outcomes", str(log), "--tiers", str(tiers)])
        assert res.exit_code == 2 and "stopped before the fit" in res.output, res.output
        assert ("every tier of" in res.output and "is priced at 0" in res.output) == warned, res.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["evaluate", "--from-store", "--json-out", "e.json"], "--json-out"),
        (["evaluate", "--from-store", "--seed", "3"], "--seed"),
        (["calibrate", "--from-store", "--mean-cost-usd", "0.001", "--register"], "--register"),
        (["calibrate", "--from-store", "--mean-cost-usd", "0.001", "--model-uri", "models:/x@champion"], "--model-uri"),
        (["calibrate", "--from-store", "--quality-share", "0.9"], "--quality-share"),
    ],
)
def test_from_store_refuses_the_flags_it_does_not_use(tmp_path, monkeypatch, args: list[str], named: str):
    """They were ignored with exit code 0: no JSON written, nothing registered, and --quality-share was reported as
    "--top-share None" (review finding)."""
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(cli.app, args)
    assert res.exit_code == 2, res.output
    assert f"{named} is for the held-out log" in res.output and "None" not in res.output, res.output
    assert not (tmp_path / "e.json").exists()


def test_route_with_another_embedder_than_the_models_is_one_line(tmp_path, artifact_dir, monkeypatch):
    """A cache holding another embedder's files (another recipe of the static one) ended `route` in a traceback."""
    monkeypatch.setattr(cli, "make_embedder", lambda *a, **k: HashingEmbedder(name="test/hashing:other"))
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(cli.app, ["route", "a question", "--model-uri", str(artifact_dir)])
    assert res.exit_code == 2, res.output
    assert "test/hashing:other" in res.output and "Traceback" not in res.output, res.output


@pytest.mark.parametrize("spec", ["local:abc", "local", "foo", ""])
def test_a_bad_dask_spec_is_refused_before_any_work(tmp_path, spec):
    """`train --dask local:abc` loaded and split the log before saying so; `--dask local` said "missing port number
    in address 'local'" without naming --dask (review findings)."""
    res = runner.invoke(cli.app, ["train", "--outcomes", str(tmp_path / "missing.csv"), "--dask", spec])
    assert res.exit_code == 2, res.output
    assert f"--dask {spec}:" in res.output and "missing.csv" not in res.output, res.output
