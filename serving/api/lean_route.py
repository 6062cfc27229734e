"""A route class for /route and /route/batch that answers the plain request without FastAPI's per-request machinery.

FastAPI spends a good part of a /route's time on work that is the same for every request: solving the dependencies
through its generic resolver, parsing the Content-Type header with `email.message`, telemetry scopes, the endpoint's
context and revalidating the response model it was handed. For an endpoint `async def f(body: Model, ctx:
RoutingDep)` and the common request (no query string, `Content-Type: application/json`, a body that validates, no
dependency overrides, no FastAPI telemetry), `LeanRoute` does the same steps itself: the same dependency functions
in the same order, the route's own body field to validate and its own response field to serialize, so the answer
is byte for byte FastAPI's. Every other request, and every invalid one, goes to FastAPI's handler for the route, so
errors, their order and their bodies are FastAPI's; exceptions raised on the lean path reach the same handlers.

An endpoint that returns a `Response` itself (`response_model=None`, the OpenAI-compatible door) may also take the
`Request`; its answer goes out as it is, as FastAPI sends it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any, get_type_hints

from fastapi import Request, Response
from fastapi.routing import APIRoute
from fastapi.telemetry import get_telemetry_data

from serving.deps import bearer_scheme, get_principal, get_routing

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class LeanRoute(APIRoute):
    """An APIRoute with a lean path for the plain request (module docstring); any other endpoint is left as is."""

    def get_route_handler(self) -> Handler:
        full = super().get_route_handler()
        d, body_field, response_field = self.dependant, self.body_field, self.response_field
        returns_response = response_field is None and _returns_response(d.call)
        lean = (
            inspect.iscoroutinefunction(d.call)
            and len(d.body_params) == 1
            and [dep.call for dep in d.dependencies] == [get_routing]
            and not (d.path_params or d.query_params or d.header_params or d.cookie_params)
            and not (d.websocket_param_name or d.http_connection_param_name or d.response_param_name)
            and not (d.background_tasks_param_name or d.security_scopes_param_name)
            and (d.request_param_name is None or returns_response)
            and body_field is not None
            and (response_field is not None or returns_response)
            and not self._embed_body_fields
        )
        routing_name = d.dependencies[0].name if d.dependencies else None
        if not lean or d.call is None or body_field is None or routing_name is None:
            return full
        endpoint, body_name, request_name = d.call, d.body_params[0].name, d.request_param_name

        async def handler(request: Request) -> Response:
            if not _plain(request):
                return await full(request)
            try:
                body = await request.json()
            except Exception:  # FastAPI answers whatever this was, from the body Starlette cached
                return await full(request)
            # The route's dependencies as FastAPI solves them, in its order (bearer, caller, runtime), then the body.
            caller = await get_principal(request, await bearer_scheme(request))
            routing = await get_routing(request, caller)
            value, errors = body_field.validate(body, {}, loc=("body",))
            if errors:
                return await full(request)  # FastAPI builds the 422 from the same validation
            kwargs = {body_name: value, routing_name: routing}
            if request_name is not None:
                kwargs[request_name] = request
            answer = await endpoint(**kwargs)
            if response_field is None:
                return answer  # type: ignore[no-any-return]  # a Response: _returns_response checked the annotation
            return Response(content=response_field.serialize_json(answer), media_type="application/json")

        return handler


def _plain(request: Request) -> bool:
    """Whether FastAPI would treat the request exactly as the lean path does: a JSON body and nothing else."""
    return (
        not request.scope["query_string"]
        and request.headers.get("content-type") == "application/json"
        and not request.app.dependency_overrides
        and get_telemetry_data() is None
    )


def _returns_response(call: Callable[..., Any] | None) -> bool:
    """Whether `call` is annotated to return a Response (then FastAPI sends what it returns as it is)."""
    if call is None:
        return False
    try:
        returned = get_type_hints(call).get("return")
    except (NameError, TypeError):
        return False
    return inspect.isclass(returned) and issubclass(returned, Response)
