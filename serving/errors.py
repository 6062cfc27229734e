"""Domain errors of the service, mapped to HTTP answers in one exception handler."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError

from router.features import EmbedderMismatch
from router.policy import NoTierFits
from router.schema import TiersConfigError

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request the service understood but refuses; `status` is its HTTP code."""

    status = 400

    def __init__(self, detail: str, body: dict[str, Any] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.body = body


class NotReady(ServiceError):
    status = 503


class TooLarge(ServiceError):
    status = 413


class Unauthorized(ServiceError):
    status = 401


class Forbidden(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class Invalid(ServiceError):
    status = 422


class ReloadFailed(ServiceError):
    status = 409


class SessionFrozen(ServiceError):
    """The session's cap is reached; it answers 402 until an admin confirms a new cap."""

    status = 402


class StoreUnavailable(ServiceError):
    status = 503


def _answer(status: int, detail: str, body: dict[str, Any] | None = None) -> JSONResponse:
    content = {"detail": detail, **(body or {})}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(content, status_code=status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Map every domain error to its 4xx/503; anything else is logged and answered 500."""

    async def service_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return _answer(exc.status, exc.detail, exc.body)

    async def no_tier_fits(_: Request, exc: Exception) -> JSONResponse:
        return _answer(422, str(exc))

    async def config_error(_: Request, exc: Exception) -> JSONResponse:
        return _answer(409, str(exc))

    async def db_error(request: Request, exc: Exception) -> JSONResponse:
        request.app.state.metrics.store_errors.inc()
        logger.error("store error: %s", exc)
        return _answer(503, "the decision store is unavailable; retry")

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        # Only loc, msg and type: the offending input may be NaN or huge, and the answer must be valid JSON.
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(NoTierFits, no_tier_fits)
    app.add_exception_handler(TiersConfigError, config_error)
    app.add_exception_handler(EmbedderMismatch, config_error)
    app.add_exception_handler(DBAPIError, db_error)
