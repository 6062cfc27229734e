"""The service's hold-expiry job: a decision's reservation on its session is released once it is older than
TIERWISE_RESERVATION_EXPIRY_S (a day; 0: never) and still unsettled, so a caller that never reports (a crash, a
cancellation caught inside a task that goes on) cannot hold a session's room for good. The decision stays open: its
settlement or outcome, when it comes, still books the cost as spent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from infra.store import Store

logger = logging.getLogger(__name__)

MAX_CHECK_INTERVAL_S = 600.0  # each look scans the decisions older than the expiry: ~0.5 s per 300,000 on SQLite
MIN_CHECK_INTERVAL_S = 0.05


def expire_once(store: Store, expiry_s: float) -> dict[str, float]:
    """Release the holds older than `expiry_s`: {session: USD released}, each logged."""
    released = store.expire_holds(datetime.now(UTC) - timedelta(seconds=expiry_s))
    for session_id, usd in released.items():
        logger.warning(
            "session %s: released $%.6g held by decisions unsettled after %g s (their callers never posted a "
            "settlement or an outcome; one posted later still books its cost)",
            session_id,
            usd,
            expiry_s,
        )
    return released


def check_interval(expiry_s: float) -> float:
    """How often the job looks: every quarter of the expiry, at least every 10 minutes (at most every 0.05 s)."""
    return max(MIN_CHECK_INTERVAL_S, min(MAX_CHECK_INTERVAL_S, expiry_s / 4))


async def expire_every(store: Store, expiry_s: float, count: Callable[[float], None]) -> None:
    """`expire_once` every `check_interval(expiry_s)`; `count` gets the USD released. Errors are logged, retried."""
    interval = check_interval(expiry_s)
    while True:
        try:
            released = await run_in_threadpool(expire_once, store, expiry_s)
            if released:
                count(sum(released.values()))
        except SQLAlchemyError as exc:
            logger.warning("hold expiry failed (%s); retrying in %g s", type(exc).__name__, interval)
        await asyncio.sleep(interval)
