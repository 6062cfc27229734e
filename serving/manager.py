"""Load, reload and poll the model: build a new Runtime off to the side, then swap it in one assignment."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from starlette.concurrency import run_in_threadpool

from router.features import Embedder, EmbedderMismatch
from router.schema import TiersConfigError
from router.settings import Settings
from serving.metrics import Metrics
from serving.model_source import ModelSource
from serving.runtime import Runtime, build_runtime

logger = logging.getLogger(__name__)


class ModelManager:
    """Owns the model source; publishes each loaded Runtime on `state.runtime`."""

    def __init__(self, state: Any, source: ModelSource, embedder: Embedder, settings: Settings, metrics: Metrics):
        self.state = state
        self.source = source
        self.embedder = embedder
        self.settings = settings
        self.metrics = metrics
        self._lock = threading.Lock()

    def reload(self) -> Runtime:
        """Re-read the tiers file, re-resolve the model source, and swap; the old Runtime serves until then."""
        with self._lock:
            loaded = self.source.load()
            runtime = build_runtime(loaded, self.settings.tiers_path, self.embedder, self.settings.intra_op_threads)
            runtime.score(["warm up"])
            previous = self.state.runtime
            self.state.runtime = runtime
            self.state.load_error = None
            self.metrics.set_model(runtime.version, self.embedder.id)
            logger.info(
                "model loaded",
                extra={
                    "router_version": runtime.version,
                    "previous_version": previous.version if previous else None,
                    "tiers": {t.name: t.model for t in runtime.tiers.tiers},
                },
            )
            return runtime

    def try_load(self) -> None:
        """Load at startup; a missing model leaves the service up but not ready."""
        try:
            self.reload()
        except (EmbedderMismatch, TiersConfigError):
            raise
        except Exception as exc:  # noqa: BLE001 - registry and file errors come in many kinds
            self._not_ready(exc)

    def _not_ready(self, exc: Exception) -> None:
        self.state.load_error = str(exc)
        logger.error("no model loaded; /readyz answers 503 until one is: %s", exc)

    async def poll(self, interval_s: float) -> None:
        """Reload whenever the source resolves to another version (e.g. the alias moved)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                version = await run_in_threadpool(self.source.resolve)
                current = self.state.runtime.version if self.state.runtime else None
                if version != current:
                    logger.info("model source moved from %s to %s; reloading", current, version)
                    await run_in_threadpool(self.reload)
            except Exception as exc:  # noqa: BLE001 - keep polling; the old model keeps serving
                logger.error("alias poll failed: %s", exc)
