"""GET /admin/drift."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from serving.deps import Admin, RuntimeDep, SettingsDep, StoreDep
from serving.drift import DriftReport, drift_report
from serving.errors import CALLER_ERRORS, error

router = APIRouter(prefix="/admin", tags=["admin"], responses=CALLER_ERRORS | error(403, "needs an admin key"))


@router.get("/drift")
def get_drift(
    _: Admin,
    rt: RuntimeDep,
    store: StoreDep,
    settings: SettingsDep,
    mean_cost_usd: Annotated[
        float | None,
        Query(gt=0, allow_inf_nan=False, description="a promised mean cost: the report adds the λ that meets it"),
    ] = None,
) -> DriftReport:
    """Drift on the newest `drift_window` decisions and outcomes of the serving model, and what to do about it.

    Checks: the prompts' novelty against the training prompts (a rank test, alert at `drift_novelty_z`), each
    tier's predicted vs realised quality (alert beyond `drift_quality_gap`), realised vs expected cost (alert
    outside `drift_cost_ratio`). The same checks are gauges on /metrics (`tierwise_drift_*`).
    """
    return drift_report(store, rt, settings, mean_cost_usd)
