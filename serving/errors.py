"""Domain errors of the service, mapped to HTTP answers in one exception handler."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request, params
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from starlette.exceptions import HTTPException

from router.features import EmbedderMismatch
from router.policy import NoTierFits
from router.schema import TiersConfigError
from serving.proxy.wire import DoorJSONResponse, error_body
from serving.schemas import ErrorResponse

logger = logging.getLogger(__name__)


UNION_MEMBER = re.compile(
    r"^(list|function-(after|before|wrap|plain)|model|dict)\[|^(str|int|float|bool|none)$|^constrained-[a-z]+$"
)
"""How pydantic names a union member in an error's loc, e.g. `list[function-after[_check(), OutcomeIn]]`, `str`
for `str | list[...]`, or `constrained-int` for `Annotated[int, Field(ge=0)] | ...`."""


def union_member_errors(errors: list[dict[str, Any]], body: Any) -> list[dict[str, Any]]:
    """Of a body typed `Item | list[Item]`, only the errors of the member the body's JSON type chose, with
    pydantic's member names left out of `loc`: `["body", "score"]` for one object, `["body", 2, "score"]` for the
    third of a list, instead of an error for each member (one of them "Input should be a valid list")."""

    def member(e: dict[str, Any]) -> str | None:
        loc = e["loc"]
        tagged = len(loc) > 1 and loc[0] == "body" and isinstance(loc[1], str) and UNION_MEMBER.match(loc[1])
        return loc[1] if tagged else None

    if not any(member(e) for e in errors):
        return errors
    wants_list = isinstance(body, list)
    kept = [e for e in errors if (m := member(e)) is None or m.startswith("list[") == wants_list]
    tidy = [{**e, "loc": [e["loc"][0], *e["loc"][2:]]} if member(e) else e for e in kept]
    return tidy or errors


def not_utf8_detail(exc: HTTPException) -> str | None:
    """What to say of FastAPI's refusal of a body that is not UTF-8 (FastAPI says only "There was an error parsing
    the body"); None for any other refusal."""
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid UTF-8 (byte {cause.start}): send JSON encoded as UTF-8"
    return None


def refusal_class(exc: BaseException) -> str:
    """Only the classes of a store's refusal: its message may quote the refused value (a prompt)."""
    orig = getattr(exc, "orig", None)
    return f"{type(exc).__name__} ({type(orig).__name__})" if orig is not None else type(exc).__name__


class ServiceError(Exception):
    """A request the service understood but refuses; `status` is its HTTP code."""

    status = 400

    def __init__(self, detail: str, body: dict[str, Any] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.body = body

    @property
    def headers(self) -> dict[str, str] | None:
        """Headers the refusal is answered with (e.g. `Retry-After`), None for none."""
        return None


def _refusal(name: str, status: int, doc: str) -> type[ServiceError]:
    return type(name, (ServiceError,), {"status": status, "__doc__": doc, "__module__": __name__})


# The refusals that need nothing but their status.
NotReady = _refusal("NotReady", 503, "No model is loaded yet.")
TooLarge = _refusal("TooLarge", 413, "A prompt or batch is over its limit.")
Unauthorized = _refusal("Unauthorized", 401, "The API key is missing or unknown.")
Forbidden = _refusal("Forbidden", 403, "The key may not do this (an admin route, another client's session).")
NotFound = _refusal("NotFound", 404, "The session or decision the request names is not stored.")
ReloadFailed = _refusal("ReloadFailed", 409, "A reload was refused; the loaded model stays.")
RegistryUnavailable = _refusal("RegistryUnavailable", 503, "The model registry is unreachable; the loaded model stays.")
Conflict = _refusal("Conflict", 409, "The request contradicts what is stored: an outcome id reused.")
StoreUnavailable = _refusal("StoreUnavailable", 503, "The store is unreachable and the request cannot wait.")
RETRY_NOT_SETTLED_S = 5  # Retry-After of NotSettledYet: an answer ending, or a spooled settlement replayed


class NotSettledYet(ServiceError):
    """A decision the proxy serves is not settled yet: its outcome is taken once it is (retry)."""

    status = 503

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(RETRY_NOT_SETTLED_S)}


class Invalid(ServiceError):
    """A request that parsed but names something that isn't there; answered in the 422 validation shape."""

    status = 422

    def __init__(self, detail: str, loc: tuple[str | int, ...] = ("body",)):
        super().__init__(detail)
        self.loc = loc


class OverBudget(ServiceError):
    """The session's cap leaves no room for the request (402); the body says whether the session froze.
    `retry_after_s`: when room comes back by itself (calls in flight end), answered as `Retry-After`."""

    status = 402

    def __init__(self, detail: str, body: dict[str, Any] | None = None, retry_after_s: int | None = None):
        super().__init__(detail, body)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str] | None:
        return None if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


