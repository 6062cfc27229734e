"""`tierwise` command line: data, train, evaluate, route."""

from __future__ import annotations

import atexit
import functools
import gc
import json
import logging
import math
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import pandas as pd
import typer
from pydantic import ValidationError

from infra.settings import MAX_RETENTION_DAYS, Settings, get_settings, settings_error
from router.artifact import HeldOut, RouterArtifact
from router.embedders.factory import backend_of, make_embedder
from router.embedders.onnx import StaleOnnxFile
from router.embedding_cache import EmbeddingCache
from router.features import FeatureSpec, check_embedder
from router.model import DifficultyModel
from router.novelty import NoveltyReference
from router.routing import Router
from router.schema import OutcomeLogError, TiersConfig, TiersConfigError, is_unicode_text, load_outcomes, load_tiers
from training.bulk import decision_records, read_chunks
from training.output_file import replace_with, temporary_beside, written_in_place

if TYPE_CHECKING:
    from training.data import Split


CommandFn = TypeVar("CommandFn", bound=Callable[..., Any])


class _Cli(typer.Typer):
    """The `tierwise` app. Run as a process (the console script, `python -m training.cli`), it freezes every object
    at exit (gc.freeze, an atexit handler), so the interpreter's teardown does not walk and free the import-time
    objects of numpy, SciPy, scikit-learn, pandas and LightGBM one reference cycle at a time: about 0.4 s of every
    command on 2 cores. Other atexit handlers, explicit closes and the flush of stdout run as before. CliRunner
    (the tests) calls the command, not this."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        atexit.register(gc.freeze)
        return super().__call__(*args, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[CommandFn], CommandFn]:
        """Register a command that turns bad input it did not catch itself into one line (`_input_errors`)."""
        register = super().command(*args, **kwargs)

        def decorate(f: CommandFn) -> CommandFn:
            @functools.wraps(f)
            def guarded(*a: Any, **k: Any) -> Any:
                with _input_errors():
                    return f(*a, **k)

            register(guarded)
            return f

        return decorate


app = _Cli(add_completion=False, no_args_is_help=True, help="tierwise: a learned LLM router.")
logger = logging.getLogger("tierwise")

OutcomesOpt = Annotated[Path | None, typer.Option("--outcomes", help="outcome log: .parquet, .csv or .jsonl")]
TiersOpt = Annotated[Path | None, typer.Option("--tiers", help="tiers TOML")]
DaskOpt = Annotated[
    str | None,
    typer.Option(
        "--dask", help="spread the embedding (and bulk routing) over Dask: local:N workers or tcp://host:port"
    ),
]
ModelUriOpt = Annotated[
    str | None, typer.Option("--model-uri", help="MLflow model URI or a local artifact dir; default: the champion")
]

FromStoreOpt = Annotated[bool, typer.Option("--from-store", help="use the service's logged decisions and outcomes")]
SinceDaysOpt = Annotated[float | None, typer.Option("--since-days", help="with --from-store: only this recent")]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _output_file(flag: str, path: Path | None) -> None:
    """A file the command will write must be able to be one: its folder exists, and it is no folder itself."""
    if path is not None and not path.parent.is_dir():
        _fail(f"{flag} {path}: the folder {path.parent} does not exist")
    if path is not None and path.is_dir():
        _fail(f"{flag} {path}: is a folder, not a file")


def _named_file(flag: str, path: Path | None) -> None:
    """A file the user named with `flag` must be one (an unnamed default may be absent)."""
    if path is not None and path.is_dir():
        _fail(f"{flag} {path}: is a folder, not a file")
    if path is not None and not path.exists():
        _fail(f"{flag} {path}: no such file")


@contextmanager
def _input_errors() -> Iterator[None]:
    """What a command's inputs can raise that the command did not turn into a line of its own: a file it cannot
    read or write (named), a log or tiers file the checks refused (their messages name file, row and field), a
    database URL or file that is none. Anything else is a bug and keeps its traceback."""
    import sqlalchemy as sa

    from infra.store import first_line

    try:
        yield
    except (OutcomeLogError, TiersConfigError) as exc:
        _fail(str(exc))
    except OSError as exc:
        if exc.filename is None:  # a network error, or a bug: not a file the user named
            raise
        _fail(f"{exc.filename}: {exc.strerror or exc}")
    except sa.exc.ArgumentError as exc:
        _fail(f"not a database URL: {exc}")
    except ModuleNotFoundError as exc:  # a database URL's driver (mysql://: MySQLdb), or an extra not installed
        _fail(f"{exc}: install it (a database URL's driver, or pip install 'tierwise[train]')")
    except sa.exc.DatabaseError as exc:
        cause = exc.orig if exc.orig is not None else exc
        _fail(f"the database refused: {type(cause).__name__}: {first_line(cause)}")


FLAG_OF_FIELD = {"quality_target": "--target", "outcomes_path": "--outcomes", "tiers_path": "--tiers"}
"""CLI flags whose name is not the settings field's."""


def _environment() -> Settings:
    """The settings from the environment and defaults; a bad TIERWISE_* value is one line naming the variable."""
    try:
        return get_settings()
    except Exception as exc:
        problem = settings_error(exc)
        if problem is None:
            raise
        _fail(problem)
        raise


def _settings(**overrides: Any) -> Settings:
    """The settings with CLI flags applied, validated like the environment (a bad flag is one line). What counts
    as set is what the environment or a flag set (Settings.tiers_path_named reads it), not every field."""
    env = _environment()
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        checked = Settings.model_validate(env.model_dump() | given)
        return env.model_copy(update={k: getattr(checked, k) for k in given})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0])
        _fail(f"{FLAG_OF_FIELD.get(field, '--' + field.replace('_', '-'))}: {err['msg']}")
        raise


