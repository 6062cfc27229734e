"""The service's retention job: delete decisions and outcomes older than TIERWISE_RETENTION_DAYS, periodically."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from infra.store import Store

logger = logging.getLogger(__name__)


def purge_once(store: Store, retention_days: float) -> tuple[int, int]:
    """Delete what is older than the retention period; (decisions, outcomes) deleted."""
    n_decisions, n_outcomes = store.purge(datetime.now(UTC) - timedelta(days=retention_days))
    if n_decisions or n_outcomes:
        logger.info(
            "retention: deleted %d decisions and %d outcomes older than %g days",
            n_decisions,
            n_outcomes,
            retention_days,
        )
    return n_decisions, n_outcomes


async def purge_every(store: Store, retention_days: float, interval_s: float) -> None:
    """Purge now and then every `interval_s`; a store error is logged and retried at the next round."""
    while True:
        try:
            await run_in_threadpool(purge_once, store, retention_days)
        except SQLAlchemyError as exc:
            logger.warning("retention purge failed (%s); retrying in %g s", type(exc).__name__, interval_s)
        await asyncio.sleep(interval_s)
