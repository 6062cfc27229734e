"""GET /healthz, /readyz, /metrics, /ping."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from serving.deps import MetricsDep
from serving.schemas import Health

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", responses={503: {"model": Health}})
async def readyz(request: Request) -> Response:
    """200 once the store is migrated and a model is loaded; 503 with the reason before."""
    rt = request.app.state.runtime
    reason = request.app.state.store_error or (None if rt else request.app.state.load_error or "loading")
    if reason is not None:
        body = Health(status="not ready", detail=reason, router_version=rt.version if rt else None)
        return JSONResponse(body.model_dump(), status_code=503)
    return JSONResponse(Health(status="ready", router_version=rt.version).model_dump())


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(m: MetricsDep) -> Response:
    """Prometheus metrics (of every worker, when several serve)."""
    return Response(m.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/ping", response_class=PlainTextResponse)
async def ping() -> PlainTextResponse:
    """The HTTP floor: no auth, no model, no store."""
    return PlainTextResponse("pong")
