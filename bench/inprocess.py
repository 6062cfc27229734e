"""In-process latency of one /route's work (embed, predict, decide) and of the decision write /route does."""

from __future__ import annotations

import logging
import tempfile
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import ONNX_DIR, REPO, load_avg, scratch_database, time_calls
from bench.serve_load import PROMPT
from infra.settings import Settings
from infra.store import DecisionRow, Store
from router.embedders.factory import backend_of, make_embedder
from router.features import featurize
from router.routing import Router
from router.schema import load_tiers
from router.text import text_window
from serving.model_source import LoadedModel, RegistrySource
from serving.routing import route
from serving.runtime import build_runtime
from serving.schemas import RouteRequest
from serving.security import ANONYMOUS

logger = logging.getLogger(__name__)


def load_champion(settings: Settings) -> LoadedModel:
    """The champion exactly as the service loads it."""
    return RegistrySource(settings.mlflow_tracking_uri, settings.registered_model, settings.model_alias).load()


def run(loaded: LoadedModel, reps: int, warmup: int) -> dict[str, Any]:
    """p50/p99 of embed + predict + decide for the ~30-token serve_load prompt, 1 intra-op thread."""
    settings = Settings()
    artifact = loaded.artifact
    backend = backend_of(artifact.features.embedder_id)
    embedder = make_embedder(backend, onnx_dir=ONNX_DIR, num_threads=1)
    tiers = load_tiers(REPO / settings.tiers_path)
    prompts = [PROMPT]
    window = [text_window(PROMPT, artifact.features.tail_chars)]
    features = featurize(prompts, artifact.features, embedder)

    router = Router(artifact, tiers, embedder, num_threads=1)

    def route_work() -> None:
        router.route(prompts, settings.quality_target)

    runtime = build_runtime(loaded, REPO / settings.tiers_path, embedder, 1)
    request = RouteRequest(prompt=PROMPT)

    def handler_work(store: Store) -> None:
        [out] = route(runtime, store, ANONYMOUS, prompts, request, settings.quality_target)
        out.model_dump_json()

    load_start = load_avg()
    parts = {
        "embed_predict_decide": time_calls(route_work, reps, warmup),
        "embed_only": time_calls(lambda: embedder.encode(window), reps, warmup),
        "featurize": time_calls(lambda: featurize(prompts, artifact.features, embedder), reps, warmup),
        "model_predict_only": time_calls(lambda: artifact.model.predict_quality(features, num_threads=1), reps, warmup),
    }
    with tempfile.TemporaryDirectory(prefix="tierwise-bench-route-") as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'route.db'}")
        store.migrate()
        parts["serving_route_fn_sqlite"] = time_calls(lambda: handler_work(store), reps, warmup)
        store.dispose()
    for name, stats in parts.items():
        logger.info("in-process %-20s %s", name, stats)
    return {
        "model": loaded.version,
        "embedder": backend,
        "intra_op_threads": 1,
        "prompt": PROMPT,
        "prompt_chars": len(PROMPT),
        "reps": reps,
        "warmup": warmup,
        "call": "Router(artifact, tiers, embedder, num_threads=1).route([prompt], target)",
        "serving_route_fn_sqlite": "serving.routing.route() as /route calls it (sessionless, decision written to a "
        "temp SQLite store, WAL + synchronous=FULL) + response JSON: the handler's work without HTTP",
        "load_avg_start": load_start,
        "load_avg_end": load_avg(),
        "latency": parts,
    }


def _decision_row() -> DecisionRow:
    return DecisionRow(
        id=uuid.uuid4().hex,
        prompt=PROMPT,
        tier="mid",
        model="zero-one-ai/Yi-34B-Chat",
        expected_cost_usd=1e-5,
        router_version="bench",
        reason="bench",
    )


def _sync_normal(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def store_writes(pg_url: str | None, reps: int, warmup: int) -> dict[str, Any]:
    """Latency of Store.record_decisions([one row]), the write every sessionless /route makes."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tierwise-bench-store-") as tmp:
        for name, sync_normal in (("sqlite_wal_sync_full (as served)", False), ("sqlite_wal_sync_normal", True)):
            store = Store(f"sqlite:///{Path(tmp) / (name.split()[0] + '.db')}")
            if sync_normal:
                sa.event.listen(store.engine, "connect", _sync_normal)
            store.migrate()
            results[name] = time_calls(lambda s=store: s.record_decisions([_decision_row()]), reps, warmup)
            store.dispose()
    if pg_url:
        results["postgresql"] = pg_store_writes(pg_url, reps, warmup)
    for name, stats in results.items():
        logger.info("store write %-34s %s", name, stats)
    return {
        "call": "Store.record_decisions([one DecisionRow]) in its own transaction",
        "disk": "the repo's filesystem (sqlite files in a temp dir on it)",
        "latency": results,
    }


def pg_store_writes(pg_url: str, reps: int, warmup: int) -> dict[str, Any]:
    with scratch_database(pg_url) as url:
        store = Store(url)
        store.migrate()
        try:
            return time_calls(lambda: store.record_decisions([_decision_row()]), reps, warmup)
        finally:
            store.dispose()
