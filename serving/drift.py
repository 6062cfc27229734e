"""Drift: rolling windows of recent traffic read from the decision store, checked by router/drift.py.

The windows are the newest `drift_window` decisions (and outcomes) of the model now serving, read from the
store rather than kept in memory, so every worker of the service, and a restarted one, sees the same windows.
Three checks: (a) inputs: recent prompts' novelty against the training prompts; (b) promises: each tier's
predicted vs realised quality on recent outcomes; (c) realised vs expected cost of those outcomes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import sqlalchemy as sa
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from pydantic import BaseModel

from infra.settings import Settings
from infra.store import Store, decisions, outcomes, tier_values
from router.drift import Check, cost_check, fallback_tiers, novelty_check, quality_check, recalibrate
from router.novelty import took_fallback
from serving.runtime import Runtime

logger = logging.getLogger(__name__)


class DriftCheck(BaseModel):
    name: str
    statistic: float | None
    limit: float
    n: int
    alert: bool
    detail: str


class Recalibration(BaseModel):
    target_mean_cost_usd: float
    cost_weight_per_usd: float | None
    decisions: int
    detail: str


class DriftReport(BaseModel):
    router_version: str
    window: int
    checks: list[DriftCheck]
    alerts: list[str]
    mean_expected_cost_usd: float | None
    advice: str
    recalibration: Recalibration | None = None


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _as_model(c: Check) -> DriftCheck:
    return DriftCheck(name=c.name, statistic=_finite(c.statistic), limit=c.limit, n=c.n, alert=c.alert, detail=c.detail)


def _recent_novelty(store: Store, version: str, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Novelty and expected cost of the newest `window` decisions of this model version."""
    q = (
        sa.select(decisions.c.novelty, decisions.c.expected_cost_usd)
        .where(decisions.c.router_version == version)
        .order_by(decisions.c.created_at.desc())
        .limit(window)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(q).all()
    nov = np.array([r.novelty for r in rows if r.novelty is not None], dtype=float)
    return nov, np.array([r.expected_cost_usd for r in rows], dtype=float)


def _recent_outcomes(store: Store, version: str, window: int) -> list[tuple[str, Any, float, float, float]]:
    """The newest `window` outcomes of decisions this model version made, answered by the model of the tier they
    routed to (a fallback's outcome speaks for another tier, at another price): tier, predictions, score and costs."""
    q = (
        sa.select(
            decisions.c.tier,
            decisions.c.predicted_quality,
            outcomes.c.score,
            outcomes.c.cost_usd,
            decisions.c.expected_cost_usd,
        )
        .join(decisions, outcomes.c.decision_id == decisions.c.id)
        .where(decisions.c.router_version == version, outcomes.c.model == decisions.c.model)
        .order_by(outcomes.c.created_at.desc())
        .limit(window)
    )
    with store.engine.connect() as conn:
        return [(r.tier, r.predicted_quality, r.score, r.cost_usd, r.expected_cost_usd) for r in conn.execute(q)]


def drift_checks(store: Store, runtime: Runtime, settings: Settings) -> list[Check]:
    """The three checks on the current windows (the novelty check only when the model has a reference)."""
    version, window = runtime.version, settings.drift_window
    out: list[Check] = []
    reference = runtime.router.artifact.novelty
    nov, _ = _recent_novelty(store, version, window)
    if reference is not None:
        out.append(novelty_check(nov, reference.n_calibration, settings.drift_novelty_z, settings.drift_min_outcomes))
    rows = _recent_outcomes(store, version, window)
    by_tier: dict[str, tuple[list[float], list[float]]] = {}
    for tier, predicted, score, _, _ in rows:
        p = tier_values(predicted, [tier])
        if p is not None:
            pred, real = by_tier.setdefault(tier, ([], []))
            pred.append(p[0])
            real.append(float(score))
    for tier in runtime.tiers.names:
        pred, real = by_tier.get(tier, ([], []))
        out.append(
            quality_check(tier, np.array(pred), np.array(real), settings.drift_quality_gap, settings.drift_min_outcomes)
        )
    out.append(
        cost_check(
            np.array([r[3] for r in rows], dtype=float),
            np.array([r[4] for r in rows], dtype=float),
            settings.drift_cost_ratio,
            settings.drift_min_outcomes,
        )
    )
    return out


def suggest_cost_weight(
    store: Store, runtime: Runtime, window: int, target_mean_cost_usd: float, novelty_limit: float = 0.99
) -> Recalibration:
    """λ for a mean cost on the newest `window` decisions (router/drift.recalibrate on their recorded
    per-tier predictions and expected costs; realised costs where an outcome from the routed tier's model came
    back, the rest estimated from those; novel and familiar prompts' cost ratios apart)."""
    q = (
        sa.select(
            decisions.c.tier,
            decisions.c.predicted_quality,
            decisions.c.expected_costs,
            outcomes.c.cost_usd,
            decisions.c.novelty,
            decisions.c.reason,
            decisions.c.model.label("routed_model"),
            outcomes.c.model.label("answered_model"),
        )
        .outerjoin(outcomes, outcomes.c.decision_id == decisions.c.id)
        .where(decisions.c.router_version == runtime.version)
        .order_by(decisions.c.created_at.desc())
        .limit(window)
    )
    names = runtime.tiers.names
    pred, cost, served, paid, novelty, fell_back = [], [], [], [], [], []
    with store.engine.connect() as conn:
        for tier, pq, ec, realised, nov, reason, routed_model, answered_model in conn.execute(q):
            p, c = tier_values(pq, names), tier_values(ec, names)
            if p is None or c is None or tier not in names:
                continue
            pred.append(p)
            cost.append(c)
            served.append(names.index(tier))
            answered = realised is not None and answered_model == routed_model
            paid.append(float(realised) if answered else math.nan)  # NaN: no outcome of the routed tier's model
            novelty.append(math.nan if nov is None else float(nov))
            fell_back.append(took_fallback(reason))
    n = len(pred)
    if n < 30:
        return Recalibration(
            target_mean_cost_usd=target_mean_cost_usd,
            cost_weight_per_usd=None,
            decisions=n,
            detail=f"only {n} recent decisions carry per-tier predictions and costs; need 30",
        )
    # A novel prompt gets the fallback's tier whatever λ is: counted there for every λ.
    fixed = fallback_tiers(np.array(novelty), novelty_limit, np.array(fell_back), np.array(served), np.array(cost))
    novel = fixed >= 0
    try:
        found = recalibrate(
            np.array(pred),
            np.array(cost),
            np.array(served),
            np.array(paid),
            target_mean_cost_usd,
            novel,
            fixed,
        )
    except ValueError as exc:
        return Recalibration(
            target_mean_cost_usd=target_mean_cost_usd, cost_weight_per_usd=None, decisions=n, detail=str(exc)
        )
    return Recalibration(
        target_mean_cost_usd=target_mean_cost_usd,
        cost_weight_per_usd=found.cost_weight,
        decisions=n,
        detail=f'on the newest {n} decisions, "cost_weight_per_usd": {found.cost_weight:.6g} would have cost '
        f"${found.mean_cost:.6g} per request on average (asked: ${target_mean_cost_usd:.6g})"
        + (f", {int(np.sum(novel))} of them at the fallback's tier for novel prompts" if novel.any() else "")
        + "; send it as the requests' cost_weight_per_usd (`tierwise calibrate --from-store --mean-cost-usd` "
        "fits it on all logged traffic, with intervals where it explored)"
        + (
            f" (only {n} of the {window} decisions a recalibration should see: the λ may miss the mean cost by "
            "more than 5%)"
            if n < window
            else ""
        ),
    )


def drift_report(
    store: Store, runtime: Runtime, settings: Settings, target_mean_cost_usd: float | None = None
) -> DriftReport:
    """The checks, which of them alert, and what to do about it (with a target mean cost: the λ that meets it)."""
    checks = drift_checks(store, runtime, settings)
    _, cost = _recent_novelty(store, runtime.version, settings.drift_window)
    alerts = [c.name for c in checks if c.alert]
    if not alerts:
        advice = "no drift detected on the current windows"
    else:
        advice = (
            f"drift in {', '.join(alerts)}: the router's promises (and its quality guarantee) assume traffic like "
            "its training prompts. Recalibrate the operating point on recent traffic (`tierwise calibrate "
            "--from-store --mean-cost-usd <your target>`), and retrain with outcomes of the new traffic "
            "(`tierwise train --from-store`)."
        )
    return DriftReport(
        router_version=runtime.version,
        window=settings.drift_window,
        checks=[_as_model(c) for c in checks],
        alerts=alerts,
        mean_expected_cost_usd=float(cost.mean()) if len(cost) else None,
        advice=advice,
        recalibration=None
        if target_mean_cost_usd is None
        else suggest_cost_weight(
            store, runtime, settings.drift_recalibration_window, target_mean_cost_usd, settings.novelty_limit
        ),
    )


def drift_collector(state: Any, store: Store, settings: Settings, on_error: Callable[[], None]) -> DriftCollector:
    """The collector for an app: checks the model in `state.runtime` (none while no model is loaded)."""

    def checks() -> list[Check] | None:
        runtime: Runtime | None = state.runtime
        return drift_checks(store, runtime, settings) if runtime is not None else None

    return DriftCollector(checks, on_error)


class DriftCollector:
    """The drift checks as gauges, computed from the store when /metrics is scraped (same in every worker)."""

    def __init__(self, checks: Callable[[], list[Check] | None], on_error: Callable[[], None]) -> None:
        self.checks = checks
        self.on_error = on_error

    def collect(self) -> Iterator[Metric]:
        stat = GaugeMetricFamily(
            "tierwise_drift_statistic", "Each drift check's statistic on its window", labels=["check"]
        )
        count = GaugeMetricFamily(
            "tierwise_drift_observations", "Observations in each drift check's window", labels=["check"]
        )
        alert = GaugeMetricFamily(
            "tierwise_drift_alert", "1 when a drift check crosses its threshold", labels=["check"]
        )
        try:
            checks = self.checks() or []
        except Exception:  # a scrape must not fail because the store is down
            logger.warning("drift checks failed at scrape time", exc_info=True)
            self.on_error()
            checks = []
        for c in checks:
            stat.add_metric([c.name], c.statistic)
            count.add_metric([c.name], float(c.n))
            alert.add_metric([c.name], float(c.alert))
        yield stat
        yield count
        yield alert
