"""What the admin page shows, gathered from the runtime and the store's read-only aggregates."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from infra import admin_queries as q
from infra.settings import Settings
from infra.store import Store, first_line
from router.schema import Tier
from serving.drift import DriftReport, drift_report
from serving.runtime import Runtime

logger = logging.getLogger(__name__)

WINDOWS = (("last hour", timedelta(hours=1)), ("last day", timedelta(days=1)))
SESSION_FILTERS = ("all", "open", "frozen")


@dataclass(frozen=True)
class Savings:
    """Recorded cost of decisions against what the top tier was expected to cost for the same prompts."""

    decisions: int  # decisions the comparison covers
    sampled: int  # recent decisions read (at most Settings.ui_savings_sample)
    window_total: int  # decisions in the window
    from_recorded: int  # covered decisions without a stored prompt, priced by the expected costs they recorded
    left_out: int  # sampled decisions with neither a stored prompt nor recorded expected costs
    cost_usd: float
    top_cost_usd: float

    @property
    def saved_usd(self) -> float:
        return self.top_cost_usd - self.cost_usd

    @property
    def saved_share(self) -> float | None:
        return self.saved_usd / self.top_cost_usd if self.top_cost_usd > 0 else None


@dataclass(frozen=True)
class WindowView:
    label: str
    usage: list[q.TierUsage]
    savings: Savings | None  # None: no decision in the window has a stored prompt ("n/a")

    @property
    def decisions(self) -> int:
        return sum(u.decisions for u in self.usage)

    @property
    def spend_usd(self) -> float:
        return sum(u.spend_usd for u in self.usage)

    def share(self, usage: q.TierUsage) -> float:
        return usage.decisions / self.decisions if self.decisions else 0.0


@dataclass(frozen=True)
class Dashboard:
    version: str | None
    source: str
    load_error: str | None
    tiers: list[Tier]
    windows: list[WindowView]
    frozen: q.SessionPage
    sessions: q.SessionPage
    session_filter: str
    recent: list[q.RecentDecision]
    drift: DriftReport | None = None
    drift_error: str | None = None


def model_source_label(settings: Settings, version: str | None) -> str:
    """Where the served model comes from: a local directory (named by its version), or the registry alias."""
    if version is not None and version.startswith("local:"):
        return "a local directory"
    if settings.local_model_path is not None:
        return f"local directory {settings.local_model_path}"
    return f"the registry alias models:/{settings.registered_model}@{settings.model_alias}"


def savings(runtime: Runtime, samples: list[q.CostSample], window_total: int) -> Savings | None:
    """Cost of the sampled decisions against the top tier's expected cost for the same prompts.

    A stored prompt is priced by the runtime (router.expected_cost, today's prices, at the input its caller counted
    where it did); a decision whose prompt is not stored, by the top tier's expected cost it recorded when it was
    decided. None when neither is there for any.
    """
    top = runtime.tiers.names[-1]
    texts = [s for s in samples if s.prompt.strip()]
    recorded = [s for s in samples if not s.prompt.strip() and s.expected_costs and top in s.expected_costs]
    if not texts and not recorded:
        return None
    top_cost = 0.0
    if texts:
        counted = [s.input_tokens for s in texts]
        top_cost = float(runtime.router.expected_cost([s.prompt for s in texts], counted)[:, -1].sum())
    top_cost += sum(float(s.expected_costs[top]) for s in recorded if s.expected_costs)
    covered = texts + recorded
    return Savings(
        decisions=len(covered),
        sampled=len(samples),
        window_total=window_total,
        from_recorded=len(recorded),
        left_out=len(samples) - len(covered),
        cost_usd=float(sum(s.cost_usd for s in covered)),
        top_cost_usd=top_cost,
    )


def window_view(store: Store, runtime: Runtime | None, label: str, since: datetime, sample_limit: int) -> WindowView:
    usage = q.tier_usage(store.engine, since)
    total = sum(u.decisions for u in usage)
    saved = None
    if runtime is not None and total:
        saved = savings(runtime, q.cost_sample(store.engine, since, sample_limit), total)
    return WindowView(label, usage, saved)


def drift_panel(store: Store, runtime: Runtime | None, settings: Settings) -> tuple[DriftReport | None, str | None]:
    """GET /admin/drift's report, computed in-process; a failing check leaves the rest of the page standing."""
    if runtime is None:
        return None, "no model loaded"
    try:
        return drift_report(store, runtime, settings), None
    except Exception as exc:  # a panel must not take the page down; the API endpoint reports the same error
        logger.warning("the admin page's drift panel failed", exc_info=True)
        return None, f"{type(exc).__name__}: {first_line(exc)}"


def build_dashboard(
    store: Store,
    runtime: Runtime | None,
    settings: Settings,
    session_filter: str = "all",
    offset: int = 0,
    now: datetime | None = None,
    page_size: int = 50,
    load_error: str | None = None,
) -> Dashboard:
    """Everything /ui shows, from bounded queries (see infra/admin_queries.py)."""
    now = now or datetime.now(UTC)
    status = None if session_filter == "all" else session_filter
    drift, drift_error = drift_panel(store, runtime, settings)
    return Dashboard(
        version=runtime.version if runtime else None,
        source=model_source_label(settings, runtime.version if runtime else None),
        load_error=None if runtime else (load_error or "loading"),
        tiers=list(runtime.tiers.tiers) if runtime else [],
        windows=[window_view(store, runtime, label, now - span, settings.ui_savings_sample) for label, span in WINDOWS],
        frozen=q.list_sessions(store.engine, status="frozen", limit=page_size),
        sessions=q.list_sessions(store.engine, status=status, offset=offset, limit=page_size),
        session_filter=session_filter,
        recent=q.recent_decisions(store.engine, page_size),
        drift=drift,
        drift_error=drift_error,
    )
