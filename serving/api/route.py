"""POST /route, POST /route/batch, GET /tiers."""

from __future__ import annotations

from fastapi import APIRouter

from serving.api.lean_route import LeanRoute
from serving.deps import Caller, RoutingDep, RuntimeDep
from serving.errors import BODY_ERRORS, CALLER_ERRORS, error
from serving.routing import route_request_async
from serving.schemas import (
    OverBudgetResponse,
    RouteBatchRequest,
    RouteBatchResponse,
    RouteRequest,
    RouteResponse,
    TierInfo,
    TiersResponse,
)

# LeanRoute: /route and /route/batch answer a plain request without FastAPI's per-request dependency solving.
router = APIRouter(tags=["route"], responses=CALLER_ERRORS, route_class=LeanRoute)
ERRORS: dict[int | str, dict[str, object]] = {
    402: {
        "model": OverBudgetResponse,
        "description": "the session's cap leaves no room (status says if it froze; Retry-After when the door's calls "
        "in flight hold the room)",
    },
    **BODY_ERRORS,
    **error(403, "the session belongs to another client"),
}


# Handlers are coroutines: routing runs on the event loop and only the store's write leaves it (see
# route_request_async); a sync handler costs two threadpool hops (the call and the response validation).
@router.post("/route", responses=ERRORS)
async def route_one(req: RouteRequest, ctx: RoutingDep) -> RouteResponse:
    """Choose the tier for one prompt."""
    [out] = await route_request_async(ctx, [req.prompt], req)
    return out


@router.post("/route/batch", responses=ERRORS)
async def route_batch(req: RouteBatchRequest, ctx: RoutingDep) -> RouteBatchResponse:
    """Choose the tier for each of up to `max_batch` prompts."""
    return RouteBatchResponse(decisions=await route_request_async(ctx, req.prompts, req))


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
    prior = rt.router.artifact.task_prior
    return TiersResponse(tiers=tier_infos(rt), router_version=rt.version, tasks=sorted(prior.means) if prior else [])
