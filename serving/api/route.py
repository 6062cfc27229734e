"""POST /route, POST /route/batch, GET /tiers."""

from __future__ import annotations

from fastapi import APIRouter

from serving.deps import Caller, MetricsDep, RuntimeDep, SettingsDep, StoreDep
from serving.errors import BODY_ERRORS, CALLER_ERRORS, error
from serving.routing import route_request
from serving.schemas import (
    OverBudgetResponse,
    RouteBatchRequest,
    RouteBatchResponse,
    RouteRequest,
    RouteResponse,
    TierInfo,
    TiersResponse,
)

router = APIRouter(tags=["route"], responses=CALLER_ERRORS)
ERRORS: dict[int | str, dict[str, object]] = {
    402: {"model": OverBudgetResponse, "description": "the session's cap leaves no room (status says if it froze)"},
    **BODY_ERRORS,
    **error(403, "the session belongs to another client"),
}


@router.post("/route", responses=ERRORS)
def route_one(
    req: RouteRequest, rt: RuntimeDep, store: StoreDep, caller: Caller, settings: SettingsDep, metrics: MetricsDep
) -> RouteResponse:
    """Choose the tier for one prompt."""
    [out] = route_request(rt, store, caller, [req.prompt], req, settings, metrics)
    return out


@router.post("/route/batch", responses=ERRORS)
def route_batch(
    req: RouteBatchRequest,
    rt: RuntimeDep,
    store: StoreDep,
    caller: Caller,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> RouteBatchResponse:
    """Choose the tier for each of up to `max_batch` prompts."""
    return RouteBatchResponse(decisions=route_request(rt, store, caller, req.prompts, req, settings, metrics))


def tier_infos(rt: RuntimeDep) -> list[TierInfo]:
    return [
        TierInfo(
            name=t.name,
            kind=t.kind,
            model=t.model,
            parts=list(t.parts),
            input_per_1m=t.input_per_1m,
            output_per_1m=t.output_per_1m,
        )
        for t in rt.tiers.tiers
    ]


@router.get("/tiers")
def list_tiers(rt: RuntimeDep, _: Caller) -> TiersResponse:
    """The tiers, cheapest first, with their models and prices (USD per 1M tokens)."""
    return TiersResponse(tiers=tier_infos(rt), router_version=rt.version)
