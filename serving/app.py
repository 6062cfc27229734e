"""The service: `create_app` builds the FastAPI app; `lifespan` opens the store and loads the model."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from infra.prompt_policy import prompt_policy
from infra.settings import Settings, get_settings
from infra.store import Store
from router.embedders.factory import make_embedder
from router.embedders.protocol import Embedder
from serving.api import admin, decisions, drift, openai_compat, ops, outcomes, route, sessions, ui
from serving.decision_writer import DecisionWriter
from serving.deps import checked_query
from serving.docs import install_docs
from serving.drift import drift_collector
from serving.errors import install_handlers
from serving.holds import expire_every
from serving.logs import configure_logging
from serving.manager import ModelManager
from serving.metrics import Metrics, multiprocess_enabled
from serving.middleware import BodyLimit, LoopbackOnly, RequestContext
from serving.model_source import ModelSource, source_from_settings
from serving.outcomes import OutcomeRecorder
from serving.proxy.service import open_proxy
from serving.reload_signal import ReloadSignal
from serving.retention import purge_every
from serving.security import KeyRing
from serving.spool import Spool
from serving.store_migrator import StoreMigrator

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    model_source: ModelSource | None = None,
    store: Store | None = None,
    embedder: Embedder | None = None,
) -> FastAPI:
    """Build the app. Without `settings` (the uvicorn factory) it reads the environment and logs JSON."""
    if settings is None:
        settings = get_settings()
        configure_logging()
    keys = KeyRing(settings.api_keys)
    keys.check_bind(settings.host)
    metrics = Metrics(multiprocess_mode=multiprocess_enabled())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = store or Store(
            settings.database_url,
            prompt_policy(settings.prompt_storage, settings.prompt_hash_key, settings.prompt_hash_previous_keys),
        )
        db.decision_commit = settings.decision_commit
        migrator = StoreMigrator(app.state, db)
        store_ready = await run_in_threadpool(migrator.try_migrate)
        emb = embedder or make_embedder(
            settings.embedder, onnx_dir=settings.cache_dir / "onnx", num_threads=settings.intra_op_threads
        )
        source = model_source or source_from_settings(settings)
        app.state.store = db
        app.state.writer = DecisionWriter(db)
        app.state.recorder = OutcomeRecorder(db, Spool(settings.spool_path), metrics)
        manager = ModelManager(app.state, source, emb, settings, metrics, ReloadSignal(settings.reload_signal_path))
        app.state.manager = manager
        metrics.track_frozen(db.count_frozen)
        metrics.add_scrape_collector(drift_collector(app.state, db, settings, metrics.store_errors.inc))
        await run_in_threadpool(manager.try_load)

        def replay() -> None:
            if app.state.runtime is not None:
                app.state.recorder.replay(app.state.runtime.tiers)

        tasks = [asyncio.create_task(manager.watch(settings.reload_check_interval_s))]
        if store_ready:
            await run_in_threadpool(replay)
        else:  # start unready; become ready once the store is reachable and migrated
            tasks.append(asyncio.create_task(migrator.retry(settings.store_retry_interval_s, replay)))
        if settings.retention_days is not None:
            purger = purge_every(db, app.state.recorder.spool, settings.retention_days, settings.purge_interval_s)
            tasks.append(asyncio.create_task(purger))
        if settings.reservation_expiry_s > 0:
            expiry = expire_every(db, settings.reservation_expiry_s, metrics.expired_holds.inc)
            tasks.append(asyncio.create_task(expiry))
        if settings.reload_interval_s > 0:
            tasks.append(asyncio.create_task(manager.poll(settings.reload_interval_s)))
        if settings.spool_replay_interval_s > 0:
            replayer = app.state.recorder.replay_every(
                settings.spool_replay_interval_s, lambda: app.state.runtime.tiers if app.state.runtime else None
            )
            tasks.append(asyncio.create_task(replayer))
        app.state.proxy = open_proxy(settings, os.environ, metrics.upstream, app.state.recorder)
        try:
            yield
        finally:
            await app.state.proxy.aclose()
            await run_in_threadpool(app.state.writer.close)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with suppress(asyncio.CancelledError):
                    await task
            if store is None:
                db.dispose()
            metrics.mark_dead()

    app = FastAPI(
        title="tierwise",
        summary="Routes each prompt to the cheapest model tier predicted to answer it well.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served from installed files by install_docs, not from CDNs
        redoc_url=None,
        dependencies=[Depends(checked_query)],
    )
    app.state.settings = settings
    app.state.keys = keys
    app.state.metrics = metrics
    app.state.runtime = None
    app.state.load_error = None
    app.state.store_error = None
    for module in (route, outcomes, decisions, sessions, admin, drift, ops, ui, openai_compat):
        app.include_router(module.router)
    install_handlers(app)
    install_docs(app)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    app.add_exception_handler(Exception, unexpected)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if not keys.enabled:
        app.add_middleware(LoopbackOnly)
    app.add_middleware(RequestContext, metrics=metrics)  # added last: outermost, so it logs the 413s too
    return app
