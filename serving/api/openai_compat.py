"""POST /v1/chat/completions and GET /v1/models: the OpenAI-compatible door. Every refusal is in OpenAI's shape."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from router.policy import NoTierFits
from serving.api.lean_route import LeanRoute
from serving.deps import Caller, RoutingDep, RuntimeDep
from serving.errors import UNION_MEMBER, Invalid, OverBudget, ServiceError, http_refusal_body, refusal_class
from serving.proxy.service import Proxy, ProxyError
from serving.proxy.wire import (
    MODEL,
    TIER_PREFIX,
    ChatCompletionOut,
    ChatCompletionRequest,
    DoorJSONResponse,
    ModelCard,
    ModelList,
    OpenAIError,
    error_body,
)

logger = logging.getLogger(__name__)

SERVICE_ERRORS: dict[int, tuple[str, str]] = {
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "not_found"),
    413: ("invalid_request_error", "too_large"),
    503: ("api_error", "not_ready"),
}


def _openai_error(exc: Exception) -> DoorJSONResponse:
    """Any refusal of the service as OpenAI's `{"error": {...}}` with its status."""
    if isinstance(exc, ProxyError):
        return DoorJSONResponse(exc.body, status_code=exc.status, headers=exc.headers)
    if isinstance(exc, RequestValidationError):
        # The most specific error: of a union's members, the one that got furthest (a list of parts whose part is
        # wrong, rather than "not a string").
        err: dict[str, Any] = max(exc.errors(), key=lambda e: len(e.get("loc", ())), default={})
        if err.get("type") == "json_invalid":  # its loc is ("body", <character position>): no parameter
            where = err.get("loc", ("body", "?"))[-1]
            why = (err.get("ctx") or {}).get("error", "invalid")
            return DoorJSONResponse(
                error_body(
                    f"the body is not valid JSON: {why} at character {where}", "invalid_request_error", "json_invalid"
                ),
                status_code=400,
            )
        # OpenAI's `param` is the field's path (`messages.0.content`), without the union members pydantic tried.
        loc = err.get("loc", ())[1:]
        param = ".".join(str(p) for p in loc if not (isinstance(p, str) and UNION_MEMBER.match(p))) or None
        if param is None and "param" in (err.get("ctx") or {}):  # a model-wide check that names the field itself
            param = str(err["ctx"]["param"]) or None
            message = str(err.get("msg", "invalid"))
        else:
            message = f"{param or 'body'}: {err.get('msg', 'invalid')}"
        return DoorJSONResponse(error_body(message, "invalid_request_error", err.get("type"), param), status_code=400)
    if isinstance(exc, OverBudget):
        code = "session_frozen" if (exc.body or {}).get("status") == "frozen" else "over_budget"
        return DoorJSONResponse(
            error_body(exc.detail, "insufficient_quota", code, session=exc.body), status_code=402, headers=exc.headers
        )
    if isinstance(exc, Invalid):
        param = ".".join(str(p) for p in exc.loc[1:]) or None
        return DoorJSONResponse(error_body(exc.detail, "invalid_request_error", None, param), status_code=400)
    if isinstance(exc, ServiceError):
        type_, code = SERVICE_ERRORS.get(exc.status, ("invalid_request_error", "refused"))
        headers = {**(exc.headers or {}), **({"WWW-Authenticate": "Bearer"} if exc.status == 401 else {})}
        return DoorJSONResponse(error_body(exc.detail, type_, code), status_code=exc.status, headers=headers or None)
    if isinstance(exc, HTTPException):  # FastAPI's own refusals, e.g. a body that is not JSON at all
        return DoorJSONResponse(http_refusal_body(exc), status_code=exc.status_code)
    if isinstance(exc, NoTierFits):
        return DoorJSONResponse(error_body(str(exc), "invalid_request_error", "no_tier_fits"), status_code=400)
    if isinstance(exc, DBAPIError):
        logger.error("store error on the proxy: %s", refusal_class(exc))
        return DoorJSONResponse(
            error_body("the decision store is unavailable; retry", "api_error", "store_unavailable"), status_code=503
        )
    logger.exception("unhandled error on the OpenAI-compatible door", exc_info=exc)
    return DoorJSONResponse(error_body("internal error", "api_error", "internal_error"), status_code=500)


class OpenAIRoute(LeanRoute):
    """A route whose refusals, from its dependencies (auth, the model) and body validation too, are OpenAI errors;
    a plain request takes LeanRoute's path past FastAPI's per-request machinery."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return _openai_error(exc)

        return answer


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": OpenAIError, "description": "an OpenAI-format error"} for s in statuses}


ANSWER_HEADERS = {
    name: {"description": text, "schema": {"type": "string"}}
    for name, text in (
        ("X-Tierwise-Decision-Id", "the decision: post its score to /outcomes"),
        ("X-Tierwise-Tier", "the tier that served the answer"),
        ("X-Tierwise-Model", "the model that served it (a fusion tier's `fusion:<name>`)"),
    )
}
SSE_EVENT = {
    "type": "object",
    "description": "one server-sent event",
    "properties": {
        "data": {"type": "string", "description": "a chat.completion.chunk as JSON (`tierwise` on the first), "
                 "an OpenAI error object if the upstream failed mid-stream, or `[DONE]`"},
    },
    "required": ["data"],
}  # fmt: skip
router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute, responses=_errors(401, 503))


@router.post(
    "/chat/completions",
    response_model=None,
    responses={
        200: {
            "model": ChatCompletionOut,
            "description": "the upstream's completion plus `tierwise`; with `stream: true`, its events as SSE",
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
            "headers": ANSWER_HEADERS,
        },
        **_errors(400, 402, 403, 404, 429, 502, 504),
        413: {
            "description": "the prompt is over max_prompt_chars, or the body is over max_body_bytes (refused "
            "before it is read)",
            "model": OpenAIError,
        },
    },
)
async def chat_completions(req: ChatCompletionRequest, request: Request, ctx: RoutingDep) -> Response:
    """Route the conversation (system text + last user turn) to a tier, answer with that tier's upstream."""
    proxy: Proxy = request.app.state.proxy
    return await proxy.chat(req, request.headers, ctx)


@router.get("/models")
async def list_models(rt: RuntimeDep, _: Caller) -> ModelList:
    """`tierwise` (routed), and `tierwise/<tier>` for each tier (routed, at least that tier)."""
    return ModelList(data=_models(rt.tiers.names))


@router.get("/models/{model:path}", responses=_errors(404))
async def retrieve_model(model: str, rt: RuntimeDep, _: Caller) -> ModelCard:
    """One of the models `GET /v1/models` lists (the OpenAI SDK's `models.retrieve`); another is a 404."""
    for card in _models(rt.tiers.names):
        if card.id == model:
            return card
    raise ProxyError(404, f"model '{model}' does not exist", "invalid_request_error", "model_not_found", "model")


def _models(tier_names: list[str]) -> list[ModelCard]:
    return [ModelCard(id=MODEL), *(ModelCard(id=TIER_PREFIX + n) for n in tier_names)]