def error(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entry of a refusal answered as `{"detail": "..."}`."""
    return {status: {"model": ErrorResponse, "description": description}}


CALLER_ERRORS = error(401, "missing or unknown API key") | error(
    503, "no model loaded yet, or the store is unavailable"
)
BODY_ERRORS = (
    error(400, "the body could not be read (e.g. JSON nested too deeply)")
    | error(413, "the body is over max_body_bytes, or a prompt or batch is over its limit")
    | error(415, "the body is sent as another Content-Type than application/json")
)


def _answer(
    status: int, detail: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    content = {"detail": detail, **(body or {})}
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse(content, status_code=status, headers=headers)


def invalid(msg: str, loc: tuple[str | int, ...] = ("body",)) -> JSONResponse:
    """A 422 in the shape of FastAPI's validation errors, so every 422 has one documented shape."""
    return JSONResponse({"detail": [{"loc": list(loc), "msg": msg, "type": "value_error"}]}, status_code=422)


def _is_json(content_type: str) -> bool:
    """FastAPI's rule for a body it reads as JSON: application/json or application/*+json, any parameters."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _json_route(request: Request) -> bool:
    """Whether the request's route takes a JSON body (not a form, as the admin page's do)."""
    field = getattr(request.scope.get("route"), "body_field", None)
    return field is not None and not isinstance(getattr(field, "field_info", None), params.Form)


def _door_refusal(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own refusal under the OpenAI-compatible door (no route took the request) in OpenAI's shape, as
    the door's own are: a path no route matches (an unknown endpoint, or a model id with a character the path
    converter refuses, a newline) is a 404, a method the path does not take a 405 naming the ones it does."""
    if exc.status_code == 404:
        body = error_body("no such endpoint or model under /v1", "invalid_request_error", "not_found")
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}" + (f": use {allowed}" if allowed else "")
        body = error_body(message, "invalid_request_error", "method_not_allowed")
    else:
        body = http_refusal_body(exc)
    return DoorJSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def http_refusal_body(exc: HTTPException) -> dict[str, Any]:
    """Starlette's or FastAPI's own refusal (a body that is no JSON, no UTF-8) as an OpenAI error body."""
    type_ = "invalid_request_error" if exc.status_code < 500 else "api_error"
    return error_body(not_utf8_detail(exc) or str(exc.detail), type_)


def install_handlers(app: FastAPI) -> None:
    """Map every domain error to its 4xx/503; anything else is logged and answered 500."""

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        if isinstance(exc, Invalid):
            return invalid(exc.detail, exc.loc)
        return _answer(exc.status, exc.detail, exc.body, exc.headers)

    @app.exception_handler(NoTierFits)
    async def no_tier_fits(_: Request, exc: NoTierFits) -> JSONResponse:
        return invalid(str(exc))

    @app.exception_handler(TiersConfigError)
    @app.exception_handler(EmbedderMismatch)
    async def config_error(_: Request, exc: ValueError) -> JSONResponse:
        return _answer(409, str(exc))

    @app.exception_handler(DBAPIError)
    async def db_error(request: Request, exc: DBAPIError) -> JSONResponse:
        # A value the store refuses is the client's mistake (the edge should have caught it): no store error.
        # The message is not logged or echoed: it may quote the value.
        if isinstance(exc, DataError):
            logger.warning("the store refused a value: %s", refusal_class(exc))
            return invalid("the store refused a value of this request")
        if isinstance(exc, IntegrityError):
            logger.warning("the store refused a write: %s", refusal_class(exc))
            return _answer(409, "the request conflicts with stored data")
        request.app.state.metrics.store_errors.inc()
        logger.error("store error: %s", exc)
        return _answer(503, "the decision store is unavailable; retry")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if (detail := not_utf8_detail(exc)) is not None:
            return _answer(400, detail)
        if request.url.path.startswith("/v1/"):
            return _door_refusal(request, exc)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only loc, msg and type: the offending input may be NaN or huge, and the answer must be valid JSON.
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        content_type = request.headers.get("content-type", "")
        # A body sent without a Content-Type is not read as JSON either.
        sent = (
            content_type or request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
        )
        if (
            sent
            and _json_route(request)
            and not _is_json(content_type)
            and any(e["loc"][:1] == ["body"] for e in errors)
        ):
            # FastAPI reads no JSON from a text/plain or form body and says "Input should be a valid dictionary".
            sent_as = f"not {content_type[:100]!r}" if content_type else "and none was given"
            detail = f"the body must be sent as Content-Type: application/json, {sent_as}"
            return JSONResponse({"detail": detail}, status_code=415)
        return JSONResponse({"detail": union_member_errors(errors, exc.body)}, status_code=422)
