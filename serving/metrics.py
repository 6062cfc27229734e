"""Prometheus metrics, in a registry owned by one app (so test apps never collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Request latency, decisions per tier, frozen sessions, model version, store errors."""

    def __init__(self) -> None:
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
        self.frozen_sessions = Gauge(
            "tierwise_frozen_sessions", "Sessions frozen at their spend cap", registry=self.registry
        )
        self.store_errors = Counter(
            "tierwise_outcome_store_errors", "Failed writes or reads of the decision store", registry=self.registry
        )
        self.spooled = Counter(
            "tierwise_outcomes_spooled",
            "Outcomes spooled to the local file while the store was down",
            registry=self.registry,
        )
        self.model = Info("tierwise_model", "The router version serving requests", registry=self.registry)

    def track_frozen(self, count: Callable[[], int]) -> None:
        def safe() -> float:
            try:
                return float(count())
            except Exception:  # noqa: BLE001 - a scrape must not fail because the store is down
                self.store_errors.inc()
                return float("nan")

        self.frozen_sessions.set_function(safe)