def _tracking(s: Settings) -> None:
    """Point MLflow at the settings' tracking store (training.tracking.configure); a URI MLflow cannot use (no
    scheme it knows, a database driver not installed) is one line naming it."""
    from mlflow.exceptions import MlflowException

    from infra.store import first_line
    from training import tracking

    try:
        tracking.configure(s.mlflow_tracking_uri, s.experiment_name)
    except (MlflowException, ImportError) as exc:
        uri = _without_password(s.mlflow_tracking_uri)
        _fail(f"MLFLOW_TRACKING_URI {uri}: MLflow cannot use it: {type(exc).__name__}: {first_line(exc)[:300]}")


def _without_password(url: str) -> str:
    """A database URL fit for messages and logs: its password masked."""
    import sqlalchemy as sa

    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def _build_onnx(onnx_dir: Path) -> None:
    """Build the ONNX embedder files on first use, where the training extra (torch) is installed."""
    from training.onnx_export import export_onnx, missing_build_deps

    missing = missing_build_deps()
    if missing:
        _fail(
            f"the ONNX embedder is not built in {onnx_dir}, and building it needs {', '.join(missing)}: "
            "pip install 'tierwise[train]', then run `tierwise build-embedder` (or set TIERWISE_CACHE_DIR "
            "to a directory whose onnx/ holds minilm-int8.onnx and tokenizer.json)"
        )
    from training.distill_static import build_static

    typer.secho(f"building the embedders in {onnx_dir} (first use, about a minute)...", err=True)
    export_onnx(onnx_dir)
    build_static(onnx_dir)


def _check_dask(spec: str | None) -> None:
    """A --dask that is neither local:N nor an address is one line, before any work."""
    if spec is None:
        return
    from training.dask_backend import local_workers

    try:
        local_workers(spec)
    except ValueError as exc:
        _fail(str(exc))


def _dask_client(spec: str | None) -> Any:
    """A Dask client for --dask (None without it); a bad spec or a missing extra is one line."""
    if spec is None:
        return None
    from training.dask_backend import connect

    try:
        return connect(spec)
    except (RuntimeError, ValueError, OSError) as exc:
        _fail(str(exc))


@contextmanager
def _run_errors(dask: str | None) -> Iterator[None]:
    """An embedder whose files are stale or another's, and a failure of the Dask cluster or on one of its workers, as
    one line (they were tracebacks; a Dask failure was reported as one of the input file)."""
    from router.embedders.static import StaleStaticFile
    from router.features import EmbedderMismatch

    failure: tuple[type[BaseException], ...] = ()
    if dask is not None:
        from training.dask_backend import DaskFailure

        failure = (DaskFailure,)
    try:
        yield
    except (StaleOnnxFile, StaleStaticFile, EmbedderMismatch) as exc:
        _fail(str(exc))
    except failure as exc:
        _fail(f"--dask {dask}: {exc}")


def _embedder(s: Settings, backend: str) -> Any:
    """The embedder for offline work (training, evaluation, bulk routing): every core, unlike serving."""
    try:
        return make_embedder(backend, onnx_dir=s.cache_dir / "onnx", num_threads=os.cpu_count(), build=_build_onnx)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
        raise


