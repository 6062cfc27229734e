"""Prometheus metrics, in a registry owned by one app (so test apps never collide), or across worker processes.

With several uvicorn workers, `python -m serving` sets PROMETHEUS_MULTIPROC_DIR before the workers start, so
prometheus_client keeps every counter and histogram in per-process files there, and a scrape sums the files of
all workers. Values known only at scrape time (frozen sessions, the model version) come from `ScrapeTime`,
computed by the worker answering the scrape, in both modes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess, values
from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def multiprocess_enabled() -> bool:
    """Whether prometheus_client was imported with PROMETHEUS_MULTIPROC_DIR set, i.e. keeps its values in files."""
    return values.ValueClass is not values.MutexValue


def reset_multiprocess_dir(path: Path) -> Path:
    """Create the multiprocess directory and delete a previous run's files; return it as an absolute path.

    Only prometheus_client's `*.db` files are deleted, so a misconfigured path cannot cost anything else.
    """
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return path


class ScrapeTime:
    """A collector for the values read when scraped: frozen sessions from the store, this process's model."""

    def __init__(self, store_errors: Counter) -> None:
        self.store_errors = store_errors
        self.count_frozen: Callable[[], int] | None = None
        self.model: dict[str, str] = {}

    def collect(self) -> Iterator[Metric]:
        frozen = GaugeMetricFamily("tierwise_frozen_sessions", "Sessions frozen at their spend cap")
        if self.count_frozen is not None:
            frozen.add_metric([], self._frozen(self.count_frozen))
        yield frozen
        yield InfoMetricFamily("tierwise_model", "The router version serving requests", value=self.model)

    def _frozen(self, count: Callable[[], int]) -> float:
        try:
            return float(count())
        except Exception:  # a scrape must not fail because the store is down
            self.store_errors.inc()
            return float("nan")


UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class UpstreamMetrics:
    """The OpenAI-compatible proxy's upstream calls: outcomes, latency, retries, fallbacks, fusion members left
    out, and the tokens and cost settled on served requests."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "tierwise_upstream_calls",
            "Upstream call attempts by catalogue model and outcome (ok, or the failure's kind)",
            ["model", "outcome"],
            registry=registry,
        )
        self.seconds = Histogram(
            "tierwise_upstream_seconds",
            "Upstream call attempts' latency (a stream's: to its first event) by model and outcome",
            ["model", "outcome"],
            buckets=UPSTREAM_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "tierwise_upstream_retries", "Retries of the same upstream after a failed attempt", ["model"],
            registry=registry,
        )  # fmt: skip
        self.fallbacks = Counter(
            "tierwise_upstream_fallbacks",
            "Requests passed from a tier whose upstream failed to the next tier tried",
            ["from_tier", "to_tier"],
            registry=registry,
        )
        self.member_failures = Counter(
            "tierwise_fusion_member_failures",
            "Fusion panel members left out because their upstream failed",
            ["tier", "member"],
            registry=registry,
        )
        self.tokens = Counter(
            "tierwise_upstream_tokens",
            "Tokens of the upstream calls settled on served requests, by model and direction (in, out)",
            ["model", "direction"],
            registry=registry,
        )
        self.cost = Counter(
            "tierwise_upstream_cost_usd",
            "Cost settled for the upstream calls of served requests (usage × catalogue price), by model",
            ["model"],
            registry=registry,
        )


class Metrics:
    """Request latency, decisions per tier, frozen sessions, model version, store errors."""

    def __init__(self, multiprocess_mode: bool = False) -> None:
        self.multiprocess_mode = multiprocess_mode
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "tierwise_request_seconds",
            "Request latency by route and status",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "tierwise_decisions", "Routing decisions per tier", ["tier", "model"], registry=self.registry
        )
        self.store_errors = Counter(
            "tierwise_outcome_store_errors", "Failed writes or reads of the decision store", registry=None
        )
        # Registered before the store-error counter, so a failed count shows in the same scrape.
        self.scrape_time = ScrapeTime(self.store_errors)
        self.scrape_collectors: list[Collector] = []
        self.registry.register(self.scrape_time)
        self.registry.register(self.store_errors)
        self.spooled = Counter(
            "tierwise_outcomes_spooled",
            "Outcomes spooled to the local file while the store was down",
            registry=self.registry,
        )
        self.settlements_spooled = Counter(
            "tierwise_settlements_spooled",
            "The proxy's settlements of its decisions spooled to the local file while the store was down",
            registry=self.registry,
        )
        self.replayed = Counter(
            "tierwise_outcomes_replayed",
            "Spooled outcomes replayed: written, already in the store, or quarantined",
            registry=self.registry,
        )
        self.rejected = Counter(
            "tierwise_outcomes_rejected",
            "Spooled outcomes (or torn spool lines) the store refused, quarantined in the rejected file",
            registry=self.registry,
        )
        self.expired_holds = Counter(
            "tierwise_expired_holds_usd",
            "Session reservations released because their decisions stayed unsettled past reservation_expiry_s",
            registry=self.registry,
        )
        self.released_holds = Counter(
            "tierwise_released_holds",
            "Decisions whose session reservation a caller released (POST /decisions/{id}/release), left open",
            registry=self.registry,
        )
        self.released_holds_usd = Counter(
            "tierwise_released_holds_usd",
            "Session reservations callers released with POST /decisions/{id}/release",
            registry=self.registry,
        )

        # Exploration's live cost: served minus what the policy would have chosen, summed over explored decisions.
        self.explored = Counter(
            "tierwise_explored_decisions", "Decisions where exploration served another tier", registry=self.registry
        )
        self.exploration_served_cost = Counter(
            "tierwise_exploration_served_cost_usd",
            "Expected cost of the tiers explored decisions served",
            registry=self.registry,
        )
        self.exploration_policy_cost = Counter(
            "tierwise_exploration_policy_cost_usd",
            "Expected cost of the tiers the policy chose for explored decisions (exploration's extra cost is "
            "served minus this)",
            registry=self.registry,
        )
        self.upstream = UpstreamMetrics(self.registry)

    def track_frozen(self, count: Callable[[], int]) -> None:
        """Report `count()` as the frozen-sessions gauge at every scrape."""
        self.scrape_time.count_frozen = count

    def set_model(self, router_version: str, embedder: str) -> None:
        self.scrape_time.model = {"router_version": router_version, "embedder": embedder}

    def add_scrape_collector(self, collector: Collector) -> None:
        """Another collector computed at scrape time by the answering worker (like `ScrapeTime`), in both modes."""
        self.scrape_collectors.append(collector)
        self.registry.register(collector)

    def exposition(self) -> bytes:
        """The text format of this app's registry, or of every worker's files in multiprocess mode."""
        if not self.multiprocess_mode:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        registry.register(self.scrape_time)
        for extra in self.scrape_collectors:
            registry.register(extra)
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def mark_dead(self) -> None:
        """In multiprocess mode, tell prometheus_client this worker is gone (it drops its live-gauge files)."""
        if self.multiprocess_mode:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
