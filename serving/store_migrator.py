"""Bring the store's schema up at start-up, and keep trying in the background while the store is down.

Until the migration has run, `state.store_error` says why ("store unavailable: ...") and /readyz answers 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from infra.store import Store, first_line

logger = logging.getLogger(__name__)


class StoreMigrator:
    """Migrates `store`; publishes the failure, if any, on `state.store_error`."""

    def __init__(self, state: Any, store: Store):
        self.state = state
        self.store = store

    def try_migrate(self) -> bool:
        """Migrate once; whether the store is up to date now."""
        try:
            self.store.migrate()
        except Exception as exc:  # connection, auth and DDL errors all mean: not ready yet
            reason = f"store unavailable: {first_line(exc)}"
            if reason != self.state.store_error:
                logger.error("%s; /readyz answers 503 and the migration is retried", reason)
            self.state.store_error = reason
            return False
        if self.state.store_error is not None:
            logger.info("store migrated; ready")
        self.state.store_error = None
        return True

    async def retry(self, interval_s: float, on_ready: Callable[[], object]) -> None:
        """Retry the migration every `interval_s` until it succeeds, then call `on_ready` (in a thread)."""
        while not await run_in_threadpool(self.try_migrate):
            await asyncio.sleep(interval_s)
        await run_in_threadpool(on_ready)