def _dataset_name(path: Path, from_store: bool) -> str:
    """A short name for an outcome log: its folder for data/<name>/outcomes.parquet, else its file stem."""
    name = path.parent.name if path.stem == "outcomes" and path.parent.name else path.stem
    return f"{name}+store" if from_store else name


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("sentence_transformers", "httpx", "alembic", "mlflow", "distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _load_tiers(s: Settings) -> TiersConfig:
    try:
        return load_tiers(s.tiers_path)
    except TiersConfigError as exc:
        _fail(str(exc))
        raise


def _load_log(s: Settings, tiers: TiersConfig) -> pd.DataFrame:
    """The outcome log, checked against `tiers`; a bad file or row is one line."""
    try:
        log = load_outcomes(s.outcomes_path, tiers)
    except OutcomeLogError as exc:
        _fail(str(exc))
        raise
    return log


def _check_costs(where: object, costs: Any) -> None:
    """Refuse outcomes of the tiers' models that all cost 0: AIQ and λ are per cost (a ZeroDivisionError)."""
    if len(costs) and not (costs[costs == costs] > 0).any():
        _fail(
            f"{where}: every outcome of the tiers' models has cost_usd 0; tierwise weighs quality against cost, so it "
            "needs what the calls cost"
        )


def _load_inputs(s: Settings, from_store: bool) -> tuple[Any, pd.DataFrame]:
    tiers = _load_tiers(s)
    log = _load_log(s, tiers)
    if from_store:
        from infra.store import Store, require_existing
        from router.schema import deduplicate_outcomes, outcomes_to_frame, validate_outcomes

        require_existing(s.database_url)
        store = Store(s.database_url)
        store.migrate()
        rows = store.export_outcomes()
        where = _without_password(s.database_url)
        textless = store.count_outcomes_without_text()
        if not rows and textless:
            _fail(
                f"the outcome store {where} holds {textless} outcomes, none with prompt text (they were kept under "
                "TIERWISE_PROMPT_STORAGE=hash or none): nothing to train on"
            )
        if not rows:
            _fail(f"the outcome store {where} holds no outcomes")
        if textless:
            logger.warning(
                "leaving out %d outcomes the store kept without prompt text: they cannot be embedded", textless
            )
        # Any model: outcomes of a model swapped out of the tiers are history, not a typo; like a log's models behind
        # no tier, split_log leaves them out of the tiers' fit. Rows count oldest first.
        extra = validate_outcomes(outcomes_to_frame(rows), f"the outcome store {where}", None)
        logger.info("adding %d outcomes from the store %s", len(extra), where)
        log = pd.concat([log, extra], ignore_index=True).drop_duplicates(["prompt_id", "model"], keep="last")
        # One id per text across the two (a prompt of the log the service routed too), before the split and the
        # pool read it: the pool must see the ids the split does.
        log = deduplicate_outcomes(log, f"{s.outcomes_path} with the store")
    _check_costs(s.outcomes_path, log.loc[log["model"].isin([t.model for t in tiers.tiers]), "cost_usd"])
    return tiers, log


@app.command()
def train(
    outcomes: OutcomesOpt = None,
    tiers: TiersOpt = None,
    test_size: Annotated[float | None, typer.Option(help="share of prompts held out")] = None,
    seed: Annotated[int | None, typer.Option(help="split and model seed")] = None,
    from_store: Annotated[bool, typer.Option("--from-store", help="add outcomes recorded by the service")] = False,
    dask: DaskOpt = None,
) -> None:
    """Train a router on an outcome log, evaluate it, log it to MLflow and register it."""
    from training import tracking
    from training.data import cannot_compare_tiers, load_pool_logs, pool_logs, split_log, too_few_outcomes
    from training.evaluation import evaluate_artifact, with_default_knob
    from training.fit import TrainResult, run_params, train_router
    from training.gate import CHECKS
    from training.ope_cli import gate_check_from_store
    from training.report import format_table

    if find_spec("matplotlib") is None:
        _fail("training draws the run's plots with matplotlib: pip install 'tierwise[train]'")
    _check_dask(dask)
    _setup_logging()
    s = _settings(outcomes_path=outcomes, tiers_path=tiers, test_size=test_size, seed=seed)
    tier_cfg, log = _load_inputs(s, from_store)
    split = split_log(log, tier_cfg, s.test_size, s.seed)
    short = too_few_outcomes(split) or cannot_compare_tiers(split)
    if short is not None:
        _fail(f"{s.outcomes_path} with {s.tiers_path}: {short}")
    _check_costs(f"{s.outcomes_path} (its held-out prompts)", split.table.costs[split.test].ravel())
    if all(t.input_per_1m == 0 and t.output_per_1m == 0 for t in tier_cfg.tiers):
        typer.echo(
            f"warning: every tier of {s.tiers_path} is priced at 0: the router expects every call to cost nothing, "
            "so it cannot trade cost for quality and sends each prompt to the tier it predicts best; give the tiers "
            "their prices",
            err=True,
        )
    embedder = _embedder(s, s.embedder)
    client = _dask_client(dask)
    if client is not None:  # the prompts are embedded on the workers; the boosters are fitted here
        from training.dask_backend import DaskEmbedder

        embedder = DaskEmbedder(client, embedder, s.embedder, s.cache_dir / "onnx")
    cache = EmbeddingCache(s.cache_dir / "embeddings.sqlite")
    features = FeatureSpec(
        embedder_id=embedder.id, embedding_dim=embedder.dim, tail_chars=s.tail_chars, text_features=s.text_features
    )
    model = DifficultyModel(calibration=s.calibration, random_state=s.seed)
    pool = None
    if s.pool_paths and s.pool_max_prompts > 0:
        try:
            others = load_pool_logs(s.pool_paths)
        except OutcomeLogError as exc:
            _fail(f"{exc} (a log pooled into the shared difficulty: TIERWISE_POOL_PATHS; '[]' pools none)")
            raise
        pool = pool_logs(log, split, others, s.pool_max_prompts, s.seed)
    n_prompts, least = len(pool.prompts) if pool is not None else int(split.train.sum()), NoveltyReference().min_prompts
    if n_prompts < least:  # checked before the fit: the novelty reference is fitted after it
        _fail(
            f"{s.outcomes_path} with {s.tiers_path}: {n_prompts} training prompts; the novelty check (is a prompt "
            f"like the ones trained on?) needs at least {least}"
        )
    _tracking(s)  # before the fit: a tracking store MLflow cannot use fails at once
    with _run_errors(dask):
        artifact = train_router(split, embedder, cache, features, model, pool)
        evaluation = evaluate_artifact(artifact, split, embedder, cache, s.seed)
        from training.trust import trust_metrics, with_trust

        # The novelty reference and the quality guarantee.
        artifact = with_trust(artifact, split, embedder, cache, evaluation, s.seed, pool)
        artifact = with_default_knob(artifact, split, embedder, cache)  # the operating point the service routes with
        artifact = replace(artifact, held_out=HeldOut(s.test_size, s.seed))  # evaluate and calibrate split alike
        evaluation.metrics.update(trust_metrics(artifact))
        champion = tracking.champion_comparison(
            s.registered_model,
            split,
            cache,
            s.seed,
            lambda backend: _embedder(s, backend),
            artifact,
            alias=s.model_alias,
        )
        result = TrainResult(
            artifact,
            evaluation,
            run_params(split, features, model, s.test_size, s.seed, pool, artifact.task_prior),
            split.table.prompts["prompt_id"][split.test].tolist(),
        )
        training_log = tracking.TrainingLog(
            _dataset_name(s.outcomes_path, from_store), str(s.outcomes_path.resolve()), log
        )
        reg = tracking.log_and_register(
            result,
            s.registered_model,
            champion,
            split.table.prompts["prompt"][split.test].tolist(),
            training_log,
            onnx_dir=s.cache_dir / "onnx",
            champion_alias=s.model_alias,
            checks=(*CHECKS, gate_check_from_store(s, Router(artifact, tier_cfg, embedder, cache=cache))),
        )
    typer.echo(format_table(evaluation))
    typer.echo(f"\nMLflow run {reg.run_id}: registered {s.registered_model} version {reg.version} as '{reg.alias}'")
    typer.echo(reg.message)
    if client is not None:
        from training.dask_backend import close

        close(client)


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="the registered model's version to serve, e.g. a challenger's")],
) -> None:
    """Move the served alias (TIERWISE_MODEL_ALIAS, default `champion`) to VERSION, bypassing the gate.

    For a model the gate kept as challenger on purpose, e.g. one trained for new tiers: change the service's tiers
    file first, then promote; a service polling the alias (or POST /admin/reload) loads it.
    """
    from mlflow.exceptions import MlflowException

    from training import tracking

    s = _settings()
    _tracking(s)
    try:
        tracking.promote(s.registered_model, version, s.model_alias)
    except MlflowException as exc:
        where = _without_password(s.mlflow_tracking_uri)
        _fail(f"cannot promote {s.registered_model} version {version} in {where}: {exc.message}")
    typer.echo(f"{s.registered_model} version {version} is now '{s.model_alias}'")


