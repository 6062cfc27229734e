"""Load, reload and poll the model: build a new Runtime off to the side, then swap it in one assignment.

A reload asked of one worker reaches the others through the shared reload generation (`ReloadSignal`):
the worker that reloaded bumps it, and every worker's `watch` loop reloads when it sees it move. So does the first
model a worker loads after starting without one (a service started before its first training; found by its load
retry or its alias poll): the other workers load it within their check interval instead of their own next retry
or poll, so a multi-worker service does not answer 503 from some workers, for seconds, after /readyz turned 200
on another.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from infra.settings import Settings
from router.embedders.protocol import Embedder
from router.features import EmbedderMismatch
from router.schema import TiersConfigError
from serving.metrics import Metrics
from serving.model_source import ModelSource
from serving.reload_signal import ReloadSignal
from serving.runtime import Runtime, build_runtime

logger = logging.getLogger(__name__)

LOAD_RETRY_MAX_S = 30.0


@dataclass(eq=False)
class ModelManager:
    """Owns the model source; publishes each loaded Runtime on `state.runtime`."""

    state: Any
    source: ModelSource
    embedder: Embedder
    settings: Settings
    metrics: Metrics
    signal: ReloadSignal
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _seen: int = field(default=0, init=False)  # the reload generation this worker has loaded

    def reload(self) -> Runtime:
        """Reload here, then bump the shared generation so every other worker reloads too.

        A refused reload raises before the bump: no worker changes model.
        """
        with self._lock:
            runtime = self._load()
            self._bump()
            return runtime

    def _bump(self) -> None:
        """Move the shared generation on (the lock held): every other worker loads what this one just loaded."""
        try:
            self._seen = self.signal.bump()
        except OSError as exc:
            logger.error("reloaded this worker only; cannot write %s: %s", self.signal.path, exc)

    def load_version(self, version: str) -> None:
        """The alias poll found `version`: load it here unless this worker already has it.

        Every worker polls for itself, so a later move is loaded here only. The first model is announced (bumped)
        for the workers that don't poll. Decided under the lock: a load retry may have brought the first model
        since the poll looked, and then this worker neither loads nor bumps again.
        """
        with self._lock:
            current = self.state.runtime.version if self.state.runtime else None
            if version == current:
                return
            logger.info("model source moved from %s to %s; reloading", current, version)
            self._load()
            if current is None:
                self._bump()

    def _load(self) -> Runtime:
        loaded = self.source.load()
        runtime = build_runtime(
            loaded,
            self.settings.tiers_path,
            self.embedder,
            self.settings.intra_op_threads,
            tiers_path_named=self.settings.tiers_path_named,
        )
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
        with self._lock:
            self._seen = self.signal.read()
            try:
                self._load()
            except (EmbedderMismatch, TiersConfigError):
                raise
            except Exception as exc:  # registry and file errors come in many kinds
                self._not_ready(exc)

    def _not_ready(self, exc: Exception) -> None:
        self.state.load_error = str(exc)
        logger.error("no model loaded; /readyz answers 503 until one is: %s", exc)

    def follow(self) -> bool:
        """Reload if another worker bumped the generation since this one loaded; whether it tried.

        A reload refused here is logged and not retried: this worker keeps its model until the next bump.
        """
        with self._lock:
            generation = self.signal.read()
            if generation == self._seen:
                return False
            self._seen = generation
            logger.info("another worker reloaded (generation %d); reloading", generation)
            try:
                self._load()
            except Exception as exc:  # keep serving the previous model
                logger.error("reload generation %d refused by this worker, which keeps its model: %s", generation, exc)
            return True

    def _retry_load(self) -> None:
        with self._lock:
            if self.state.runtime is not None:
                return
            try:
                self._load()
            except Exception as exc:  # still not ready; say why on /readyz
                self.state.load_error = str(exc)
                return
            self._bump()  # the first model: the other workers, still unready, load it now too

    async def watch(self, interval_s: float) -> None:
        """Every `interval_s`: follow the shared reload generation, and retry the load while no model is loaded.

        The check is one read of a small file, off the request path; a load retry backs off to 30 s.
        """
        retry_s, retry_at = interval_s, time.monotonic() + interval_s
        while True:
            await asyncio.sleep(interval_s)
            try:
                if self.signal.read() != self._seen:
                    await run_in_threadpool(self.follow)
                elif self.state.runtime is None and time.monotonic() >= retry_at:
                    await run_in_threadpool(self._retry_load)
                    retry_s = min(retry_s * 2, max(LOAD_RETRY_MAX_S, interval_s))
                    retry_at = time.monotonic() + retry_s
            except Exception as exc:  # keep watching; the current model keeps serving
                logger.error("reload watch failed: %s", exc)

    async def poll(self, interval_s: float) -> None:
        """Reload whenever the source resolves to another version (e.g. the alias moved)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                version = await run_in_threadpool(self.source.resolve)
                current = self.state.runtime.version if self.state.runtime else None
                if version != current:
                    await run_in_threadpool(self.load_version, version)
            except Exception as exc:  # keep polling; the old model keeps serving
                logger.error("alias poll failed: %s", exc)
