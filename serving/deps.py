"""FastAPI dependencies: settings, the live runtime, the store, metrics and the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from infra.settings import Settings
from infra.store import Store
from serving.errors import NotReady
from serving.metrics import Metrics
from serving.outcomes import OutcomeRecorder
from serving.routing import Routing
from serving.runtime import Runtime
from serving.security import Principal, require_admin

LENIENT_QUERY_PREFIXES = ("/v1/", "/ui")  # `checked_query` lets their unknown query parameters pass


async def checked_query(request: Request) -> None:
    """Refuse a query parameter given more than once (every one of ours is single-valued): Starlette would
    silently keep the last value, so `?mean_cost_usd=x&mean_cost_usd=2` would pass with x unchecked.

    Refuse one the endpoint does not take, where a knob could be meant (`POST /route?session_id=s` was routed
    without its session, so past the session's cap): on a write, or on a read that takes query parameters. The
    OpenAI-compatible door (/v1) takes what OpenAI's clients add (Azure's `api-version`), the admin page (/ui) what
    browsers and links add, and plain reads (/metrics, the health checks) what scrapers and probes add."""
    if not request.scope["query_string"]:
        return
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key in seen:
            raise RequestValidationError(
                [{"loc": ("query", key), "msg": "given more than once; send it once", "type": "query_repeated"}]
            )
        seen.add(key)
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.path.startswith(LENIENT_QUERY_PREFIXES):
        return
    taken = _query_names(route)
    unknown = sorted(seen - taken)
    if unknown and (taken or request.method not in ("GET", "HEAD")):
        takes = f"takes only {', '.join(sorted(taken))}" if taken else "takes none"
        msg = f"unknown query parameter; this endpoint {takes}"
        raise RequestValidationError([{"loc": ("query", unknown[0]), "msg": msg, "type": "query_unknown"}])


def _query_names(route: APIRoute) -> set[str]:
    """The query parameters a route and its dependencies declare, by the name a client sends."""
    names: set[str] = set()
    todo = [route.dependant]
    while todo:
        dependant = todo.pop()
        names.update(p.alias for p in dependant.query_params)
        todo.extend(dependant.dependencies)
    return names


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = request.app.state.runtime
    if runtime is None:
        raise NotReady(f"no model loaded yet: {request.app.state.load_error or 'loading'}")
    return runtime


async def get_store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


async def get_recorder(request: Request) -> OutcomeRecorder:
    return request.app.state.recorder  # type: ignore[no-any-return]


# Declares the bearer scheme in the OpenAPI spec (the Authorize button of /docs); our KeyRing answers the 401s.
bearer_scheme = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer <key>`")


async def get_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> Principal:
    token = credentials.credentials if credentials else None
    return request.app.state.keys.authenticate(token)  # type: ignore[no-any-return]


async def get_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    return require_admin(principal)


async def get_routing(request: Request, caller: Annotated[Principal, Depends(get_principal)]) -> Routing:
    state = request.app.state
    rt = await get_runtime(request)
    return Routing(rt, state.store, getattr(state, "writer", None), state.settings, state.metrics, caller)


SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
StoreDep = Annotated[Store, Depends(get_store)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
RecorderDep = Annotated[OutcomeRecorder, Depends(get_recorder)]
Caller = Annotated[Principal, Depends(get_principal)]
Admin = Annotated[Principal, Depends(get_admin)]
RoutingDep = Annotated[Routing, Depends(get_routing)]