def _load_artifact(s: Settings, model_uri: str | None, embedder: bool = True) -> RouterArtifact:
    """The model `model_uri` names (a folder or a registry URI; default: the champion). With `embedder`, a registry
    model's own embedder files are taken into the cache where it has none (the caller will embed)."""
    if model_uri and Path(model_uri).exists():
        from router.artifact import find_artifact

        try:
            return RouterArtifact.load(find_artifact(model_uri))
        # No router.json, one that is no model's, or damaged parts (a JSON file holding a list: AttributeError)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            _fail(f"--model-uri {model_uri}: not a tierwise model folder ({type(exc).__name__}: {exc})")
            raise
    from training import tracking  # MLflow (about a second of imports): only for a registry URI

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bar above the answer
    _tracking(s)
    uri = model_uri or f"models:/{s.registered_model}@{s.model_alias}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # The model's own embedder files where the cache has none (a host without torch cannot build them).
            artifact, put = tracking.download_model(uri, Path(tmp), s.cache_dir / "onnx" if embedder else None)
    except Exception as exc:  # any registry failure is one line for the user
        _fail(f"cannot load model {uri} from {s.mlflow_tracking_uri}: {str(exc).rstrip('.')}. {_no_model_hint(s, uri)}")
        raise
    if put:
        typer.echo(f"took {', '.join(str(p) for p in put)} from the model {uri} (its embedder's files)", err=True)
    return artifact


def _no_model_hint(s: Settings, uri: str) -> str:
    """What to do when `uri` can't be loaded: pick the version that exists (a first model the gate kept as a
    challenger), else train one."""
    if uri != f"models:/{s.registered_model}@{s.model_alias}":
        return "Check --model-uri."
    from mlflow import MlflowClient

    client = MlflowClient()
    try:
        client.get_model_version_by_alias(s.registered_model, s.model_alias)
        return "The registry lists it: its files could not be read (see above)."
    except Exception:  # no such alias (or no registry): which versions there are says what to do
        pass
    try:
        versions = list(client.search_model_versions(f"name='{s.registered_model}'"))
    except Exception:  # the registry itself is down or missing: the message above says so
        versions = []
    if not versions:
        return "Train one first: `tierwise train` (or `make train`)."
    latest = max(versions, key=lambda v: int(v.version))
    return (
        f"No version is '{s.model_alias}' (the champion gate keeps a model that fails a check as a challenger): "
        f"route with --model-uri models:/{s.registered_model}/{latest.version}, or `tierwise promote {latest.version}`."
    )


def _tiers_for(s: Settings, artifact: RouterArtifact) -> TiersConfig:
    """The tiers file when it exists (a swapped model or price applies), else the tiers the model was trained with.

    A file that renames, adds or reorders the model's tiers is refused in one line naming it.
    """
    if not _reads_tiers_file(s):
        return artifact.tiers
    tiers = _load_tiers(s)
    try:
        artifact.check_tiers(tiers)
    except TiersConfigError as exc:
        _fail(f"{s.tiers_path}: {exc}")
    swapped = artifact.swapped_models(tiers)
    if swapped:  # the checkout's config/tiers.toml read for a model trained with another file went unsaid (review)
        named = "" if s.tiers_path_named else ", read as the default tiers file"
        typer.echo(
            f"warning: {s.tiers_path}{named} puts other models behind tiers than the model was trained with "
            f"({'; '.join(swapped)}): their predicted quality is the trained models'; give --tiers the file it was "
            "trained with, or retrain (or `tierwise add-model`) for these",
            err=True,
        )
    return tiers


def _reads_tiers_file(s: Settings) -> bool:
    """Whether the tiers file is read: it exists, or it was named (TIERWISE_TIERS_PATH, --tiers): a named file
    that is missing fails naming it, where the model's own tiers would silently drop its prices."""
    return s.tiers_path.exists() or s.tiers_path_named


def _same_file(a: Path, b: Path) -> bool:
    """Whether two existing paths are one file (a hard link of it too); False when either does not exist."""
    try:
        return os.path.samefile(a, b)
    except FileNotFoundError:
        return False


def _as_trained(s: Settings, artifact: RouterArtifact, test_size: float | None, seed: int | None) -> Settings:
    """The settings with the test size and seed the model's log was split with, each unless its flag names another
    (the environment's TIERWISE_SEED and TIERWISE_TEST_SIZE are training's); a warning when the split drawn may
    hold prompts the model trained on."""
    trained = artifact.held_out
    if trained is None:
        typer.echo(
            f"warning: the model does not record how its log was split; held-out prompts drawn with seed {s.seed} "
            f"and test size {s.test_size} (if it was trained with others, some of them trained it)",
            err=True,
        )
        return s
    s = s.model_copy(
        update={
            "test_size": trained.test_size if test_size is None else s.test_size,
            "seed": trained.seed if seed is None else s.seed,
        }
    )
    if trained.refit_tiers:
        typer.echo(
            f"warning: tier(s) {', '.join(trained.refit_tiers)} were swapped in by add-model, learning from every "
            "outcome of their models, held-out prompts included: the scores they take part in are optimistic",
            err=True,
        )
    # Under the hash rule a smaller test share with the same seed holds out a part of the model's held-out prompts.
    subset = trained.rule == "hash" and s.seed == trained.seed and s.test_size <= trained.test_size
    if (s.test_size, s.seed) != (trained.test_size, trained.seed) and not subset:
        typer.echo(
            f"warning: the model's log was split with seed {trained.seed} and test size {trained.test_size}; with "
            f"seed {s.seed} and test size {s.test_size}, some held-out prompts trained it",
            err=True,
        )
    return s


