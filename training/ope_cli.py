"""The store-backed commands' work: `evaluate --from-store`, `calibrate --from-store` and `purge` (the CLI parses)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from infra.prompt_policy import prompt_policy
from infra.settings import Settings
from infra.store import Store, require_existing
from router.routing import Router
from router.schema import TiersConfigError
from training.gate import Check
from training.ope_data import LoggedTraffic, load_traffic
from training.ope_eval import calibrate_traffic, evaluate_traffic, format_rows
from training.ope_gate import off_policy_gate_check

logger = logging.getLogger(__name__)


def open_store(s: Settings) -> Store:
    """The service's store, which must exist (`require_existing`), migrated to this code's schema."""
    require_existing(s.database_url)
    store = Store(s.database_url, prompt_policy(s.prompt_storage, s.prompt_hash_key, s.prompt_hash_previous_keys))
    store.migrate()
    return store


def traffic_from_store(s: Settings, tier_names: list[str], since_days: float | None = None) -> LoggedTraffic:
    """The logged decisions with outcomes, in the order of `tier_names`; ValueError when there are none."""
    since = datetime.now(UTC) - timedelta(days=since_days) if since_days else None
    store = open_store(s)
    try:
        traffic = load_traffic(store, tier_names, since, novelty_limit=s.novelty_limit)
    finally:
        store.dispose()
    if not len(traffic.logged):
        none = (
            "no decision has an outcome"
            if since is None
            else f"no decision since {since:%Y-%m-%d %H:%M:%S} UTC has one"
        )
        skipped = "; ".join(f"{n} {why}" for why, n in traffic.skipped.items()) or none
        raise ValueError(f"the store holds no logged decisions with outcomes and propensities to evaluate ({skipped})")
    return traffic


def evaluate_from_store(
    s: Settings, tier_names: list[str], candidate: Router | None, since_days: float | None, n_boot: int
) -> str:
    traffic = traffic_from_store(s, tier_names, since_days)
    rows = evaluate_traffic(traffic, candidate, s.quality_target, n_boot=n_boot, seed=s.seed)
    header = (
        f"off-policy estimates on {traffic.describe()}\n"
        "quality and cost per decision; DR = the model's predictions corrected by the importance-weighted "
        "outcomes; 'model' = the predictions alone (no evidence)\n"
    )
    return header + format_rows(rows)


def calibrate_from_store(
    s: Settings, tier_names: list[str], mean_cost_usd: float, since_days: float | None, n_boot: int
) -> str:
    traffic = traffic_from_store(s, tier_names, since_days)
    return calibrate_traffic(traffic, mean_cost_usd, n_boot=n_boot, seed=s.seed)


def purge(s: Settings, older_than_days: float | None) -> str:
    """Delete decisions and outcomes older than the retention period; ValueError when none is configured."""
    days = older_than_days if older_than_days is not None else s.retention_days
    if days is None:
        raise ValueError("give --older-than-days or set TIERWISE_RETENTION_DAYS")
    if older_than_days is not None:
        s.check_retention(older_than_days, "--older-than-days")
    store = open_store(s)
    try:
        n_decisions, n_outcomes = store.purge(datetime.now(UTC) - timedelta(days=days))
    finally:
        store.dispose()
    return f"deleted {n_decisions} decisions and {n_outcomes} outcomes older than {days:g} days"


def gate_check_from_store(s: Settings, candidate: Router) -> Check:
    """The gate's off-policy check on the service's logged traffic; it abstains when the store has none to offer."""
    try:
        traffic: LoggedTraffic | None = traffic_from_store(s, candidate.names)
    except (ValueError, SQLAlchemyError, TiersConfigError, OSError) as exc:
        logger.info("gate: no logged traffic for the off-policy check (%s)", str(exc).splitlines()[0][:200])
        traffic = None
    return off_policy_gate_check(candidate, traffic, s.quality_target, s.ope_gate_min_decisions, s.ope_gate_max_loss)
