"""The service's retention job: delete decisions and outcomes older than TIERWISE_RETENTION_DAYS, periodically,
from the store and from this machine's outcome spool (records waiting out an outage, and the quarantine)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from infra.store import Store
from serving.spool import Spool

logger = logging.getLogger(__name__)


def purge_spool(spool: Spool, retention_days: float) -> int:
    """Delete the spool's records older than the retention period (whether or not the store is up); how many."""
    try:
        n = spool.remove_older_than(datetime.now(UTC) - timedelta(days=retention_days))
    except OSError as exc:
        logger.warning("retention purge of the spool %s failed (%s); retrying at the next round", spool.path, exc)
        return 0
    if n:
        logger.info("retention: deleted %d spooled records older than %g days", n, retention_days)
    return n


def purge_once(store: Store, retention_days: float) -> tuple[int, int]:
    """Delete what the store holds older than the retention period; (decisions, outcomes) deleted."""
    n_decisions, n_outcomes = store.purge(datetime.now(UTC) - timedelta(days=retention_days))
    if n_decisions or n_outcomes:
        logger.info(
            "retention: deleted %d decisions and %d outcomes older than %g days",
            n_decisions,
            n_outcomes,
            retention_days,
        )
    return n_decisions, n_outcomes


async def purge_every(store: Store, spool: Spool, retention_days: float, interval_s: float) -> None:
    """Purge the spool and the store now and then every `interval_s`; an error is logged and retried at the next
    round."""
    while True:
        await run_in_threadpool(purge_spool, spool, retention_days)
        try:
            await run_in_threadpool(purge_once, store, retention_days)
        except SQLAlchemyError as exc:
            logger.warning("retention purge failed (%s); retrying in %g s", type(exc).__name__, interval_s)
        await asyncio.sleep(interval_s)