def _held_out_split(s: Settings, tier_cfg: TiersConfig, trained: HeldOut | None = None) -> Split:
    """The log split as training split it, in the tiers the model routes (`_tiers_for`), by the model's rule (a
    model that records no split is from before the hash rule: "draw"); a tier without test outcomes is one line.
    Under the hash rule any log's held-out prompts are ones the model did not train on; under "draw", another log
    than the one the model split (`trained`'s digest: a grown or changed log, or one without the store's outcomes
    it learned from) gets a warning: its split is another."""
    from training.data import cannot_compare_tiers, prompt_set_digest, split_log, too_few_outcomes

    rule = trained.rule if trained is not None else "draw"
    split = split_log(_load_log(s, tier_cfg), tier_cfg, s.test_size, s.seed, rule)
    if (
        trained is not None
        and trained.rule == "draw"
        and trained.log_digest not in (None, prompt_set_digest(split.table.prompts["prompt"]))
    ):
        typer.echo(
            f"warning: {s.outcomes_path} is not the log the model split (its prompts differ: grown, changed, or "
            "without the store's outcomes a --from-store model learned from), so its split is another and some "
            "held-out prompts may have trained the model",
            err=True,
        )
    _check_costs(f"{s.outcomes_path} (its held-out prompts)", split.table.costs[split.test].ravel())
    short = too_few_outcomes(split, "test", minimum=1) or cannot_compare_tiers(split)
    if short is not None:
        tiers_used = s.tiers_path if _reads_tiers_file(s) else "the model's tiers"
        _fail(f"{s.outcomes_path} with {tiers_used}: {short}")
    return split


@app.command()
def evaluate(
    outcomes: OutcomesOpt = None,
    tiers: TiersOpt = None,
    model_uri: ModelUriOpt = None,
    test_size: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    from_store: FromStoreOpt = False,
    since_days: SinceDaysOpt = None,
    json_out: Annotated[
        Path | None, typer.Option("--json-out", help="also write the tables as JSON (the README's source)")
    ] = None,
) -> None:
    """Evaluate a registered router (default: the champion) on the held-out split of the log.

    With --from-store: off-policy estimates on the service's logged traffic instead (the logging policy, the
    logged model at other operating points, and --model-uri as a candidate when given).
    """
    from training.evaluation import evaluate_artifact
    from training.report import format_table

    _setup_logging()
    s = _settings(outcomes_path=outcomes, tiers_path=tiers, test_size=test_size, seed=seed)
    _named_file("--tiers", tiers)
    _output_file("--json-out", json_out)
    _check_days("--since-days", since_days)
    if from_store:
        _not_with_from_store({"--outcomes": outcomes, "--test-size": test_size, "--seed": seed, "--json-out": json_out})
        _evaluate_from_store(s, model_uri, since_days)
        return
    artifact = _load_artifact(s, model_uri)
    s = _as_trained(s, artifact, test_size, seed)
    split = _held_out_split(s, _tiers_for(s, artifact), artifact.held_out)
    embedder = _embedder(s, backend_of(artifact.features.embedder_id))
    from training.data import too_few_outcomes

    # The baselines (kNN, logistic regression, task prior) learn from the split's training side: too few rows there
    # (a --test-size near 1, a small log hashing mostly to the test side), and the router is scored alone.
    short = too_few_outcomes(split, "training")
    if short is not None:
        typer.echo(f"warning: no baselines: they train on the split's training side, where {short}", err=True)
    cache = EmbeddingCache(s.cache_dir / "embeddings.sqlite")
    result = evaluate_artifact(artifact, split, embedder, cache, s.seed, baselines=short is None)
    typer.echo(format_table(result))
    if json_out is not None:
        from training.report import result_to_json

        what = model_uri or f"{s.registered_model}@{s.model_alias}"
        source = f"`tierwise evaluate` of {what} on {s.outcomes_path} (seed {s.seed}, test size {s.test_size})"
        with _written("--json-out", json_out) as path:
            path.write_text(json.dumps(result_to_json(result, source), indent=1))


@app.command()
def calibrate(
    top_share: Annotated[float | None, typer.Option(help="wanted share of prompts on the top tier, 0..1")] = None,
    mean_cost_usd: Annotated[float | None, typer.Option(help="wanted mean cost per prompt, USD")] = None,
    model_uri: ModelUriOpt = None,
    outcomes: OutcomesOpt = None,
    tiers: TiersOpt = None,
    from_store: FromStoreOpt = False,
    since_days: SinceDaysOpt = None,
    quality_share: Annotated[
        float | None, typer.Option(help="λ reaching this share of the top tier's quality at the least cost, 0..1")
    ] = None,
    register: Annotated[
        bool, typer.Option("--register", help="store the λ in a new version of the registered model; move its alias")
    ] = False,
) -> None:
    """Calibrate the knob on the held-out prompts: a quality target for a top-tier share, or λ for a mean cost.

    With --from-store: λ for --mean-cost-usd on the service's logged traffic (realised cost by off-policy
    estimate where the log has exploration).
    """
    from training.evaluation import calibrate_knob

    if sum(x is not None for x in (top_share, mean_cost_usd, quality_share)) != 1:
        _fail("give exactly one of --top-share, --mean-cost-usd or --quality-share")
    if register and model_uri is not None:
        _fail("--register writes into the registered model's alias; leave out --model-uri")
    if top_share is not None and not 0 <= top_share <= 1:
        _fail("--top-share must be in [0, 1]")
    if quality_share is not None and not 0 < quality_share <= 1:
        _fail("--quality-share must be in (0, 1]: a share of the top tier's quality")
    if mean_cost_usd is not None and not 0 < mean_cost_usd < math.inf:
        _fail("--mean-cost-usd must be a finite number above 0")
    _check_days("--since-days", since_days)
    _setup_logging()
    s = _settings(outcomes_path=outcomes, tiers_path=tiers)
    _named_file("--tiers", tiers)
    if from_store:
        given = {"--outcomes": outcomes, "--model-uri": model_uri, "--top-share": top_share}
        more = {"--quality-share": quality_share, "--register": register or None}
        _not_with_from_store({**given, **more}, " and calibrates λ for --mean-cost-usd")
        _calibrate_from_store(s, mean_cost_usd, since_days)
        return
    artifact = _load_artifact(s, model_uri)
    s = _as_trained(s, artifact, None, None)
    tier_cfg = _tiers_for(s, artifact)
    split = _held_out_split(s, tier_cfg, artifact.held_out)
    embedder = _embedder(s, backend_of(artifact.features.embedder_id))
    # The live tiers' prices, as the service routes with: λ per USD means the same there.
    router = Router(artifact, tier_cfg, embedder=embedder, cache=EmbeddingCache(s.cache_dir / "embeddings.sqlite"))
    if register or quality_share is not None:
        _store_knob(s, router, split, mean_cost_usd, quality_share, register)
        return
    try:
        typer.echo(calibrate_knob(router, split, top_share, mean_cost_usd))
    except ValueError as exc:
        _fail(str(exc))


