"""POST /outcomes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response

from serving.deps import Caller, RecorderDep, RuntimeDep, SettingsDep
from serving.errors import BODY_ERRORS, CALLER_ERRORS, TooLarge, error
from serving.schemas import OutcomeIn, OutcomesResponse

router = APIRouter(
    tags=["outcomes"],
    responses=CALLER_ERRORS | BODY_ERRORS | error(403, "another client's decision") | error(404, "unknown decision_id"),
)


@router.post(
    "/outcomes",
    status_code=201,
    responses={
        202: {"model": OutcomesResponse, "description": "store unreachable: spooled, replayed later"},
        **error(409, "an outcome_id already recorded with another score, model, cost or decision; nothing written"),
        **error(
            503,
            "no model loaded, the store unavailable, or a decision the proxy has not settled yet (Retry-After: "
            "post it again then)",
        ),
        422: {"description": "invalid, an unknown model, or refused by the store; nothing was written"},
    },
)
def post_outcomes(
    body: Annotated[OutcomeIn | list[OutcomeIn], Body()],
    rt: RuntimeDep,
    recorder: RecorderDep,
    caller: Caller,
    settings: SettingsDep,
    response: Response,
) -> OutcomesResponse:
    """Record realised outcomes (one or a list); durable before the answer, idempotent by outcome_id: a retry of
    the same outcome is recorded once (201, `recorded` 0); a different outcome under a stored id is refused (409)."""
    items = body if isinstance(body, list) else [body]
    if not items:
        return OutcomesResponse(outcome_ids=[], recorded=0)
    if len(items) > settings.max_batch:
        raise TooLarge(f"{len(items)} outcomes is over the batch limit of {settings.max_batch}")
    for i, item in enumerate(items):
        if item.prompt is not None and len(item.prompt) > settings.max_prompt_chars:
            raise TooLarge(f"outcome {i}: prompt has {len(item.prompt)} characters, over {settings.max_prompt_chars}")
    out = recorder.record(items, caller, rt.tiers, listed=isinstance(body, list))
    if out.spooled:
        response.status_code = 202
    return out