def _store_knob(
    s: Settings,
    router: Router,
    split: Any,
    mean_cost: float | None,
    share: float | None,
    register: bool,
) -> None:
    """λ for a mean cost or a share of the top tier's quality, printed, and with --register stored in a new version."""
    from training import tracking
    from training.evaluation import KnobGoal, goal_for_mean_cost, held_out_knob

    if mean_cost is None and share is None:
        _fail("--register stores a λ: give --mean-cost-usd or --quality-share (--top-share sets a quality target)")
    goal = goal_for_mean_cost(split, mean_cost) if mean_cost is not None else KnobGoal("quality", float(share or 0))
    try:
        knob = held_out_knob(router, split, goal)
    except ValueError as exc:
        _fail(str(exc))
        raise
    lam = router.artifact.reference_cost_usd(knob.reference_tokens_in, router.tiers)
    typer.echo(
        f"{goal}: λ {knob.cost_weight:.4g} per top-tier reference cost ({knob.cost_weight / lam:.6g} per USD)\n"
        f"on {knob.n_prompts} held-out prompts: quality {knob.realised_quality:.4f}, "
        f"mean cost ${knob.realised_cost_usd:.6g}"
    )
    if register:
        version = tracking.register_recalibrated(s.registered_model, s.model_alias, knob)
        typer.echo(f"registered {s.registered_model} version {version} with this operating point as '{s.model_alias}'")


def _store_tier_names(s: Settings) -> list[str]:
    """The tier order of the logged decisions: the tiers file's, else (no file) the champion's."""
    if _reads_tiers_file(s):
        return _load_tiers(s).names
    return _load_artifact(s, None, embedder=False).tier_names  # only its tier names: nothing to embed


def _with_notes(exc: BaseException, message: str) -> str:
    """`message` and what the code that raised `exc` noted on it (an output a failed run left incomplete)."""
    return "; ".join([message, *getattr(exc, "__notes__", [])])


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (a job scheduler's stop, `kill`) exits with status 143 by raising SystemExit while in the block, so
    `finally` clauses clean up as they do on Ctrl-C (by default the process just died); the previous handler is
    restored after."""

    def unwind(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, unwind)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _written(flag: str, target: Path) -> Iterator[Path]:
    """Where to write `target`: a temporary file beside it, renamed onto it once written, or `target` itself where a
    rename would change what its name means, as `route --batch` writes its --out (training/output_file.py). A
    failure of the output is one line naming the flag and file."""
    tmp: Path | None = None
    try:
        tmp = target if written_in_place(target) else temporary_beside(target, "tmp")
        yield tmp
        if tmp != target:
            replace_with(target, tmp)
    except BaseException as exc:
        if tmp is not None and tmp != target:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            _fail(f"{flag} {target}: cannot write it: {exc.strerror or exc}")
        raise


def _check_days(flag: str, days: float | None) -> None:
    """A number of days (--since-days, --older-than-days): above 0 and at most MAX_RETENTION_DAYS (inf and NaN are
    neither)."""
    if days is not None and not 0 < days <= MAX_RETENTION_DAYS:
        _fail(f"{flag} must be above 0 and at most {MAX_RETENTION_DAYS}")


def _evaluate_from_store(s: Settings, model_uri: str | None, since_days: float | None) -> None:
    from training.ope_cli import evaluate_from_store

    candidate = None
    if model_uri is not None:
        artifact = _load_artifact(s, model_uri)
        candidate = Router(artifact, _tiers_for(s, artifact), _embedder(s, backend_of(artifact.features.embedder_id)))
    tier_names = candidate.names if candidate is not None else _store_tier_names(s)  # checked against the file
    try:
        typer.echo(evaluate_from_store(s, tier_names, candidate, since_days, n_boot=1000))
    except (ValueError, TiersConfigError) as exc:
        _fail(str(exc))


def _not_with_from_store(flags: dict[str, object], instead: str = "") -> None:
    """Refuse the flags --from-store does not use, naming them (they were ignored, the command succeeding)."""
    given = [name for name, value in flags.items() if value is not None]
    if given:
        _fail(f"--from-store reads the service's logged traffic{instead}: {', '.join(given)} is for the held-out log")


def _calibrate_from_store(s: Settings, mean_cost: float | None, since: float | None) -> None:
    from training.ope_cli import calibrate_from_store

    try:
        typer.echo(calibrate_from_store(s, _store_tier_names(s), float(mean_cost or 0.0), since, n_boot=1000))
    except (ValueError, TiersConfigError) as exc:
        _fail(str(exc))


@app.command()
def purge(
    older_than_days: Annotated[
        float | None, typer.Option(help="delete older decisions and outcomes; default TIERWISE_RETENTION_DAYS")
    ] = None,
) -> None:
    """Delete decisions and outcomes past the retention period from the decision store (run it from cron)."""
    from training.ope_cli import purge as purge_store

    _check_days("--older-than-days", older_than_days)
    try:
        typer.echo(purge_store(_settings(), older_than_days))
    except ValueError as exc:
        _fail(str(exc))


@app.command()
def route(
    prompt: Annotated[str | None, typer.Argument(help="the prompt to route")] = None,
    batch: Annotated[
        Path | None,
        typer.Option(
            "--batch", help='JSONL or Parquet of {"prompt_id", "prompt", optional "task" hint}, read in chunks'
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="where --batch writes decisions: .parquet, .gz gzipped JSONL, else JSONL (default stdout)"
        ),
    ] = None,
    model_uri: ModelUriOpt = None,
    tiers: TiersOpt = None,
    target: Annotated[float | None, typer.Option("--target", help="quality target in [0, 1]")] = None,
    chunk: Annotated[int, typer.Option(min=1, help="prompts per embedding chunk in --batch")] = 256,
    dask: DaskOpt = None,
) -> None:
    """Route one prompt, or a batch file of prompts (streamed: any length), with the champion (or --model-uri)."""
    from training.bulk import DecisionOutputError, output_format, route_file

    s = _settings(tiers_path=tiers, quality_target=target)
    if (prompt is None) == (batch is None):
        _fail("give either a PROMPT or --batch FILE")
    if prompt is not None and not prompt.strip():
        _fail("the prompt is empty")
    if prompt is not None and not is_unicode_text(prompt):
        _fail("the prompt is not valid UTF-8 text (bytes UTF-8 cannot decode, or a lone surrogate)")
    if dask is not None and batch is None:
        _fail("--dask routes a --batch file")
    _check_dask(dask)
    _output_file("--out", out)
    try:
        output_format(out)
    except ValueError as exc:
        _fail(f"--out {out}: {exc}")
    try:
        same = out is not None and batch is not None and (out.resolve() == batch.resolve() or _same_file(out, batch))
    except (OSError, RuntimeError) as exc:  # a symlink loop
        _fail(f"--out {out}: {exc}")
    if same:
        _fail(f"--out {out} is the --batch file: give another path (the decisions would replace the prompts)")
    _named_file("--tiers", tiers)
    artifact = _load_artifact(s, model_uri)
    tier_cfg = _tiers_for(s, artifact)
    backend = backend_of(artifact.features.embedder_id)
    embedder = _embedder(s, backend)
    with _run_errors(dask):
        try:
            router = Router(artifact, tier_cfg, embedder)
            knob_target, cost_weight = router.knob(target, None, s.quality_target)  # --target, else the stored λ
            # One prompt, as the service routes it: a prompt unlike the training prompts gets the conservative tier.
            if batch is None:
                quality, cost, novelty = router.assess([prompt or ""])
                decisions = router.decide(
                    quality, cost, knob_target, cost_weight=cost_weight, novelty=novelty, novelty_limit=s.novelty_limit
                )
                [decision] = decision_records(
                    router, [{"prompt_id": "-", "prompt": prompt}], quality, cost, decisions, novelty
                )
                typer.echo(json.dumps(decision, indent=2, ensure_ascii=False))  # tier names as written
                return
            client = _dask_client(dask)
            with _sigterm_unwinds():  # SIGTERM unwinds too: a temporary output is removed, the old one kept
                if client is None:
                    run = route_file(
                        router, batch, out, knob_target, cost_weight, chunk=chunk, novelty_limit=s.novelty_limit
                    )
                else:
                    from training.dask_backend import close, route_file_dask

                    try:
                        check_embedder(artifact.features, embedder)  # this machine's files, as without --dask
                        onnx_dir = s.cache_dir / "onnx"
                        run = route_file_dask(
                            client,
                            artifact,
                            tier_cfg,
                            backend,
                            onnx_dir,
                            batch,
                            out,
                            knob_target,
                            cost_weight,
                            chunk=chunk,
                            novelty_limit=s.novelty_limit,
                        )
                    finally:
                        close(client)
        except (StaleOnnxFile, OutcomeLogError, DecisionOutputError) as exc:
            _fail(_with_notes(exc, str(exc)))
        except (
            OSError
        ) as exc:  # the input file: a permission, a folder gone meanwhile (the output's: DecisionOutputError)
            _fail(_with_notes(exc, f"{exc.filename or batch}: {exc.strerror or exc}"))
    if run.decisions == 0:
        _fail(f"{batch}: no prompts")
    if run.repeated_ids:
        typer.echo(
            f"warning: {run.repeated_ids} rows of {batch} repeat an earlier row's prompt_id; their decisions are in "
            "input order",
            err=True,
        )
    if out:
        typer.echo(f"wrote {run.decisions} decisions to {out}", err=True)


@app.command("add-model")
def add_model(
    out: Annotated[Path, typer.Option("--out", help="directory for the new router artifact")],
    outcomes: OutcomesOpt = None,
    tiers: TiersOpt = None,
    model_uri: ModelUriOpt = None,
) -> None:
    """After swapping a tier's model in the tiers file: learn it from its few outcomes, without retraining."""
    from training.add_model import NothingToAdd, add_models

    _setup_logging()
    s = _settings(outcomes_path=outcomes, tiers_path=tiers)
    if out.exists() and not out.is_dir():
        _fail(f"--out {out}: is a file; give a folder for the new model")
    if out.is_dir() and any(out.iterdir()):
        # Another model's files there (its novelty reference, its task classifier) would load with the new one.
        _fail(f"--out {out}: is not empty; give a new or empty folder for the new model")
    artifact = _load_artifact(s, model_uri)
    tier_cfg, log = _load_inputs(s, False)
    embedder = _embedder(s, backend_of(artifact.features.embedder_id))
    try:
        new, notes = add_models(artifact, tier_cfg, log, embedder, EmbeddingCache(s.cache_dir / "embeddings.sqlite"))
    except NothingToAdd as exc:
        _fail(f"{s.tiers_path if exc.in_tiers_file else s.outcomes_path}: {exc}")
        raise
    except TiersConfigError as exc:
        _fail(f"{s.tiers_path}: {exc}")
        raise
    except ValueError as exc:  # the model cannot take a new tier (trained without the shared difficulty)
        _fail(f"{model_uri or f'{s.registered_model}@{s.model_alias}'}: {exc}")
        raise
    new.save(out)
    typer.echo("\n".join(notes))
    typer.echo(f"wrote {out}: route with --model-uri {out} (or TIERWISE_LOCAL_MODEL_PATH for the service)")


@app.command("build-embedder")
def build_embedder(
    out: Annotated[Path | None, typer.Option(help="where to write them; default: TIERWISE_CACHE_DIR/onnx")] = None,
    force: Annotated[bool, typer.Option("--force", help="rebuild even when the files are up to date")] = False,
    fit_on: Annotated[
        list[Path] | None,
        typer.Option(
            "--fit-on",
            help="fit the static embedder to the int8 teacher on the prompts of these JSONL/Parquet files (a "
            "'prompt' column, e.g. your outcome log); repeatable",
        ),
    ] = None,
) -> None:
    """Export the bundled MiniLM to ONNX (fp32, int8) with its tokenizer.json, and distil the static embedder;
    with --fit-on, fit the static embedder to the int8 teacher on your prompts (training/fit_static.py)."""
    from training.distill_static import build_static
    from training.onnx_export import export_onnx, missing_build_deps

    s = _environment()
    out_dir = out or s.cache_dir / "onnx"
    missing = missing_build_deps()
    if missing:
        _fail(f"building the ONNX embedder needs {', '.join(missing)}: pip install 'tierwise[train]'")
    # Read the corpus first: a bad file fails before minutes of building.
    corpus = _corpus_texts(fit_on, s.tail_chars) if fit_on else None
    # The quantizer logs every skipped tensor on the root logger at INFO: keep the root at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("training.onnx_export", "training.distill_static", "training.fit_static"):
        logging.getLogger(name).setLevel(logging.INFO)
    for path in (*export_onnx(out_dir, force=force), build_static(out_dir, force=force)):
        typer.echo(f"{path}: {path.stat().st_size / 1e6:.1f} MB")
    if corpus is not None:
        from training.fit_static import fit_static

        teacher = make_embedder("onnx-int8", onnx_dir=out_dir, num_threads=os.cpu_count())
        meta = fit_static(out_dir, corpus, teacher, EmbeddingCache(s.cache_dir / "embeddings.sqlite"))
        typer.echo(
            f"static embedder fitted on {meta['fit']['prompts']} prompts: recipe {meta['recipe']}, mean cosine to the "
            f"teacher {meta['fit']['mean_cosine_to_teacher_on_corpus']:.3f}; route with TIERWISE_EMBEDDER=static "
            "(a model trained on another static build is refused)"
        )


def _corpus_texts(paths: list[Path], tail_chars: int | None) -> list[str]:
    """The distinct texts of the files' prompts (JSONL or Parquet with a 'prompt' column) a fit embeds; a bad file
    or row, or too few prompts, fails with one line naming it."""
    from training.fit_static import corpus_texts

    def prompts() -> Iterator[str]:
        for path in paths:
            for chunk in read_chunks(path, 4096):
                yield from (row["prompt"] for row in chunk)

    try:
        return corpus_texts(prompts(), tail_chars)
    except (OutcomeLogError, ValueError) as exc:
        _fail(f"--fit-on: {exc}")
        raise


@app.command("settings")
def show_settings(
    name: Annotated[
        str | None, typer.Argument(help="print only this setting's value (e.g. mlflow_tracking_uri)")
    ] = None,
) -> None:
    """Print the effective settings (environment and defaults): where the stores, caches and inputs are."""
    values = _environment().model_dump(mode="json")
    values["api_keys"] = f"{len(values['api_keys'])} key(s)"
    if name is not None:
        if name not in values:
            _fail(f"no setting '{name}'; known: {', '.join(values)}")
        typer.echo(values[name])
        return
    for key, value in values.items():
        shown = _without_password(value) if key in ("database_url", "mlflow_tracking_uri") else value
        typer.echo(f"{key} = {shown}")


@app.command()
def data(
    source: Annotated[Path | None, typer.Option(help="folder of staged datasets")] = None,
) -> None:
    """Bring the outcome logs into data/: copy the staged ones, or download and import RouterBench."""
    from training.datasets import fetch_data

    _setup_logging()
    s = _environment()
    try:
        typer.echo(fetch_data(source or s.data_dir, Path("data"), s.cache_dir))
    except (OSError, OutcomeLogError) as exc:
        _fail(str(exc))


@app.command("import-routerbench")
def import_routerbench_cmd(
    raw: Annotated[list[Path], typer.Argument(help="RouterBench wide CSV(.gz) or .pkl files")],
    out: Annotated[Path, typer.Option(help="where to write the long-format outcome log")],
) -> None:
    """Convert RouterBench's native wide format into a tierwise outcome log."""
    from training.importers import import_routerbench

    if out.suffix.lower() != ".parquet":
        _fail(f"--out {out}: the outcome log is written as Parquet; name it .parquet")
    if out.is_dir():
        _fail(f"--out {out}: is a folder, not a file")
    try:
        df = import_routerbench(raw)
    except OutcomeLogError as exc:
        _fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    with _written("--out", out) as path:
        df.to_parquet(path, index=False)
    typer.echo(
        f"wrote {len(df)} outcomes ({df['prompt_id'].nunique()} prompts, {df['model'].nunique()} models) to {out}"
    )


if __name__ == "__main__":
    app()
